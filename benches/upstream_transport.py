"""Two builds of tollway side by side, and the bare Granian + aiohttp yardstick, in one run.

    .venv/bin/python benches/upstream_transport.py --baseline-python /path/to/old/venv/bin/python
    .venv/bin/python benches/upstream_transport.py --baseline-python ... --rounds 6 --duration 3 --pin

The baseline is another build's environment: a virtualenv with that build's wheel installed,
e.g. for the commit before the upstream transport moved to hyper (issue 20):

    git worktree add /tmp/tollway-base 1896100 && cd /tmp/tollway-base
    maturin build --release -o /tmp/wheel && python3 -m venv /tmp/base-venv
    /tmp/base-venv/bin/pip install /tmp/wheel/*.whl aiohttp

Gateways, each one worker in front of the same fast mock upstream
(`tollway.testing.mock_openai`, 8 events per stream):

- `passthrough`: Granian + aiohttp forwarding bodies (`benches/passthrough.py`), nothing else;
- `<build>-default`: tollway as shipped (usage ledger, metrics, access log);
- `<build>-policies`: the same with 100 policies, 5 of which match each request
  (`e2e_overhead.VARIANTS["policies"]`);

for `<build>` in `base` (the baseline's python) and `new` (this interpreter's tollway: build it
with `make build` first, a release build, as the baseline's wheel is). Each round measures every
gateway in turn, non-streamed and streamed: requests/s at `--connections` (default 16) with the
gateway's CPU per request from /proc, then p50 latency at one connection. The summary gives
medians and the medians of per-round ratios (the machine's drift hits every gateway of a round
alike): `new` against `base`, and every gateway against `passthrough`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from e2e_overhead import BODY, PINNED, VARIANTS, _on, config_text, cpu_seconds, free_port, stop, wait_ready, wrk

HERE = Path(__file__).resolve().parent
SHAPES = {"json": BODY, "stream": {**BODY, "stream": True}}


def start_tollway(python: str, up_port: int, extra: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = workdir / f"bench-{port}.toml"
    config.write_text(config_text(up_port, extra))
    proc = subprocess.Popen(
        [python, "-m", "tollway.cli", "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=workdir,
        preexec_fn=_on("gateway"),
    )
    wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
    return proc, port


def start_passthrough(up_port: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "rsgi",
            "--factory",
            "--loop",
            "uvloop",
            "--workers",
            "1",
            "--log-level",
            "warning",
            "--port",
            str(port),
            "passthrough:app",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=HERE,
        env={**os.environ, "UPSTREAM": f"http://127.0.0.1:{up_port}"},
        preexec_fn=_on("gateway"),
    )
    wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
    return proc, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-python", required=True, help="the python of a virtualenv with the baseline build")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=3, help="seconds per throughput measurement")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--pin", action="store_true", help="gateways on the last CPU, the mock and wrk on the others")
    parser.add_argument("--json", type=Path, help="also write every sample to this file")
    args = parser.parse_args()
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin needs at least two CPUs")
        PINNED.update(gateway={cpus[-1]}, load=set(cpus[:-1]))
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required: apt-get install wrk")
    workdir = Path(tempfile.mkdtemp())
    up_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tollway.testing.mock_openai", "--port", str(up_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        preexec_fn=_on("load"),
    )
    gateways: dict[str, tuple[subprocess.Popen[bytes], int, bool]] = {}
    try:
        wait_ready(f"http://127.0.0.1:{up_port}/v1/models", upstream)
        proc, port = start_passthrough(up_port)
        gateways["passthrough"] = (proc, port, False)
        for build, python in (("base", args.baseline_python), ("new", sys.executable)):
            for variant in ("default", "policies"):
                proc, port = start_tollway(python, up_port, VARIANTS[variant], workdir)
                gateways[f"{build}-{variant}"] = (proc, port, True)
        names = list(gateways)
        for _proc, port, auth in gateways.values():
            for body in SHAPES.values():
                wrk(f"http://127.0.0.1:{port}/v1/chat/completions", body, 4, 2, auth)  # warm up
        # samples[shape][gateway]: (req/s, CPU us per request, p50 ms) per round
        samples: dict[str, dict[str, list[tuple[float, float, float]]]] = {s: {n: [] for n in names} for s in SHAPES}
        print(
            f"{len(names)} gateways, {args.rounds} rounds: {args.duration}s at {args.connections} connections"
            f" and {max(1, args.duration // 2)}s at one, per gateway and shape" + (" (pinned)" if args.pin else "")
        )
        for i in range(args.rounds):
            order = names if i % 2 == 0 else names[::-1]
            for shape, body in SHAPES.items():
                for name in order:
                    proc, port, auth = gateways[name]
                    url = f"http://127.0.0.1:{port}/v1/chat/completions"
                    before = cpu_seconds(proc.pid)
                    tp = wrk(url, body, args.connections, args.duration, auth)
                    cpu_us = (cpu_seconds(proc.pid) - before) / (tp["rps"] * args.duration) * 1e6
                    latency = wrk(url, body, 1, max(1, args.duration // 2), auth)
                    samples[shape][name].append((tp["rps"], cpu_us, latency["p50_ms"]))
            print(f"  round {i + 1} done")
    finally:
        for proc, _, _ in gateways.values():
            stop(proc)
        stop(upstream)
    if args.json:
        args.json.write_text(json.dumps(samples, indent=1))
    for shape in SHAPES:
        print(f"\n[{shape}: medians of {args.rounds} rounds; ratios taken per round]")
        print(f"  {'gateway':16} {'req/s':>8} {'CPU us/req':>11} {'p50 ms':>8}   vs passthrough (req/s, CPU)")
        base = samples[shape]["passthrough"]
        for name in names:
            s = samples[shape][name]
            rps = statistics.median(x[0] for x in s)
            cpu = statistics.median(x[1] for x in s)
            p50 = statistics.median(x[2] for x in s)
            r_rps = statistics.median(a[0] / b[0] for a, b in zip(s, base, strict=True))
            r_cpu = statistics.median(a[1] / b[1] for a, b in zip(s, base, strict=True))
            print(f"  {name:16} {rps:8.0f} {cpu:11.1f} {p50:8.3f}   {r_rps:.2f}x, {r_cpu:.2f}x")
        for variant in ("default", "policies"):
            new, old = samples[shape][f"new-{variant}"], samples[shape][f"base-{variant}"]
            pairs = list(zip(new, old, strict=True))
            print(
                f"  new/base {variant:9}: throughput {statistics.median(a[0] / b[0] for a, b in pairs):.3f}x,"
                f" CPU per request {statistics.median(a[1] / b[1] for a, b in pairs):.3f}x,"
                f" p50 at one connection {statistics.median(a[2] - b[2] for a, b in pairs):+.3f} ms"
            )


if __name__ == "__main__":
    main()
