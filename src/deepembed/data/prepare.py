"""`data prepare` (fetch from the official source, verify checksums, extract) and `data info`.

Datasets with public files (CIFAR, the MNIST family's IDX files, CUB-200-2011) are
downloaded; the others require accepting a licence or a manual download, so `prepare` says
exactly which files to place where. Where the machine is offline the same instructions
are given, with the URLs to fetch by hand. Emoji is rendered from two Debian packages into
its cache (root "" = the default cache folder).
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepembed.data.datasets import ImageFileDataset
from deepembed.data.sources import emoji
from deepembed.data.sources.folder import csv_splits
from deepembed.errors import DataError

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
KMNIST_URL = "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@dataclass(frozen=True)
class Remote:
    """One file of an official release: where it is, its MD5, whether to unpack it."""

    url: str
    md5: str
    extract: bool = False

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1].split("?")[0]


@dataclass(frozen=True)
class Source:
    """How a dataset is obtained: remotes (empty = by hand), the layout under the root."""

    layout: tuple[str, ...]  # files / folders that must exist under the root when ready
    remotes: tuple[Remote, ...] = ()
    manual: str = ""  # where to get it by hand (licence pages)


def _idx(base: str, md5s: tuple[str, ...]) -> tuple[Remote, ...]:
    return tuple(Remote(base + f, m) for f, m in zip(IDX_FILES, md5s, strict=True))


CIFAR10 = Source(
    ("cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch"),
    (
        Remote(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
            extract=True,
        ),
    ),
)
CIFAR100 = Source(
    ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
    (
        Remote(
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
            extract=True,
        ),
    ),
)
SOURCES: dict[str, Source] = {
    "cifar10": CIFAR10,
    "cifar100": CIFAR100,
    "mnist": Source(
        IDX_FILES,
        _idx(
            MNIST_URL,
            (
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
        ),
    ),
    "fashion_mnist": Source(
        IDX_FILES,
        _idx(
            FASHION_URL,
            (
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
        ),
    ),
    "kmnist": Source(
        IDX_FILES,
        _idx(
            KMNIST_URL,
            (
                "bdb82020997e1d708af4cf47b453dcf7",
                "e144d726b3acfaa3e44228e80efcd344",
                "5c965bf0a639b31b8f53240b1b52f4d7",
                "7320c461ea6c1c855c0b718fb2a4b134",
            ),
        ),
    ),
    "animal_mnist": Source(
        ("animal_data_version_3.gz", "animal_label_version_3.gz"),
        manual="pip install --no-deps animal-mnist==0.4 (then no root is needed), or copy "
        "its data/Animal_MNIST/ files there",
    ),
    "cub200": Source(
        ("CUB_200_2011/images.txt", "CUB_200_2011/image_class_labels.txt", "CUB_200_2011/images"),
        (
            Remote(
                "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                "97eceeb196236b17998738112f37df78",
                extract=True,
            ),
        ),
    ),
    "cars196": Source(
        ("cars_annos.mat", "car_ims"),
        manual="the Stanford Cars release (cars_annos.mat and car_ims.tgz, unpacked to car_ims/"
        "000001.jpg ...); the original ai.stanford.edu links are gone, use a mirror you trust",
    ),
    "sop": Source(
        ("Ebay_train.txt", "Ebay_test.txt", "bicycle_final"),
        manual="Stanford_Online_Products.zip from https://cvgl.stanford.edu/projects/lifted_struct/"
        " (unpack it so that Ebay_train.txt, Ebay_test.txt and the *_final/ folders are there)",
    ),
    "inshop": Source(
        ("Eval/list_eval_partition.txt", "img"),
        manual="DeepFashion In-shop Clothes Retrieval Benchmark from "
        "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html (agree to its "
        "licence; unpack img.zip and Eval/list_eval_partition.txt)",
    ),
    "folder": Source(("<class>/<image files>",), manual="your images, one sub-folder per class"),
    "csv": Source(("labels.csv",), manual="a CSV of path,label[,split], paths relative to it"),
    "emoji": Source((emoji.INDEX, "images"), manual=f"rendered by prepare; needs {emoji.INSTALL}"),
}


def source_of(name: str) -> Source:
    """The Source of a dataset name (cifar10_hash1k -> cifar10; mnist30 is not one dataset)."""
    family = name.split("_hash")[0]
    if family == "mnist30":
        raise DataError("mnist30 joins mnist, fashion_mnist and animal_mnist: prepare each")
    if family not in SOURCES:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[family]


def md5_of(path: Path) -> str:
    """Hex MD5 of a file, read in 1 MiB blocks."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, target: Path) -> None:
    """Download `url` to `target` (via a .part file, so a broken download never looks done)."""
    part = target.with_name(target.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as f:
        shutil.copyfileobj(response, f, length=1 << 20)
    part.replace(target)


def extract(archive: Path, into: Path) -> None:
    """Unpack a .tar(.gz)/.tgz/.zip, refusing members that would land outside `into`."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            base = into.resolve()
            for member in z.namelist():
                if not (base / member).resolve().is_relative_to(base):
                    raise DataError(f"{archive}: member {member!r} escapes {into}")
            z.extractall(into)
        return
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")  # rejects absolute paths, "..", odd links
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"cannot extract {archive}: {exc}") from exc


def missing_layout(source: Source, root: Path) -> list[str]:
    """Entries of the expected layout absent under `root`."""
    return [p for p in source.layout if "<" not in p and not (root / p).exists()]


def instructions(name: str, root: Path, reason: str = "") -> str:
    """Exactly which files to place where, for datasets that cannot be fetched here."""
    source = source_of(name)
    lines = [f"{name}: {reason}" if reason else f"{name}: place these files by hand"]
    if source.remotes:
        lines.append("download (and check the MD5):")
        lines += [f"  {r.url}  md5 {r.md5}" for r in source.remotes]
        unpack = [r.filename for r in source.remotes if r.extract]
        if unpack:
            lines.append(f"unpack {', '.join(unpack)} into {root}")
        else:
            lines.append(f"into {root}")
    if source.manual:
        lines.append(f"get: {source.manual}")
    lines.append(f"so that these exist under {root}:")
    lines += [f"  {root / p}" for p in source.layout]
    return "\n".join(lines)


@dataclass
class PrepareResult:
    """What `prepare` did: ready or not, and the lines to show."""

    ready: bool
    lines: list[str] = field(default_factory=list)


def prepare(
    name: str, root: str | Path, download: Callable[[str, Path], None] = fetch
) -> PrepareResult:
    """Fetch, verify and unpack dataset `name` under `root`; or say what to place where."""
    if name == "emoji":
        return prepare_emoji(str(root))
    root = Path(root)
    source = source_of(name)
    if not missing_layout(source, root) and "<" not in source.layout[0]:
        return PrepareResult(True, [f"{name}: already in place under {root}"])
    if not source.remotes:
        return PrepareResult(False, [instructions(name, root)])
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for remote in source.remotes:
        target = root / remote.filename
        if not (target.is_file() and md5_of(target) == remote.md5):
            try:
                download(remote.url, target)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = f"cannot download {remote.url} ({exc})"
                return PrepareResult(False, [instructions(name, root, reason)])
            actual = md5_of(target)
            if actual != remote.md5:
                target.rename(target.with_name(target.name + ".bad"))
                raise DataError(
                    f"checksum mismatch for {remote.url}: md5 {actual}, expected {remote.md5} "
                    f"(kept as {target.name}.bad)"
                )
            lines.append(f"downloaded {remote.filename} (md5 ok)")
        if remote.extract:
            extract(target, root)
            lines.append(f"extracted {remote.filename}")
    still = missing_layout(source, root)
    if still:
        return PrepareResult(False, [*lines, instructions(name, root, f"still missing {still}")])
    return PrepareResult(True, [*lines, f"{name}: ready under {root}"])


def prepare_emoji(root: str) -> PrepareResult:
    """Render the emoji cache (in `root`, or the default cache folder for root "")."""
    cache = emoji.cache_dir(root)
    if (cache / emoji.INDEX).is_file():
        return PrepareResult(True, [f"emoji: already rendered in {cache}"])
    start = time.perf_counter()
    emoji.ensure_cache(root)
    seconds = time.perf_counter() - start
    return PrepareResult(True, [f"emoji: rendered into {cache} in {seconds:.1f} s"])


def splits_of(name: str, root: str) -> tuple[str, ...]:
    """The split names a dataset has (folder/csv: what is on disk)."""
    if name.endswith(("_hash1k", "_hash10k")):
        return ("query", "train", "database")
    if name == "inshop":
        return ("train", "query", "gallery")
    if name == "folder" and Path(root).is_dir():
        found = [
            s for s in ("train", "val", "test", "query", "gallery") if (Path(root) / s).is_dir()
        ]
        return tuple(found) or ("train", "test")
    if name == "csv":
        return csv_splits(root) or ("train", "test")
    return ("train", "test")


def split_info(dataset: Any, full: bool = False) -> dict[str, Any]:
    """Counts of one opened split and the problems found in it."""
    labels = np.asarray(dataset.labels)
    if labels.ndim == 2:  # multi-label rows: images carrying each label
        per_class = labels.sum(0)[labels.sum(0) > 0]
    else:
        per_class = np.unique(labels, return_counts=True)[1]
    classes = len(per_class)
    if len(per_class) == 0:
        per_class = np.zeros(1, dtype=np.int64)
    info: dict[str, Any] = {
        "images": len(labels),
        "classes": classes,
        "images_per_class": {
            "min": int(per_class.min()),
            "median": float(np.median(per_class)),
            "max": int(per_class.max()),
        },
        "singleton_classes": int((per_class == 1).sum()),
    }
    if getattr(dataset, "super_labels", None) is not None:
        info["super_classes"] = len(np.unique(dataset.super_labels))
    problems = []
    if isinstance(dataset, ImageFileDataset):  # in-memory datasets were decoded at open
        problems = dataset.problems.problems + dataset.scan(full=full).problems
    info["problems"] = [f"{path}: {why}" for path, why in problems]
    return info


def info(name: str, root: str, full: bool = False) -> dict[str, dict[str, Any]]:
    """Per split: images, classes, images per class, singleton classes, unreadable files.

    Missing files are listed (on_error=skip); every image file gets a PIL header check
    (a full decode with `full`). Singleton classes stay usable for evaluation: their
    queries have no relevant item and are excluded from the averages.
    """
    from deepembed import data

    result = {}
    for split in splits_of(name, root):
        dataset = data.open(name, root, split, on_error="skip", transform="imagenet224")
        result[split] = split_info(dataset, full=full)
    return result
