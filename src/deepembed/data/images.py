"""Shared pieces of every image-file dataset: safe decoding, mode conversion, path checks, scans.

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


_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_DEEP_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # 16/32-bit int and float grey


def _deep_to_grey(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float grey -> 8-bit "L", scaled rather than clipped at 255.

    I;16*: 0..65535 -> 0..255 (Pillow's own convert clips everything above 255 to white).
    I (32-bit int, the bit depth is not recorded): taken as 8-bit when no value exceeds 255,
    else as 16-bit (what 16-bit PNG/TIFF decode to), values beyond clipped. F: [0, 1] when
    no value exceeds 1, else like I. NaN becomes 0.
    """
    pixels = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
    top = 65535.0 if image.mode.startswith("I;16") else 255.0
    if image.mode == "F" and pixels.size and pixels.max() <= 1.0:
        top = 1.0
    elif image.mode in ("I", "F") and pixels.size and pixels.max() > 255.0:
        top = 65535.0
    grey = np.clip(np.rint(pixels * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L")


def convert_image(image: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode -> "L" (`channels` 1) or "RGB" (3), keeping what the pixels mean.

    Transparency (RGBA, LA, P with a transparent colour or an RGBA palette) is composited
    on white, not dropped (Pillow's plain convert shows transparent pixels in whatever colour
    they hold, often black). 16/32-bit and float grey are rescaled, not clipped (see
    `_deep_to_grey`). Colour -> grey uses Pillow's ITU-R 601 luma; grey -> RGB repeats it.
    Bilevel "1", CMYK, YCbCr, LAB, HSV and RGBX go through Pillow's converters.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    target = "L" if channels == 1 else "RGB"
    if image.mode == target:
        return image
    if image.mode in _DEEP_GREY:
        image = _deep_to_grey(image)
    elif image.mode == "P":  # the palette or a transparent index may carry alpha
        has_alpha = "transparency" in image.info or image.palette.mode == "RGBA"
        image = image.convert("RGBA" if has_alpha else "RGB")
    if image.mode in _ALPHA_MODES:
        if image.mode == "La":  # premultiplied grey: Pillow converts it only to LA
            image = image.convert("LA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert(target)  # L, 1, RGB, CMYK, YCbCr, LAB, HSV, RGBX


def to_rgb(image: Image.Image) -> Image.Image:
    """`convert_image(image, 3)`: any PIL mode -> RGB."""
    return convert_image(image, 3)


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
    """Decode one image file to RGB (EXIF rotation applied, any mode converted by
    `convert_image`); any problem is a DataError.

    The size is checked from the header before decoding, so a bomb costs no memory.
    """
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with open_checked(path, limit) as image:
            image.load()  # raises on truncated or corrupt data
            return convert_image(ImageOps.exif_transpose(image), 3)
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
