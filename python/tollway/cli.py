"""The `tollway` command: serve | check | keys new | usage | explain | policy test | policy replay."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tollway import __version__
from tollway.errors import ConfigError

if TYPE_CHECKING:
    from tollway.config import LoadedConfig
    from tollway.usage.ledger import SqliteLedger

DEFAULT_CONFIG = "tollway.toml"


def _load(path: str) -> LoadedConfig:
    from tollway.config import load_config
    from tollway.providers import build_adapters

    loaded = load_config(path)
    # Resolve secrets now, so a missing `OPENAI_API_KEY` is reported before anything starts.
    build_adapters(loaded.config.providers, loaded.config.server.timeouts, None, loaded.path.parent)
    return loaded


def _print_problems(exc: ConfigError) -> None:
    for problem in exc.problems:
        print(problem, file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        loaded = _load(args.path)
    except ConfigError as exc:
        _print_problems(exc)
        count = len(exc.problems)
        print(f"{args.path}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    config = loaded.config
    from tollway.policy.testing import policy_warnings
    from tollway.usage.accounting import tokenizer_warnings

    for warning in policy_warnings(config) + tokenizer_warnings(config.models, str(loaded.path.parent)):
        print(f"{args.path}: warning: {warning}", file=sys.stderr)
    print(
        f"{args.path}: ok ({len(config.providers)} providers, {len(config.models)} models, "
        f"{len(config.keys)} keys, {len(config.policies)} policies, "
        f"serving on {config.server.host}:{config.server.port})"
    )
    return 0


def cmd_policy_test(args: argparse.Namespace) -> int:
    from tollway.policy.testing import run_policy_tests

    try:
        failures, lines = run_policy_tests(Path(args.path))
    except ConfigError as exc:
        _print_problems(exc)
        return 2
    print("\n".join(lines))
    return 1 if failures else 0


def cmd_policy_replay(args: argparse.Namespace) -> int:
    import time

    from tollway.config import load_config
    from tollway.policy.testing import replay
    from tollway.usage.ledger import parse_since

    try:
        config = load_config(args.config).config
        ledger = _open_ledger(args.ledger_config or args.config)
    except ConfigError as exc:
        _print_problems(exc)
        return 2
    try:
        since = parse_since(args.since, time.time())
    except ValueError as exc:
        print(f"tollway policy replay: {exc}", file=sys.stderr)
        return 2
    try:
        records = ledger.records(since=since)
    finally:
        ledger.close()
    report = replay(config, records)
    print("\n".join(report.lines()))
    return 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    from tollway.auth import hash_key, new_key

    key = new_key()
    name = args.name or "my-key"
    print("New virtual key (shown once; store it now, tollway keeps only its hash):")
    print()
    print(f"    {key}")
    print()
    print("Paste this into your config:")
    print()
    print("[[keys]]")
    print(f'name = "{name}"')
    print(f'hash = "{hash_key(key)}"')
    return 0


def _open_ledger(config_path: str) -> SqliteLedger:
    """The configured SQLite ledger, read-only (`ConfigError` if the config or ledger is unusable)."""
    from tollway.config import load_config
    from tollway.usage.ledger import SqliteLedger

    loaded = load_config(config_path)
    ledger = loaded.config.ledger
    if not ledger.enabled:
        raise ConfigError([f"{config_path}: the usage ledger is off (`[ledger] enabled = false`)"])
    path = Path(ledger.path)
    if not path.is_absolute():
        path = loaded.path.parent / path
    if not path.exists():
        raise ConfigError([f"{path}: no usage ledger yet (the gateway creates it when it first serves)"])
    return SqliteLedger(str(path), readonly=True)


def cmd_usage(args: argparse.Namespace) -> int:
    import json
    import time

    from tollway.usage.ledger import LedgerQueryError, format_table, parse_since

    try:
        ledger = _open_ledger(args.config)
    except ConfigError as exc:
        _print_problems(exc)
        return 1
    now = time.time()
    try:
        since = parse_since(args.since, now)
        until = parse_since(args.until, now) if args.until else None
    except ValueError as exc:
        print(f"tollway usage: {exc}", file=sys.stderr)
        return 2
    group_by = [g for g in (args.by or "").split(",") if g]
    filters: dict[str, str | list[str]] = {}
    for item in args.filter or []:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"tollway usage: --filter expects NAME=VALUE, got {item!r}", file=sys.stderr)
            return 2
        existing = filters.get(name)
        filters[name] = [*([existing] if isinstance(existing, str) else existing or []), value] if existing else value
    try:
        rows = ledger.query_totals(since, until, group_by, filters)
    except LedgerQueryError as exc:
        print(f"tollway usage: {exc}", file=sys.stderr)
        return 2
    finally:
        ledger.close()
    if args.json:
        print(json.dumps({"since": since, "until": until, "group_by": group_by, "rows": rows}, indent=2))
    else:
        print(format_table(rows, group_by))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import msgspec

    from tollway.explain import explain

    try:
        ledger = _open_ledger(args.config)
    except ConfigError as exc:
        _print_problems(exc)
        return 1
    try:
        record = ledger.get(args.request_id)
    finally:
        ledger.close()
    if record is None:
        print(f"tollway explain: no record of request `{args.request_id}` in the ledger", file=sys.stderr)
        return 1
    if args.json:
        print(msgspec.json.format(msgspec.json.encode(record), indent=2).decode())
    else:
        print(explain(record))
    return 0


# Granian's HTTP server allocates with its own jemalloc (the PyPI wheels for Linux), which keeps
# freed pages for 10 s of allocator activity by default: after a thousand client connections
# close together, the worker stayed 25 MiB above its level for that long. A second is enough
# to reuse pages under steady load. Read once, when Granian's library starts, so set before it
# is imported; a value the operator set wins.
GRANIAN_ALLOCATOR_ENV = "_RJEM_MALLOC_CONF"
GRANIAN_ALLOCATOR_CONF = "dirty_decay_ms:1000,muzzy_decay_ms:0"


def cmd_serve(args: argparse.Namespace) -> int:
    os.environ.setdefault(GRANIAN_ALLOCATOR_ENV, GRANIAN_ALLOCATOR_CONF)
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    from tollway.state.config import WORKERS_ENV, memory_workers_problem

    try:
        loaded = _load(args.config)
    except ConfigError as exc:
        _print_problems(exc)
        print(f"{args.config}: not serving; run `tollway check {args.config}` after fixing it", file=sys.stderr)
        return 1
    server = loaded.config.server
    host = args.host or server.host
    port = args.port if args.port is not None else server.port
    workers = args.workers if args.workers is not None else server.workers
    if loaded.config.state.backend == "memory" and (problem := memory_workers_problem(workers)) is not None:
        print(f"{args.config}: not serving: {problem}", file=sys.stderr)
        return 1
    # Workers find the config through the environment: Granian imports the app in each worker.
    os.environ["TOLLWAY_CONFIG"] = str(Path(args.config).resolve())
    os.environ[WORKERS_ENV] = str(workers)

    class TollwayServer(Server):  # type: ignore[misc,valid-type]
        """Granian's server, with SIGHUP meaning "reload the configuration" instead of "respawn
        the workers" (which would drop every in-process counter): each worker gets SIGUSR1 and
        reloads in place (`tollway.server.app.Gateway.reload_from_file`)."""

        def _reload(self, spawn_target: object, target_loader: object) -> None:
            self.reload_signal = False
            self.main_loop_interrupt.clear()
            for worker in self.wrks:
                with contextlib.suppress(ProcessLookupError, TypeError):
                    os.kill(worker._id(), signal.SIGUSR1)

    granian = TollwayServer(
        "tollway.server.app:create_app",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.RSGI,
        workers=workers,
        loop=Loops.uvloop,
        log_level=LogLevels(server.log_level),
        # Let in-flight requests finish on SIGINT/SIGTERM, but never hang forever.
        workers_kill_timeout=30,
        websockets=False,
    )
    granian.serve()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tollway", description="tollway: an AI gateway.")
    parser.add_argument("--version", action="version", version=f"tollway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", default=DEFAULT_CONFIG, help=f"config file (default: {DEFAULT_CONFIG})")
    serve.add_argument("--host", help="address to listen on (default: server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (default: server.port)")
    serve.add_argument("--workers", type=int, help="worker processes (default: server.workers)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate a config file and list every problem")
    check.add_argument("path")
    check.set_defaults(func=cmd_check)

    usage = sub.add_parser("usage", help="usage totals from the ledger: requests, tokens by type, cost")
    usage.add_argument("--config", default=DEFAULT_CONFIG, help=f"config file (default: {DEFAULT_CONFIG})")
    usage.add_argument(
        "--since", default="24h", help="start: a duration back (90s, 30m, 24h, 7d) or a date (default 24h)"
    )
    usage.add_argument("--until", help="end: a duration back or a date (default: now)")
    usage.add_argument(
        "--by", help="group by any of key,team,user,model,provider,upstream_model,endpoint,status,day,hour"
    )
    usage.add_argument(
        "--filter", action="append", metavar="NAME=VALUE", help="keep only matching requests (repeatable)"
    )
    usage.add_argument("--json", action="store_true", help="print JSON instead of a table")
    usage.set_defaults(func=cmd_usage)

    explain = sub.add_parser("explain", help="what happened to one request, in plain words")
    explain.add_argument("request_id", help="the request id (the `x-request-id` header)")
    explain.add_argument("--config", default=DEFAULT_CONFIG, help=f"config file (default: {DEFAULT_CONFIG})")
    explain.add_argument("--json", action="store_true", help="print the full record as JSON")
    explain.set_defaults(func=cmd_explain)

    policy = sub.add_parser("policy", help="test policies before enforcing them")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    ptest = policy_sub.add_parser("test", help="run policy unit tests written in TOML")
    ptest.add_argument("path", help="the test file (it names the configuration under test)")
    ptest.set_defaults(func=cmd_policy_test)
    preplay = policy_sub.add_parser("replay", help="re-evaluate recorded traffic against a new configuration")
    preplay.add_argument("--config", required=True, help="the new configuration")
    preplay.add_argument("--ledger-config", help="the configuration whose ledger holds the traffic (default: --config)")
    preplay.add_argument("--since", default="24h", help="how far back: a duration (24h, 7d) or a date")
    preplay.set_defaults(func=cmd_policy_replay)

    keys = sub.add_parser("keys", help="manage virtual keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="make a new virtual key and print its config entry")
    new.add_argument("--name", help="name for the key's config entry")
    new.set_defaults(func=cmd_keys_new)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
