"""Shared state for limits and budgets: the Redis backend.

The memory backend (`tollway.policy.state.MemoryBackend`, native limiters in the worker process)
is the default and needs nothing external. `tollway.state.redis.RedisBackend` keeps the same
counters in Redis, so several workers and several replicas enforce one limit together: each
request's checks are one server-side script (one round trip), settlement another.

- `config`: `[state]` (`StateConfig`).
- `redis`: the backend, its key layout, timeouts, circuit breaker and degraded modes.
- `rebuild`: budget windows recomputed from the usage ledger after Redis lost its data.
- `*.lua`: the server-side scripts (`limiters.lua` is the native limiters' semantics).
"""
