"""Pairwise and triplet deep-hashing losses on relaxed codes u (B, K): DSH, DPSH, HashNet,
DCH, DTSH; and HashNet's continuation schedule of the tanh scale (`hashnet_scale`).

s_ij = 1 when items i and j share a label (`label_similarity`), else 0. Pairs are the
ordered pairs (i, j), i != j, of the batch, or the mined Pairs; the pairwise losses also
offer `pair_loss(codes, ref_codes, pos, neg)`, so a cross-batch memory (loss.memory_size)
can stand in for the bank of all training codes that DeepHash-pytorch compares each batch
with. The papers write sums over pairs, triplets and items; here each sum is a mean, so a
loss does not grow with the batch. Per-item terms (quantization) are averaged over the
items the loss compares (the anchors that have a pair, every item of a whole batch), except
DTSH's: its two sums are divided by the same count, the number of triplets, keeping the
paper's balance between them (see DTSHLoss). A batch with nothing to compare gives a
graph-connected 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from deepembed.distances import pairwise_distance, pairwise_similarity, unit_rows
from deepembed.losses.base import LOSSES
from deepembed.losses.hashing import HashingLoss, similarity_masks
from deepembed.losses.pair import masked_mean
from deepembed.miners.base import Pairs, Triplets


def _sign_quantization(codes: torch.Tensor) -> torch.Tensor:
    """(B,) ||u_i - sign(u_i)||^2, the quantization error of DPSH and DTSH (sign has no
    gradient: d/du = 2 (u - b), the papers' b held fixed)."""
    return (codes - codes.sign()).pow(2).sum(1)


class PairwiseHashingLoss(HashingLoss):
    """A hashing loss on the (B, M) pairs of codes and reference codes; takes mined Pairs."""

    accepts = (Pairs,)

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        return self.pair_loss(embeddings, embeddings, *similarity_masks(labels, mined))

    def pair_loss(
        self, embeddings: torch.Tensor, ref_emb: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor:
        """The loss of codes (B, K) against reference codes (M, K) on (B, M) pair masks."""
        raise NotImplementedError


@LOSSES.register("dsh")
class DSHLoss(PairwiseHashingLoss):
    """Deep Supervised Hashing (Liu, Wang, Shan & Chen, CVPR 2016), relaxed form.

    Per pair, with D = ||u_i - u_j||^2 and r(u) = || |u| - 1 ||_1 = sum_k | |u_k| - 1 |:

        L_ij = 1/2 s_ij D + 1/2 (1 - s_ij) max(margin - D, 0) + alpha (r(u_i) + r(u_j))

    averaged over the pairs (the paper sums them; each pair carries the regulariser of both
    its codes, as in the paper). Defaults from the paper: margin = 2K (K = bits, read from
    the codes when None), alpha = 0.01.

    DeepHash-pytorch differs: it compares the batch with a bank of all training codes,
    averages over every (item, bank entry) including an item with itself, and its
    regulariser is alpha * mean over coordinates of | |u| - 1 | once per item (alpha = 0.1).
    Its first version used (1 - sign(u)) instead of |u| (its issue #16): that term has no
    gradient, so the regulariser did nothing. Here it is the paper's abs. The head is
    linear ("identity"): the paper regularises real-valued outputs rather than a tanh.
    """

    hash_activation = "identity"

    def __init__(self, margin: float | None = None, alpha: float = 0.01) -> None:
        super().__init__()
        self.margin, self.alpha = margin, alpha

    def pair_loss(
        self, embeddings: torch.Tensor, ref_emb: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor:
        margin = 2.0 * embeddings.shape[1] if self.margin is None else self.margin
        dist = pairwise_distance(embeddings, ref_emb, kind="squared_euclidean")  # (B, M)
        contrastive = torch.where(pos, 0.5 * dist, 0.5 * (margin - dist).clamp_min(0.0))
        reg = (embeddings.abs() - 1.0).abs().sum(1)  # (B,) L1 distance to the vertices
        ref_reg = (ref_emb.abs() - 1.0).abs().sum(1)  # (M,)
        per_pair = contrastive + self.alpha * (reg[:, None] + ref_reg[None, :])  # (B, M)
        return masked_mean(per_pair, pos | neg)


@LOSSES.register("dpsh")
class DPSHLoss(PairwiseHashingLoss):
    """Deep Pairwise-Supervised Hashing (Li, Wang & Kang, IJCAI 2016).

    theta_ij = 1/2 u_i . u_j; the negative log-likelihood of the pair labels plus the
    quantization error of the codes b = sign(u):

        mean over pairs of (log(1 + exp(theta_ij)) - s_ij theta_ij)
        + eta * mean over items of ||u_i - b_i||^2

    The paper sums over all training pairs and items, so its eta is tied to the dataset
    size: the authors' code (DPSH-pytorch) divides both sums by (training set size x batch),
    with lambda = 10 on CIFAR-10's 5,000 training images, i.e. eta = 10 / 5000 = 0.002 in
    this mean form. eta = 0.1 here is DeepHash-pytorch's weight. On mnist30 (30 classes, 16
    x 8 batches: 94% of the pairs dissimilar) neither trains well (validation mAP after 2
    epochs 0.22 with eta = 0.001, 0.23 with 0.1; 0.28 after 6 epochs at 32 bits, where DSH
    reaches 0.67): the unweighted likelihood is dominated by the dissimilar pairs, and with
    eta = 0.001 the codes shrink towards theta = 0 (|u| ~0.15, loss ~log 2); eta = 1
    collapses them to a few constant codes; batches of 4 classes x 32 (24% similar pairs)
    help a little, a memory of 4,096 past codes (loss.memory_size, as the authors compare
    with every training code) does not. HashNet's weighting of the two kinds of pairs is
    what that paper added.

    DeepHash-pytorch differs: it compares the batch with a bank of all training codes (the
    pair of an item with itself included) and averages the quantization error over
    coordinates (a K times smaller term for the same eta). The head is linear ("identity"):
    the paper's u = W^T phi(x) + v.
    """

    hash_activation = "identity"

    def __init__(self, eta: float = 0.1) -> None:
        super().__init__()
        self.eta = eta

    def pair_loss(
        self, embeddings: torch.Tensor, ref_emb: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor:
        pairs = pos | neg
        theta = 0.5 * (embeddings @ ref_emb.T)  # (B, M)
        nll = F.softplus(theta) - torch.where(pos, theta, 0.0)  # stable log(1 + e^theta)
        quantization = masked_mean(_sign_quantization(embeddings), pairs.any(1))
        return masked_mean(nll, pairs) + self.eta * quantization


def hashnet_scale(
    step: int, step_size: int = 200, gamma: float = 0.005, power: float = 0.5
) -> float:
    """HashNet's tanh scale beta at training step `step`: the head outputs tanh(beta z).

    The paper trains by continuation: stages with 1 = beta_0 < beta_1 < ... , each stage
    starting from the last, beta growing without bound so that tanh(beta z) tends to
    sign(z); it gives no formula for the sequence. The authors' code (and this function)
    uses beta = (1 + gamma * t)^power, with t the step rounded down to a multiple of
    `step_size` (beta changes every step_size steps): 1 at first, sqrt(2) at step 200,
    sqrt(6) at step 1000 with the defaults. The trainer/head calls it; the loss does not.
    """
    if step < 0 or step_size < 1:
        raise ValueError(f"step must be >= 0 and step_size >= 1, got {step}, {step_size}")
    return (1.0 + gamma * (step // step_size) * step_size) ** power


@LOSSES.register("hashnet")
class HashNetLoss(PairwiseHashingLoss):
    """HashNet (Cao, Long, Wang & Yu, ICCV 2017): weighted pairwise cross-entropy.

    With theta_ij = alpha u_i . u_j and |S|, |S1|, |S0| the numbers of pairs, similar pairs
    and dissimilar pairs, w_ij = |S| / |S1| for a similar pair and |S| / |S0| for a
    dissimilar one (balancing the two), the loss is

        1/|S| sum over pairs of w_ij (log(1 + exp(theta_ij)) - s_ij theta_ij)
        = mean over similar pairs + mean over dissimilar pairs.

    `alpha`, the sigmoid's bandwidth, defaults to 10 / K (the authors' code; K = bits).
    The codes are tanh(beta z) with beta growing during training: `hashnet_scale`, applied
    by the head. The paper's weights also carry a continuous similarity c_ij of the label
    vectors on multi-label data; it is left out here (c_ij = 1), as in the authors' PyTorch
    code and DeepHash-pytorch (their Caffe code has it as an option).

    DeepHash-pytorch differs: alpha = 0.1 at every code length, pairs include an item with
    itself, and log(1 + exp(theta)) is computed naively (inf for theta > 88 in float32).
    """

    def __init__(self, alpha: float | None = None) -> None:
        super().__init__()
        self.alpha = alpha

    def pair_loss(
        self, embeddings: torch.Tensor, ref_emb: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor:
        alpha = 10.0 / embeddings.shape[1] if self.alpha is None else self.alpha
        theta = alpha * (embeddings @ ref_emb.T)  # (B, M)
        nll = F.softplus(theta) - torch.where(pos, theta, 0.0)
        return masked_mean(nll, pos) + masked_mean(nll, neg)


# floor on DCH's distance: a dissimilar pair of identical codes would cost log(1 + gamma / 0)
_DCH_MIN_DISTANCE = 1e-3


@LOSSES.register("dch")
class DCHLoss(PairwiseHashingLoss):
    """Deep Cauchy Hashing (Cao, Long, Liu & Wang, CVPR 2018).

    d_ij = K/2 (1 - cos(u_i, u_j)), the normalised Hamming distance (d = Hamming distance for
    binary codes). The probability that a pair is similar is the Cauchy kernel
    gamma / (gamma + d); its cross-entropy,

        s_ij log(d_ij / gamma) + log(1 + gamma / d_ij)
        = s_ij log(1 + d_ij / gamma) + (1 - s_ij) log(1 + gamma / d_ij),

    is weighted as HashNet's (mean over similar pairs + mean over dissimilar pairs), plus
    the Cauchy quantization loss lambda_ * mean over items of log(1 + d(|u_i|, 1) / gamma),
    d(|u|, 1) the same distance from |u| to the all-ones vector. Defaults gamma = 20,
    lambda_ = 0.1 (DeepHash-pytorch's). d is floored at 1e-3 (a thousandth of a bit):
    identical codes in a dissimilar pair would cost infinity.

    DeepHash-pytorch differs: pairs include an item with itself, cos is clamped at 0.99
    (d >= 0.005 K, the gradient cut off below), and a batch without similar (or without
    dissimilar) pairs falls back to an unweighted mean.
    """

    def __init__(self, gamma: float = 20.0, lambda_: float = 0.1) -> None:
        super().__init__()
        self.gamma, self.lambda_ = gamma, lambda_

    def pair_loss(
        self, embeddings: torch.Tensor, ref_emb: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor:
        bits = embeddings.shape[1]
        cos = pairwise_similarity(embeddings, ref_emb)  # (B, M)
        dist = (0.5 * bits * (1.0 - cos)).clamp_min(_DCH_MIN_DISTANCE)
        cauchy = torch.where(pos, torch.log1p(dist / self.gamma), torch.log1p(self.gamma / dist))
        # cos(|u|, 1) = sum_k |u_k| / (||u|| sqrt(K))
        cos_ones = unit_rows(embeddings.abs()).sum(1) / math.sqrt(bits)  # (B,)
        quantization = torch.log1p(0.5 * bits * (1.0 - cos_ones) / self.gamma)
        weighted = masked_mean(cauchy, pos) + masked_mean(cauchy, neg)
        return weighted + self.lambda_ * masked_mean(quantization, (pos | neg).any(1))


@LOSSES.register("dtsh")
class DTSHLoss(HashingLoss):
    """Deep Supervised Hashing with Triplet Labels (Wang, Shi & Kitani, ACCV 2016).

    theta_ij = 1/2 u_i . u_j. For a triplet (q, i, j), q similar to i and not to j, the
    likelihood is sigmoid(theta_qi - theta_qj - alpha); the paper's objective sums its
    negative log over the triplets and the quantization error of b = sign(u) over the items:

        L = sum over triplets of log(1 + e^-x), x = theta_qi - theta_qj - alpha
            + lambda_ * sum over the items in a triplet of ||u - b||^2

    computed on the batch and divided by the number of triplets T (so the value does not grow
    with the batch): mean over triplets + lambda_ * (items / T) * mean over items. The ratio
    of the two sums is the paper's: one item's quantization error weighs against all of its
    triplets (about 840 per item in a 16 x 8 batch). Triplets: the mined ones, else every
    valid triplet of the batch (listed: O(#triplets) memory). Defaults alpha = 5 (for binary
    codes theta_qi - theta_qj is a difference of Hamming distances, so a margin of 5 bits),
    lambda_ = 1 (the paper's and DeepHash-pytorch's values).

    An earlier version averaged each sum separately (mean over triplets + lambda_ * mean
    over items): lambda_ = 1 then weighed quantization ~840 times the paper's, and on
    mnist30 the codes collapsed to one constant code within 40 steps (mAP 0.03-0.07,
    chance): a constant code is a stationary point of the triplet likelihood (in a P x K
    batch each item is as often a positive as a negative) and the quantization holds it.

    DeepHash-pytorch differs: theta = u_i . u_j (no 1/2, so its alpha = 5 is a margin of
    2.5 here), an anchor counts itself among its positives, triplets are averaged per
    anchor and then over anchors, x is clamped to [-100, 50], and the quantization error is
    lambda * the mean over items and coordinates (K times smaller than a mean of ||u - b||^2,
    still ~26 times the paper's balance at 32 bits). The head is linear ("identity"), as DPSH's.
    """

    accepts = (Triplets,)
    hash_activation = "identity"

    def __init__(self, alpha: float = 5.0, lambda_: float = 1.0) -> None:
        super().__init__()
        self.alpha, self.lambda_ = alpha, lambda_

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        if not isinstance(mined, Triplets):  # None: every valid triplet
            mined = Triplets.all_valid(*similarity_masks(labels, None))
        anchor, positive, negative = mined.indices()
        if len(anchor) == 0:
            return self.zero(embeddings)
        theta = 0.5 * (embeddings @ embeddings.T)  # (B, B)
        x = theta[anchor, positive] - theta[anchor, negative] - self.alpha  # (T,)
        likelihood = F.softplus(-x).sum()
        used = torch.zeros(len(embeddings), dtype=torch.bool, device=embeddings.device)
        used[torch.cat([anchor, positive, negative])] = True
        quantization = _sign_quantization(embeddings)[used].sum()
        return (likelihood + self.lambda_ * quantization) / len(anchor)
