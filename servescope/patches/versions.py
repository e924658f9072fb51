"""Version gates: is an engine's version inside the range servescope supports."""

from __future__ import annotations


def in_supported_range(version: str | None, supported: tuple[tuple[int, int], tuple[int, int]]) -> bool:
    """Return True if version's major.minor lies in supported ((lo major, lo minor), (hi major, hi minor)), inclusive."""
    if version is None:
        return False
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    lo, hi = supported
    return lo <= (major, minor) <= hi
