"""The load test's scenarios: the gateway configuration each runs against, the keys its requests
carry, and the latency budget it must meet.

Shared by `run.py` (which writes each scenario's configuration and starts its gateway) and
`locustfile.py` (which sends the requests, checks every answer and the budget). The gateway
configuration is the end-to-end benchmark's (`benches/e2e_overhead.py`): one worker, a
`kind = "openai"` provider at the mock upstream, model `bench`, key `bench`.

Budgets: p50, p95 and p99 of the scenario's response times in ms, and the largest share of
failed requests (0: any failure breaks it). Every figure can be overridden by an environment
variable `LOADTEST_<SCENARIO>_<FIGURE>`, for example `LOADTEST_CHAT_P99_MS=80` or
`LOADTEST_POLICIES_FAIL_RATIO=0.001`.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benches"))
from e2e_overhead import KEY, VARIANTS, config_text

SCENARIOS = ("chat", "stream", "policies")
MODEL = "bench"  # the model `config_text` serves
BENCH_KEY = KEY  # the virtual key `config_text` configures (no team, no tags: no policy matches it)

# The policies scenario: 200 virtual keys in 10 teams, each request from a random one.
POLICY_KEYS = [f"tw-loadtest-{i:03d}" for i in range(200)]
TEAMS = 10

# Five policies that match every policies-scenario request, with limits far above what a run
# can reach (at 1,000 req/s spread over 200 keys a key sees ~300 requests a minute, a team
# ~60,000 requests and a few million tokens): a 429 is a failure, never an expected answer.
_MATCHING = """\
[[policies]]
name = "lt-key-rpm"
match = { tag = "loadtest" }
per = "key"
requests = "6000/min"

[[policies]]
name = "lt-key-concurrency"
match = { tag = "loadtest" }
per = "key"
concurrency = 256

[[policies]]
name = "lt-team-rpm"
match = { team = "lt-team-*" }
per = "team"
requests = "600k/min"

[[policies]]
name = "lt-team-tpm"
match = { team = "lt-team-*" }
per = "team"
tokens = "500M/min"

[[policies]]
name = "lt-team-daily-tokens"
match = { team = "lt-team-*" }
per = "team"
budget = { tokens = 1_000_000_000_000, per = "day" }
"""
# With the benchmark's 95 policies that never match: 100 policies, 5 matching each request.
POLICIES = VARIANTS["policies-unmatched"] + _MATCHING
POLICY_COUNT = POLICIES.count("[[policies]]")


def _keys_toml() -> str:
    return "".join(
        f'[[keys]]\nname = "lt-key-{i:03d}"\nhash = "sha256:{hashlib.sha256(key.encode()).hexdigest()}"\n'
        f'team = "lt-team-{i % TEAMS}"\ntags = ["loadtest"]\n'
        for i, key in enumerate(POLICY_KEYS)
    )


def gateway_config(scenario: str, upstream_port: int) -> str:
    """The configuration of the gateway `scenario` runs against, forwarding to the mock upstream
    on `upstream_port`: the benchmark's as shipped (ledger, metrics, access log on), plus for
    `policies` the 200 keys and the 100 policies."""
    if scenario == "policies":
        return config_text(upstream_port, _keys_toml() + POLICIES)
    return config_text(upstream_port, "")


@dataclass(frozen=True)
class Budget:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    fail_ratio: float = 0.0


# For run.py's defaults (16 users, 25 requests a second each on average): about three times the
# worst p50, p95 and p99 of two runs on a shared 2-core machine where locust, the gateway and the
# mock upstream share the cores (figures in README.md). One budget for all three: their
# differences were within the noise between runs.
_DEFAULT = Budget(p50_ms=8, p95_ms=25, p99_ms=35)
DEFAULT_BUDGETS = dict.fromkeys(SCENARIOS, _DEFAULT)


def budget(scenario: str) -> Budget:
    """`scenario`'s budget: the defaults, each overridden by `LOADTEST_<SCENARIO>_<FIGURE>`."""
    default = DEFAULT_BUDGETS[scenario]
    values = {}
    for f in fields(Budget):
        name = f"LOADTEST_{scenario.upper()}_{f.name.upper()}"
        raw = os.environ.get(name)
        try:
            values[f.name] = float(raw) if raw else getattr(default, f.name)
        except ValueError:
            raise SystemExit(f"{name}={raw!r}: expected a number") from None
    return Budget(**values)


def percentile(sorted_ms: list[float], q: float) -> float:
    """The `q` quantile (0..1) of sorted samples, nearest rank."""
    if not sorted_ms:
        return 0.0
    rank = max(0, min(len(sorted_ms) - 1, math.ceil(q * len(sorted_ms)) - 1))
    return sorted_ms[rank]


def violations(budget: Budget, figures: dict[str, float]) -> list[str]:
    """Each budget figure that `figures` (p50_ms, p95_ms, p99_ms, fail_ratio, requests) breaks."""
    broken = []
    if figures["requests"] == 0:
        broken.append("no request completed")
    for name in ("p50_ms", "p95_ms", "p99_ms"):
        if figures[name] > getattr(budget, name):
            broken.append(f"{name.removesuffix('_ms')} {figures[name]:.2f} ms > budget {getattr(budget, name):g} ms")
    if figures["fail_ratio"] > budget.fail_ratio:
        broken.append(f"failure ratio {figures['fail_ratio']:.4f} > budget {budget.fail_ratio:g}")
    return broken
