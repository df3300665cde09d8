"""Margin-softmax losses on learned class weights `weight`.

Normalized softmax, CosFace, ArcFace, SphereFace, sub-center ArcFace.
"""

from __future__ import annotations
