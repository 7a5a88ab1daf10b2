"""Several API keys for one provider, rotated round-robin, with cool-downs.

Each call starts at the key after the one used last (spreading load over the keys); a key the provider
rate-limited (429) or rejected (401/403, or Gemini's 400 "API key not valid") cools down and is
skipped until its cool-down ends: the provider's `Retry-After` when it sent one, else 30 s for
a rate limit and 5 minutes for a rejection (a revoked key is retried now and then, so a key put
back in service is noticed without a restart). When every key is cooling down, the one that
recovers first is used anyway: a call is never refused for lack of a key.

State is per worker process and in memory: a cool-down is a local observation, and a second
worker learns it from its own first 429.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Iterator

from tollway.config.secrets import Secret

RATE_LIMIT_COOLDOWN = 30.0
REJECTED_COOLDOWN = 300.0
_MAX_COOLDOWN = 3600.0


def retry_after_seconds(value: str | None, now_epoch: float | None = None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3); `None` if absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now_epoch is None else now_epoch)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), _MAX_COOLDOWN)


class KeyRing:
    """The API keys of one provider. `Secret`s only: a key's value never leaves `reveal()`."""

    __slots__ = ("_clock", "_cool_until", "_keys", "_next")

    def __init__(self, keys: list[Secret], clock: Callable[[], float] = time.monotonic) -> None:
        if not keys:
            raise ValueError("a KeyRing needs at least one key")
        self._keys = list(keys)
        self._cool_until = [0.0] * len(keys)
        self._next = 0
        self._clock = clock

    def __len__(self) -> int:
        return len(self._keys)

    def attempt_order(self) -> Iterator[Secret]:
        """The keys to try for one call, each at most once: the ready ones in rotation order, or,
        when none is ready, the one that recovers first."""
        n = len(self._keys)
        start = self._next
        now = self._clock()
        ready = [i for i in ((start + k) % n for k in range(n)) if self._cool_until[i] <= now]
        if not ready:
            soonest = min(range(n), key=lambda i: self._cool_until[i])
            self._next = (soonest + 1) % n
            yield self._keys[soonest]
            return
        for position, index in enumerate(ready):
            # Another call may have cooled this key while the previous attempt was awaited.
            if position > 0 and self._cool_until[index] > self._clock():
                continue
            self._next = (index + 1) % n  # the next call starts after the key used last
            yield self._keys[index]

    def cool_down(self, key: Secret, status: int, retry_after: str | None = None) -> None:
        """Record that the provider rate-limited (429) or rejected (other statuses) `key`."""
        for index, candidate in enumerate(self._keys):
            if candidate is key:
                seconds = retry_after_seconds(retry_after)
                if seconds is None:
                    seconds = RATE_LIMIT_COOLDOWN if status == 429 else REJECTED_COOLDOWN
                self._cool_until[index] = max(self._cool_until[index], self._clock() + seconds)
                return

    def cooling(self) -> int:
        """How many keys are cooling down now."""
        now = self._clock()
        return sum(1 for until in self._cool_until if until > now)
