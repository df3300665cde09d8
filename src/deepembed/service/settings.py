"""ServiceSettings: every limit and switch of the HTTP service in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Image formats accepted for upload, recognised by content (Pillow's decoders), never by
# file name; formats whose decoders call out to other programs (EPS) are never tried.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")


@dataclass(frozen=True)
class ServiceSettings:
    """Limits and switches of `create_app`.

    api_key: required (X-API-Key header or Bearer token) on every mutation when set.
    images_dir: the managed folder where uploaded images are stored (None: not stored).
    max_upload_bytes / max_pixels: refused before decoding (decompression bombs included).
    max_k: the largest k a search may ask for.
    batch_wait_ms / max_batch: micro-batching of image embeddings (max_batch 1: off).
    max_passes: with batching off, requests doing model work (decode, embed, search) at
      once (0: twice the cores); more threads only fight over the cores and the GIL.
    snapshot_every: adds between index snapshots (the catalogue has every add at once;
      snapshots only shorten the replay at the next start).
    cors_origins: origins allowed by CORS; empty (default) is off.
    """

    api_key: str | None = None
    images_dir: Path | None = None
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    max_k: int = 1000
    max_files: int = 64
    batch_wait_ms: float = 5.0
    max_batch: int = 32
    max_passes: int = 0
    snapshot_every: int = 10_000
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    model_name: str = ""
