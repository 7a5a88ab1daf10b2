"""The gateway's work per request in process: `Gateway.__rsgi__` driven with an in-memory RSGI
scope and protocol (no Granian, no client sockets), one request at a time, against the mock
upstream on loopback. The variants are `e2e_overhead.py`'s; each is a gateway of its own in this
process, measured in turns.

    .venv/bin/python benches/request_path.py --variants bare,bare-policies --rounds 8

prints each variant's CPU time per request (this process: the event loop, and the ledger's
writer thread when it is on) and its per-round difference to the first variant. The machine's
speed moves these; the instructions per request do not. Counted with callgrind, as the
difference between two runs of one variant that differ only in the number of requests:

    for n in 100 2100; do
      valgrind --tool=callgrind --callgrind-out-file=cg.$n \\
        .venv/bin/python benches/request_path.py --only bare-policies --requests $n
    done
    # (total of cg.2100 - total of cg.100) / 2000 = instructions per request

(the mock upstream runs in a process of its own, not counted). The figure moves by a few
thousand instructions from run to run (how often the event loop polls before the answer is
in), so compare variants over more than one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

import e2e_overhead as e2e
from tollway.config.loader import load_config
from tollway.server.app import Gateway, tune_gc

BODY = orjson.dumps(e2e.BODY)


class Scope:
    """What the gateway reads of Granian's RSGI scope."""

    proto = "http"
    method = "POST"
    path = "/v1/chat/completions"
    client = "127.0.0.1:50000"

    def __init__(self) -> None:
        self.headers = {
            "content-type": "application/json",
            "authorization": f"Bearer {e2e.KEY}",
            "content-length": str(len(BODY)),
        }


class Protocol:
    """An RSGI HTTP protocol holding one request body and keeping the response's status."""

    def __init__(self) -> None:
        self.status = 0

    async def __call__(self) -> bytes:
        return BODY

    def response_bytes(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status


async def serve(gateway: Gateway, scope: Scope, requests: int) -> float:
    """CPU seconds per request over `requests` requests, one at a time."""
    started = time.process_time()
    for _ in range(requests):
        proto = Protocol()
        await gateway.__rsgi__(scope, proto)
        if proto.status != 200:
            raise SystemExit(f"the gateway answered {proto.status}")
    return (time.process_time() - started) / requests


async def measure(args: argparse.Namespace, up_port: int, workdir: Path) -> None:
    variants = [args.only] if args.only else args.variants.split(",")
    gateways = {}
    for variant in variants:
        config = workdir / f"{variant}.toml"
        config.write_text(e2e.config_text(up_port, e2e.VARIANTS[variant]))
        gateways[variant] = gateway = Gateway(load_config(str(config)))
        await gateway.startup()
    tune_gc()  # as a worker does after startup
    scope = Scope()
    try:
        if args.only:
            await serve(gateways[args.only], scope, args.requests)
            return
        for gateway in gateways.values():
            await serve(gateway, scope, args.warmup)
        per_round: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.rounds):
            for variant in variants:
                per_round[variant].append(await serve(gateways[variant], scope, args.requests) * 1e6)
        base = variants[0]
        print(f"in process, {args.rounds} rounds of {args.requests} requests, CPU per request (median):")
        for variant in variants:
            deltas = [a - b for a, b in zip(per_round[variant], per_round[base], strict=True)]
            print(
                f"  {variant:>16}: {statistics.median(per_round[variant]):7.1f} us"
                f"   {statistics.median(deltas):+6.1f} us vs {base}"
                f"   (per round: {', '.join(f'{d:+.0f}' for d in deltas)})"
            )
    finally:
        for gateway in gateways.values():
            await gateway.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="bare,bare-policies", help="comma-separated, of e2e_overhead's")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000, help="per variant and round")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--only", help="one variant, `--requests` requests, nothing printed (for callgrind)")
    args = parser.parse_args()
    chosen = [args.only] if args.only else args.variants.split(",")
    known = sorted(v for v, text in e2e.VARIANTS.items() if "{redis_url}" not in text)
    if set(chosen) - set(known):
        raise SystemExit(f"unknown variants {sorted(set(chosen) - set(known))}; expected any of {known}")
    up_port = e2e.free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tollway.testing.mock_openai", "--port", str(up_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        e2e.wait_ready(f"http://127.0.0.1:{up_port}/v1/models", upstream)
        with tempfile.TemporaryDirectory() as workdir, open(os.devnull, "wb") as devnull:
            import uvloop

            # The access log (stderr, as in a worker) goes nowhere, as the e2e bench's does.
            saved = os.dup(2)
            os.dup2(devnull.fileno(), 2)
            try:
                uvloop.run(measure(args, up_port, Path(workdir)))
            finally:
                os.dup2(saved, 2)
                os.close(saved)
    finally:
        e2e.stop(upstream)


if __name__ == "__main__":
    main()
