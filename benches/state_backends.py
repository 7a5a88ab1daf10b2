"""The same policies on the memory backend and on Redis, measured in turns (one run, one machine).

    .venv/bin/python benches/state_backends.py --rounds 5 --duration 5

Two gateways (one worker each) serve the same 100 policies, 5 of which match every request
(`e2e_overhead.py`'s `policies` set); one keeps the counters in process, the other in a
`redis-server` this script starts on loopback. Each round measures both, in alternating order,
against the same mock upstream: requests/s at `--connections`, the gateway's CPU per request
(and Redis's, for the Redis gateway), and latency at one connection. The machine is shared and
its load drifts, so the figures that matter are the per-round ratios and their median, not
absolute numbers.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from e2e_overhead import BODY, VARIANTS, cpu_seconds, free_port, start_gateway, start_redis, stop, wait_ready, wrk


def round_trip_ms(redis_url: str, n: int = 2000) -> float:
    """The median time of one `PING` to the Redis server: one local round trip on this machine."""
    parts = urlsplit(redis_url)
    with socket.create_connection((parts.hostname, parts.port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for _ in range(n):
            began = time.perf_counter()
            conn.sendall(b"*1\r\n$4\r\nPING\r\n")
            conn.recv(64)
            times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required: apt-get install wrk")
    up_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tollway.testing.mock_openai", "--port", str(up_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    redis, redis_url = start_redis()
    workdir = Path(tempfile.mkdtemp())
    gateways: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        wait_ready(f"http://127.0.0.1:{up_port}/v1/models", upstream)
        gateways["memory"] = start_gateway(up_port, VARIANTS["policies"], workdir)
        redis_policies = VARIANTS["redis-policies"].replace("{redis_url}", redis_url)
        gateways["redis"] = start_gateway(up_port, redis_policies, workdir)
        rows: dict[str, list[dict[str, float]]] = {"memory": [], "redis": []}
        print(
            f"state backends: {args.rounds} rounds x {args.duration}s, wrk -t1 -c{args.connections}, "
            "one gateway worker each, 5 of 100 policies match"
        )
        for n in range(args.rounds):
            order = ["memory", "redis"] if n % 2 == 0 else ["redis", "memory"]
            for name in order:
                proc, port = gateways[name]
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                wrk(url, BODY, 4, 1, True)  # warm
                cpu = cpu_seconds(proc.pid)
                redis_cpu = cpu_seconds(redis.pid)
                tp = wrk(url, BODY, args.connections, args.duration, True)
                served = tp["rps"] * args.duration
                row = {
                    "rps": tp["rps"],
                    "cpu_us": (cpu_seconds(proc.pid) - cpu) / served * 1e6,
                    "redis_us": (cpu_seconds(redis.pid) - redis_cpu) / served * 1e6 if name == "redis" else 0.0,
                }
                lat = wrk(url, BODY, 1, args.duration, True)
                row["p50_ms"], row["p99_ms"] = lat["p50_ms"], lat["p99_ms"]
                rows[name].append(row)
            m, r = rows["memory"][-1], rows["redis"][-1]
            print(
                f"  round {n + 1}: memory {m['rps']:6.0f} req/s {m['cpu_us']:6.1f} us CPU p50 {m['p50_ms']:.3f} ms | "
                f"redis {r['rps']:6.0f} req/s {r['cpu_us']:6.1f} us CPU (+ redis-server {r['redis_us']:.1f} us) "
                f"p50 {r['p50_ms']:.3f} ms"
            )

        def median(name: str, key: str) -> float:
            return statistics.median(row[key] for row in rows[name])

        ratios = [r["rps"] / m["rps"] for m, r in zip(rows["memory"], rows["redis"], strict=True)]
        added_cpu = [r["cpu_us"] - m["cpu_us"] for m, r in zip(rows["memory"], rows["redis"], strict=True)]
        added_p50 = [r["p50_ms"] - m["p50_ms"] for m, r in zip(rows["memory"], rows["redis"], strict=True)]
        print("\n[medians over the rounds]")
        for name in ("memory", "redis"):
            extra = f" + redis-server {median(name, 'redis_us'):.1f} us" if name == "redis" else ""
            print(
                f"  {name:>6}: {median(name, 'rps'):6.0f} req/s   gateway CPU {median(name, 'cpu_us'):.1f} us/request"
                f"{extra}   1 connection p50 {median(name, 'p50_ms'):.3f} ms p99 {median(name, 'p99_ms'):.3f} ms"
            )
        print(
            f"  redis/memory throughput {statistics.median(ratios):.3f}x   gateway CPU "
            f"{statistics.median(added_cpu):+.1f} us/request   p50 {statistics.median(added_p50):+.3f} ms"
        )
        print(f"  one local round trip to Redis (PING, median): {round_trip_ms(redis_url):.3f} ms")
    finally:
        for proc, _ in gateways.values():
            stop(proc)
        stop(upstream)
        stop(redis)


if __name__ == "__main__":
    main()
