"""Nested dicts (params sections, run configs): where two of them differ, leaf by leaf.

Standard library only, so a stage can compare configs without importing the params layer.
"""

from __future__ import annotations

from typing import Any

MISSING = object()  # a key absent on one side of :func:`differences`


def differences(was: Any, now: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) of every leaf where two nested dicts differ, in ``was``'s key
    order then ``now``'s new keys; :data:`MISSING` where a side lacks the key."""
    if isinstance(was, dict) and isinstance(now, dict):
        changes = []
        for sub in [*was, *(k for k in now if k not in was)]:
            old, new = was.get(sub, MISSING), now.get(sub, MISSING)
            if old != new:
                changes += differences(old, new, f"{key}.{sub}" if key else str(sub))
        return changes
    return [(key, was, now)]
