"""Shared pieces of every image-file dataset: safe decoding, RGB conversion, path checks, scans.

Decoding is defensive because list files and folders come from outside: a path may point
outside the dataset root ("../", absolute paths), a file may be truncated, not an image, or a
decompression bomb (a small file that decodes to billions of pixels). Each problem becomes a
DataError naming the file, or an entry of a `ScanReport` when the caller asked to skip.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deepembed.errors import DataError

# Largest image (width * height) that is decoded; larger ones are refused as bombs before any
# pixel is read. PIL's own default (~89 Mpx, about 0.25 GiB RGB) is a sensible ceiling.
MAX_IMAGE_PIXELS = 89_478_485
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
ON_ERROR = ("fail", "skip")
_DECODE_ERRORS = (
    OSError,
    UnidentifiedImageError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
)


def check_on_error(on_error: str) -> str:
    """Validate an error policy name: "fail" (raise naming the file) or "skip" (drop, report)."""
    if on_error not in ON_ERROR:
        raise DataError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    return on_error


def resolve_inside(root: Path, relative: str) -> Path:
    """`root / relative`, refusing paths that leave `root` ("../x", "/etc/passwd", links out)."""
    base = root.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise DataError(f"path {relative!r} in the list files escapes the dataset root {root}")
    return path


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: grey is repeated, alpha is composited on white, CMYK converted.

    16/32-bit grey ("I;16", "I", "F") is rescaled to 8 bits rather than clipped at 255.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P":  # a palette may carry transparency: go through RGBA
        image = image.convert("RGBA")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        grey = np.clip(pixels * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> Image.Image:
    """Decode one image file to RGB (EXIF rotation applied); any problem is a DataError.

    The size is checked from the header before decoding, so a bomb costs no memory.
    """
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            # PIL only warns between its limit and twice it: treat that as a refusal too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > limit:
                    raise DataError(
                        f"refused {path}: {image.width}x{image.height} pixels exceeds the "
                        f"limit of {limit} (a decompression bomb?)"
                    )
                image.load()  # raises on truncated or corrupt data
                return to_rgb(ImageOps.exif_transpose(image))
    except DataError:
        raise
    except (*_DECODE_ERRORS, Image.DecompressionBombWarning) as exc:
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc


def check_image(path: str | os.PathLike[str], full: bool = False) -> str | None:
    """Why `path` is not a usable image, or None. Cheap header check unless `full` decodes."""
    if not os.path.isfile(path):
        return "missing file"
    try:
        if full:
            load_image(path)
            return None
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                return f"{image.width}x{image.height} pixels exceeds the limit (bomb?)"
            image.verify()  # structure and checksums without decoding pixels
    except DataError as exc:
        return str(exc).removeprefix(f"cannot read image {path}: ")
    except (*_DECODE_ERRORS, Image.DecompressionBombWarning) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@dataclass
class ScanReport:
    """Files found unusable: (path, reason) pairs, and how many files were checked."""

    checked: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    def summary(self, shown: int = 5) -> str:
        """One line: the count and the first few names with their reasons."""
        if not self.problems:
            return f"all {self.checked} files readable"
        head = "; ".join(f"{p} ({why})" for p, why in self.problems[:shown])
        more = f"; ... and {len(self.problems) - shown} more" if len(self.problems) > shown else ""
        return f"{len(self.problems)} of {self.checked} files unusable: {head}{more}"


def scan_files(paths: Iterable[str], full: bool = False) -> ScanReport:
    """Check every path (header check, or a full decode with `full`)."""
    report = ScanReport()
    for path in paths:
        report.checked += 1
        reason = check_image(path, full=full)
        if reason is not None:
            report.problems.append((str(path), reason))
    return report


def missing_files(paths: Iterable[str]) -> ScanReport:
    """Only existence: cheap enough to run on every open, even for 120k-image datasets."""
    report = ScanReport()
    for path in paths:
        report.checked += 1
        if not os.path.isfile(path):
            report.problems.append((str(path), "missing file"))
    return report


def is_image_name(name: str) -> bool:
    """Whether a file name has a known image suffix (case-insensitive)."""
    return name.lower().endswith(IMAGE_SUFFIXES)
