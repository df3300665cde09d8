"""Emoji: a colour retrieval dataset that exists offline, rendered from two Debian packages.

Source: `fonts-noto-color-emoji` (NotoColorEmoji.ttf, colour bitmaps at size 109 only) and
`unicode-data` (emoji-test.txt: group, subgroup and name of every emoji). One image per
fully-qualified emoji without skin-tone modifiers: 1,870 images of 99 classes (the
subgroups: face-smiling, animal-mammal, country-flag ...; 90 of them have >= 5 emoji,
country-flag alone 258). The group (Smileys & Emotion, Flags ...) is the super-label, the
emoji's name ("grinning face") rides along as `dataset.names`.

Split: class-disjoint halves of the subgroups, ordered by a hash of SPLIT_SEED and the
subgroup name (no random-number stream, so the split never changes): train = 50 subgroups
(861 images), test = 49 (1,009 images; country-flag is one of them). Labels index all 99
subgroups in emoji-test.txt order, so train and test labels never overlap.

Rendering: Pillow draws each emoji (`embedded_color=True`, raqm layout so ZWJ sequences
and flags become one glyph) on a transparent white RGBA canvas, crops it to the alpha
bounding box and centres it on a white square (flags: 126 x 94 in a 126 x 126 square),
saved as PNG. Pillow blends the glyph into the canvas colour by its alpha, so the RGB of a
*white* transparent canvas is already the glyph composited on white; a transparent black
canvas composited on white afterwards would leave dark fringes (up to 64 grey levels).

Cache: rendered once into the data root when given, else `$DEEPEMBED_CACHE/emoji` (default
`~/.cache/deepembed/emoji`), atomically (a temp dir renamed into place), with `index.csv`
(path,label,subgroup,group,name,codepoints,split); later opens only read the index and need
neither package. Rendering all 1,870 takes 3-5 s on one core (measured on a 2-core machine
with Pillow 13: 1.2 s drawing, the rest PNG encoding); the cache is 10 MB.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from deepembed.data.datasets import ImageFileDataset
from deepembed.data.sources.common import FileOptions, file_dataset
from deepembed.data.splits import class_halves
from deepembed.errors import DataError
from deepembed.io import atomic_dir, reading

FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
FONT_SIZE = 109  # the only size NotoColorEmoji's bitmaps have
SPLIT_SEED = 0  # fixes the subgroup halves; changing it changes every published number
SKIN_TONES = frozenset(f"1F3F{c}" for c in "BCDEF")
INDEX = "index.csv"
COLUMNS = ("path", "label", "subgroup", "group", "name", "codepoints", "split")
SPLITS = ("train", "test")
INSTALL = "apt-get install fonts-noto-color-emoji unicode-data, or make setup"
WHITE = (255, 255, 255)
# "1F600 ; fully-qualified # 😀 E1.0 grinning face"
_LINE = re.compile(r"^([0-9A-F ]+?)\s*;\s*([a-z-]+)\s*#\s*\S+\s+E\d+\.\d+\s+(.+)$")


@dataclass(frozen=True)
class Emoji:
    """One row of emoji-test.txt: its code points (hex), group, subgroup and name."""

    codepoints: tuple[str, ...]
    group: str
    subgroup: str
    name: str

    @property
    def text(self) -> str:
        return "".join(chr(int(c, 16)) for c in self.codepoints)

    @property
    def filename(self) -> str:
        return "-".join(self.codepoints).lower() + ".png"


def cache_dir(root: str) -> Path:
    """Where the rendered images live: `root`, else $DEEPEMBED_CACHE/emoji, else the user's
    cache folder (~/.cache/deepembed/emoji, or under $XDG_CACHE_HOME like scripts/setup.sh)."""
    if root:
        return Path(root)
    base = os.environ.get("DEEPEMBED_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "deepembed")
    return Path(base) / "emoji"


def read_emoji_test(path: Path | None = None) -> list[Emoji]:
    """Fully-qualified emoji without skin-tone modifiers, in the file's (CLDR) order."""
    path = EMOJI_TEST if path is None else path
    if not path.is_file():
        raise DataError(f"emoji: no {path} (Debian package unicode-data): {INSTALL}")
    group = subgroup = ""
    found = []
    with reading(path, "emoji-test.txt of unicode-data"):
        lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines:
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            match = _LINE.match(line)
            if match is None:
                raise DataError(f"{path}: unexpected line {line!r}")
            codepoints = tuple(match.group(1).split())
            if match.group(2) == "fully-qualified" and not SKIN_TONES & set(codepoints):
                found.append(Emoji(codepoints, group, subgroup, match.group(3).strip()))
    if not found:
        raise DataError(f"{path}: no fully-qualified emoji found")
    return found


def split_of(subgroups: list[str]) -> dict[str, str]:
    """subgroup -> "train" | "test": halves of the subgroups ordered by a seeded hash."""
    order = sorted(
        subgroups, key=lambda s: hashlib.sha256(f"{SPLIT_SEED}:{s}".encode()).hexdigest()
    )
    train = set(class_halves(order, "train"))
    return {s: "train" if s in train else "test" for s in subgroups}


def render_one(font: ImageFont.FreeTypeFont, text: str) -> Image.Image | None:
    """One emoji as an RGB square on white, cropped to its glyph; None if nothing is drawn."""
    _, _, right, bottom = font.getbbox(text)
    canvas = Image.new("RGBA", (max(right, 1), max(bottom, 1)), (*WHITE, 0))
    ImageDraw.Draw(canvas).text((0, 0), text, font=font, embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box).convert("RGB")  # RGB already blended on white (module docstring)
    side = max(glyph.size)
    square = Image.new("RGB", (side, side), WHITE)
    square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return square


def load_font(path: Path | None = None) -> ImageFont.FreeTypeFont:
    """The colour emoji font at its bitmap size, with the raqm layout (one glyph per ZWJ
    sequence or flag; the basic layout would draw their parts side by side)."""
    path = FONT if path is None else path
    if not path.is_file():
        raise DataError(f"emoji: no {path} (Debian package fonts-noto-color-emoji): {INSTALL}")
    if not features.check_feature("raqm"):
        raise DataError(
            "emoji: Pillow's raqm text layout is unavailable (it needs the FriBiDi library: "
            "apt-get install libfribidi0)"
        )
    try:
        return ImageFont.truetype(str(path), FONT_SIZE, layout_engine=ImageFont.Layout.RAQM)
    except OSError as exc:
        raise DataError(f"emoji: cannot load font {path}: {exc}") from exc


def render(target: Path, font_path: Path | None = None, emoji_test: Path | None = None) -> float:
    """Render every emoji into `target` (images/ and index.csv, all or nothing); the seconds.

    Defaults: the Debian packages' files (FONT, EMOJI_TEST).
    """
    start = time.perf_counter()
    found = read_emoji_test(emoji_test)
    font = load_font(font_path)
    subgroups = list(dict.fromkeys(e.subgroup for e in found))
    split = split_of(subgroups)
    with atomic_dir(target) as tmp:
        (tmp / "images").mkdir()
        rows = []
        for e in found:
            image = render_one(font, e.text)
            if image is None:
                raise DataError(f"emoji: the font draws nothing for {e.name!r} ({e.text})")
            path = f"images/{e.filename}"
            image.save(tmp / path)
            label = subgroups.index(e.subgroup)
            codepoints = " ".join(e.codepoints)
            rows.append((path, label, e.subgroup, e.group, e.name, codepoints, split[e.subgroup]))
        with (tmp / INDEX).open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            writer.writerows(rows)
    return time.perf_counter() - start


def ensure_cache(root: str) -> Path:
    """The cache folder, rendered first when it has no index yet."""
    cache = cache_dir(root)
    if (cache / INDEX).is_file():
        return cache
    if cache.is_dir() and any(cache.iterdir()):
        raise DataError(
            f"emoji: {cache} is neither empty nor an emoji cache (no {INDEX}); "
            "give an empty or new folder as the root"
        )
    render(cache)
    return cache


def read_index(cache: Path) -> list[dict[str, str]]:
    """The rows of `cache/index.csv`."""
    path = cache / INDEX
    with reading(path, "the emoji index"), path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise DataError(
                f"{path}: expected columns {','.join(COLUMNS)}; delete {cache} to re-render"
            )
        rows = list(reader)
        for number, row in enumerate(rows, start=2):
            if None in row.values() or None in row or row["split"] not in SPLITS:
                raise DataError(f"{path}:{number}: bad row; delete {cache} to re-render")
            int(row["label"])  # a ValueError becomes a DataError naming the file
    return rows


def open_emoji(root: str, split: str, options: FileOptions) -> ImageFileDataset:
    """The train or test subgroups of the emoji dataset, rendered on first use."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for emoji; known: {', '.join(SPLITS)}")
    cache = ensure_cache(root)
    rows = read_index(cache)
    groups = list(dict.fromkeys(r["group"] for r in rows))
    chosen = np.array([i for i, r in enumerate(rows) if r["split"] == split], dtype=np.int64)
    picked = [rows[i] for i in chosen]
    labels = np.array([int(r["label"]) for r in picked], dtype=np.int64)
    dataset = file_dataset(
        cache,
        [r["path"] for r in picked],
        labels,
        {int(r["label"]): r["subgroup"] for r in picked},
        options,
        super_labels=np.array([groups.index(r["group"]) for r in picked], dtype=np.int64),
        super_class_names=dict(enumerate(groups)),
    )
    names = np.array([r["name"] for r in picked], dtype=str)
    dataset.names = names[dataset.ids]  # file_dataset's ids are rows of `picked`
    dataset.ids = chosen[dataset.ids]  # rows of index.csv, the same in every split
    return dataset
