"""Margin-softmax losses on learned class weights `weight`.

Normalized softmax, CosFace, ArcFace, SphereFace, sub-center ArcFace. They, Proxy-NCA and
SoftTriple (proxy.py) share one computation, `CosineSoftmaxLoss`: cosine of each embedding
to each class (its centres pooled), the target class's cosine replaced by a margin function,
scaled logits, cross-entropy averaged over the batch (PML's MeanReducer). Each loss only
states its margin function and scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from deepembed.distances import unit_rows
from deepembed.losses.base import LOSSES, ClassLoss
from deepembed.miners.base import Pairs, Triplets

L = TypeVar("L", bound="ClassTableLoss")

# floor on sin^2(theta) = 1 - cos^2: finite gradients when an embedding lies on its class weight
_SIN2_FLOOR = 1e-12


def register(name: str) -> Callable[[type[L]], type[L]]:
    """`LOSSES.register(name)` that also records the name on the class (for error messages)."""

    def add(cls: type[L]) -> type[L]:
        cls.loss_name = name
        LOSSES.register(name)(cls)
        return cls

    return add


class ClassTableLoss(ClassLoss):
    """A ClassLoss with one learned table of `per_class` rows per class; no mined tuples.

    The table is the parameter named `table_name` ("weight" or "proxies"), shape
    (num_classes * per_class, embedding_size); rows c * per_class ... (c + 1) * per_class - 1
    belong to class c (PML's layout, transposed where PML stores (embedding_size, rows)).
    """

    loss_name: ClassVar[str] = "class loss"
    table_name: ClassVar[str] = "weight"
    pool_scales: ClassVar[bool] = True  # pool(s * cos) = s * pool(cos) for s > 0

    def __init__(self, num_classes: int, embedding_size: int, per_class: int = 1) -> None:
        super().__init__(num_classes, embedding_size)
        if per_class < 1:
            raise ValueError(f"{self.loss_name}: centres per class must be >= 1, got {per_class}")
        self.per_class = per_class
        table = self.initial_table(num_classes * per_class, embedding_size)
        self.register_parameter(self.table_name, nn.Parameter(table))

    def initial_table(self, rows: int, dim: int) -> torch.Tensor:
        """PML's default for its (embedding_size, rows) weights: N(0, 1), drawn in PML's
        layout and transposed, so the same seed gives PML's values."""
        return nn.init.normal_(torch.empty(dim, rows)).T.contiguous()

    @property
    def table(self) -> torch.Tensor:
        return getattr(self, self.table_name)

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        return self.class_loss(embeddings, labels)

    def class_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def class_cosine(
        self, embeddings: torch.Tensor, scale: float | torch.Tensor = 1.0
    ) -> torch.Tensor:
        """(B, C) cosine of each embedding to each class, a class's centres merged by `pool`,
        times `scale` (a number or (B, 1), applied to the (B, D) side: no (B, C) pass)."""
        # both sides L2-normalised; the table follows the input dtype (AMP, float64)
        unit = unit_rows(embeddings)
        scaled = not isinstance(scale, float) or scale != 1.0
        early = scaled and (self.per_class == 1 or self.pool_scales)
        if early:
            unit = unit * scale
        table = unit_rows(self.table.to(embeddings.dtype))  # (C * K, D)
        classes, per_class = self.num_classes, self.per_class
        if per_class > 1:  # centre-major rows k * C + c: pooling then reduces a middle dim
            table = table.view(classes, per_class, -1).transpose(0, 1).reshape(len(table), -1)
        cos = unit @ table.T  # (B, C * K)
        if per_class > 1:
            cos = self.pool(cos.view(len(embeddings), per_class, classes))
        return cos * scale if scaled and not early else cos

    def pool(self, cos: torch.Tensor) -> torch.Tensor:
        """(B, K, C) -> (B, C), K centres per class: the nearest centre (sub-center ArcFace);
        its gradient goes to that one centre (an index scatter, as PML's max)."""
        return cos.max(dim=1).values


class CosineSoftmaxLoss(ClassTableLoss):
    """mean_i CE(s_i * z_i, y_i), z_ic = cos_ic for c != y_i and z_iy = target_logit(cos_iy).

    Subclasses give `target_logit` (the margin) and `logit_scale` (s, a number or (B, 1)).
    """

    has_margin: ClassVar[bool] = True  # target_logit changes the target's cosine

    def class_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        scale = self.logit_scale(embeddings)
        logits = self.class_cosine(embeddings, scale)  # (B, C) scale * cos
        if self.has_margin:  # only the B target entries change: gather, modify, scatter
            target = labels[:, None]  # (B, 1)
            # (a (B, 1) scale can be 0 on a zero embedding, whose logits are all 0 anyway)
            unscale = scale.clamp_min(1e-12) if isinstance(scale, torch.Tensor) else scale
            cos = logits.gather(1, target) / unscale
            logits = logits.scatter(1, target, self.target_logit(cos) * scale)
        return F.cross_entropy(logits, labels)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        """The target class's logit from its cosine (no margin by default)."""
        return cos

    def logit_scale(self, embeddings: torch.Tensor) -> float | torch.Tensor:
        """s: a positive number, or (B, 1) positive values."""
        raise NotImplementedError


@register("normalized_softmax")
class NormalizedSoftmaxLoss(CosineSoftmaxLoss):
    """Normalized softmax (Zhai & Wu 2018, "Classification is a strong baseline for deep
    metric learning"): CE(cos(x, w_c) / temperature), mean over the batch.

    Embeddings and class weights are L2-normalised (as PML's DotProductSimilarity does).
    `weight` is (num_classes, embedding_size), initialised N(0, 1) like PML's.
    """

    has_margin = False

    def __init__(self, num_classes: int, embedding_size: int, temperature: float = 0.05) -> None:
        super().__init__(num_classes, embedding_size)
        self.temperature = temperature

    def logit_scale(self, embeddings: torch.Tensor) -> float:
        return 1.0 / self.temperature


@register("cosface")
class CosFaceLoss(CosineSoftmaxLoss):
    """CosFace / large-margin cosine loss (Wang et al. 2018): target logit
    scale * (cos theta_y - margin), others scale * cos theta_c; cross-entropy, batch mean.

    Embeddings and weights L2-normalised, `weight` (num_classes, embedding_size) ~ N(0, 1),
    as in PML's CosFaceLoss (which stores the transpose).
    """

    def __init__(
        self, num_classes: int, embedding_size: int, margin: float = 0.35, scale: float = 64
    ) -> None:
        super().__init__(num_classes, embedding_size)
        self.margin, self.scale = margin, scale

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        return cos - self.margin

    def logit_scale(self, embeddings: torch.Tensor) -> float:
        return self.scale


class AdditiveAngularMarginLoss(CosineSoftmaxLoss):
    """ArcFace's margin, shared by `arcface` and `subcenter_arcface`: target logit
    scale * cos(theta_y + m), others scale * cos theta_c; cross-entropy, batch mean.

    `margin` is in degrees (PML's convention; 28.6 deg = 0.5 rad, the paper's m). Where
    theta_y + m would pass pi, cos(theta + m) stops decreasing in theta; like PML (and
    insightface's non-"easy margin" code) the target logit is then cos theta - m sin m, so the
    loss keeps growing with the angle. The paper's "easy margin" variant (plain cos theta
    when cos theta < 0) is not used. cos(theta + m) is computed as cos t cos m - sin t sin m
    (no acos), with sin^2 floored at 1e-12 so an embedding on its class weight keeps a finite
    gradient (PML's acos gives an infinite one there). Embeddings and weights L2-normalised.
    """

    def __init__(
        self, num_classes: int, embedding_size: int, margin: float, scale: float, per_class: int
    ) -> None:
        super().__init__(num_classes, embedding_size, per_class)
        if not 0 <= margin < 180:
            raise ValueError(f"{self.loss_name}: margin is in degrees, in [0, 180), got {margin}")
        self.margin, self.scale = margin, scale

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        m = math.radians(self.margin)
        sin = torch.sqrt((1.0 - cos * cos).clamp_min(_SIN2_FLOOR))  # sin theta, theta in [0, pi]
        # theta <= pi - m  <=>  cos theta >= -cos m
        return torch.where(
            cos >= -math.cos(m), cos * math.cos(m) - sin * math.sin(m), cos - m * math.sin(m)
        )

    def logit_scale(self, embeddings: torch.Tensor) -> float:
        return self.scale


@register("arcface")
class ArcFaceLoss(AdditiveAngularMarginLoss):
    """ArcFace (Deng et al. 2019), additive angular margin `margin` degrees: see
    `AdditiveAngularMarginLoss`. `weight` (num_classes, embedding_size) ~ N(0, 1), PML's W
    (embedding_size, num_classes) transposed.
    """

    def __init__(
        self, num_classes: int, embedding_size: int, margin: float = 28.6, scale: float = 64
    ) -> None:
        super().__init__(num_classes, embedding_size, margin, scale, per_class=1)


@register("subcenter_arcface")
class SubCenterArcFaceLoss(AdditiveAngularMarginLoss):
    """Sub-center ArcFace (Deng et al. 2020): ArcFace where each class has `sub_centers`
    weight rows and cos theta_c is the largest cosine to any of them.

    `weight` is (num_classes * sub_centers, embedding_size) ~ N(0, 1), rows c * sub_centers
    ... (c + 1) * sub_centers - 1 for class c: PML's W (embedding_size, num_classes *
    sub_centers) transposed. PML's `get_outliers` (finding samples far from their dominant
    sub-center) is not provided.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: float = 28.6,
        scale: float = 64,
        sub_centers: int = 3,
    ) -> None:
        super().__init__(num_classes, embedding_size, margin, scale, per_class=sub_centers)
        self.sub_centers = sub_centers


@register("sphereface")
class SphereFaceLoss(CosineSoftmaxLoss):
    """SphereFace / A-Softmax (Liu et al. 2017): target logit
    scale * ||x|| * psi(theta_y), others scale * ||x|| * cos theta_c; cross-entropy, mean.

    psi(theta) = (-1)^k cos(m theta) - 2k for theta in [k pi / m, (k + 1) pi / m], which keeps
    the target logit decreasing in theta; cos(m theta) is the Chebyshev polynomial T_m(cos
    theta) (PML's LargeMarginSoftmax family writes the same polynomial by the binomial
    multiple-angle formula). Class weights are normalised, embeddings are not (their norm
    scales every logit), as in PML's SphereFaceLoss. `margin` is an integer m >= 1.
    `weight` (num_classes, embedding_size) ~ N(0, 1) like PML's.
    """

    def __init__(
        self, num_classes: int, embedding_size: int, margin: int = 4, scale: float = 1
    ) -> None:
        super().__init__(num_classes, embedding_size)
        if int(margin) != margin or margin < 1:
            raise ValueError(f"sphereface: margin must be an integer >= 1, got {margin}")
        self.margin, self.scale = int(margin), scale

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # k = floor(theta m / pi), piecewise constant
            k = torch.floor(torch.acos(cos.clamp(-1.0, 1.0)) * (self.margin / math.pi))
        prev, cheb = torch.ones_like(cos), cos  # T_0, T_1
        for _ in range(self.margin - 1):  # T_{n+1} = 2 c T_n - T_{n-1}
            prev, cheb = cheb, 2.0 * cos * cheb - prev
        return (1.0 - 2.0 * torch.remainder(k, 2.0)) * cheb - 2.0 * k

    def logit_scale(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings.norm(dim=1, keepdim=True) * self.scale  # (B, 1)
