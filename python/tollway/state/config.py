"""`[state]`: where limit and budget counters live.

    [state]
    backend = "redis"                       # default "memory": in this process (one worker)
    url = "redis://10.0.0.5:6379/0"         # `rediss://` for TLS; with `cluster`, any node
    password = { env = "TOLLWAY_REDIS_PASSWORD" }   # a secret: never in the URL, never logged
    tls = false                             # TLS with a `redis://` URL too
    timeout_ms = 50                         # every call to Redis, connecting included
    cluster = false                         # Redis Cluster (keys carry hash tags)
    key_prefix = "tollway:"                 # every key starts with it (several gateways, one Redis)
    local_share_divisor = 6                 # `local` policies when Redis is down: limit / 6 here

Semantics of the Redis backend, its failure modes and its key layout: `tollway.state.redis`.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from tollway._secret_ref import SecretRef

# `tollway serve` tells its workers how many they are (`--workers` overrides the file).
WORKERS_ENV = "TOLLWAY_WORKERS"


def memory_workers_problem(workers: int) -> str | None:
    """Why `workers` processes cannot share the memory backend, if they cannot."""
    if workers <= 1:
        return None
    return (
        f"{workers} workers with the memory backend would each keep their own counters, multiplying every"
        ' limit and budget by the number of workers; share them with `[state] backend = "redis"` (and a'
        " `url`), or run one worker"
    )


class StateConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    backend: Literal["memory", "redis"] = "memory"
    url: str | None = None
    password: SecretRef | None = None
    tls: bool = False
    timeout_ms: int = 50
    cluster: bool = False
    key_prefix: str = "tollway:"
    # What a `local` policy enforces in each process while Redis is unreachable: its limit
    # divided by this (the number of gateway processes sharing the limit). Default: this
    # gateway's `server.workers`, which is right for one replica; set workers x replicas.
    local_share_divisor: int | None = None
    # The circuit breaker: open after this many consecutive failed calls; while open, no call is
    # made; after `breaker_reset_ms` one request probes Redis again, and success closes it.
    breaker_failures: int = 3
    breaker_reset_ms: int = 1000
    # After Redis lost its data, budgets wait at most this long (following their
    # `on_store_unavailable`) for their windows to be rebuilt from the ledger.
    rebuild_wait_ms: int = 10_000

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every value out of range, for the config loader to report."""
        out: list[tuple[str, str]] = []
        if self.backend == "memory":
            return out
        if not self.url:
            out.append(("url", "the Redis backend needs a `url`, such as `redis://127.0.0.1:6379/0`"))
        elif _has_password(self.url):
            out.append(
                ("url", 'the URL holds a password; give it as `password = { env = "..." }` (a secret, never logged)')
            )
        elif not self.url.startswith(("redis://", "rediss://", "unix://")):
            out.append(("url", f"expected a `redis://`, `rediss://` or `unix://` URL, got `{_shown(self.url)}`"))
        if self.password is not None and (self.password.env is None) == (self.password.file is None):
            out.append(("password", 'expected exactly one of `env` or `file`, as in `{ env = "REDIS_PASSWORD" }`'))
        if self.timeout_ms < 1:
            out.append(("timeout_ms", f"expected at least 1 ms, got {self.timeout_ms}"))
        if self.local_share_divisor is not None and self.local_share_divisor < 1:
            out.append(("local_share_divisor", f"expected at least 1, got {self.local_share_divisor}"))
        if self.breaker_failures < 1:
            out.append(("breaker_failures", f"expected at least 1, got {self.breaker_failures}"))
        if self.breaker_reset_ms < 1:
            out.append(("breaker_reset_ms", f"expected at least 1 ms, got {self.breaker_reset_ms}"))
        if self.rebuild_wait_ms < 0:
            out.append(("rebuild_wait_ms", f"expected 0 or more ms, got {self.rebuild_wait_ms}"))
        if "{" in self.key_prefix or "}" in self.key_prefix:
            out.append(("key_prefix", "braces are not allowed: they would change the keys' hash tags"))
        return out


def _has_password(url: str) -> bool:
    """Whether a URL's user part holds a password (`redis://:secret@host`, `redis://u:secret@host`)."""
    rest = url.split("://", 1)[-1]
    authority = rest.split("/", 1)[0]
    return "@" in authority and ":" in authority.rsplit("@", 1)[0]


def _shown(url: str) -> str:
    return url if len(url) <= 40 else url[:37] + "..."
