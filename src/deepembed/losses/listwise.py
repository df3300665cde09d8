"""List- and structure-based losses: N-pair, lifted structure, NCA, ranked list."""

from __future__ import annotations
