"""Index specs (faiss factory strings), metrics and search parameters: parsing and validation.

Only the forms listed in FLOAT_FORMS / BINARY_FORMS are accepted, matched whole: faiss's own
binary factory reads strings with sscanf, so "BIVF1024_BHNSW32" silently builds an IVF with a
flat quantizer and "BIVF1024junk" is accepted; here both are errors.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass
from typing import Any

from deepembed.errors import DataError

METRICS = ("cosine", "inner_product", "euclidean", "hamming")
FLOAT_FORMS = (
    "Flat",
    "IVF<n>,Flat",
    "IVF<n>,PQ<m>[,RFlat]",
    "OPQ<m>,IVF<n>,PQ<m>[,RFlat]",
    "HNSW<m>[,Flat]",
    "IVF<n>_HNSW<m>,Flat",
)
BINARY_FORMS = ("BFlat", "BIVF<n>", "BIVF<n>_HNSW<m>", "BHNSW<m>", "BHash<b>")
# Byte lengths faiss's binary search has a specialised Hamming kernel for; other lengths run
# ~4x slower, so codes are padded with zero bytes to the next one (same Hamming distances).
FAST_CODE_BYTES = (4, 8, 16, 20, 32, 64)
PQ_CENTROIDS = 256  # 8-bit product quantizer: each sub-quantizer trains 256 centroids
PARAMS = ("nprobe", "efSearch", "k_factor")
DEFAULT_PARAMS: dict[str, int | float] = {"nprobe": 16, "efSearch": 64, "k_factor": 4}

_FLOAT_PATTERNS = {
    "flat": r"Flat",
    "ivf_flat": r"IVF(?P<nlist>\d+),Flat",
    "ivf_pq": r"(?:OPQ(?P<opq>\d+),)?IVF(?P<nlist>\d+),PQ(?P<pq>\d+)(?P<refine>,RFlat)?",
    "hnsw": r"HNSW(?P<hnsw>\d+)(?:,Flat)?",
    "ivf_hnsw": r"IVF(?P<nlist>\d+)_HNSW(?P<hnsw>\d+),Flat",
}
_BINARY_PATTERNS = {
    "flat": r"BFlat",
    "ivf_flat": r"BIVF(?P<nlist>\d+)",
    "ivf_hnsw": r"BIVF(?P<nlist>\d+)_HNSW(?P<hnsw>\d+)",
    "hnsw": r"BHNSW(?P<hnsw>\d+)",
    "hash": r"BHash(?P<hash>\d+)",
}


@dataclass(frozen=True)
class Spec:
    """A validated index spec: what faiss builds and what the index type can do."""

    text: str  # canonical factory string, e.g. "HNSW32,Flat"
    family: str  # flat | ivf_flat | ivf_pq | hnsw | ivf_hnsw | hash
    binary: bool
    nlist: int = 0
    hnsw_m: int = 0
    pq_m: int = 0
    opq_m: int = 0
    refine: bool = False
    hash_bits: int = 0

    @property
    def needs_training(self) -> bool:
        return self.nlist > 0 or self.pq_m > 0

    @property
    def native_ids(self) -> bool:
        """IVF indexes store our ids themselves and remove them for real; the others sit in
        an IDMap (positions -> ids)."""
        return self.nlist > 0 and not self.refine

    @property
    def removes(self) -> bool:
        """Real removal: flat (compacted by faiss) and IVF; the rest use tombstones."""
        return self.family == "flat" or self.native_ids

    @property
    def selects(self) -> bool:
        """Whether faiss applies an IDSelector inside this index's search."""
        return not (self.binary and self.family in ("ivf_flat", "ivf_hnsw", "hash"))

    @property
    def params(self) -> tuple[str, ...]:
        """The search parameters this spec takes."""
        names = ["nprobe"] if self.nlist else []
        if self.hnsw_m:
            names.append("efSearch")
        if self.refine:
            names.append("k_factor")
        return tuple(names)

    def min_training(self) -> int:
        """The fewest training vectors faiss's k-means accepts for this spec."""
        return max(self.nlist, PQ_CENTROIDS if self.pq_m else 0)

    def grid(self) -> list[dict[str, int | float]]:
        """Search settings `index tune` tries, cheapest first along each axis."""
        nprobes = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048) if n < self.nlist]
        axes: dict[str, list[int | float]] = {}
        if self.nlist:
            axes["nprobe"] = [*nprobes, self.nlist]
        if self.hnsw_m:
            axes["efSearch"] = [16, 64, 256] if self.nlist else [16, 32, 64, 128, 256, 512, 1024]
        if self.refine:
            axes["k_factor"] = [1, 2, 4, 8, 16]
        settings: list[dict[str, int | float]] = [{}]
        for name, values in axes.items():
            settings = [{**s, name: v} for s in settings for v in values]
        return settings


def _known_forms() -> str:
    return f"float: {', '.join(FLOAT_FORMS)}; binary: {', '.join(BINARY_FORMS)}"


def parse_spec(text: str) -> Spec:
    """Parse a factory string into a Spec; an unknown form lists the accepted ones."""
    text = str(text).strip()
    bad_binary = re.fullmatch(r"BIVF(\d+)_BHNSW(\d+)", text)
    if bad_binary:
        n, m = bad_binary.groups()
        raise DataError(
            f"index spec {text!r}: faiss reads it as an IVF with a flat quantizer; "
            f"the HNSW quantizer is 'BIVF{n}_HNSW{m}'"
        )
    binary = text.startswith("B")
    patterns = _BINARY_PATTERNS if binary else _FLOAT_PATTERNS
    found = [(f, m) for f, p in patterns.items() if (m := re.fullmatch(p, text))]
    if not found:
        raise DataError(f"unknown index spec {text!r}; accepted forms: {_known_forms()}")
    family, match = found[0]
    groups = {k: int(v) for k, v in match.groupdict().items() if v and v.isdigit()}
    for name, value in groups.items():
        if value < (2 if name == "hnsw" else 1):
            raise DataError(f"index spec {text!r}: {name} must be positive, got {value}")
    spec = Spec(
        text="",
        family=family,
        binary=binary,
        nlist=groups.get("nlist", 0),
        hnsw_m=groups.get("hnsw", 0),
        pq_m=groups.get("pq", 0),
        opq_m=groups.get("opq", 0),
        refine=bool(match.groupdict().get("refine")),
        hash_bits=groups.get("hash", 0),
    )
    return Spec(**{**spec.__dict__, "text": canonical(spec)})


def canonical(spec: Spec) -> str:
    """The faiss factory string of a spec (binary ones with the HNSW quantizer spelt right)."""
    if spec.binary:
        forms = {
            "flat": "BFlat",
            "ivf_flat": f"BIVF{spec.nlist}",
            "ivf_hnsw": f"BIVF{spec.nlist}_HNSW{spec.hnsw_m}",
            "hnsw": f"BHNSW{spec.hnsw_m}",
            "hash": f"BHash{spec.hash_bits}",
        }
        return forms[spec.family]
    if spec.family == "ivf_pq":
        opq = f"OPQ{spec.opq_m}," if spec.opq_m else ""
        return f"{opq}IVF{spec.nlist},PQ{spec.pq_m}" + (",RFlat" if spec.refine else "")
    forms = {
        "flat": "Flat",
        "ivf_flat": f"IVF{spec.nlist},Flat",
        "hnsw": f"HNSW{spec.hnsw_m},Flat",
        "ivf_hnsw": f"IVF{spec.nlist}_HNSW{spec.hnsw_m},Flat",
    }
    return forms[spec.family]


def check_spec(spec: Spec, dim: int, metric: str) -> None:
    """Refuse a metric, dimension or spec that do not fit together."""
    if metric not in METRICS:
        raise DataError(f"unknown index metric {metric!r}; known: {', '.join(METRICS)}")
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
        raise DataError(f"index dimension must be a positive integer, got {dim!r}")
    if spec.binary and metric != "hamming":
        raise DataError(f"binary index spec {spec.text} takes metric 'hamming', not {metric!r}")
    if not spec.binary and metric == "hamming":
        raise DataError(
            f"metric 'hamming' needs a binary spec ({', '.join(BINARY_FORMS)}), not {spec.text}"
        )
    if spec.binary and dim % 8:
        raise DataError(f"binary codes need a bit count divisible by 8, got {dim}")
    for name, m in (("PQ", spec.pq_m), ("OPQ", spec.opq_m)):
        if m and dim % m:
            raise DataError(f"index spec {spec.text}: {name}{m} needs a dimension divisible by {m}")
    if spec.hash_bits and spec.hash_bits > min(dim, 64):
        raise DataError(f"index spec {spec.text}: BHash takes at most {min(dim, 64)} bits")


def padded_bytes(code_bytes: int) -> int:
    """Bytes a code of `code_bytes` is stored in: the next fast length (up to 64), else as is."""
    return next((n for n in FAST_CODE_BYTES if n >= code_bytes), code_bytes)


def check_params(spec: Spec, params: dict[str, Any]) -> dict[str, int | float]:
    """Validated search parameters for `spec` (names it takes, positive values)."""
    out: dict[str, int | float] = {}
    for name, value in params.items():
        if name not in spec.params:
            takes = ", ".join(spec.params) or "no search parameters"
            raise DataError(
                f"search parameter {name!r} does not apply to {spec.text} (takes: {takes})"
            )
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise DataError(f"search parameter {name} must be a number, got {value!r}")
        if name == "k_factor":
            if not float(value) >= 1:
                raise DataError(f"search parameter k_factor must be at least 1, got {value!r}")
            out[name] = float(value)
        elif not float(value).is_integer() or value < 1:
            raise DataError(f"search parameter {name} must be a positive integer, got {value!r}")
        else:
            out[name] = int(value)
    return out


def default_params(spec: Spec) -> dict[str, int | float]:
    """Starting search parameters (`index tune` finds better ones): nprobe capped at nlist."""
    params = {name: DEFAULT_PARAMS[name] for name in spec.params}
    if "nprobe" in params:
        params["nprobe"] = min(int(params["nprobe"]), spec.nlist)
    return params
