"""Proxy-based losses: Proxy-NCA, Proxy-Anchor, SoftTriple (learned `proxies`)."""

from __future__ import annotations
