"""Whether a faiss snapshot (index.faiss) reflects the catalogue at the change it claims."""

from __future__ import annotations

from typing import Any

import numpy as np

from deepembed.index import faiss_parts as fp
from deepembed.index.catalogue import Catalogue
from deepembed.index.specs import Spec


class StaleSnapshotError(Exception):
    """An index file that does not reflect the catalogue; the message says how."""


def snapshot_live(spec: Spec, structure: fp.Structure, catalogue: Catalogue, seq: int) -> Any:
    """The snapshot's live mask (n,) bool over IDMap positions (None for types that store
    ids themselves); StaleSnapshotError when it does not hold the catalogue's items at `seq`
    (those present then, including any removed since)."""
    at_seq = np.union1d(catalogue.ids(up_to=seq), catalogue.removed_since(seq))
    if spec.native_ids:
        if structure.ntotal != len(at_seq):
            raise StaleSnapshotError(
                f"index.faiss holds {structure.ntotal} vectors, the catalogue had "
                f"{len(at_seq)} at change {seq}"
            )
        return None
    view = fp.id_view(structure)
    live = fp.last_occurrences(view) & np.isin(view, at_seq)
    if live.sum() != len(at_seq) or (spec.removes and not live.all()):
        raise StaleSnapshotError(f"index.faiss does not hold the catalogue's items at change {seq}")
    return live
