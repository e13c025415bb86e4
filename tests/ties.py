"""Comparing score-sorted lists whose order among near-equal scores is arbitrary (a helper for tests).

Candidates, instances and panoptic segments come out sorted by score. Where two scores differ by less than the
rounding that separates two correct implementations (or two instruction sets running the same one), their
order is arbitrary: the official code on an AVX-512 CPU and ours on an AVX2 CPU may list them either way.
Comparing such lists position by position makes a test depend on the CPU. These helpers compare them up to
reordering *within* groups of near-equal scores, and nowhere else: rows still have to match one to one, and a
row that moves across a gap larger than the stated window fails the comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def tie_groups(
    scores: Sequence[float] | np.ndarray, window: float | Sequence[float] | np.ndarray
) -> list[range]:
    """Split a score-sorted list into runs of consecutive entries whose neighbouring gaps are below a window.

    ``window``: one number, or one per gap (``window[k]`` for the gap between entries k and k+1). Groups are
    chained: three scores 0 / 0.6 / 1.2 with window 1 form one group.
    """
    s = np.asarray(scores, dtype=np.float64)
    gaps = max(len(s) - 1, 0)
    w = np.broadcast_to(np.asarray(window, dtype=np.float64), (gaps,))
    groups: list[range] = []
    start = 0
    for k in range(gaps):
        if not abs(s[k] - s[k + 1]) < w[k]:
            groups.append(range(start, k + 1))
            start = k + 1
    if len(s):
        groups.append(range(start, len(s)))
    return groups


def match_within_groups(
    groups: Sequence[range], fits: Callable[[int, int], bool], what: str = "row"
) -> list[int]:
    """A one-to-one pairing of reference rows with our rows that moves rows only within their tie group.

    Returns ``perm`` with ``perm[k]`` = our row paired with reference row ``k``; ``fits(k, j)`` says whether
    reference row k and our row j may be paired. Rows stay in place whenever that works (the identity is
    returned when every row fits its own position). Raises AssertionError naming the first group without a
    complete pairing.
    """
    n = groups[-1].stop if groups else 0
    perm = [-1] * n
    for group in groups:
        rows = list(group)
        owner: dict[int, int] = {}  # our row -> reference row

        def assign(k: int, seen: set[int], rows: list[int] = rows, owner: dict[int, int] = owner) -> bool:
            # Kuhn's augmenting paths; own position first, so the identity wins where it fits.
            for j in sorted(rows, key=lambda j: j != k):
                if j in seen or not fits(k, j):
                    continue
                seen.add(j)
                if j not in owner or assign(owner[j], seen):
                    owner[j] = k
                    return True
            return False

        for k in rows:
            if not assign(k, set()):
                raise AssertionError(
                    f"reference {what} {k} has no counterpart among ours at positions "
                    f"{group.start}..{group.stop - 1} (its group of near-equal scores)"
                )
        for j, k in owner.items():
            perm[k] = j
    return perm


def group_index(groups: Sequence[range]) -> np.ndarray:
    """Position -> number of its group."""
    out = np.zeros(groups[-1].stop if groups else 0, dtype=np.int64)
    for number, group in enumerate(groups):
        out[group.start : group.stop] = number
    return out


def relabel(id_map: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """``id_map`` with every id replaced through ``mapping`` (ids not in it are kept)."""
    ids = np.asarray(id_map)
    out = ids.copy()
    for ours, theirs in mapping.items():
        out[ids == ours] = theirs
    return out


def segment_id_map(
    ours: Sequence[Any],
    theirs: Sequence[Any],
    windows: float | Sequence[float] | np.ndarray,
    fits: Callable[[int, int], bool],
) -> dict[int, int]:
    """Our segment id -> reference segment id, for panoptic segments in the official order.

    Both lists hold thing segments first (ids 1..T in score order), then stuff segments; each entry has
    ``id``, ``isthing`` and ``score`` (attributes or dict keys). Thing segments may swap within tie groups of
    the reference's scores (``windows`` as in :func:`tie_groups`), where ``fits(k, j)`` allows pairing
    reference thing k with our thing j; stuff segments must line up in order (same count of each kind).
    """

    def get(s: Any, key: str) -> Any:
        return s[key] if isinstance(s, dict) else getattr(s, key)

    our_things = [s for s in ours if get(s, "isthing")]
    their_things = [s for s in theirs if get(s, "isthing")]
    assert len(our_things) == len(their_things), (len(our_things), len(their_things))
    assert len(ours) == len(theirs), (len(ours), len(theirs))
    assert [get(s, "isthing") for s in ours] == [get(s, "isthing") for s in theirs], "things come first"
    perm = match_within_groups(
        tie_groups([get(s, "score") for s in their_things], windows), fits, "thing segment"
    )
    mapping = {get(our_things[j], "id"): get(their_things[k], "id") for k, j in enumerate(perm)}
    for mine, ref in zip(ours[len(our_things) :], theirs[len(their_things) :], strict=True):
        mapping[get(mine, "id")] = get(ref, "id")
    return mapping
