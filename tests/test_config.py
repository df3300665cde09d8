"""Config: defaults, YAML, overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepembed.config import RunConfig, load_config, parse_overrides, save_config
from deepembed.errors import ConfigError


def test_defaults_and_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: a\ntrain: {epochs: 5}\nloss: {name: triplet, params: {margin: 0.2}}\n")
    config = load_config(path, ["train.epochs=2", "optim.lr=1e-4", "loss.params.swap=true"])
    assert config.name == "a"
    assert config.train.epochs == 2
    assert config.optim.lr == pytest.approx(1e-4)
    assert config.loss.params == {"margin": 0.2, "swap": True}
    assert config.sampler == RunConfig().sampler  # untouched sections keep their defaults


def test_renaming_a_component_drops_the_files_params(tmp_path: Path) -> None:
    """loss.params of the file were written for loss.name: a new name starts from {}."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "loss: {name: multi_similarity, params: {alpha: 2.0}}\n"
        "miner: {name: multi_similarity, params: {epsilon: 0.1}}\n"
    )
    config = load_config(path, ["loss.name=triplet", "miner.name="])
    assert (config.loss.name, config.loss.params) == ("triplet", {})
    assert (config.miner.name, config.miner.params) == ("", {})
    config = load_config(path, ["loss.name=triplet", "loss.params={margin: 0.3}"])
    assert config.loss.params == {"margin": 0.3}
    # same name, or a params-only override: the file's params are kept and merged
    config = load_config(path, ["loss.name=multi_similarity", "miner.params.epsilon=0.2"])
    assert config.loss.params == {"alpha": 2.0} and config.miner.params == {"epsilon": 0.2}


def test_changing_the_backbone_or_pooling_drops_their_files_params() -> None:
    """configs/mnist30.yaml's small_cnn widths do not follow model.backbone=efficientnet_lite0."""
    config = load_config("configs/mnist30.yaml", ["model.backbone=efficientnet_lite0"])
    assert (config.model.backbone, config.model.backbone_params) == ("efficientnet_lite0", {})
    kept = load_config("configs/mnist30.yaml", ["model.backbone=small_cnn"])
    assert kept.model.backbone_params["widths"] == [16, 32, 64, 64, 128]
    base = load_config(None, ["model.pool=gem", "model.pool_params={p: 4.0}"])
    assert base.model.pool_params == {"p": 4.0}


def test_int_is_accepted_for_float() -> None:
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.epoch=3"], "unknown config key 'train.epoch'"),
        (["nosuch.key=1"], "unknown config key 'nosuch'"),
        (["train.epochs=three"], "config key 'train.epochs': expected int"),
        (["train.epochs"], "not of the form section.key=value"),
        (["model.widths=[1]"], "unknown config key 'model.widths'"),
    ],
)
def test_bad_keys_and_values_name_the_problem(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(None, overrides)


def test_unknown_key_in_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  nme: mnist30\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'data\.nme'"):
        load_config(path)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    config = load_config(None, ["train.epochs=7", "loss.params.alpha=3"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_parse_overrides_nests() -> None:
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


OUT_OF_RANGE = [
    "data.eval_per_source=0",
    "data.train_per_class=-1",
    "data.on_error=ignore",
    "data.max_image_pixels=0",
    "data.num_workers=-1",
    "data.val_classes=1.0",
    "data.val_per_class=-1",
    "sampler.classes_per_batch=1",
    "sampler.images_per_class=0",
    "sampler.super_classes_per_batch=-1",
    "model.embedding_dim=-1",
    "model.image_size=-1",
    "model.freeze_stages=-1",
    "model.head_init=zeros",
    "data.max_cache_gb=-1",
    "data.crop_scale=0",
    "data.crop_scale=1.5",
    "optim.backbone_lr_mult=-0.5",
    "train.warmup_epochs=3",
    "train.frozen_views=-1",
    "train.channels_last=maybe",
    "optim.lr=0",
    "optim.weight_decay=-0.1",
    "optim.loss_lr=-1",
    "train.epochs=0",
    "train.max_steps=-1",
    "train.eval_every=-1",
    "train.threads=-2",
    "eval.metrics=[]",
    "eval.batch_size=-1",
]


def test_removed_key_says_what_replaced_it() -> None:
    with pytest.raises(ConfigError, match=r"data\.transform' was removed: .*model\.image_size"):
        load_config(None, ["data.transform=small"])


@pytest.mark.parametrize("override", OUT_OF_RANGE)
def test_values_out_of_range_name_their_key(override: str) -> None:
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key} must be .*, got "):
        load_config(None, [override])
    load_config(
        None, [f"{key}={getattr(getattr(RunConfig(), key.split('.')[0]), key.split('.')[1])}"]
    )
