"""Giving memory back after a burst.

A worker that served a burst (a thousand streams at once, a flood of bad answers) frees what the
burst allocated, but the allocators keep it: CPython's small-object arenas are returned only
when wholly empty, and glibc's malloc returns only the top of each heap, so freed chunks in the
middle (the upstream thread's connection buffers, large Python objects) stay resident. Without
help, RSS after a burst stays near its peak for as long as the process lives.

`MemoryKeeper` watches how many requests are in flight (two integer updates per request). When
a burst has passed (the number in flight fell to a quarter of its peak, the peak having reached
`BURST`), it collects cyclic garbage once and asks the allocator to release free pages
(`tollway._native.release_memory`, glibc's `malloc_trim`, a few milliseconds, run on the event
loop: an executor thread would add a thread's stack and arena of its own). A check runs every
`CHECK_S` seconds and costs nothing when there was no burst.

Granian's own allocations (its client connections) are on its jemalloc, which gives freed
pages back as it is used; `tollway serve` shortens its decay (`cli.GRANIAN_ALLOCATOR_CONF`).
"""

from __future__ import annotations

import asyncio
import gc
import logging

from tollway._native import release_memory

log = logging.getLogger("tollway")


class MemoryKeeper:
    # Requests in flight at once that make a burst worth releasing memory after.
    BURST = 64
    CHECK_S = 2.0

    __slots__ = ("_handle", "_loop", "active", "peak", "releases")

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.releases = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def begin(self) -> None:
        self.active += 1
        if self.active > self.peak:
            self.peak = self.active

    def end(self) -> None:
        self.active -= 1

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle = loop.call_later(self.CHECK_S, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        loop = self._loop
        if loop is None:
            return
        if self.peak >= self.BURST and self.active * 4 <= self.peak:
            self.peak = self.active
            loop.create_task(self._release())
        self._handle = loop.call_later(self.CHECK_S, self._check)

    async def _release(self) -> None:
        # The burst's cyclic garbage (exception tracebacks holding frames) first, so its memory
        # is free when the allocator is asked for it; the collector's threshold is high
        # (`server.app.tune_gc`), so it might otherwise wait for more allocations.
        gc.collect()
        released = await asyncio.to_thread(release_memory)
        self.releases += 1
        log.info("memory released after a burst (allocator returned pages: %s)", released)
