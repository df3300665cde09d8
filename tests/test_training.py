"""The trainer: class-parameter losses, learned-parameter learning rates, XBM, and the
checkpoint chosen on a validation split carved from the training classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deepembed import data
from deepembed.config import RunConfig, load_config
from deepembed.errors import ConfigError
from deepembed.evaluation import evaluate
from deepembed.inference import Embeddings, embed, evaluate_embeddings
from deepembed.losses import ClassLoss
from deepembed.models.embedder import Embedder, EmbedderSpec
from deepembed.training.build import build_model, make_optimizer, open_splits, seed_everything
from deepembed.training.callbacks import Callback
from deepembed.training.objective import build_objective
from deepembed.training.pipeline import train
from deepembed.training.trainer import Trainer
from tests.conftest import TINY_RUN, write_folder_dataset


def tiny_config(tmp_path: Path, *overrides: str) -> RunConfig:
    return load_config(
        "configs/mnist30.yaml", [f"output_dir={tmp_path}", "name=run", *TINY_RUN, *overrides]
    )


def test_training_learns(tmp_path: Path) -> None:
    """A short run lowers the loss and clearly beats the untrained model on the unseen
    classes (measured, seed 0: loss 50.9 -> 44.0, MAP@R 0.133 -> 0.236). A trainer whose
    optimizer never changes a weight, or that climbs the loss, fails here."""
    config = tiny_config(
        tmp_path,
        "train.max_steps=15",
        "sampler.images_per_class=8",
        "data.augment=false",
        "optim.lr=0.003",
        "eval.metrics=[map@r]",
    )
    # the untrained baseline: the same seed, data and architecture, so the same initial
    # weights as the run below starts from
    seed_everything(config.train.seed)
    splits = open_splits(config)
    untrained = build_model(config, splits.train)
    baseline = evaluate_embeddings(
        embed(untrained, splits.query, progress=False), None, tuple(config.eval.metrics)
    )

    result = train(config, progress=False)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.95 * losses[0], losses
    assert result.metrics["map@r"] > baseline["map@r"] + 0.05, (result.metrics, baseline)


def test_class_loss_gets_classes_dim_and_its_own_learning_rate(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "loss.name=proxy_anchor", "miner.name=", "optim.loss_lr=0.5")
    loss_fn, miner = build_objective(config, num_classes=15, embedding_size=16)
    assert isinstance(loss_fn, ClassLoss) and miner is None
    assert (loss_fn.num_classes, loss_fn.embedding_size) == (15, 16)
    model = Embedder(EmbedderSpec(backbone_params={"widths": [4, 4, 4, 8, 8]}, embedding_dim=16))
    optimizer = make_optimizer(config, model, loss_fn)
    head_group, backbone_group, loss_group = optimizer.param_groups
    assert head_group["lr"] == backbone_group["lr"] == config.optim.lr and loss_group["lr"] == 0.5
    assert loss_group["params"] == [loss_fn.proxies]


def test_config_params_win_over_injected_ones(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "loss.name=arcface", "loss.params={num_classes: 20}")
    loss_fn, _ = build_objective(config, num_classes=15, embedding_size=16)
    assert loss_fn.num_classes == 20 and loss_fn.weight.shape == (20, 16)


def test_unknown_loss_parameter_is_a_config_error(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "loss.name=triplet", "loss.params={alpha: 1}")
    with pytest.raises(ConfigError, match="alpha"):
        build_objective(config, num_classes=15, embedding_size=16)


@pytest.mark.parametrize(
    ("loss", "miner"), [("proxy_anchor", ""), ("arcface", ""), ("triplet", "semi_hard")]
)
def test_training_runs_with_any_family(tmp_path: Path, loss: str, miner: str) -> None:
    """mnist30's training labels are not 0..C-1: the trainer maps them for class losses."""
    config = tiny_config(tmp_path, f"loss.name={loss}", f"miner.name={miner}", "train.epochs=1")
    result = train(config, progress=False)
    assert np.isfinite(result.history[-1]["loss"])
    assert 0.0 <= result.metrics["map@r"] <= 1.0


def test_xbm_training_runs(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "loss.memory_size=64", "train.epochs=1")
    loss_fn, miner = build_objective(config, num_classes=15, embedding_size=16)
    assert miner is None and type(loss_fn).__name__ == "CrossBatchMemory"
    result = train(config, progress=False)
    assert np.isfinite(result.history[-1]["loss"])


def test_checkpoint_is_chosen_on_validation_classes(tmp_path: Path) -> None:
    config = tiny_config(
        tmp_path, "data.val_classes=0.2", "data.val_per_class=60", "train.epochs=3"
    )
    splits = open_splits(config)
    train_set, val_set, test_set = splits.train, splits.val, splits.query
    assert splits.gallery is None  # mnist30: leave-one-out
    train_classes, val_classes = set(train_set.labels), set(val_set.labels)
    test_classes = set(test_set.labels)
    assert len(val_classes) == 3 and len(train_classes) == 12  # 20% of 15 training classes
    assert len(val_set) == 3 * 60
    assert not (train_classes & val_classes) and not (val_classes | train_classes) & test_classes

    result = train(config, progress=False)
    history = [
        json.loads(x) for x in (result.run_dir / "history.jsonl").read_text().split("\n")[:-1]
    ]
    assert all("val" in h and "test" not in h for h in history)  # test never seen in training
    val_scores = [h["val"]["map@r"] for h in history]
    best_epoch = int(np.argmax(val_scores)) + 1
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["selected_epoch"] == best_epoch
    assert metrics["selection"] == "best val map@r"
    assert metrics["validation"]["map@r"] == pytest.approx(max(val_scores))
    # the saved model is the selected epoch's: it reproduces that epoch's validation score,
    # and the run's test embeddings are its embeddings
    model = Embedder.load(result.model_dir)
    val = embed(model, val_set, progress=False)
    score = evaluate(val.vectors, val.labels, metrics=("map@r",))["map@r"]
    assert score == pytest.approx(max(val_scores), abs=1e-6)
    saved = Embeddings.load(result.run_dir / "embeddings" / "test.npz")
    assert set(saved.labels) == test_classes and len(saved) == len(test_set)
    assert np.allclose(saved.vectors, embed(model, test_set, progress=False).vectors, atol=1e-5)


def test_selection_metric_must_be_evaluated(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "data.val_classes=0.2", "train.select=recall@100")
    with pytest.raises(ConfigError, match=r"train\.select"):
        train(config, progress=False)


def test_frozen_bank_equals_the_plain_computation(tmp_path: Path) -> None:
    """The fast path: frozen stages run once into a float16 bank; the remaining stages on a
    bank entry give what the whole model gives on the same image (float16 rounding aside)."""
    from deepembed.training.frozen import build_bank

    torch.manual_seed(0)
    model = Embedder(
        EmbedderSpec(
            backbone="efficientnet_lite0", pretrained=False, embedding_dim=8, image_size=32
        )
    )
    model.freeze(4, bn=True)
    images = torch.rand(10, 3, 32, 32)
    labels = np.arange(10) % 3
    dataset = data.TensorImageDataset((images.numpy() * 255).round().astype(np.uint8), labels)
    bank = build_bank(model, 4, dataset, views=2, directory=tmp_path, seed=0, progress=False)
    assert list(tmp_path.iterdir()) == []  # the backing file is already unlinked
    assert bank.views.shape[:2] == (10, 2)
    model.eval()
    pixels = dataset.__getitems__(list(range(10)))[0]
    plain = model(pixels)
    features, got_labels = bank.__getitems__(list(range(10)))
    assert np.array_equal(got_labels.numpy(), labels)
    fast = model.forward_from(features, 4)
    assert torch.allclose(fast, plain, atol=5e-3), (fast - plain).abs().max()
    exact = model.forward_from(model.features_at(pixels, 4), 4)
    assert torch.allclose(exact, plain, atol=1e-6)


def test_frozen_views_run_trains_only_the_later_stages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run with frozen stages and a bank: every step trains from the bank (never the whole
    model), the frozen stages end exactly as loaded, the later ones change."""
    calls = {"forward_from": 0}
    original = Embedder.forward_from

    def counted(self: Embedder, features: torch.Tensor, stage: int) -> torch.Tensor:
        calls["forward_from"] += 1
        assert stage == 5 and features.shape[1] == 80  # the 5th stage's output channels
        return original(self, features, stage)

    monkeypatch.setattr(Embedder, "forward_from", counted)
    root = write_folder_dataset(tmp_path / "data", 40, 40)
    config = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "name=bank",
            "data.name=folder",
            f"data.root={root}",
            "model.backbone=efficientnet_lite0",
            "model.image_size=32",
            "model.embedding_dim=8",
            "model.freeze_stages=5",
            "model.freeze_bn=true",
            "sampler.classes_per_batch=2",
            "sampler.images_per_class=3",
            "train.epochs=2",
            "train.frozen_views=2",
            "eval.metrics=[recall@1]",
            "loss.name=contrastive",
            "miner.name=",
        ],
    )
    before = Embedder(EmbedderSpec(backbone="efficientnet_lite0", image_size=32)).state_dict()
    result = train(config, progress=False)
    after = Embedder.load(result.model_dir).state_dict()
    frozen = [k for k in after if k.startswith(("backbone.stem", "backbone.blocks.0."))]
    later = [k for k in after if k.startswith("backbone.head.0")]
    assert frozen and all(torch.equal(after[k], before[k]) for k in frozen)
    assert later and not all(torch.equal(after[k], before[k]) for k in later)
    assert "recall@1" in result.metrics
    assert calls["forward_from"] == len(result.history) * 2  # 12 training images, batches of 6
    assert result.metrics["timings"]["frozen_bank_s"] > 0


def test_warmup_epochs_train_the_head_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.warmup_epochs=1: after epoch 1 the backbone (weights and BatchNorm statistics)
    is exactly as built and the head has moved; after epoch 2 the backbone has moved too."""
    snapshots: list[dict[str, torch.Tensor]] = []

    class Snapshot(Callback):
        def on_epoch_end(self, trainer: Trainer) -> None:
            snapshots.append({k: v.clone() for k, v in trainer.model.state_dict().items()})

    config = tiny_config(tmp_path, "train.warmup_epochs=1", "train.eval_every=0")
    seed_everything(config.train.seed)
    initial = build_model(config, open_splits(config).train).state_dict()
    train(config, progress=False, callbacks=[Snapshot()])
    after_warmup, after_all = snapshots
    backbone = [k for k in initial if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone)
    assert all(torch.equal(after_warmup[k], initial[k]) for k in backbone)
    assert not torch.equal(after_warmup["head.linear.weight"], initial["head.linear.weight"])
    assert not all(torch.equal(after_all[k], initial[k]) for k in backbone)


def test_frozen_views_fall_back_for_a_backbone_that_cannot_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """small_cnn cannot resume between stages: the run says so once and recomputes its
    frozen stage every step instead of failing."""

    def never(*args: object) -> torch.Tensor:
        raise AssertionError("forward_from must not be used")

    monkeypatch.setattr(Embedder, "forward_from", never)
    config = tiny_config(tmp_path, "model.freeze_stages=1", "train.frozen_views=2")
    result = train(config, progress=False)
    assert "cannot be split between stages" in capsys.readouterr().out
    assert "map@r" in result.metrics


def test_backbone_lr_mult_sets_the_backbone_group(tmp_path: Path) -> None:
    """optim.backbone_lr_mult scales the backbone's learning rate only; 0 leaves the backbone
    out of the optimiser (its weights never change; BatchNorm statistics are model.freeze_bn)."""
    model = Embedder(EmbedderSpec(backbone_params={"widths": [4, 4, 4, 8, 8]}, embedding_dim=16))
    loss_fn, _ = build_objective(tiny_config(tmp_path), num_classes=15, embedding_size=16)
    config = tiny_config(tmp_path, "optim.backbone_lr_mult=0.1", "optim.lr=0.002")
    head, backbone = make_optimizer(config, model, loss_fn).param_groups[:2]
    assert head["lr"] == 0.002 and backbone["lr"] == pytest.approx(0.0002)
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.backbone.parameters()}
    frozen = make_optimizer(tiny_config(tmp_path, "optim.backbone_lr_mult=0"), model, loss_fn)
    in_groups = {id(p) for g in frozen.param_groups for p in g["params"]}
    assert not in_groups & {id(p) for p in model.backbone.parameters()}
