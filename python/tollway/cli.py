"""The `tollway` command: serve | check | keys new."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tollway import __version__
from tollway.errors import ConfigError

if TYPE_CHECKING:
    from tollway.config import LoadedConfig

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
    print(
        f"{args.path}: ok ({len(config.providers)} providers, {len(config.models)} models, "
        f"{len(config.keys)} keys, serving on {config.server.host}:{config.server.port})"
    )
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


def cmd_serve(args: argparse.Namespace) -> int:
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

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
    # Workers find the config through the environment: Granian imports the app in each worker.
    os.environ["TOLLWAY_CONFIG"] = str(Path(args.config).resolve())
    granian = Server(
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
