"""What the deep-hashing losses share: the `HashingLoss` marker and its label handling
(class ids or multi-label 0/1 rows), the similarity of two items, and the quantization
regulariser that any metric loss can carry (`QuantizedLoss`).

The losses themselves live in hashing_pairwise.py (DSH, DPSH, HashNet, DCH, DTSH) and
hashing_classwise.py (CSQ, GreedyHash, OrthoHash).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from deepembed.losses.base import ClassLoss, MetricLoss, describe_accepts
from deepembed.miners.base import Pairs, Triplets


class HashingLoss(MetricLoss):
    """A loss that trains K-bit binary codes through their relaxation.

    Called as `loss(codes (B, K), labels, mined=None)`: `codes` are the hash head's training
    output, relaxed codes whose signs are the binary codes; `labels` are class ids (B,) or,
    where the method's paper handles multi-label data (`multi_label`), a (B, C) 0/1 matrix:
    two items are similar when they share a label.

    `hashing = True` marks the class, so that a configuration check can read it
    (`is_hashing`) and refuse a hashing loss on a float head, and the reverse, up front.
    `hash_activation` is the relaxation the method's paper puts in the head, which the
    model builder reads: "tanh" (codes in (-1, 1)), or "identity" for the methods whose
    outputs are unbounded and pulled to +-1 by a regulariser (DSH, DPSH, DTSH), or that
    binarise or normalise inside the loss (GreedyHash, OrthoHash).
    """

    hashing: ClassVar[bool] = True
    multi_label: ClassVar[bool] = True
    hash_activation: ClassVar[str] = "tanh"

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        mined: Pairs | Triplets | None = None,
    ) -> torch.Tensor:
        labels = torch.as_tensor(labels, device=embeddings.device)
        if labels.ndim != 2:  # class ids: the base classes check them
            return super().forward(embeddings, labels, mined)
        name = type(self).__name__
        if not self.multi_label:
            raise ValueError(
                f"{name} takes class ids, labels (batch,); got a multi-label matrix "
                f"{tuple(labels.shape)}"
            )
        if embeddings.ndim != 2:
            raise ValueError(
                f"embeddings must be (batch, bits), got shape {tuple(embeddings.shape)}"
            )
        classes = self.num_classes if isinstance(self, ClassLoss) else labels.shape[1]
        if labels.shape != (embeddings.shape[0], classes):
            raise ValueError(
                f"multi-label labels must be ({embeddings.shape[0]}, {classes}) 0/1, "
                f"got {tuple(labels.shape)}"
            )
        if isinstance(self, ClassLoss) and embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings have dim {embeddings.shape[1]}, the loss was built for "
                f"embedding_size={self.embedding_size}"
            )
        if labels.dtype != torch.bool:
            if not bool(((labels == 0) | (labels == 1)).all()):
                raise ValueError("multi-label labels must hold only 0 and 1")
            labels = labels.bool()
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()
        if mined is not None and not isinstance(mined, self.accepts):
            raise TypeError(f"{describe_accepts(type(self))}, got {type(mined).__name__}")
        return self.compute(embeddings, labels, mined)


def is_hashing(loss: object) -> bool:
    """Whether a loss (instance, class or registry factory) trains binary codes: its class
    says `hashing`. Any other object (a float metric loss) is False."""
    cls = loss if isinstance(loss, type) else type(loss)
    return bool(getattr(cls, "hashing", False))


def label_similarity(labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
    """(B, M) bool: item i is similar to reference j when they share a label.

    Class ids (B,): the same id. Multi-label (B, C) 0/1 rows: at least one common label
    (the NUS-WIDE / MS-COCO convention of the hashing literature); an item without any
    label is similar to nothing, itself included.
    """
    ref = labels if ref_labels is None else ref_labels
    if labels.ndim == 1:
        return labels[:, None] == ref[None, :]
    # counts of shared labels are small integers: exact in float32
    return (labels.float() @ ref.float().T) > 0


def similarity_masks(
    labels: torch.Tensor, mined: Pairs | Triplets | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, B) bool masks of the similar and dissimilar pairs a pairwise hashing loss uses:
    every ordered pair (i, j), i != j, of the batch, or the mined Pairs."""
    if isinstance(mined, Pairs):
        return mined.masks(len(labels))
    same = label_similarity(labels)
    other = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & other, ~same & other


def quantization_penalty(codes: torch.Tensor) -> torch.Tensor:
    """mean_i || |u_i| - 1 ||^2 / K for relaxed codes u (B, K): the mean squared distance of a
    coordinate to the nearest of -1 and +1 (0 for exact binary codes, 1 for u = 0)."""
    return (codes.abs() - 1.0).pow(2).mean()


class QuantizedLoss(MetricLoss):
    """`loss(u) + w(step) * quantization_penalty(u)`: any metric loss, pushed towards codes.

    With a triplet loss this is Zhuang et al.'s triplet binary embedding. `w(step)` ramps
    linearly from 0 at step 0 to `weight` at `ramp_steps` (constant `weight` when ramp_steps
    is 0), which the DeepHash coursework found to train better than a fixed weight: the
    trainer calls `advance()` once per optimisation step. `step` is saved in the state dict,
    so a resumed run continues the ramp. Not registered by name: the trainer wraps the
    configured loss when `loss.quantization_weight` > 0. `accepts` and `needs_classes` are
    the wrapped loss's; a mined type it does not take is its TypeError.
    """

    hashing: ClassVar[bool] = True

    def __init__(self, loss: MetricLoss, weight: float, ramp_steps: int = 0) -> None:
        super().__init__()
        if weight < 0 or ramp_steps < 0:
            raise ValueError(
                f"quantization weight and ramp_steps must be >= 0, got {weight}, {ramp_steps}"
            )
        self.loss, self.weight, self.ramp_steps = loss, float(weight), int(ramp_steps)
        self.step = 0
        # the wrapped loss's declarations, for the checks that read them off an instance
        self.accepts = loss.accepts  # type: ignore[misc]
        self.needs_classes = loss.needs_classes  # type: ignore[misc]

    def current_weight(self) -> float:
        """w(step): weight * min(step / ramp_steps, 1), or weight when ramp_steps is 0."""
        if self.ramp_steps == 0:
            return self.weight
        return self.weight * min(self.step, self.ramp_steps) / self.ramp_steps

    def advance(self, steps: int = 1) -> None:
        """Count `steps` optimisation steps (the trainer calls this after each one)."""
        self.step += steps

    def get_extra_state(self) -> dict[str, Any]:
        return {"step": self.step}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        mined: Pairs | Triplets | None = None,
    ) -> torch.Tensor:
        value = self.loss(embeddings, labels, mined)  # validates the inputs
        weight = self.current_weight()
        if weight == 0.0:
            return value
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()
        return value + weight * quantization_penalty(embeddings)
