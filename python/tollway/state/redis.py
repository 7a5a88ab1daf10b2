"""Limit and budget counters in Redis, shared by every worker and replica of a gateway.

`RedisBackend` keeps the semantics of the memory backend (`tollway.policy.state`: takes applied
in order, all or none, shadow takes that would be denied not taken; the native limiters' token
buckets with holds and debt, concurrency leases with expiry, calendar and rolling budgets with
reservations that settle or release to the window they were charged to) and runs them as Redis
server-side scripts in integer milliseconds: `limiters.lua` holds the limiters, `admit.lua`,
`settle.lua` and `seed.lua` the three operations. Scripts are sent by SHA (`EVALSHA`); when Redis
does not know one (`NOSCRIPT`: a restart, `SCRIPT FLUSH`, a failover) it is loaded and the call
retried once, transparently.

Round trips
-----------
- Admission: **one** `EVALSHA` per request carries every take of every matched policy (and the
  marker check below); nothing is written unless the request is admitted.
- Settlement: one `EVALSHA` carries every reservation to settle or release of the requests
  that ended in the same event-loop iteration (one request's, when idle; many under load),
  sent from a background task (off the request path; `close` waits for them).
- A single Redis is reached through `tollway.state._resp.RespClient`: one pipelined
  connection per worker, pre-encoded arguments (redis-py's pool and encoder cost more CPU per
  command than the rest of admission); Redis Cluster through redis-py's cluster client.
- Request rates are final at admission (a bucket take of 1 with nothing held), so they have
  nothing to settle.

Time is Redis's clock (`TIME` inside the script), so every gateway decides on the same clock;
tests inject `now` instead (keys then never expire: Redis expires them on its own clock). Time
never goes back for a key (each key keeps the latest `now` it saw), as in a native limiter.

Keys and hash tags
------------------
One limit at one partition is a hash (`<prefix>{<partition>}:<limit>`) and a sorted set of its
reservations or leases by expiry (the same name plus `:r`); `<limit>` is a digest of the limit's
definition (policy, kind, numbers, window, unit, partition attributes), so a changed number is a
new limit with fresh counters, as with the memory backend, and an unchanged one keeps its
counters across reloads and restarts. The hash tag is the partition (`key=alice`, `*`,
`team=research,model=gpt-4o`; a digest if it holds braces): every limit of one partition lives
in one Redis Cluster slot. Keys expire (`PEXPIRE`) once a fresh key would behave the same (a full
bucket, the window over, every reservation expired), so memory follows the active partitions.

On a single Redis (or a primary with replicas) one request's takes, whatever their partitions,
go in one script. On **Redis Cluster** a script may only touch one slot, so the takes are grouped
by partition and one script per partition is sent, concurrently (still one round trip of
latency); all or none then holds by compensation: if one group denies, what the others took is
released by a follow-up script. Global policies (no `per`) share the `{*}` slot: with many of
them under heavy traffic, that slot's node is the hot spot.

When Redis fails
----------------
Every call has a timeout (`[state] timeout_ms`, default 50 ms, connecting included) and goes
through a circuit breaker: after `breaker_failures` consecutive failures (timeouts, refused
connections, errors) it opens and no call is made; after `breaker_reset_ms` one request probes
Redis and success closes it, so the gateway returns to shared state by itself. A frozen Redis
therefore delays a request by at most the timeout (only the requests until the breaker opens,
and one probe per interval after), and a dead one costs nothing once the breaker is open.

A take Redis could not decide follows its policy's `on_store_unavailable` (`LimitSpec.store_failure`;
default `fail_closed` for dollar budgets, `fail_open` otherwise):
- `fail_open`: admitted (`degraded_allow`); what it uses is charged when it settles, if Redis is
  back by then.
- `fail_closed`: the request is refused with 503 `state_store_unavailable` (`degraded_deny`).
- `local`: the limit divided by `local_share_divisor` (the gateway processes sharing it) is
  enforced in this process by the native limiters (`MemoryBackend`); a denial there is a 429 like
  any limit. Grants carry negative ids so that settlement goes back to the local limiter.
The breaker's state is exported (`tollway_state_store_up`), degraded decisions are counted
(`tollway_state_degraded_decisions_total{policy,mode}`), `/readyz` shows `available` and
`degraded_since`, and each decision record names the mode in the verdict's detail.

After a data loss
-----------------
`admit.lua` checks a marker hash (`<prefix>{tollway}:marker`) in the same script. When it is
missing, the store lost its data (or is new): the script starts a new *generation* (the time, in
ms) and budgets wait, up to `rebuild_wait_ms`, while each gateway process adds its ledger's
records from before that instant (`tollway.state.rebuild`, once per ledger file and generation);
during the wait budget takes follow `on_store_unavailable`. Rates and concurrency start afresh.
On Redis Cluster the marker is read in the same round trip but not atomically with the takes,
and only the loss of the marker's own shard is detected.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from tollway._native import Grant
from tollway._secret_ref import SecretRef
from tollway.errors import ConfigError
from tollway.policy.config import StoreFailure
from tollway.policy.state import (
    Held,
    LimitSpec,
    MemoryBackend,
    MemoryLimit,
    StoreDenial,
    StoreGrant,
    StoreUnavailable,
    Take,
)
from tollway.state._resp import NoScript, RespClient, RespError, Unavailable
from tollway.state.config import StateConfig
from tollway.state.rebuild import Seed, describe_generation, ledger_seeds, rolling_geometry

if TYPE_CHECKING:
    from tollway.observability.metrics import Registry
    from tollway.policy.engine import PolicyEngine
    from tollway.usage.ledger import Ledger

log = logging.getLogger("tollway.state")

# Exact integer arithmetic in Lua (doubles) needs every tick count below 2^53; a bucket's
# capacity in ticks is kept under 2^50 to leave room for debt.
MAX_CAPACITY_TICKS = 1 << 50
_CALENDAR_CODES = {"day": b"0", "week": b"1", "month": b"2"}
# `Denial.kind` as the memory backend reports it (its request rates are token buckets too).
_DENIAL_KINDS = {"rate": "tokens", "tokens": "tokens", "concurrency": "concurrency", "budget": "budget"}
# How long a ledger's once-per-generation flag is kept: longer than any budget window.
_SEEDED_FLAG_MS = 40 * 86_400_000
# Most settlements per script call (one call carries those of many requests under load).
_SETTLE_BATCH = 128
# Most rebuild seeds per script call: no script may keep Redis busy long.
_SEEDS_PER_CALL = 1000
# Key names remembered per (limit, partition) before the memo starts over.
_KEY_NAMES_KEPT = 50_000
_STORE_ERRORS = (RespError, redis_errors.RedisError, OSError, TimeoutError)


def _script(name: str) -> str:
    return (resources.files("tollway.state") / name).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Script:
    """A server-side script: `limiters.lua` followed by the operation's file."""

    name: str
    text: bytes
    sha: bytes  # hex, as EVALSHA takes it

    @classmethod
    def load(cls, name: str) -> Script:
        text = (_script("limiters.lua") + "\n" + _script(name)).encode()
        return cls(name, text, hashlib.sha1(text).hexdigest().encode())


ADMIT = Script.load("admit.lua")
SETTLE = Script.load("settle.lua")
SEED = Script.load("seed.lua")


def partition_tag(partition: str) -> str:
    """The hash tag of a partition's keys: the partition itself, or its digest if it holds braces."""
    if not partition or "{" in partition or "}" in partition:
        return hashlib.sha1(partition.encode()).hexdigest()[:16]
    return partition


def limit_digest(spec: LimitSpec) -> str:
    """Names a limit's definition in its keys (what `LimitSpec` equality compares)."""
    identity = "\x1f".join(
        str(part)
        for part in (
            spec.policy,
            spec.kind,
            spec.limit,
            repr(spec.period_s),
            spec.burst,
            spec.calendar,
            spec.utc_offset_s,
            spec.unit,
            ",".join(spec.per),
        )
    )
    return hashlib.sha1(identity.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class CompiledLimit:
    """A limit as the scripts take it, computed once per configuration."""

    spec: LimitSpec
    digest: str
    args: tuple[bytes, bytes, bytes, bytes]  # kind code, p1, p2, p3 (see limiters.lua)
    window_s: float | None  # a denial's window for rates (budgets: the script's)
    burst: int
    failure: StoreFailure
    local_spec: LimitSpec  # the local share, for `local`


def compile_limit(spec: LimitSpec, divisor: int) -> CompiledLimit:
    """Raise `ConfigError` for a rate too fine for exact arithmetic in Lua."""
    local_spec = replace(
        spec, limit=max(1, spec.limit // divisor), burst=max(1, spec.burst // divisor) if spec.burst else 0
    )
    burst = spec.limit
    window_s: float | None = None
    if spec.kind in ("rate", "tokens"):
        period_ms = round(spec.period_s * 1000)
        burst = spec.burst or spec.limit
        g = math.gcd(spec.limit, period_ms)
        limit, period = spec.limit // g, period_ms // g
        if burst * period >= MAX_CAPACITY_TICKS:
            raise ConfigError(
                [
                    f"policy `{spec.policy}`: a {spec.kind} limit of {spec.limit} per {spec.period_s:g} s with a burst"
                    f" of {burst} is too fine-grained for the Redis backend's exact arithmetic"
                    " (burst x period / gcd(limit, period) must stay under 2^50); use a shorter period"
                    " or round numbers"
                ]
            )
        args = (b"r" if spec.kind == "rate" else b"t", b"%d" % limit, b"%d" % period, b"%d" % burst)
        window_s = period_ms / 1000
    elif spec.kind == "concurrency":
        args = (b"c", b"%d" % spec.limit, b"0", b"0")
    elif spec.calendar is not None:
        args = (b"k", b"%d" % spec.limit, _CALENDAR_CODES[spec.calendar], b"%d" % spec.utc_offset_s)
    else:
        window_ms, buckets = rolling_geometry(spec)
        args = (b"w", b"%d" % spec.limit, b"%d" % window_ms, b"%d" % buckets)
    return CompiledLimit(spec, limit_digest(spec), args, window_s, burst, spec.store_failure, local_spec)


class CircuitBreaker:
    """Closed; open after `failures` consecutive failures; after `reset_s`, one probe at a time
    (half-open) whose success closes it and whose failure opens it again."""

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures_to_open = failures
        self.reset_s = reset_s
        self.clock = clock
        self.state: Literal["closed", "open", "half_open"] = "closed"
        self.failures = 0
        self.retry_at = 0.0
        # Wall-clock time the store was last seen failing while the breaker was closed.
        self.degraded_since: float | None = None

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    def allow(self) -> bool:
        """Whether a call may be made now (in the open state, the first caller after the reset
        interval becomes the probe)."""
        if self.state == "closed":
            return True
        if self.state == "open" and self.clock() >= self.retry_at:
            self.state = "half_open"
            return True
        return False

    def succeeded(self) -> None:
        if self.state != "closed":
            log.warning("state store: Redis answers again; back to shared state")
        self.state = "closed"
        self.failures = 0
        self.degraded_since = None

    def failed(self) -> None:
        self.failures += 1
        if self.degraded_since is None:
            self.degraded_since = time.time()
        if self.state == "half_open" or self.failures >= self.failures_to_open:
            if self.state == "closed":
                log.error(
                    "state store: %d consecutive Redis failures; policies follow `on_store_unavailable`"
                    " until it answers again",
                    self.failures,
                )
            self.state = "open"
            self.retry_at = self.clock() + self.reset_s

    def abandoned(self) -> None:
        """A call ended without an answer either way (cancelled): let the next caller probe."""
        if self.state == "half_open":
            self.state = "open"
            self.retry_at = self.clock()


Answer = list[Any]  # one take's five numbers from admit.lua


class RedisBackend:
    """Counters in Redis (see the module docstring). Build it in the process that serves (a
    connection pool does not survive fork), call `start` before the first admission and `close`
    at the end. Admission is `admit_async`; `settle` never blocks."""

    name = "redis"

    def __init__(
        self,
        config: StateConfig,
        *,
        lease_ttl_s: float,
        workers: int = 1,
        base_dir: Path | None = None,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        self.config = config
        self.timeout_s = config.timeout_ms / 1000
        self.ttl_ms = round(lease_ttl_s * 1000)
        self.prefix = config.key_prefix
        self.cluster = config.cluster
        self.marker = f"{self.prefix}{{tollway}}:marker".encode()
        self.divisor = config.local_share_divisor or workers
        self.base_dir = base_dir
        # Tests pass the time; otherwise the scripts read Redis's clock.
        self._now_ms = now_ms
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_reset_ms / 1000)
        # `local` policies while Redis is unreachable: their local share, in process.
        self.local = MemoryBackend(lease_ttl_s=lease_ttl_s)
        self._limits: dict[LimitSpec, CompiledLimit] = {}
        # The same by the spec's identity (hashing a spec costs more than this whole lookup;
        # the entry keeps the spec alive, so its id is not reused meanwhile), and key names.
        self._by_id: dict[int, tuple[LimitSpec, CompiledLimit]] = {}
        self._key_names: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        self._client: RespClient | None = None
        self._cluster: RedisCluster | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Settlements waiting for the end of this event-loop iteration, to go together.
        self._pending: list[tuple[Held, int | None]] = []
        # The store's generation (see "After a data loss") and the ones this process seeded.
        self.generation: str | None = None
        self._rebuilding = False  # Cluster: budgets wait (as the marker said last)
        self._seeded: set[str] = set()
        self._rebuild_source: tuple[Ledger | None, Callable[[], PolicyEngine | None]] | None = None
        self.degraded_decisions: dict[tuple[str, str], int] = {}
        self.settlements_lost = 0
        self._last_error_log = 0.0

    # -- lifecycle -----------------------------------------------------------------------------
    def connect(self) -> None:
        """Create the client (no I/O yet: the connection opens on first use). A single Redis is
        served by `RespClient` (one pipelined connection); Redis Cluster by redis-py's client."""
        config = self.config
        password = _reveal(config.password, self.base_dir)
        url = config.url or "redis://127.0.0.1:6379/0"
        if not self.cluster:
            self._client = RespClient(url, password, config.tls)
            return
        options: dict[str, Any] = {
            "socket_timeout": self.timeout_s,
            "socket_connect_timeout": self.timeout_s,
            "password": password,
            "decode_responses": False,
        }
        if config.tls and url.startswith("redis://"):
            options["ssl"] = True
        self._cluster = RedisCluster.from_url(url, **options)

    async def start(
        self, ledger: Ledger | None = None, engine: Callable[[], PolicyEngine | None] | None = None
    ) -> None:
        """Connect, learn the store's generation and, if it is new to this process, add this
        process's ledger to the budgets (bounded by `rebuild_wait_ms`). A Redis that does not
        answer is not fatal: policies follow `on_store_unavailable` until it does."""
        if self._client is None and self._cluster is None:
            self.connect()
        self._rebuild_source = (ledger, engine or (lambda: None))
        try:
            await self._admit_call([])
        except _STORE_ERRORS as exc:
            self._failed(exc)
            return
        self.breaker.succeeded()
        await self.drain(max(1.0, self.config.rebuild_wait_ms / 1000))

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (up to `timeout`) for the background work in flight: settlements, rebuilds."""
        if self._pending:
            self._flush()
        pending = list(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def close(self, timeout: float = 5.0) -> None:
        """Wait for settlements in flight (up to `timeout`), then close the connections."""
        await self.drain(timeout)
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            cluster, self._cluster = self._cluster, None
            await cluster.aclose()

    def status(self) -> dict[str, Any]:
        """For `/readyz`."""
        return {
            "backend": self.name,
            "available": self.breaker.closed,
            "degraded_since": self.breaker.degraded_since if not self.breaker.closed else None,
            "generation": self.generation,
        }

    # -- configuration -------------------------------------------------------------------------
    def prepare(self, specs: Sequence[LimitSpec]) -> None:
        """Compile a (new) configuration's limits. Counters stay in Redis: a limit whose
        definition did not change keeps them (same keys); the others' keys expire unused."""
        self._limits = {spec: compile_limit(spec, self.divisor) for spec in specs}
        self._by_id = {id(spec): (spec, limit) for spec, limit in self._limits.items()}
        self.local.prepare([c.local_spec for c in self._limits.values()])

    def _limit(self, spec: LimitSpec) -> CompiledLimit:
        entry = self._by_id.get(id(spec))
        if entry is not None and entry[0] is spec:
            return entry[1]
        found = self._limits.get(spec)
        if found is None:
            found = self._limits[spec] = compile_limit(spec, self.divisor)
        self._by_id[id(spec)] = (spec, found)
        return found

    def keys(self, spec: LimitSpec, partition: str) -> tuple[bytes, bytes]:
        """The state hash and the reservation set of one limit at one partition."""
        digest = self._limit(spec).digest
        names = self._key_names.get((digest, partition))
        if names is None:
            if len(self._key_names) >= _KEY_NAMES_KEPT:
                self._key_names.clear()
            base = f"{self.prefix}{{{partition_tag(partition)}}}:{digest}".encode()
            names = self._key_names[(digest, partition)] = (base, base + b":r")
        return names

    # -- admission -----------------------------------------------------------------------------
    async def admit_async(self, takes: Sequence[Take]) -> bool:
        """Apply the takes, all or none (see `tollway.policy.state`); False if denied."""
        if not takes:
            return True
        if not self.breaker.allow():
            return self._degrade(takes, range(len(takes)))
        try:
            replies = await self._admit_call(takes)
        except asyncio.CancelledError:
            self.breaker.abandoned()
            raise
        except _STORE_ERRORS as exc:
            self._failed(exc)
            return self._degrade(takes, range(len(takes)))
        self.breaker.succeeded()
        return self._conclude(takes, replies)

    async def _admit_call(self, takes: Sequence[Take]) -> list[tuple[list[int], list[Any]]]:
        """Run admit.lua for every group of takes (one on a single Redis); each reply with the
        indices of the takes it answers."""
        now = self._now()
        wait = b"%d" % self.config.rebuild_wait_ms
        ttl = b"%d" % self.ttl_ms
        if not self.cluster:
            keys = [self.marker]
            args = [now, ttl, b"1", wait]
            for take in takes:
                self._take_args(take, keys, args)
            reply = await self._eval(ADMIT, keys, args)
            self._observe_marker(reply)
            return [(list(range(len(takes))), reply)]
        groups: dict[str, list[int]] = {}
        for i, take in enumerate(takes):
            groups.setdefault(partition_tag(take.partition), []).append(i)
        waiting = b"1" if self._rebuilding else b"0"
        calls: list[Awaitable[Any]] = [self._eval(ADMIT, [self.marker], [now, ttl, b"1", wait])]
        for indices in groups.values():
            group_keys: list[bytes] = []
            group_args = [now, ttl, b"0", waiting]
            for i in indices:
                self._take_args(takes[i], group_keys, group_args)
            calls.append(self._eval(ADMIT, group_keys, group_args))
        replies = await _gather(calls)
        self._observe_marker(replies[0])
        return list(zip(groups.values(), replies[1:], strict=True))

    def _take_args(self, take: Take, keys: list[bytes], args: list[bytes]) -> None:
        state, reservations = self.keys(take.spec, take.partition)
        keys.append(state)
        keys.append(reservations)
        flags = (1 if take.enforce else 0) | (2 if take.clip else 0) | (4 if take.peek else 0)
        args.extend(self._limit(take.spec).args)
        args.append(b"%d" % take.amount)
        args.append(b"%d" % flags)

    def _conclude(self, takes: Sequence[Take], replies: list[tuple[list[int], list[Any]]]) -> bool:
        """Turn the scripts' answers into the takes' answers; apply `on_store_unavailable` to
        the takes they did not apply (budgets during a rebuild); if the request is denied, give
        back whatever was taken for it and leave the takes after the denial unanswered."""
        answers: list[Answer | None] = [None] * len(takes)
        written = [False] * len(takes)  # the script that answered this take wrote its changes
        for indices, reply in replies:
            values = reply[5:]
            committed = bool(int(reply[0]))
            for n, i in enumerate(indices[: len(values) // 5]):
                answers[i] = values[5 * n : 5 * n + 5]
                written[i] = committed
        denied_at: int | None = None
        waiting: list[int] = []
        for i, take in enumerate(takes):
            answer = answers[i]
            if answer is None:
                continue
            code = int(answer[0])
            if code == 3:
                waiting.append(i)
                continue
            self._answer(take, code, answer)
            if code == 0 and take.enforce and denied_at is None:
                denied_at = i
        made_local: list[tuple[MemoryLimit, int]] = []
        now = self.local.clock()
        for i in waiting:
            if denied_at is not None and i > denied_at:
                break
            if not self._degrade_one(takes[i], made_local, now):
                denied_at = i
                break
        if denied_at is None:
            return True
        for take in takes[denied_at + 1 :]:
            take.answer = None
        for limit, id in made_local:
            limit.release(id, now)
        undo = [
            t for i, t in enumerate(takes) if written[i] and t.degraded is None and isinstance(t.answer, StoreGrant)
        ]
        if undo:
            self._spawn(self._undo(undo))
        return False

    async def _undo(self, takes: Sequence[Take]) -> None:
        """Give back what scripts that admitted took for a request denied elsewhere: release
        reservations and leases, return request rates' one."""
        items: list[tuple[Held, int | None]] = []
        for take in takes:
            answer = take.answer
            assert isinstance(answer, StoreGrant)
            if answer.id is not None:
                items.append((Held(take.spec, take.partition, answer.id), None))
            elif take.spec.kind == "rate":
                items.append((Held(take.spec, take.partition, None), -1))
        await self.settle_async(items)

    def _answer(self, take: Take, code: int, answer: Answer) -> None:
        limit = self._limit(take.spec)
        if code == 1:
            id = int(answer[1])
            take.answer = StoreGrant(id or None, int(answer[2]), int(answer[3]) / 1000)
            take.amount = int(answer[4])
        elif code == 0:
            retry = int(answer[3])
            window = int(answer[4])
            spec = take.spec
            take.answer = StoreDenial(
                kind=_DENIAL_KINDS[spec.kind],
                limit=spec.limit,
                window_seconds=limit.window_s if limit.window_s is not None else _window_s(window),
                burst=limit.burst,
                used=int(answer[1]),
                requested=int(answer[2]),
                retry_after=retry / 1000 if retry >= 0 else None,
            )
        else:
            take.used = int(answer[1])

    # -- degraded ------------------------------------------------------------------------------
    def _degrade(self, takes: Sequence[Take], indices: range) -> bool:
        """Every take in `indices` follows its policy's `on_store_unavailable`, in order."""
        made_local: list[tuple[MemoryLimit, int]] = []
        now = self.local.clock()
        for i in indices:
            if not self._degrade_one(takes[i], made_local, now):
                for limit, id in made_local:
                    limit.release(id, now)
                for later in takes[i + 1 :]:
                    later.answer = None
                return False
        return True

    def _degrade_one(self, take: Take, made_local: list[tuple[MemoryLimit, int]], now: float) -> bool:
        """One take without the store; False if it denies the request."""
        limit = self._limit(take.spec)
        mode = limit.failure
        take.degraded = mode
        counted = (take.spec.policy, mode)
        self.degraded_decisions[counted] = self.degraded_decisions.get(counted, 0) + 1
        if mode == "fail_open":
            if not take.peek:
                take.answer = StoreGrant(None, take.spec.limit, 0.0)
            return True
        if mode == "fail_closed":
            if take.peek:
                return True
            take.answer = StoreUnavailable()
            return not take.enforce
        local = self.local.limit(limit.local_spec)
        if take.peek:
            take.used = local.used(take.partition, now)
            return True
        if take.clip:
            left = limit.local_spec.limit - local.used(take.partition, now)
            if 0 < left < take.amount:
                take.amount = left
        answer = local.take(take.partition, take.amount, now)
        if isinstance(answer, Grant):
            if answer.id is not None:
                made_local.append((local, answer.id))
            local_id = -answer.id if answer.id is not None else None
            take.answer = StoreGrant(local_id, answer.remaining, answer.reset_after)
            return True
        take.answer = answer
        return not take.enforce

    def _failed(self, exc: BaseException) -> None:
        self.breaker.failed()
        now = time.monotonic()
        script_error = isinstance(exc, redis_errors.ResponseError) or (
            isinstance(exc, RespError) and not isinstance(exc, Unavailable)
        )
        if script_error:
            log.error("state store: a script failed: %s", exc)
        elif now - self._last_error_log >= 10.0:
            self._last_error_log = now
            log.warning("state store: Redis call failed (%s: %s)", type(exc).__name__, exc or "timed out")

    # -- settlement ----------------------------------------------------------------------------
    def settle(self, items: Sequence[tuple[Held, int | None]]) -> None:
        """End holds (`(held, actual)` settles, `(held, None)` releases) without waiting: the
        settlements of every request that ends in the same event-loop iteration go to Redis
        together, from a background task."""
        remote: list[tuple[Held, int | None]] = []
        local: list[tuple[Held, int | None]] = []
        for held, actual in items:
            id = held.id
            if id is not None and id < 0:
                local.append((Held(self._limit(held.spec).local_spec, held.partition, -id), actual))
            elif held.spec.kind == "rate" or (id is None and not actual):
                continue  # request rates are final at admission; nothing to charge
            else:
                remote.append((held, actual))
        if local:
            self.local.settle(local)
        if remote:
            if not self._pending:
                asyncio.get_running_loop().call_soon(self._flush)
            self._pending.extend(remote)

    def _flush(self) -> None:
        items, self._pending = self._pending, []
        for start in range(0, len(items), _SETTLE_BATCH):
            self._spawn(self.settle_async(items[start : start + _SETTLE_BATCH]))

    async def settle_async(self, items: Sequence[tuple[Held, int | None]]) -> None:
        """Settle in one script per group (one on a single Redis). Lost when Redis is down: the
        reservations then expire (token estimates count as spent, budgets stay charged)."""
        if not items:
            return
        if not self.breaker.closed:
            self.settlements_lost += len(items)
            return
        now = self._now()
        ttl = b"%d" % self.ttl_ms
        groups: dict[str, tuple[list[bytes], list[bytes]]] = {}
        for held, actual in items:
            tag = partition_tag(held.partition) if self.cluster else ""
            keys, args = groups.setdefault(tag, ([], [now, ttl]))
            keys.extend(self.keys(held.spec, held.partition))
            args.extend(self._limit(held.spec).args)
            args.append(b"%d" % held.id if held.id is not None else b"0")
            args.append(b"-1" if actual is None or held.spec.kind == "concurrency" else b"%d" % actual)
        try:
            await _gather([self._eval(SETTLE, keys, args) for keys, args in groups.values()])
        except asyncio.CancelledError:
            self.settlements_lost += len(items)
            raise
        except _STORE_ERRORS as exc:
            self.settlements_lost += len(items)
            self._failed(exc)

    async def debit_async(self, spec: LimitSpec, partition: str, amount: int) -> None:
        """Charge usage that had no reservation."""
        await self.settle_async([(Held(spec, partition, None), amount)])

    async def used_async(self, spec: LimitSpec, partition: str) -> int:
        """What is in use now (raises the client's error if Redis does not answer)."""
        take = Take(spec, partition, 0, False, peek=True)
        self._conclude([take], await self._admit_call([take]))
        return take.used or 0

    # -- after a data loss ---------------------------------------------------------------------
    def _observe_marker(self, reply: list[Any]) -> None:
        generation = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        self._rebuilding = bool(int(reply[4]))
        if generation == self.generation:
            return
        if self.generation is not None:
            log.warning(
                "state store: Redis lost its data (generation %s); rebuilding budgets from the ledger",
                describe_generation(generation),
            )
        elif int(reply[3]):
            log.info(
                "state store: no marker in Redis (a new store, or one that lost its data): generation %s;"
                " budgets are rebuilt from the ledger",
                describe_generation(generation),
            )
        self.generation = generation
        if generation not in self._seeded and self._rebuild_source is not None:
            self._seeded.add(generation)
            self._spawn(self._seed(generation, int(reply[2])))

    async def _seed(self, generation: str, now_ms: int) -> None:
        """Add this process's ledger to the budgets of `generation` (once per ledger file)."""
        assert self._rebuild_source is not None
        ledger, engine_of = self._rebuild_source
        engine = engine_of()
        rules = [rule for policy in engine.compiled.policies for rule in policy.limits] if engine else []
        seeds: list[Seed] = []
        if ledger is not None and ledger.enabled and rules:
            try:
                seeds = await asyncio.to_thread(ledger_seeds, ledger.sink, rules, now_ms, int(generation))
            except Exception:
                log.exception("state store: reading the ledger to rebuild budgets failed")
        ledger_id = _ledger_id(ledger)
        head = [self._now(), b"%d" % self.ttl_ms]
        tail = [generation.encode(), b"%d" % _SEEDED_FLAG_MS]
        timeout = max(self.timeout_s, 5.0)  # off the request path: it may carry a month of usage
        try:
            if not self.cluster:
                flag = f"{self.prefix}{{tollway}}:seeded:{generation}:{ledger_id}".encode()
                parts = [seeds[i : i + _SEEDS_PER_CALL] for i in range(0, len(seeds), _SEEDS_PER_CALL)] or [[]]
                applied = 0
                for n, part in enumerate(parts):
                    keys = [self.marker, flag]
                    args = [*head, b"1", *tail, b"1" if n == 0 else b"0", b"1" if n == len(parts) - 1 else b"0"]
                    for seed in part:
                        self._seed_args(seed, keys, args)
                    result = int(await self._eval(SEED, keys, args, timeout))
                    if result < 0:  # applied by another process, or a newer loss: nothing more to do
                        break
                    applied += result
            else:
                groups: dict[str, tuple[list[bytes], list[bytes]]] = {}
                for seed in seeds:
                    tag = partition_tag(seed.partition)
                    flag = f"{self.prefix}{{{tag}}}:seeded:{generation}:{ledger_id}".encode()
                    keys, args = groups.setdefault(tag, ([flag], [*head, b"0", *tail, b"1", b"1"]))
                    self._seed_args(seed, keys, args)
                results = await _gather([self._eval(SEED, k, a, timeout) for k, a in groups.values()])
                assert self._cluster is not None
                async with asyncio.timeout(self.timeout_s):
                    await self._cluster.hdel(self.marker, "r")  # budgets wait no more
                applied = sum(max(0, int(r)) for r in results)
        except _STORE_ERRORS as exc:
            # Seen as new again by the next call, which retries.
            self._seeded.discard(generation)
            if self.generation == generation:
                self.generation = None
            log.warning("state store: rebuilding budgets failed (%s); retried at the next call", exc)
            return
        self._rebuilding = False
        log.info("state store: budgets rebuilt from the ledger (%s seeds applied)", applied)

    def _seed_args(self, seed: Seed, keys: list[bytes], args: list[bytes]) -> None:
        keys.extend(self.keys(seed.spec, seed.partition))
        args.extend(self._limit(seed.spec).args)
        args.append(b"%d" % seed.index)
        args.append(b"%d" % seed.amount)

    # -- calls ---------------------------------------------------------------------------------
    def _now(self) -> bytes:
        """The scripts' `now`: empty (Redis's clock), or the time tests give."""
        return b"%d" % self._now_ms() if self._now_ms is not None else b""

    async def _eval(self, script: Script, keys: list[bytes], args: list[bytes], timeout: float | None = None) -> Any:
        """One script call within the timeout; a script Redis forgot is loaded and retried once."""
        if self._client is None and self._cluster is None:
            self.connect()
        timeout = timeout or self.timeout_s
        client = self._client
        if client is not None:
            command = [b"EVALSHA", script.sha, b"%d" % len(keys), *keys, *args]
            try:
                return await client.execute(command, timeout)
            except NoScript:
                await client.execute([b"SCRIPT", b"LOAD", script.text], timeout)
                return await client.execute(command, timeout)
        cluster = self._cluster
        assert cluster is not None
        async with asyncio.timeout(timeout):
            try:
                return await cluster.evalsha(script.sha.decode(), len(keys), *keys, *args)
            except redis_errors.NoScriptError:
                await cluster.script_load(script.text)
                return await cluster.evalsha(script.sha.decode(), len(keys), *keys, *args)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _window_s(window_ms: int) -> float | None:
    """A denial's window from admit.lua (-1: none, as for concurrency)."""
    return window_ms / 1000 if window_ms >= 0 else None


async def _gather(calls: Sequence[Awaitable[Any]]) -> list[Any]:
    """Every call's result; the first failure is raised once all have ended."""
    if len(calls) == 1:
        return [await calls[0]]
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def _reveal(ref: SecretRef | None, base_dir: Path | None) -> str | None:
    if ref is None:
        return None
    from tollway.config.secrets import resolve_secret

    try:
        return resolve_secret(ref, base_dir).reveal()
    except LookupError as exc:
        raise ConfigError([f"state.password: {exc}"]) from None


def _ledger_id(ledger: Ledger | None) -> str:
    """Names a ledger file across the processes that share it: host and absolute path."""
    if ledger is None or not ledger.enabled:
        return f"none-{socket.gethostname()}-{os.getpid()}"
    path = str(Path(ledger.config.path).resolve())
    return hashlib.sha1(f"{socket.gethostname()}\0{path}".encode()).hexdigest()[:16]


def attach_metrics(registry: Registry, backend: RedisBackend) -> None:
    """The backend's metrics, read at scrape time."""
    up = registry.gauge(
        "tollway_state_store_up", "1 while the shared state store (Redis) answers (circuit breaker closed), else 0."
    )
    up.set_function(lambda: 1.0 if backend.breaker.closed else 0.0)
    degraded = registry.counter(
        "tollway_state_degraded_decisions_total",
        "Limit decisions made without the shared state store, by policy and `on_store_unavailable` mode.",
        ("policy", "mode"),
    )

    def degraded_counts() -> dict[tuple[str, ...], float]:
        return {labels: float(n) for labels, n in backend.degraded_decisions.items()}

    degraded.set_function(degraded_counts)
    lost = registry.counter(
        "tollway_state_settlements_lost_total",
        "Settlements not written because the shared state store was unavailable (their reservations expire).",
    )
    lost.set_function(lambda: backend.settlements_lost)
