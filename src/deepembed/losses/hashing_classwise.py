"""Class-wise deep-hashing losses on codes u (B, K): CSQ (hash centres), GreedyHash (a
classifier on sign codes), OrthoHash (cosine to orthogonal class codes).

Also the pieces a hash head reuses: Hadamard / Bernoulli class codes (`hash_centers`) and
the straight-through sign (`sign_straight_through`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepembed.distances import unit_rows
from deepembed.losses.base import LOSSES, ClassLoss
from deepembed.losses.hashing import HashingLoss
from deepembed.miners.base import Pairs, Triplets


def sylvester_hadamard(order: int) -> torch.Tensor:
    """(order, order) float Hadamard matrix of +-1 by Sylvester's doubling, H_1 = [1],
    H_2n = [[H_n, H_n], [H_n, -H_n]], so H H^T = order * I; `order` a power of two."""
    if order < 1 or order & (order - 1):
        raise ValueError(f"Sylvester's construction needs a power of two, got {order}")
    h = torch.ones(1, 1)
    while len(h) < order:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def random_signs(rows: int, bits: int, seed: int) -> torch.Tensor:
    """(rows, bits) float +-1, each entry an independent fair coin of a generator seeded
    with `seed` (the same on every machine and run)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (rows, bits), generator=gen).float() * 2.0 - 1.0


def hash_centers(num_classes: int, bits: int, seed: int = 0) -> torch.Tensor:
    """(num_classes, bits) float +-1 class codes, far apart in Hamming distance (CSQ's
    Algorithm 1).

    When bits is a power of two and 2 * bits >= num_classes: the first num_classes rows of
    [H; -H], H the Sylvester Hadamard matrix. Any two of them differ in K/2 bits (K for a
    row and its negation). Otherwise every centre bit is a fair coin (seeded): K/2 bits
    apart on average. 48 bits (not a power of two) therefore gets random centres.
    """
    if num_classes < 1 or bits < 1:
        raise ValueError(f"num_classes and bits must be >= 1, got {num_classes}, {bits}")
    if bits & (bits - 1) == 0 and 2 * bits >= num_classes:
        h = sylvester_hadamard(bits)
        return torch.cat([h, -h])[:num_classes].contiguous()
    return random_signs(num_classes, bits, seed)


class _SignStraightThrough(torch.autograd.Function):
    """sign(x) forward; the incoming gradient passed through unchanged (identity) backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.sign(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


def sign_straight_through(x: torch.Tensor) -> torch.Tensor:
    """sign(x) (0 at 0, as torch.sign) whose gradient is the identity: GreedyHash's hash
    layer, and the straight-through estimator of any sign a hash head applies in training.
    Idempotent: applied to codes that are already +-1 it changes neither value nor gradient."""
    return _SignStraightThrough.apply(x)


def _log_cosh(x: torch.Tensor) -> torch.Tensor:
    """log(cosh(x)) without overflow: |x| + log(1 + exp(-2|x|)) - log 2."""
    ax = x.abs()
    return ax + F.softplus(-2.0 * ax) - math.log(2.0)


@LOSSES.register("csq")
class CSQLoss(HashingLoss, ClassLoss):
    """Central Similarity Quantization (Yuan et al., CVPR 2020).

    Each class has a fixed hash centre c in {-1, +1}^K (`hash_centers`, seeded by `seed`).
    The central similarity loss is the binary cross-entropy between (u + 1)/2 and
    (c + 1)/2, bit by bit, which for c = +-1 is -log((1 + c_k u_k) / 2); plus lambda1 times
    the paper's quantization loss log cosh(|u_k| - 1). Both are averaged over items and
    bits. Multi-label: an item's centre is the sign of the mean of its classes' centres,
    a tied bit (or an item without labels) taking that bit of a fixed random vector
    `tie_center`, as the authors' code does.

    The probability (1 + c u) / 2 is clamped to [tiny, 1] (torch's BCELoss clamps its
    logs at -100): codes beyond +-1 on the centre's side cost 0, and a saturated code on the
    wrong side stays finite. `centers` and `tie_center` are persistent buffers, not learned:
    a checkpoint restores them. Default lambda1 = 1e-4 (DeepHash-pytorch's).

    DeepHash-pytorch differs: its quantization term is (|u| - 1)^2 instead of the paper's
    log cosh (so is the authors' code's, weighted 0.05); when 2K < num_classes its centres are
    the 2K Hadamard rows plus balanced random ones (exactly K/2 bits of each set to -1),
    redrawn up to 20 times until all are more than K/4 apart, where the paper draws every
    centre from the Bernoulli distribution.
    """

    centers: torch.Tensor
    tie_center: torch.Tensor

    def __init__(
        self, num_classes: int, embedding_size: int, lambda1: float = 1e-4, seed: int = 0
    ) -> None:
        super().__init__(num_classes, embedding_size)
        self.lambda1, self.seed = lambda1, seed
        self.register_buffer("centers", hash_centers(num_classes, embedding_size, seed))
        self.register_buffer("tie_center", random_signs(1, embedding_size, seed + 1)[0])

    def target_centers(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, K) +-1 centre of each item: its class's, or the multi-label vote."""
        if labels.ndim == 1:
            return self.centers[labels]
        votes = labels.to(self.centers.dtype) @ self.centers  # (B, K) sum of its centres
        return torch.where(votes == 0, self.tie_center, votes.sign())

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        centers = self.target_centers(labels).to(embeddings.dtype)  # (B, K)
        tiny = torch.finfo(embeddings.dtype).tiny
        prob = (0.5 * (1.0 + centers * embeddings)).clamp(tiny, 1.0)  # of the centre's bit
        central = -torch.log(prob).mean()
        quantization = _log_cosh(embeddings.abs() - 1.0).mean()
        return central + self.lambda1 * quantization


@LOSSES.register("greedy_hash")
class GreedyHashLoss(HashingLoss, ClassLoss):
    """GreedyHash (Su, Zhang, Qi, Gong & Lu, NeurIPS 2018), supervised form.

    b = sign(h) with the straight-through gradient (`sign_straight_through`: forward sign,
    backward identity), h the hash layer's output (the loss's `embeddings`: pre-sign, not
    tanh); a linear classifier without bias on b; cross-entropy, plus the penalty
    alpha * mean over items and bits of | |h| - 1 |^3 that keeps h near the binary
    vertices. `weight` (num_classes, K) is learned, initialised as torch's nn.Linear.
    Single-label only, as the paper. Default alpha = 0.1 (the authors' CIFAR-10 code;
    their ImageNet code uses 1).

    DeepHash-pytorch differs: until its PR #32 the classifier was not given to the
    optimiser, so it stayed at its random initialisation. Here `weight` is a parameter of
    the loss, optimised by the trainer (at optim.loss_lr). The head passes its linear
    output through ("identity"): the sign is taken here.
    """

    multi_label = False
    hash_activation = "identity"
    weight: nn.Parameter

    def __init__(self, num_classes: int, embedding_size: int, alpha: float = 0.1) -> None:
        super().__init__(num_classes, embedding_size)
        self.alpha = alpha
        table = torch.empty(num_classes, embedding_size)  # nn.Linear(K, C)'s (C, K) layout
        self.weight = nn.Parameter(nn.init.kaiming_uniform_(table, a=math.sqrt(5)))

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        codes = sign_straight_through(embeddings)  # (B, K) +-1
        logits = codes @ self.weight.to(embeddings.dtype).T  # (B, C)
        penalty = (embeddings.abs() - 1.0).abs().pow(3).mean()
        return F.cross_entropy(logits, labels) + self.alpha * penalty


@LOSSES.register("orthohash")
class OrthoHashLoss(HashingLoss, ClassLoss):
    """OrthoHash (Hoe et al., NeurIPS 2021, "One Loss for All").

    Each class has a fixed binary code b_c (`hash_centers`: Hadamard rows, orthogonal, or
    seeded fair coins). Logits are s * (cos(u, b_c) - m [c is a label of the item]), an
    additive cosine margin on the target; the loss is their cross-entropy. Multi-label:
    the target distribution spreads evenly over the item's labels (the paper's label
    smoothing), the margin applies to each of them; an item without labels adds 0. Plus,
    if `quan` > 0, quan * mean of 1 - cos(u, sign(u)) (the authors' "cs" quantization;
    the paper needs none). Defaults s = 8, m = 0.2, quan = 0 (the authors' code). `codes`
    is a persistent buffer, not learned.

    Not in DeepHash-pytorch. The authors' code draws its codebook by default from fair
    coins with rejection until codes are far enough apart ("B"), rather than Hadamard
    rows, and divides by zero on an item without labels. The head is linear ("identity"):
    the cosine needs no tanh (the paper adds a BatchNorm on the K outputs, for bit balance).
    """

    hash_activation = "identity"
    codes: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        s: float = 8.0,
        m: float = 0.2,
        quan: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(num_classes, embedding_size)
        self.s, self.m, self.quan, self.seed = s, m, quan, seed
        self.register_buffer("codes", hash_centers(num_classes, embedding_size, seed))

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        unit = unit_rows(embeddings)  # (B, K)
        # ||b_c|| = sqrt(K) for +-1 codes
        codes = self.codes.to(embeddings.dtype) / math.sqrt(self.embedding_size)
        cos = unit @ codes.T  # (B, C)
        if labels.ndim == 1:
            target = F.one_hot(labels, self.num_classes).to(cos.dtype)
            loss = F.cross_entropy(self.s * (cos - self.m * target), labels)
        else:
            target = labels.to(cos.dtype)
            share = target / target.sum(1, keepdim=True).clamp_min(1.0)  # (B, C) rows sum to 1
            log_prob = F.log_softmax(self.s * (cos - self.m * target), dim=1)
            loss = -(share * log_prob).sum(1).mean()
        if self.quan == 0:
            return loss
        to_sign = 1.0 - (unit * unit_rows(embeddings.sign())).sum(1)  # (B,) sign(u): no grad
        return loss + self.quan * to_sign.mean()
