"""A rolling sum over a time window, kept in fixed slices so memory does not grow with traffic.

The window is cut into `slices` equal slices; a value lands in the slice of the time it was
added, and a slice is forgotten as a whole once it is older than the window. The sum therefore
covers between `window - window / slices` and `window` seconds of history. Times come from the
caller's clock (monotonic seconds).
"""

from __future__ import annotations

import math

_NEVER = -(2**62)


class RollingSum:
    __slots__ = ("_ids", "_slice", "_values")

    def __init__(self, window_s: float, slices: int = 10) -> None:
        self._slice = window_s / slices
        self._values = [0] * slices
        # The absolute slice number each slot holds; a slot whose number is out of date is empty.
        self._ids = [_NEVER] * slices

    def add(self, now: float, value: int) -> None:
        current = math.floor(now / self._slice)
        pos = current % len(self._values)
        if self._ids[pos] != current:
            self._ids[pos] = current
            self._values[pos] = 0
        self._values[pos] += value

    def total(self, now: float) -> int:
        current = math.floor(now / self._slice)
        oldest = current - len(self._values)
        return sum(v for v, i in zip(self._values, self._ids, strict=True) if oldest < i <= current)

    def clear(self) -> None:
        self._ids = [_NEVER] * len(self._ids)
        self._values = [0] * len(self._values)
