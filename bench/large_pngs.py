"""A whole `deepembed train configs/images.yaml` run on 4,000 large transparent PNGs.

The recipe is meant for a user's own colour images, not for emoji alone. This writes a CSV
dataset unlike emoji in everything that costs time: 1024 x 1024 RGBA PNGs (transparent
background, ~1 MB each), 4,000 training images in 100 classes (40 views each) and 1,000
test images of 100 unseen classes (10 views each). A class is one emoji glyph drawn large at
a random scale, position and rotation over a random translucent colour field, so
recognising it means seeing past pose and background. Then it runs the unchanged recipe as
a user would and reports the wall-clock of the whole command (first decoding, frozen-stage
bank, training, final evaluation) from its own timings, with the test metrics.

    .venv/bin/python bench/large_pngs.py [--root DIR] [section.key=value ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from deepembed import data

SIZE, TRAIN_CLASSES, TEST_CLASSES, TRAIN_VIEWS, TEST_VIEWS = 1024, 100, 100, 40, 10


def draw(glyph: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One view: the glyph scaled, rotated and placed on a translucent colour field."""
    field = rng.integers(0, 256, (4, 4, 4), dtype=np.uint8)
    field[..., 3] = rng.integers(0, 120, (4, 4))  # mostly transparent
    canvas = Image.fromarray(field, "RGBA").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    scale = rng.uniform(0.35, 0.8)
    side = int(SIZE * scale)
    view = glyph.resize((side, side), Image.Resampling.BICUBIC).rotate(
        float(rng.uniform(-30, 30)), resample=Image.Resampling.BICUBIC, expand=False
    )
    x, y = (int(v) for v in rng.integers(0, SIZE - side + 1, 2))
    canvas.alpha_composite(view, (x, y))
    return canvas


def glyph_of(path: str) -> Image.Image:
    """An emoji picture as RGBA with its white background made transparent."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    alpha = np.clip((765 - rgb.sum(2)) * 4, 0, 255).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb.astype(np.uint8), alpha]), "RGBA")


def write_class(job: tuple[str, str, int, int, int, Path]) -> list[tuple[str, int, str]]:
    """All views of one class (its own seed, so workers may run classes in any order)."""
    split, glyph_path, label, cls, views, root = job
    rng = np.random.default_rng([0, cls])
    glyph = glyph_of(glyph_path)
    rows = []
    for v in range(views):
        path = root / split / f"{label:03d}" / f"{v:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        draw(glyph, rng).save(path, compress_level=1)
        rows.append((str(path.relative_to(root)), cls, split))
    return rows


def write_dataset(root: Path, seed: int = 0, workers: int = 2) -> Path:
    """The CSV dataset under `root` (reused when complete), written by `workers` processes."""
    index = root / "images.csv"
    if index.is_file():
        return index
    rng = np.random.default_rng(seed)
    jobs = []
    for split, count, views, offset in (
        ("train", TRAIN_CLASSES, TRAIN_VIEWS, 0),
        ("test", TEST_CLASSES, TEST_VIEWS, TRAIN_CLASSES),
    ):
        source = data.open("emoji", "", split, transform=None)
        for label, row in enumerate(rng.choice(len(source), count, replace=False)):
            jobs.append((split, str(source.paths[row]), label, offset + label, views, root))
    start = time.perf_counter()
    with multiprocessing.Pool(workers) as pool:
        rows = [r for chunk in pool.imap(write_class, jobs) for r in chunk]
    print(f"wrote {len(rows)} PNGs in {time.perf_counter() - start:.0f} s", flush=True)
    tmp = index.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    tmp.rename(index)
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("runs/large_pngs_data"))
    parser.add_argument("--out", type=Path, default=Path("runs"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    index = write_dataset(args.root)
    cache = args.out / "large_pngs_cache"  # a fresh cache: the first decoding is timed
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    command = [
        str(Path(sys.executable).parent / "deepembed"),
        "train",
        "configs/images.yaml",
        "data.name=csv",
        f"data.root={index}",
        f"data.cache_dir={cache}",
        f"output_dir={args.out}",
        "name=large_pngs",
        "--overwrite",
        "-q",
        *args.overrides,
    ]
    print(" ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    metrics = json.loads((args.out / "large_pngs" / "metrics.json").read_text())
    print(json.dumps({"wall_s": wall, **metrics}, indent=2, default=str))
    print(
        f"whole run {wall / 60:.1f} min (decode {metrics['timings']['decode_s']:.0f} s, "
        f"frozen bank {metrics['timings']['frozen_bank_s']:.0f} s, epochs "
        f"{metrics['timings']['epochs_s']:.0f} s, final test "
        f"{metrics['timings']['final_test_s']:.0f} s); MAP@R {metrics['map@r']:.4f}, "
        f"Recall@1 {metrics['recall@1']:.4f}"
    )


if __name__ == "__main__":
    main()
