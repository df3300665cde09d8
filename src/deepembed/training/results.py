"""What a run adds to its test metrics: split sizes, baselines, and its report.

Baselines a run is compared with on its own test split (`eval.baselines`):

- raw_pixels: the model's input pixels, average-pooled to at most 32 x 32 per channel and
  flattened (the "nearest neighbours on pixels" row of every retrieval paper's table);
- pretrained: the backbone's off-the-shelf pooled features at the model's own preprocessing,
  no head and no training (what `deepembed model create BACKBONE` gives).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from deepembed.config import RunConfig
from deepembed.data import collate
from deepembed.errors import ConfigError
from deepembed.inference import Embeddings, auto_batch_size, evaluate_embeddings, evaluate_model
from deepembed.models.embedder import Embedder

RAW_SIDE = 32  # raw pixel baselines pool images to at most this side
log = logging.getLogger(__name__)


def check_baselines(config: RunConfig, model: Embedder) -> None:
    """Refuse, before any training, a baseline the run cannot have."""
    if "pretrained" in config.eval.baselines and not model.spec.pretrained:
        raise ConfigError(
            "eval.baselines 'pretrained' needs pretrained backbone weights, but "
            f"{model.spec.backbone} has model.pretrained={model.spec.pretrained!r}"
        )


def off_the_shelf(model: Embedder) -> Embedder:
    """The same backbone, pooling and preprocessing with its pretrained weights and no head."""
    spec = replace(
        model.spec, embedding_dim=0, head="embedding", bits=0, head_bn=False, head_init="random"
    )
    return Embedder(spec).eval().to(next(model.parameters()).device)


def raw_pixels(dataset: Dataset, batch_size: int = 0) -> Embeddings:
    """(N, C * s * s) pixels of every item, pooled to side s <= RAW_SIDE, in item order."""
    vectors, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size or 256, shuffle=False, collate_fn=collate)
    for images, batch_labels in loader:
        side = min(RAW_SIDE, images.shape[-1], images.shape[-2])
        pooled = F.adaptive_avg_pool2d(images.float(), side)  # (B, C, s, s)
        vectors.append(pooled.flatten(1).numpy())
        labels.append(batch_labels.numpy())
    ids = np.asarray(getattr(dataset, "ids", np.arange(len(dataset))), np.int64)  # type: ignore[arg-type]
    names = dict(getattr(dataset, "class_names", {}))
    return Embeddings(np.concatenate(vectors), np.concatenate(labels), ids, names)


def baseline_metrics(
    config: RunConfig, model: Embedder, query: Dataset, gallery: Dataset | None, progress: bool
) -> dict[str, dict[str, Any]]:
    """{baseline: metrics} of every `eval.baselines` entry on the run's test protocol."""
    metrics, distance = tuple(config.eval.metrics), config.eval.distance
    distance = "cosine" if distance == "hamming" else distance  # baselines are float vectors
    out: dict[str, dict[str, Any]] = {}
    for name in config.eval.baselines:
        if name == "raw_pixels":
            size = auto_batch_size(model.preprocessing.shape)
            q = raw_pixels(query, size)
            g = None if gallery is None else raw_pixels(gallery, size)
            out[name] = evaluate_embeddings(q, g, metrics, distance)
        else:
            with torch.no_grad():
                base = off_the_shelf(model)
                out[name], _, _ = evaluate_model(
                    base, query, gallery, metrics, distance, config.eval.batch_size, progress
                )
            out[name]["model"] = f"{base.spec.backbone}, {base.embedding_dim}-d pooled features"
    return out


def split_sizes(splits: Any) -> dict[str, int]:
    """Items in each split of the run (train, val, query, gallery) that it has."""
    names = ("train", "val", "query", "gallery")
    return {n: len(getattr(splits, n)) for n in names if getattr(splits, n, None) is not None}


def write_run_report(stage: Path, progress: bool) -> Path | None:
    """report.html of a finished run. A report that fails costs a warning, not the trained
    run: `deepembed report RUN_DIR` can write it again."""
    from deepembed.viz.report import write_report  # matplotlib, openTSNE: only when needed

    try:
        return write_report(stage, progress=progress)
    except Exception as exc:
        log.warning(
            "report.html not written (%s: %s); run `deepembed report` on the run",
            type(exc).__name__,
            exc,
        )
        return None
