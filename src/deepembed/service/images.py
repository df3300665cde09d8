"""Uploaded images: checked by content and size before decoding, stored in a managed folder
under names made from validated integer ids only, served back as thumbnails."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deepembed.data.images import convert_image
from deepembed.errors import DataError
from deepembed.service.settings import IMAGE_FORMATS

SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp"}
SUFFIXES["TIFF"] = ".tif"
MEDIA_TYPES = {s: f"image/{f.lower()}" for f, s in SUFFIXES.items()}


class UploadError(DataError):
    """An upload refused; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode(data: bytes, name: str, max_pixels: int) -> tuple[Image.Image, str]:
    """(RGB image, format) of uploaded bytes; UploadError naming the problem otherwise.

    The format comes from the content (only IMAGE_FORMATS are tried) and the pixel count
    from the header, before any pixel is decoded."""
    if not data:
        raise UploadError(f"{name}: empty upload")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        accepted = ", ".join(IMAGE_FORMATS)
        raise UploadError(f"{name}: not an image of an accepted type ({accepted})", 415) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(f"{name}: too many pixels (more than {max_pixels})", 413) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UploadError(f"{name}: cannot read the image header ({exc})") from None
    with image:
        if image.width * image.height > max_pixels:
            pixels = f"{image.width}x{image.height}"
            raise UploadError(f"{name}: {pixels} pixels is more than {max_pixels}", 413)
        fmt = str(image.format)
        try:
            image.load()  # a truncated or corrupt file fails here
            return convert_image(ImageOps.exif_transpose(image), 3), fmt
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise UploadError(f"{name}: cannot decode the {fmt} image ({exc})") from None


class ImageStore:
    """Uploaded images, one file per item id: <folder>/<id // 1000>/<id><suffix>.

    Only integer ids make names, so no request string ever reaches the filesystem. A file is
    written (and fsynced) before its item is added to the catalogue: an acknowledged item
    always has its image; a crash in between leaves an orphan file, never a missing one."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _dir(self, item_id: int) -> Path:
        if not isinstance(item_id, int | np.integer) or item_id < 0:
            raise ValueError(f"image ids are non-negative integers, got {item_id!r}")
        return self.folder / str(int(item_id) // 1000)

    def put(self, item_id: int, data: bytes, fmt: str) -> Path:
        """Store an upload's original bytes durably; returns its path."""
        folder = self._dir(item_id)
        folder.mkdir(exist_ok=True)
        path = folder / f"{int(item_id)}{SUFFIXES[fmt]}"
        tmp = folder / f".{int(item_id)}.tmp"
        with tmp.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
        return path

    def find(self, item_id: int) -> Path | None:
        """The stored file of `item_id`, or None."""
        folder = self._dir(item_id)
        for suffix in SUFFIXES.values():
            path = folder / f"{int(item_id)}{suffix}"
            if path.is_file():
                return path
        return None

    def sweep(self, next_id: int) -> None:
        """Delete files of ids from `next_id` on: an add that stored its image and then
        crashed before its catalogue commit (ids are never reused, so they are orphans)."""
        for path in self.folder.glob("*/*"):
            stem = path.name.lstrip(".").split(".")[0]
            if stem.isdigit() and int(stem) >= next_id:
                path.unlink(missing_ok=True)

    def remove(self, item_id: int) -> None:
        path = self.find(item_id)
        if path is not None:
            path.unlink(missing_ok=True)


def thumbnail(image: Image.Image, size: int) -> bytes:
    """A PNG of `image` fitted into size x size."""
    image = convert_image(image, 3)
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()
