"""The hash head: relaxed codes in training, +1/-1 codes at use, packed bytes downstream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepembed import data
from deepembed.config import load_config
from deepembed.errors import ConfigError
from deepembed.evaluation import evaluate
from deepembed.inference import Embeddings, embed
from deepembed.models.embedder import Embedder, EmbedderSpec
from deepembed.models.heads import HashHead


def hash_model(bits: int = 16, activation: str = "tanh") -> Embedder:
    spec = EmbedderSpec(
        backbone="small_cnn",
        backbone_params={"widths": [4, 4, 4, 8, 8]},
        in_channels=1,
        image_size=16,
        head="hash",
        bits=bits,
        hash_activation=activation,
    )
    torch.manual_seed(0)
    return Embedder(spec)


def test_relaxed_in_training_signs_at_use() -> None:
    head = HashHead(6, 16)
    x = torch.randn(5, 6)
    pre = head.linear(x)
    torch.testing.assert_close(head.train()(x), torch.tanh(pre))
    head.scale.fill_(4.0)  # a continuation schedule (HashNet) sharpens the relaxation
    torch.testing.assert_close(head(x), torch.tanh(4.0 * pre))
    codes = head.eval()(x)
    assert set(codes.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(codes, torch.where(pre >= 0, 1.0, -1.0))
    identity = HashHead(6, 16, activation="identity").train()
    torch.testing.assert_close(identity(x), identity.linear(x))
    assert "scale" in head.state_dict()  # a checkpoint carries the schedule's position


def test_bits_must_fill_whole_bytes() -> None:
    with pytest.raises(ConfigError, match="multiple of 8"):
        hash_model(bits=12)
    with pytest.raises(ConfigError, match=r"model\.bits must be a positive multiple of 8"):
        load_config(None, ["model.head=hash", "model.bits=12"])
    with pytest.raises(ConfigError, match=r"model\.head must be embedding or hash"):
        load_config(None, ["model.head=binary"])


def test_a_saved_hash_model_says_it_gives_codes(tmp_path: Path) -> None:
    model = hash_model(bits=24).eval()
    model.save(tmp_path / "m")
    loaded = Embedder.load(tmp_path / "m")
    assert loaded.produces_codes and loaded.embedding_dim == 24
    assert loaded.spec.head == "hash" and loaded.spec.bits == 24
    x = torch.rand(3, 1, 16, 16)
    assert torch.equal(loaded(x), model(x))


def test_embed_packs_codes_most_significant_bit_first(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 1, 16, 16), np.uint8)
    dataset = data.TensorImageDataset(images, np.repeat(np.arange(4), 5))
    model = hash_model(bits=16)
    out = embed(model, dataset, progress=False)
    assert out.bits == 16 and out.codes is not None and out.codes.shape == (20, 2)
    assert out.codes.dtype == np.uint8
    # bit j of item i is byte j // 8, bit 7 - j % 8
    for i, j in [(0, 0), (3, 7), (5, 8), (19, 15)]:
        bit = (out.codes[i, j // 8] >> (7 - j % 8)) & 1
        assert bit == (out.vectors[i, j] > 0)
    path = out.save(tmp_path / "codes.npz")
    back = Embeddings.load(path)
    assert np.array_equal(back.codes, out.codes) and back.bits == 16
    # Hamming on the packed codes ranks as cosine does on the +1/-1 vectors
    on_codes = evaluate(back.codes, back.labels, metrics=("map", "recall@1"), distance="hamming")
    on_signs = evaluate(back.vectors, back.labels, metrics=("map", "recall@1"), distance="cosine")
    assert on_codes["map"] == pytest.approx(on_signs["map"])
    assert on_codes["recall@1"] == pytest.approx(on_signs["recall@1"])
    floats = Embeddings(out.vectors * 0.5, out.labels, out.ids)
    assert floats.codes is None and floats.bits == 0
