"""The images `index add` takes: a folder (sub-folder names are labels) or a CSV file.

CSV: rows path[,label]; or a header row starting with "path" naming the columns, where
"label" and "id" are what they say, "labels" (the multi-label training CSV's column,
"cat;dog") becomes a list metadata field that a filter on any one of them matches, and any
other column becomes a metadata field. Paths are
relative to the CSV's folder. Folder: every image below it (sorted); an image inside a
sub-folder is labelled with the sub-folder's name, one directly in the folder has no label.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepembed.data.images import is_image_name
from deepembed.errors import DataError
from deepembed.io import reading


@dataclass
class ImageList:
    """Image files to add, with their label names (None: no label), ids and metadata."""

    paths: list[Path] = field(default_factory=list)
    names: list[str | None] = field(default_factory=list)
    ids: list[int | None] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def keep(self, rows: list[int]) -> ImageList:
        return ImageList(
            [self.paths[i] for i in rows],
            [self.names[i] for i in rows],
            [self.ids[i] for i in rows],
            [self.metadata[i] for i in rows],
        )


def list_images(path: str | Path) -> ImageList:
    """The images of a folder or CSV file (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        return _folder(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _csv(path)
    raise DataError(f"{path}: give a folder of images or a .csv file of image paths")


def _folder(root: Path) -> ImageList:
    out = ImageList()
    for parent, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(parent).relative_to(root)
        for name in sorted(f for f in files if is_image_name(f) and not f.startswith(".")):
            out.paths.append(Path(parent) / name)
            out.names.append(rel.parts[0] if rel.parts else None)
            out.ids.append(None)
            out.metadata.append({})
    if not out.paths:
        raise DataError(f"no image files in {root}")
    return out


def _csv(path: Path) -> ImageList:
    with reading(path, "a CSV file of image paths"), path.open(newline="", encoding="utf-8") as f:
        rows = [[c.strip() for c in r] for r in csv.reader(f) if any(c.strip() for c in r)]
    columns = ["path", "label"]
    if rows and rows[0][0].lower() == "path":
        columns, rows = [c.lower() for c in rows[0]], rows[1:]
    out = ImageList()
    for number, row in enumerate(rows, 1):
        if len(row) > len(columns) or not row[0]:
            raise DataError(f"{path}: row {number} does not fit the columns {','.join(columns)}")
        values = dict(zip(columns, row, strict=False))
        out.paths.append(path.parent / values.pop("path"))
        out.names.append(values.pop("label", "") or None)
        raw_id = values.pop("id", "")
        if raw_id and not raw_id.isdigit():
            raise DataError(f"{path}: row {number} has id {raw_id!r}, not a non-negative integer")
        out.ids.append(int(raw_id) if raw_id else None)
        meta: dict[str, Any] = {k: v for k, v in values.items() if v != ""}
        if "labels" in meta:  # several labels: a list, each one filterable
            meta["labels"] = [x.strip() for x in meta["labels"].split(";") if x.strip()]
        out.metadata.append(meta)
    if not out.paths:
        raise DataError(f"{path}: no rows")
    return out


def label_numbers(
    names: list[str | None], class_names: dict[int, str]
) -> tuple[list[int], dict[int, str]]:
    """Labels for label names: a known class name keeps its label, an integer is itself, a new
    name gets the next free label. Returns (labels, class names including the new ones)."""
    known = {name: label for label, name in class_names.items()}
    out, updated = [], dict(class_names)
    for name in names:
        if name is None:
            out.append(-1)
        elif name in known:
            out.append(known[name])
        elif name.lstrip("-").isdigit():
            out.append(int(name))
        else:
            label = max([*updated, -1]) + 1
            known[name], updated[label] = label, name
            out.append(label)
    return out, updated
