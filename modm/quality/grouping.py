"""Per-group breakdowns of an image set: by serving system, hit vs miss, and by k.

Every breakdown starts with the whole set (group "all"). Entries without the grouping field form their own group
(`UNKNOWN`), so nothing is dropped silently; a miss has no k and is grouped under k = `MISS`.
"""

from __future__ import annotations

from enum import Enum
from typing import Sequence

from modm.quality.images import ImageEntry

__all__ = ["ALL", "GroupBy", "MISS", "UNKNOWN", "group_indices"]

ALL = "all"
UNKNOWN = "unknown"
MISS = "miss"


class GroupBy(str, Enum):
    SYSTEM = "system"
    HIT = "hit"
    K = "k"


def _label(entry: ImageEntry, by: GroupBy) -> str:
    if by is GroupBy.SYSTEM:
        return entry.system if entry.system else UNKNOWN
    if by is GroupBy.HIT:
        return UNKNOWN if entry.hit is None else ("hit" if entry.hit else MISS)
    if entry.k is not None:
        return str(entry.k)
    return MISS if entry.hit is False else UNKNOWN


def _sort_key(label: str):
    # Numbers (k) in numeric order, then named groups.
    return (0, int(label), "") if label.isdigit() else (1, 0, label)


def group_indices(entries: Sequence[ImageEntry], by: GroupBy) -> dict[str, list[int]]:
    """Group label -> positions of the entries in that group, labels in a stable order."""
    groups: dict[str, list[int]] = {}
    for i, entry in enumerate(entries):
        groups.setdefault(_label(entry, by), []).append(i)
    return {label: groups[label] for label in sorted(groups, key=_sort_key)}
