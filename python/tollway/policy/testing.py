"""Confidence before enforcing: policy unit tests, replay of recorded traffic, and config warnings.

`tollway policy test FILE`: tests written in TOML, run against a configuration.

    config = "tollway.toml"          # the configuration under test, relative to this file

    [[tests]]
    name = "research may send 3 requests a minute"
    request = { key = "alice", model = "gpt-4o", max_tokens = 100 }
    repeat = 4                       # the same request, this many times at the same instant
    prior = [{ policy = "team-budget", used = 49.5 }]   # usage already counted
    expect = { decision = "deny", policy = "research-rpm", status = 429 }

- `request`: `key` (a key *name* from the configuration: its team, user and tags apply),
  `model`, and optionally `team`, `user`, `tags` (override the key's), `endpoint` (default
  `/v1/chat/completions`), `ip`, `max_tokens`, `n`, `temperature`, `top_p`, `stream`, `tools`
  (true: the request carries tools), `headers` (a table), `prompt_tokens` (default 0).
- `prior`: usage counted before the test, for the request's partition of each limit of the
  named policy: `used` in the limit's unit (requests, tokens, USD for dollar budgets).
- `expect`: `decision` (`allow` or `deny`), and optionally `policy` (the policy that denies),
  `status`, `code` (the error code), `shadow` (the policies that would have denied in shadow
  mode), `clamps` (a table of lowered parameters).

Each test runs on fresh counters at a fixed instant. The report prints each test's verdicts;
the exit status is 1 if any test failed.

`tollway policy replay --config NEW --since 24h`: re-evaluates the requests recorded in the
ledger, oldest first, against NEW's policies (admitted requests settle their recorded usage at
their recorded end), and prints the difference from what was decided at the time: per policy,
how many requests would now be blocked that were not, and the reverse, with examples.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from tollway.auth import Identity
from tollway.config import load_config
from tollway.config.schema import Config
from tollway.errors import ConfigError
from tollway.policy.engine import Admission, PolicyEngine, RequestFacts
from tollway.policy.state import MemoryBackend
from tollway.routing import Router, RoutingError, Target
from tollway.usage import Usage
from tollway.usage.catalog import Catalog
from tollway.usage.record import UsageRecord

_T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z: a fixed instant for policy tests


class TestRequest(msgspec.Struct, forbid_unknown_fields=True):
    key: str
    model: str
    team: str | None = None
    user: str | None = None
    tags: list[str] | None = None
    endpoint: str = "/v1/chat/completions"
    ip: str | None = None
    max_tokens: float | None = None
    n: float | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    tools: bool = False
    headers: dict[str, str] = {}
    prompt_tokens: int = 0


class Prior(msgspec.Struct, forbid_unknown_fields=True):
    policy: str
    used: float


class Expect(msgspec.Struct, forbid_unknown_fields=True):
    decision: str
    policy: str | None = None
    status: int | None = None
    code: str | None = None
    shadow: list[str] | None = None
    clamps: dict[str, float] | None = None


class PolicyTest(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    request: TestRequest
    expect: Expect
    repeat: int = 1
    prior: list[Prior] = []


class PolicyTestFile(msgspec.Struct, forbid_unknown_fields=True):
    config: str
    tests: list[PolicyTest]


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    """A configuration's policies, router and catalog, on counters of their own."""

    config: Config
    clock: _Clock = field(default_factory=lambda: _Clock(_T0))

    def __post_init__(self) -> None:
        config = self.config
        self.backend = MemoryBackend(lease_ttl_s=config.routing.deadline_s + 60, clock=self.clock)
        self.engine = PolicyEngine(config.policies, config.limits, self.backend, clock=self.clock)
        self.catalog = Catalog.load(list(config.catalog))
        self.router = Router(config.routes, config.models, [p.name for p in config.providers], config.routing)
        self.keys = {k.name: k for k in config.keys}

    def target(self, model: str, identity: Identity) -> Target | None:
        try:
            return self.router.plan(model, identity).candidates[0]
        except RoutingError:
            return None

    def facts(self, request: TestRequest) -> RequestFacts:
        key = self.keys.get(request.key)
        if key is None:
            raise ConfigError(
                [f"request: unknown key `{request.key}`; the configuration's keys are {sorted(self.keys)}"]
            )
        identity = Identity(
            key_name=key.name,
            team=request.team if request.team is not None else key.team,
            user=request.user if request.user is not None else key.user,
            tags=tuple(request.tags if request.tags is not None else key.tags),
        )
        target = self.target(request.model, identity)
        params = {
            name: float(value)
            for name in ("max_tokens", "n", "temperature", "top_p")
            if (value := getattr(request, name)) is not None
        }
        prompt = request.prompt_tokens
        return RequestFacts(
            key=identity.key_name,
            team=identity.team,
            user=identity.user,
            tags=identity.tags,
            model=request.model,
            resolved_model=target.model if target else None,
            provider=target.provider if target else None,
            endpoint=request.endpoint,
            ip=request.ip,
            params=params,
            stream=request.stream,
            has_tools=request.tools,
            headers={k.lower(): v for k, v in request.headers.items()},
            count_prompt=lambda: prompt,
            model_info=self.catalog.get(target.model) if target else None,
        )

    def add_prior(self, prior: Prior, facts: RequestFacts) -> None:
        policy = next((p for p in self.engine.compiled.policies if p.name == prior.policy), None)
        if policy is None:
            raise ConfigError([f"prior: unknown policy `{prior.policy}`"])
        for rule in policy.limits:
            amount = round(prior.used * 1_000_000) if rule.spec.unit == "usd" else round(prior.used)
            if rule.spec.kind == "concurrency":
                for _ in range(amount):
                    self.backend.limit(rule.spec).take(policy.partition(facts), 1, self.clock())
            else:
                self.backend.debit(rule.spec, policy.partition(facts), amount)


def _failures(test: PolicyTest, admission: Admission) -> list[str]:
    expect, out = test.expect, []
    decision = "deny" if admission.denied is not None else "allow"
    if decision != expect.decision:
        out.append(f"expected the request to be {expect.decision}ed, it was {decision}ed")
    denied_by = next((v.policy for v in admission.verdicts if v.verdict == "deny"), None)
    if expect.policy is not None and denied_by != expect.policy:
        out.append(f"expected policy `{expect.policy}` to deny, got {f'`{denied_by}`' if denied_by else 'none'}")
    if expect.status is not None and (admission.denied is None or admission.denied.status != expect.status):
        got = admission.denied.status if admission.denied else 200
        out.append(f"expected status {expect.status}, got {got}")
    if expect.code is not None and (admission.denied is None or admission.denied.code != expect.code):
        out.append(f"expected code `{expect.code}`, got `{admission.denied.code if admission.denied else None}`")
    if expect.shadow is not None:
        shadow = sorted({v.policy for v in admission.verdicts if v.verdict in ("would_deny", "would_clamp")})
        if shadow != sorted(expect.shadow):
            out.append(f"expected shadow denials {sorted(expect.shadow)}, got {shadow}")
    if expect.clamps is not None and {k: float(v) for k, v in admission.clamps.items()} != expect.clamps:
        out.append(f"expected clamps {expect.clamps}, got {admission.clamps}")
    return out


def run_policy_tests(path: Path) -> tuple[int, list[str]]:
    """Run a test file; return (failures, report lines)."""
    try:
        spec = msgspec.toml.decode(path.read_bytes(), type=PolicyTestFile)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConfigError([f"{path}: {exc}"]) from None
    config = load_config(path.parent / spec.config).config
    from tollway.explain import verdict_line

    lines, failures = [], 0
    for test in spec.tests:
        world = World(config)
        facts = world.facts(test.request)
        for prior in test.prior:
            world.add_prior(prior, facts)
        admission = Admission()
        for _ in range(max(1, test.repeat)):
            admission = world.engine.evaluate(world.facts(test.request))
        problems = _failures(test, admission)
        failures += bool(problems)
        lines.append(f"{'PASS' if not problems else 'FAIL'}  {test.name}")
        for problem in problems:
            lines.append(f"      {problem}")
        if problems:
            lines.extend(f"      - {verdict_line(v)}" for v in admission.verdicts)
    lines.append(f"{len(spec.tests) - failures} passed, {failures} failed")
    return failures, lines


# -- replay ---------------------------------------------------------------------------------


@dataclass
class ReplayReport:
    requests: int = 0
    newly_blocked: dict[str, list[str]] = field(default_factory=dict)  # policy -> request ids
    newly_allowed: dict[str, list[str]] = field(default_factory=dict)  # policy that denied then
    unchanged_blocked: int = 0

    def lines(self, examples: int = 5) -> list[str]:
        out = [f"replayed {self.requests} requests"]
        if not self.newly_blocked and not self.newly_allowed:
            out.append("no decision changes")
        for policy, ids in sorted(self.newly_blocked.items()):
            shown = ", ".join(ids[:examples]) + (" ..." if len(ids) > examples else "")
            out.append(f"  {policy}: would now block {len(ids)} request(s) that were allowed: {shown}")
        for policy, ids in sorted(self.newly_allowed.items()):
            shown = ", ".join(ids[:examples]) + (" ..." if len(ids) > examples else "")
            out.append(f"  {policy}: {len(ids)} request(s) it blocked would now be allowed: {shown}")
        if self.unchanged_blocked:
            out.append(f"  {self.unchanged_blocked} request(s) blocked then are still blocked")
        return out


def _original_denial(record: UsageRecord) -> str | None:
    return next((v.policy for v in record.decisions if v.verdict in ("deny", "degraded_deny")), None)


def replay(config: Config, records: Sequence[UsageRecord]) -> ReplayReport:
    """Re-evaluate recorded requests (oldest first) against `config`'s policies."""
    world = World(config, _Clock(records[0].received_at if records else _T0))
    report = ReplayReport()
    # Events in time order: admissions at `received_at`, settlements at `finished_at`.
    order = itertools.count()
    events: list[tuple[float, int, str, UsageRecord | None]] = []
    settlements: dict[int, tuple[Admission, Usage, int | None]] = {}
    for record in records:
        never_admitted = record.status in (400, 401, 404, 413) and _original_denial(record) is None
        if record.key is None or record.requested_model is None or never_admitted:
            continue
        heapq.heappush(events, (record.received_at, next(order), "admit", record))
    while events:
        at, seq, kind, item = heapq.heappop(events)
        world.clock.now = max(world.clock.now, at)
        if kind == "settle":
            admission, usage, cost = settlements.pop(seq)
            admission.settle(usage, cost)
            continue
        assert isinstance(item, UsageRecord)
        record = item
        report.requests += 1
        identity = Identity(key_name=record.key or "-", team=record.team, user=record.user, tags=tuple(record.tags))
        target = world.target(record.requested_model or "", identity)
        prompt = record.prompt_tokens
        facts = RequestFacts(
            key=record.key,
            team=record.team,
            user=record.user,
            tags=record.tags,
            model=record.requested_model,
            resolved_model=target.model if target else record.upstream_model,
            provider=target.provider if target else record.provider,
            endpoint=record.endpoint,
            ip=record.client_ip,
            params=record.params,
            stream=record.stream,
            count_prompt=lambda prompt=prompt: prompt,  # type: ignore[misc]
            model_info=world.catalog.get(target.model) if target else None,
        )
        admission = world.engine.evaluate(facts)
        now_denied_by = next((v.policy for v in admission.verdicts if v.verdict == "deny"), None)
        then_denied_by = _original_denial(record)
        if now_denied_by is not None and then_denied_by is None:
            report.newly_blocked.setdefault(now_denied_by, []).append(record.request_id)
        elif now_denied_by is None and then_denied_by is not None:
            report.newly_allowed.setdefault(then_denied_by, []).append(record.request_id)
        elif now_denied_by is not None:
            report.unchanged_blocked += 1
        if admission.denied is None:
            usage = Usage(
                prompt_tokens=record.prompt_tokens,
                completion_tokens=record.completion_tokens,
                cached_tokens=record.cached_tokens,
                cache_write_tokens=record.cache_write_tokens,
                reasoning_tokens=record.reasoning_tokens,
            )
            cost = None if record.cost_source in ("unpriced", "none") else round(record.cost_usd * 1_000_000)
            seq = next(order)
            settlements[seq] = (admission, usage, cost)
            heapq.heappush(events, (max(record.finished_at, at), seq, "settle", None))
    return report


# -- warnings for `tollway check` -------------------------------------------------------------


def _names(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _exact(value: str) -> bool:
    return not set("*?[") & set(value)


def policy_warnings(config: Config) -> list[str]:
    """Policies that can never match, duplicates, and dollar caps over unpriced models."""
    import fnmatch

    out: list[str] = []
    models = {m.name for m in config.models} | {r.name for r in config.routes}
    providers = {p.name for p in config.providers}
    keys = {k.name for k in config.keys}
    teams = {k.team for k in config.keys if k.team}
    users = {k.user for k in config.keys if k.user}
    tags = {t for k in config.keys for t in k.tags}
    catalog = Catalog.load(list(config.catalog))
    seen: dict[bytes, str] = {}
    for i, policy in enumerate(config.policies):
        at = f"policies[{i}] (`{policy.name}`)"
        match = policy.match
        for attribute, known, what in (
            ("model", models, "no [[models]] or [[routes]] entry is called"),
            ("provider", providers, "no provider is called"),
            ("key", keys, "no key is called"),
            ("team", teams, "no key belongs to team"),
            ("user", users, "no key belongs to user"),
            ("tag", tags, "no key has tag"),
        ):
            values = _names(getattr(match, attribute))
            if attribute == "model":
                values = [v for v in values if "/" not in v]  # `provider/model` addresses any model
            exact = [v for v in values if _exact(v)]
            if exact and not any(v in known for v in exact):
                shown = ", ".join(f"`{v}`" for v in exact)
                out.append(f"{at}: can never match: {what} {shown}")
            for pattern in (v for v in values if not _exact(v)):
                if not any(fnmatch.fnmatchcase(name, pattern) for name in known):
                    out.append(f'{at}: can never match: nothing matches `{attribute} = "{pattern}"`')
        identity = msgspec.json.encode({k: v for k, v in msgspec.to_builtins(policy).items() if k != "name"})
        if identity in seen:
            out.append(f"{at}: the same scope and rules as policy `{seen[identity]}` (a duplicate)")
        seen.setdefault(identity, policy.name)
        budget = policy.budget
        if budget is not None and budget.usd is not None and budget.unpriced != "estimate":
            in_scope = [m for m in config.models if _in_scope(match.model, m.name)]
            unpriced = [
                m.name
                for m in in_scope
                if (info := catalog.get(m.upstream_model)) is None or info.input is None or info.output is None
            ]
            if unpriced:
                effect = "requests to them are refused" if budget.unpriced == "block" else "they are not counted"
                shown = ", ".join(f"`{m}`" for m in unpriced)
                out.append(f"{at}: a dollar budget over unpriced model(s) {shown}: {effect} (`unpriced`)")
    return out


def _in_scope(selector: str | list[str] | None, name: str) -> bool:
    import fnmatch

    if selector is None:
        return True
    return any(fnmatch.fnmatchcase(name, v) for v in _names(selector))
