"""End-to-end overhead: the same chat request sent straight to a fast mock upstream and through
tollway (one worker), measured with wrk in one run, for non-streamed and streamed answers.

    make bench                      # or: .venv/bin/python benches/e2e_overhead.py --duration 10

Prints requests/s at `--connections` (default 16) and latency p50/p99 at one connection for
both paths, and the ratios and differences that matter: throughput through the gateway as a
share of direct, and the latency the gateway adds. The load generator, the upstream and the
gateway share the machine, so absolute numbers move with load; compare within one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

KEY = "tw-bench-key"
BODY = {"model": "bench", "messages": [{"role": "user", "content": "Write one short sentence about foxes."}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early ({proc.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} not ready")


def wrk(url: str, body: dict, connections: int, duration: int, auth: bool) -> dict[str, float]:
    headers = 'wrk.headers["Content-Type"] = "application/json"\n'
    if auth:
        headers += f'wrk.headers["Authorization"] = "Bearer {KEY}"\n'
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(f'wrk.method = "POST"\nwrk.body = [[{json.dumps(body)}]]\n{headers}')
        script.flush()
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} error responses from {url}:\n{out}")

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", out)
        assert m, out
        value = float(m.group(1))
        return value / 1000 if m.group(2) == "us" else value * 1000 if m.group(2) == "s" else value

    return {"rps": rps, "p50_ms": pct("50"), "p99_ms": pct("99")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required: apt-get install wrk")

    up_port, gw_port = free_port(), free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tollway.testing.mock_openai", "--port", str(up_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    config = Path(tempfile.mkdtemp()) / "bench.toml"
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    config.write_text(
        f'[server]\nworkers = 1\nlog_level = "warning"\n'
        f'[[providers]]\nname = "up"\nkind = "openai"\nbase_url = "http://127.0.0.1:{up_port}/v1"\n'
        f'[[models]]\nname = "bench"\nprovider = "up"\n'
        f'[[keys]]\nname = "bench"\nhash = "sha256:{digest}"\n'
    )
    gateway = subprocess.Popen(
        [sys.executable, "-m", "tollway.cli", "serve", "--config", str(config), "--port", str(gw_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(f"http://127.0.0.1:{up_port}/v1/models", upstream)
        wait_ready(f"http://127.0.0.1:{gw_port}/readyz", gateway)
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        through = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        print(f"tollway e2e overhead: {args.duration}s per run, wrk -t1, one gateway worker, mock upstream")
        for label, body in (("non-streaming", BODY), ("streaming", {**BODY, "stream": True})):
            wrk(through, body, 4, 2, True)  # warm the pool and the caches
            d_tp = wrk(direct, body, args.connections, args.duration, False)
            g_tp = wrk(through, body, args.connections, args.duration, True)
            d_lat = wrk(direct, body, 1, args.duration, False)
            g_lat = wrk(through, body, 1, args.duration, True)
            print(f"\n[{label}]")
            print(
                f"  {args.connections} connections: direct {d_tp['rps']:9.0f} req/s   tollway {g_tp['rps']:9.0f} req/s"
                f"   (tollway/direct = {g_tp['rps'] / d_tp['rps']:.2f})"
            )
            print(
                f"  1 connection:   direct p50 {d_lat['p50_ms']:.3f} ms p99 {d_lat['p99_ms']:.3f} ms   "
                f"tollway p50 {g_lat['p50_ms']:.3f} ms p99 {g_lat['p99_ms']:.3f} ms"
            )
            print(
                f"  added latency:  p50 {g_lat['p50_ms'] - d_lat['p50_ms']:.3f} ms   "
                f"p99 {g_lat['p99_ms'] - d_lat['p99_ms']:.3f} ms"
            )
    finally:
        for proc in (gateway, upstream):
            proc.send_signal(signal.SIGTERM)
        for proc in (gateway, upstream):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
