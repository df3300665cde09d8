"""Shared pieces of every image-file dataset: safe decoding, RGB conversion, path checks, scans.

Decoding is defensive because list files and folders come from outside: a path may point
outside the dataset root ("../", absolute paths), a file may be truncated, not an image, or a
decompression bomb (a small file that decodes to billions of pixels). Each problem becomes a
DataError naming the file, or an entry of a `ScanReport` when the caller asked to skip.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deepembed.errors import DataError

# Largest image (width * height) decoded unless data.max_image_pixels says otherwise; larger
# ones are refused as bombs before any pixel is read. Pillow's own default (~89 Mpx, about
# 0.25 GiB RGB) is a sensible ceiling.
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


class ImageTooLargeError(DataError):
    """An image over the pixel limit (decompression-bomb protection); names the config key."""

    def __init__(self, path: str | os.PathLike[str], pixels: str, limit: int) -> None:
        super().__init__(
            f"refused {path}: {pixels} pixels exceeds data.max_image_pixels={limit} "
            "(decompression-bomb protection; raise data.max_image_pixels to read it)"
        )


@contextmanager
def open_checked(path: str | os.PathLike[str], limit: int) -> Iterator[Image.Image]:
    """`Image.open(path)` with the pixel count checked against `limit` from the header, before
    any pixel is decoded. Pillow's own bomb check is lifted to `limit` when that is higher
    (the user asked for larger images) and otherwise reported as the same refusal."""
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            # PIL only warns between its limit and twice it: treat that as a refusal too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(path, f"more than {limit} ({exc})", limit) from exc
    with image:
        if image.width * image.height > limit:
            raise ImageTooLargeError(path, f"{image.width}x{image.height}", limit)
        yield image


def load_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> Image.Image:
    """Decode one image file to RGB (EXIF rotation applied); any problem is a DataError.

    The size is checked from the header before decoding, so a bomb costs no memory.
    """
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with open_checked(path, limit) as image:
            image.load()  # raises on truncated or corrupt data
            return to_rgb(ImageOps.exif_transpose(image))
    except DataError:
        raise
    except _DECODE_ERRORS as exc:
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc


def check_image(
    path: str | os.PathLike[str], full: bool = False, max_pixels: int | None = None
) -> str | None:
    """Why `path` is not a usable image, or None. Cheap header check unless `full` decodes."""
    if not os.path.isfile(path):
        return "missing file"
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        if full:
            load_image(path, limit)
            return None
        with open_checked(path, limit) as image:
            image.verify()  # structure and checksums without decoding pixels
    except DataError as exc:
        return str(exc).removeprefix(f"cannot read image {path}: ")
    except _DECODE_ERRORS as exc:
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


def scan_files(
    paths: Iterable[str], full: bool = False, max_pixels: int | None = None
) -> ScanReport:
    """Check every path (header check, or a full decode with `full`)."""
    report = ScanReport()
    for path in paths:
        report.checked += 1
        reason = check_image(path, full=full, max_pixels=max_pixels)
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


class SkipLog:
    """Images skipped under on_error=skip, each recorded once: "path<TAB>reason" lines.

    Data-loader workers are separate processes, so records go to an append-only file that they
    all share (a line is one small write); `entries()` reads it back without duplicates. The
    trainer prints one summary line for new entries and leaves the file in the run directory.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._seen: set[str] | None = None  # paths this process knows are recorded

    def record(self, path: str, reason: str) -> None:
        """Append `path` unless it is already in the file."""
        if self._seen is None:
            self._seen = set(self.entries())
        if path in self._seen:
            return
        self._seen.add(path)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(f"{path}\t{' '.join(reason.split())}\n")

    def entries(self) -> dict[str, str]:
        """path -> reason, in the order first recorded."""
        if not self.path.is_file():
            return {}
        out: dict[str, str] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            path, _, reason = line.partition("\t")
            out.setdefault(path, reason)
        return out
