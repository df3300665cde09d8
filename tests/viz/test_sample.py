"""stratified_sample: at most max_points rows, each class in proportion, seeded."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepembed.viz.tsne import stratified_sample


@st.composite
def labelled_rows(draw: st.DrawFn) -> tuple[np.ndarray, int, int]:
    """(labels (N,) in shuffled order, max_points, seed)."""
    sizes = draw(st.lists(st.integers(1, 40), min_size=1, max_size=60))
    seed = draw(st.integers(0, 2**32 - 1))
    classes = draw(st.permutations(range(len(sizes))))  # class ids not in size order
    labels = np.repeat(np.asarray(classes) * 7 - 3, sizes)  # ids need not be 0..C-1
    labels = np.random.default_rng(seed).permutation(labels)
    max_points = draw(st.integers(1, len(labels) + 5))
    return labels, max_points, seed


@settings(max_examples=300, deadline=None)
@given(labelled_rows())
def test_sample_size_rows_and_shares(case: tuple[np.ndarray, int, int]):
    labels, max_points, seed = case
    n = len(labels)
    rows = stratified_sample(labels, max_points, seed)
    assert len(rows) == min(n, max_points)
    assert rows.dtype.kind == "i" and np.all(np.diff(rows) > 0)  # sorted, unique
    assert rows.min() >= 0 and rows.max() < n
    classes, counts = np.unique(labels, return_counts=True)
    taken = np.array([np.sum(labels[rows] == c) for c in classes])
    if n <= max_points:
        assert np.array_equal(taken, counts)
    elif max_points < len(classes):
        assert set(taken.tolist()) <= {0, 1}
    else:
        share = counts * max_points / n  # exact proportional share of each class
        assert np.all(np.abs(taken - share) < 1)
    np.testing.assert_array_equal(stratified_sample(labels, max_points, seed), rows)


def test_issue_case_thousand_classes_of_two():
    labels = np.repeat(np.arange(1000), 2)
    rows = stratified_sample(labels, 100, seed=0)
    assert len(rows) == 100  # was 1,000: one per class whatever max_points said
    assert len(np.unique(labels[rows])) == 100  # 100 classes, one point each
    other = stratified_sample(labels, 100, seed=1)
    assert not np.array_equal(labels[rows], labels[other])  # the seed picks the classes


def test_proportional_shares_by_largest_remainder():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    rows = stratified_sample(labels, 10, seed=3)
    assert np.bincount(labels[rows]).tolist() == [5, 3, 2]
    # shares 3.5, 2.1, 1.4 (of 7): floors 3, 2, 1 and the one left to the largest remainder
    rows = stratified_sample(labels, 7, seed=3)
    assert np.bincount(labels[rows]).tolist() == [4, 2, 1]


def test_all_rows_when_small_and_bad_max_points():
    labels = np.array([3, 1, 3, 2])
    np.testing.assert_array_equal(stratified_sample(labels, 4), np.arange(4))
    np.testing.assert_array_equal(stratified_sample(labels, 99), np.arange(4))
    with pytest.raises(ValueError, match="max_points"):
        stratified_sample(labels, 0)


def test_rows_within_a_class_are_a_seeded_random_choice():
    labels = np.zeros(1000, dtype=int)
    a, b = stratified_sample(labels, 10, seed=0), stratified_sample(labels, 10, seed=1)
    assert not np.array_equal(a, b)
    assert a.max() > 100  # not just the first rows
