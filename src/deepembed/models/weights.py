"""Pretrained weights from local files: read any common format, load only what fits exactly.

Air-gapped sites (and this project's tests) point `model.pretrained` at a file; a file that
is missing, unreadable or made for another architecture is one line naming the file and the
first key that does not fit, never a half-loaded model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from deepembed.errors import ConfigError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def state_dict_from(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (.safetensors, or a torch pickle read weights_only).

    Checkpoints that nest their weights ({"state_dict": ...}, {"model": ...}) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.pretrained: weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoder error: the file is not usable weights
        # the exception's type too: some say no more than "101" (a pickle opcode)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise ConfigError(
            f"model.pretrained: {path} is not a readable weights file ({reason})"
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.pretrained: {path} holds no state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def load_weights(
    module: nn.Module,
    path: str,
    state: dict[str, torch.Tensor] | None = None,
    ignore: Iterable[str] = (),
) -> None:
    """Load `state` (default: read from `path`) into `module`, every key and shape exact.

    Keys starting with a prefix in `ignore` (a classifier the backbone does not have) are
    dropped first. Anything else that does not fit raises a ConfigError naming `path` and
    the first mismatching key.
    """
    if state is None:
        state = state_dict_from(path)
    prefixes = tuple(ignore)
    if prefixes:
        state = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    own = module.state_dict()
    problems = []
    for key, value in own.items():
        if key not in state:
            problems.append(f"missing key {key!r}")
        elif tuple(state[key].shape) != tuple(value.shape):
            problems.append(
                f"key {key!r} has shape {tuple(state[key].shape)}, the model needs "
                f"{tuple(value.shape)}"
            )
    problems += [f"unexpected key {k!r}" for k in state if k not in own]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(
            f"model.pretrained: weights file {path} does not fit this architecture: "
            f"{problems[0]}{more}"
        )
    module.load_state_dict(state)
