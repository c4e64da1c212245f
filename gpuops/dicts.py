"""Small helpers over plain JSON-like data."""
from __future__ import annotations

from typing import Any


def is_subset(planned: Any, current: Any) -> bool:
    """True when everything in `planned` is in `current` (servers add fields and defaults).

    Lists compare element-wise and must have the same length: an extra container or env
    var on the server is a real difference, not a default.
    """
    if isinstance(planned, dict):
        return isinstance(current, dict) and all(
            k in current and is_subset(v, current[k]) for k, v in planned.items()
        )
    if isinstance(planned, list):
        return (
            isinstance(current, list)
            and len(planned) == len(current)
            and all(is_subset(p, c) for p, c in zip(planned, current))
        )
    return planned == current


def dig(data: Any, *path: Any, default: Any = None) -> Any:
    """`data[p0][p1]...`, or `default` where any step is missing."""
    for step in path:
        try:
            data = data[step]
        except (KeyError, IndexError, TypeError):
            return default
    return default if data is None else data
