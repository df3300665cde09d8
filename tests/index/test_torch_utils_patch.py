"""pytorch-metric-learning imports faiss.contrib.torch_utils, which replaces faiss's
`search` with a wrapper that drops `params` (selectors, nprobe). Indexes must not care."""

from __future__ import annotations

import numpy as np

import deepembed.index


def test_filtered_search_after_torch_utils_is_imported() -> None:
    import faiss.contrib.torch_utils  # noqa: F401  (patches faiss.Index.search globally)

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    for spec in ("Flat", "IVF4,Flat", "HNSW8"):
        index = deepembed.index.create(8, "euclidean", spec)
        index.train(vectors)
        index.add(vectors, np.arange(50), labels=np.arange(50) % 5)
        index.remove([0])
        _, ids = index.search(vectors[:3], 4, filters={"label": [1]})
        assert set(ids[ids >= 0].tolist()) <= {i for i in range(1, 50) if i % 5 == 1}, spec
        assert (ids >= 0).sum(1).tolist() == [4, 4, 4], spec
