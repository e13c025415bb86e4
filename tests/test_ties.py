"""tests/ties.py: tie groups and the pairing within them (the parity tests rely on both)."""

from __future__ import annotations

import numpy as np
import pytest

from ties import match_within_groups, relabel, segment_id_map, tie_groups


def test_groups_chain_gaps_below_the_window() -> None:
    # Gaps 0.5, 0.5, 2.0, 0.1 with window 1: {0, 1, 2}, {3, 4}.
    assert tie_groups([9.0, 8.5, 8.0, 6.0, 5.9], 1.0) == [range(0, 3), range(3, 5)]
    # One window per gap: the last gap (0.1) is not below 0.05.
    assert tie_groups([9.0, 8.5, 8.0, 6.0, 5.9], [1.0, 0.1, 3.0, 0.05]) == [
        range(0, 2),
        range(2, 4),
        range(4, 5),
    ]
    assert tie_groups([], 1.0) == []


def test_pairing_is_the_identity_where_rows_fit_in_place() -> None:
    assert match_within_groups([range(0, 3)], lambda k, j: True) == [0, 1, 2]


def test_pairing_swaps_within_a_group_only() -> None:
    ours, theirs = ["b", "a", "c"], ["a", "b", "c"]
    fits = lambda k, j: ours[j] == theirs[k]  # noqa: E731
    assert match_within_groups([range(0, 2), range(2, 3)], fits) == [1, 0, 2]
    with pytest.raises(AssertionError, match=r"reference row 0 has no counterpart .* positions 0..0"):
        match_within_groups([range(0, 1), range(1, 3)], fits)


def test_pairing_needs_augmenting_paths() -> None:
    # Reference 0 fits ours 0 or 1, reference 1 only ours 0: greedy in-place would strand reference 1.
    allowed = {(0, 0), (0, 1), (1, 0)}
    assert match_within_groups([range(0, 2)], lambda k, j: (k, j) in allowed) == [1, 0]


def test_segment_ids_map_through_swapped_things_and_aligned_stuff() -> None:
    ours = [
        {"id": 1, "isthing": True, "score": 0.5, "cat": 7},
        {"id": 2, "isthing": True, "score": 0.5, "cat": 3},
        {"id": 3, "isthing": False, "score": None, "cat": 40},
    ]
    theirs = [
        {"id": 1, "isthing": True, "score": 0.5, "cat": 3},
        {"id": 2, "isthing": True, "score": 0.5, "cat": 7},
        {"id": 3, "isthing": False, "score": None, "cat": 40},
    ]
    mapping = segment_id_map(ours, theirs, 1e-3, lambda k, j: ours[j]["cat"] == theirs[k]["cat"])
    assert mapping == {1: 2, 2: 1, 3: 3}
    ids = np.array([[1, 2, 3, 0]])
    np.testing.assert_array_equal(relabel(ids, mapping), [[2, 1, 3, 0]])
