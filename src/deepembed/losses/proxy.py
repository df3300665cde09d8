"""Proxy-based losses: Proxy-NCA, Proxy-Anchor, SoftTriple (learned `proxies`).

Proxy-NCA and SoftTriple are softmax cross-entropies over class cosines, so they reuse
`CosineSoftmaxLoss` (margin_softmax.py) with a different table name, pooling and scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from deepembed.losses.functional import masked_log1p_sum_exp
from deepembed.losses.margin_softmax import ClassTableLoss, CosineSoftmaxLoss, register


@register("proxy_nca")
class ProxyNCALoss(CosineSoftmaxLoss):
    """Proxy-NCA (Movshovitz-Attias et al. 2017): per sample,
    -log softmax_c(-softmax_scale * ||x^ - p^_c||^2)[y], averaged over the batch.

    x^, p^ are L2-normalised (PML's default LpDistance(power=2)); since ||x^ - p^||^2 =
    2 - 2 cos, this is cross-entropy on 2 * softmax_scale * cos (the constant cancels).
    Differences: the paper's denominator sums over the other classes only (z != y); PML's and
    ours over all classes (a proper softmax, as in NCA and ProxyNCA++). PML drops samples whose
    softmax probability underflows to 0 from the mean; we use log-softmax, which does not
    underflow, and keep them. `proxies` (num_classes, embedding_size) ~ N(0, 1) like PML's.
    """

    table_name = "proxies"
    proxies: nn.Parameter

    def __init__(self, num_classes: int, embedding_size: int, softmax_scale: float = 1) -> None:
        super().__init__(num_classes, embedding_size)
        self.softmax_scale = softmax_scale

    def initial_table(self, rows: int, dim: int) -> torch.Tensor:
        return nn.init.normal_(torch.empty(rows, dim))  # PML's layout is ours: (C, D)

    def logit_scale(self, embeddings: torch.Tensor) -> float:
        return 2.0 * self.softmax_scale


@register("soft_triple")
class SoftTripleLoss(CosineSoftmaxLoss):
    """SoftTriple (Qian et al. 2019): each class has `centers_per_class` centres; the class
    similarity is S_c = sum_k softmax_k(cos_ck / gamma) cos_ck, and the loss is
    CE(la * (S - margin * onehot(y)), y), averaged over the batch.

    Embeddings and centres are L2-normalised. `proxies` is (num_classes * centers_per_class,
    embedding_size), rows c * K ... (c + 1) * K - 1 for class c: PML's fc
    (embedding_size, num_classes * K) transposed, initialised like it (Kaiming uniform,
    a = sqrt(5), drawn in PML's layout). Like PML, the paper's regulariser on the similarity
    of a class's centres (tau, which also merges redundant centres) is omitted.
    """

    table_name = "proxies"
    proxies: nn.Parameter

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        centers_per_class: int = 10,
        la: float = 20,
        gamma: float = 0.1,
        margin: float = 0.01,
    ) -> None:
        super().__init__(num_classes, embedding_size, per_class=centers_per_class)
        self.centers_per_class = centers_per_class
        self.la, self.gamma, self.margin = la, gamma, margin

    def initial_table(self, rows: int, dim: int) -> torch.Tensor:
        table = torch.empty(dim, rows)  # PML's layout: fan_in = rows
        return nn.init.kaiming_uniform_(table, a=math.sqrt(5)).T.contiguous()

    pool_scales = False  # the softmax weights depend on the scale

    def pool(self, cos: torch.Tensor) -> torch.Tensor:
        """(B, K, C) -> (B, C): softmax(cos / gamma)-weighted mean of a class's K centres,
        written out (torch's softmax over a short dim runs ~4x slower on CPU)."""
        z = cos / self.gamma
        weight = torch.exp(z - z.amax(dim=1, keepdim=True).detach())  # unnormalised softmax
        return (weight * cos).sum(dim=1) / weight.sum(dim=1)

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        return cos - self.margin

    def logit_scale(self, embeddings: torch.Tensor) -> float:
        return self.la


@register("proxy_anchor")
class ProxyAnchorLoss(ClassTableLoss):
    """Proxy-Anchor (Kim et al. 2020) on cosines s(x, p) of normalised embeddings/proxies:

    1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - margin)))
    + 1/|P| sum_{p in P} log(1 + sum_{x in X_p-} exp(alpha (s(x, p) + margin))),

    P+ the proxies with a positive in the batch, P all num_classes proxies, X_p+ / X_p- the
    batch samples of / not of p's class (PML's DivisorReducer gives the same divisors).
    `proxies` (num_classes, embedding_size) ~ Kaiming normal (fan_out), as in PML.
    """

    table_name = "proxies"
    proxies: nn.Parameter

    def __init__(
        self, num_classes: int, embedding_size: int, margin: float = 0.1, alpha: float = 32
    ) -> None:
        super().__init__(num_classes, embedding_size)
        self.margin, self.alpha = margin, alpha

    def initial_table(self, rows: int, dim: int) -> torch.Tensor:
        return nn.init.kaiming_normal_(torch.empty(rows, dim), mode="fan_out")

    def class_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.class_cosine(embeddings).T  # (C, B): one row per proxy
        pos = F.one_hot(labels, self.num_classes).T.bool()  # (C, B) sample is of p's class
        pos_loss = masked_log1p_sum_exp(-self.alpha * (cos - self.margin), pos)  # (C,)
        neg_loss = masked_log1p_sum_exp(self.alpha * (cos + self.margin), ~pos)  # (C,)
        with_pos = pos.any(dim=1).sum()  # |P+| >= 1, as a tensor: no host sync
        return pos_loss.sum() / with_pos + neg_loss.sum() / self.num_classes
