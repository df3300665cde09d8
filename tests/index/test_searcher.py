"""Searcher: images through the model's own preprocessing into float or binary indexes; by
image / id / vector with filters; results carry labels, sources and metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepembed import index
from deepembed.data.images import load_image
from deepembed.errors import DataError
from deepembed.index.searcher import Searcher
from tests.index.conftest import write_images


@pytest.fixture(scope="module")
def models(pixel_models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple:
    return (*pixel_models, write_images(tmp_path_factory.mktemp("images")))


def test_float_searcher_by_image_id_and_vector(models: tuple, tmp_path: Path) -> None:
    model_dir, _, images = models
    idx = index.create(8, "cosine", "Flat", uri=tmp_path / "run" / "index")
    searcher = Searcher(idx, model_dir)
    labels = np.repeat([0, 1, 2], 4)
    meta = [{"shade": ["warm", "cool", "cool"][label]} for label in labels]
    searcher.add_images(images, np.arange(100, 112), labels, meta)
    idx.class_names = {0: "red", 1: "green", 2: "blue"}

    hits = searcher.by_image(images[5], k=3)
    assert hits[0].id == 105 and hits[0].distance == pytest.approx(0.0, abs=1e-5)
    assert (hits[0].label, hits[0].label_name, hits[0].source) == (1, "green", str(images[5]))
    assert hits[0].metadata == {"shade": "cool"}
    assert searcher.by_image(load_image(images[5]), k=1)[0].id == 105  # a PIL image too

    by_id = searcher.by_id(105, k=4)
    assert len(by_id) == 4 and 105 not in [h.id for h in by_id]
    assert [h.id for h in by_id] == [h.id for h in hits[1:]] + [h.id for h in by_id[2:]]
    filtered = searcher.by_id(105, k=20, filters={"label": 0})
    assert sorted(h.id for h in filtered) == list(range(100, 104))
    assert {h.id for h in searcher.by_id(105, k=20, filters={"shade": "cool"})} == set(
        range(104, 112)
    ) - {105}

    vector = searcher.embed([images[0]])[0]
    assert searcher.by_vector(vector, k=1)[0].id == 100
    with pytest.raises(DataError, match="by_vector takes one vector"):
        searcher.by_vector(vector[None])
    with pytest.raises(DataError, match="query image not found"):
        searcher.by_image(tmp_path / "none.png")
    with pytest.raises(DataError, match="no item with id 7"):
        searcher.by_id(7)
    idx.close()
    (tmp_path / "run" / "model").symlink_to(model_dir)
    reopened = Searcher.open(tmp_path / "run" / "index")  # the run's model beside the index
    assert reopened.by_image(images[7], k=1)[0].id == 107


def test_hash_searcher_queries_with_packed_codes(models: tuple) -> None:
    _, hash_dir, images = models
    idx = index.create(24, "hamming", "BFlat")  # 3-byte codes, stored padded to 4
    searcher = Searcher(idx, hash_dir)
    codes = searcher.embed(images)
    signs = searcher.model.embed(
        torch.stack([searcher.model.preprocess(load_image(p)) for p in images])
    )
    assert codes.dtype == np.uint8 and codes.shape == (12, 3)
    assert np.array_equal(codes, np.packbits(signs.numpy() > 0, axis=1))
    searcher.add_images(images, np.arange(12))
    hits = searcher.by_image(images[9], k=12)
    assert hits[0].id == 9 and hits[0].distance == 0.0 and hits[1].distance > 0
    bits = np.unpackbits(codes[9] ^ codes, axis=1).sum(1)
    assert sorted(h.distance for h in hits) == sorted(bits.tolist())


def test_model_and_index_must_fit(models: tuple) -> None:
    float_dir, hash_dir, images = models
    with pytest.raises(DataError, match="the model embeds binary codes but the index holds float"):
        Searcher(index.create(24, "cosine"), hash_dir).by_image(images[0])
    with pytest.raises(DataError, match="the model embeds 8 dimensions, the index holds 16"):
        Searcher(index.create(16, "cosine"), float_dir).by_image(images[0])
    with pytest.raises(DataError, match="no model to embed images"):
        Searcher(index.create(8, "cosine")).by_image(images[0])
