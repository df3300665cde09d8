"""What the k-NN search takes and gives: validated inputs, the prepared query/gallery space
(a larger score means nearer, for every distance), and the result types."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from deepembed.errors import UserError
from deepembed.evaluation.ties import TieGroups

ArrayLike = np.ndarray | torch.Tensor


class EvaluationInputError(UserError, ValueError):
    """Unusable evaluation input (empty set, bad shape, non-finite values, unknown name)."""


def _as_matrix(x: ArrayLike, name: str) -> torch.Tensor:
    """Check one input and return it as a detached float32 (N, D) tensor."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.from_numpy(np.asarray(x, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise EvaluationInputError(f"{name} is not a numeric array: {exc}") from None
    if t.ndim != 2:
        raise EvaluationInputError(f"{name} must be 2-D (rows, dim), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise EvaluationInputError(f"empty {name}: nothing to search")
    if t.shape[1] == 0:
        raise EvaluationInputError(f"{name} has zero-dimensional rows")
    t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise EvaluationInputError(f"{name} contains NaN or infinite values")
    return t


def binary_codes(x: ArrayLike, name: str = "codes") -> tuple[np.ndarray, int]:
    """Validated binary codes and their length in bits: packed uint8 rows as given, any other
    accepted form as (N, bits) bool rows (see :func:`as_sign_bits` for the forms)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise EvaluationInputError(f"{name} must be 2-D (rows, bits), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise EvaluationInputError(f"empty {name}: nothing to search")
    if arr.dtype == np.uint8:
        if arr.shape[1] == 0:
            raise EvaluationInputError(f"{name} has zero-length codes")
        return arr, 8 * arr.shape[1]
    if arr.dtype == np.bool_:
        bits = arr
    elif _all_in(arr, (0, 1)):  # tested first, as before: all-ones rows read as {0, 1}
        bits = arr.astype(bool)
    elif _all_in(arr, (-1, 1)):
        bits = arr > 0
    else:
        values = np.unique(arr)
        raise EvaluationInputError(
            f"hamming distance needs binary codes: {name} must be packed uint8, bool, "
            f"{{0, 1}} or {{-1, +1}}, found values such as {values[:3].tolist()}"
        )
    if bits.shape[1] == 0:
        raise EvaluationInputError(f"{name} has zero-length codes")
    return bits, bits.shape[1]


def _all_in(arr: np.ndarray, values: tuple[int, int]) -> bool:
    """Every entry equals one of two values (one vectorised pass, no sort)."""
    try:
        return bool(((arr == values[0]) | (arr == values[1])).all())
    except TypeError:  # object arrays of non-numbers
        return False


def as_sign_bits(x: ArrayLike, name: str = "codes") -> torch.Tensor:
    """Binary codes as a (N, bits) float32 tensor of -1/+1.

    Accepts packed codes (uint8 rows from ``np.packbits``, 8 bits per byte, most significant
    first), or one entry per bit: bool, {0, 1} or {-1, +1} values of any other dtype.
    """
    codes, _ = binary_codes(x, name)
    bits = np.unpackbits(codes, axis=1) if codes.dtype == np.uint8 else codes
    return torch.from_numpy(np.where(np.asarray(bits, bool), 1.0, -1.0).astype(np.float32))


@dataclass(frozen=True)
class _Space:
    """Query and gallery rows prepared so that a larger score ``q . g - bias`` means nearer.

    cosine: unit rows, score = cos. inner_product: raw rows, score = dot. euclidean: score =
    2 q.g - |g|^2 = |q|^2 - |q - g|^2. hamming: -1/+1 rows, score = bits - 2 * hamming.
    """

    query: torch.Tensor  # (Q, D)
    gallery: torch.Tensor  # (G, D)
    distance: str
    bias: torch.Tensor | None = None  # (G,) |g|^2 for the euclidean distances
    query_sq: torch.Tensor | None = None  # (Q,) |q|^2 for the euclidean distances

    def dots(self, q0: int, q1: int, g0: int, g1: int) -> torch.Tensor:
        """(q1 - q0, g1 - g0) dot products of query rows q0:q1 with gallery rows g0:g1.

        Every path of the search gets its products here, so all of them round alike. (numpy's
        OpenBLAS multiplies ~1.25x faster on the AMD CPU measured, but its spinning threads
        then starve the merge kernels: 4x slower overall.)
        """
        return torch.mm(self.query[q0:q1], self.gallery[g0:g1].T)

    def scores(self, q0: int, q1: int, g0: int, g1: int) -> torch.Tensor:
        """(q1 - q0, g1 - g0) scores of query rows q0:q1 against gallery rows g0:g1."""
        return self.scores_from_dots(self.dots(q0, q1, g0, g1), g0, g1, axis=1)

    def scores_from_dots(self, dots: torch.Tensor, g0: int, g1: int, axis: int) -> torch.Tensor:
        """Scores from dot products with gallery rows g0:g1 laid along ``axis`` of ``dots``.

        2 q.g is exact, then the bias costs one rounding; without a bias the dot products
        themselves are returned.
        """
        if self.bias is None:
            return dots
        bias = self.bias[g0:g1]
        return torch.add(-(bias[None, :] if axis == 1 else bias[:, None]), dots, alpha=2.0)

    def to_distance(self, scores: torch.Tensor, q0: int, q1: int) -> torch.Tensor:
        """Distances of scores of query rows q0:q1 (in place; monotone decreasing)."""
        if self.distance == "cosine":
            return scores.neg_().add_(1.0)
        if self.distance == "inner_product":
            return scores.neg_()
        if self.distance == "hamming":
            return scores.neg_().add_(self.gallery.shape[1]).mul_(0.5)
        # |q|^2 - score, clamped because cancellation can go slightly negative
        sq = scores.neg_().add_(self.query_sq[q0:q1, None]).clamp_min_(0.0)  # type: ignore[index]
        return sq.sqrt_() if self.distance == "euclidean" else sq


def _prepare(query: ArrayLike, gallery: ArrayLike, distance: str, same: bool) -> _Space:
    """Validate inputs and build the search space for ``distance``."""
    if distance == "hamming":
        q = as_sign_bits(query, "query")
        g = q if same else as_sign_bits(gallery, "gallery")
        if q.shape[1] != g.shape[1]:
            raise EvaluationInputError(
                f"code length mismatch: query has {q.shape[1]} bits, gallery has {g.shape[1]}"
            )
        return _Space(q, g, distance)
    q = _as_matrix(query, "query")  # (Q, D)
    g = q if same else _as_matrix(gallery, "gallery")  # (G, D)
    if q.shape[1] != g.shape[1]:
        raise EvaluationInputError(
            f"dimension mismatch: query has {q.shape[1]} columns, gallery has {g.shape[1]}"
        )
    g = g.to(q.device)
    if distance == "cosine":
        q = F.normalize(q, dim=1)
        g = q if same else F.normalize(g, dim=1)
        return _Space(q, g, distance)
    if distance == "inner_product":
        return _Space(q, g, distance)
    return _Space(q, g, distance, bias=(g * g).sum(1), query_sq=(q * q).sum(1))


def _check_positive(value: int, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise EvaluationInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class KnnResult:
    """Neighbours of each query, nearest first.

    Attributes:
        distances: (Q, k) float32 distances, ascending along each row.
        indices: (Q, k) int64 gallery row indices matching ``distances``.
    """

    distances: np.ndarray
    indices: np.ndarray


@dataclass(frozen=True)
class KnnChunk:
    """Neighbours of query rows ``start .. start + c - 1`` and what rank metrics need on ties.

    Attributes:
        start: first query row of the chunk.
        distances: (c, k) float32, ascending; ties ordered by gallery index.
        indices: (c, k) int64 gallery rows.
        tied_beyond: (c,) gallery items outside the list at the distance of its last item.
        relevant_tied_beyond: (c,) how many of those share the query's label (0 without labels).
        relevant_groups: tie groups of all relevant items over the whole ranking (only when
            asked for with ``full_ranking``), else None.
        distance_counts: (c, bits + 1) int64 gallery items at each Hamming distance (only
            when asked for with ``histograms``; the query itself not counted), else None.
        relevant_distance_counts: (c, bits + 1) relevant items among them, else None.
    """

    start: int
    distances: np.ndarray
    indices: np.ndarray
    tied_beyond: np.ndarray
    relevant_tied_beyond: np.ndarray
    relevant_groups: TieGroups | None = None
    distance_counts: np.ndarray | None = None
    relevant_distance_counts: np.ndarray | None = None
