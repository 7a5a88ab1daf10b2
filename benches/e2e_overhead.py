"""End-to-end overhead: the same chat request sent straight to a fast mock upstream and through
tollway (one worker), measured with wrk in one run, for non-streamed and streamed answers.

    make bench                      # or: .venv/bin/python benches/e2e_overhead.py --duration 10
    .venv/bin/python benches/e2e_overhead.py --variants default,bare   # compare configurations

Prints requests/s at `--connections` (default 16) and latency p50/p99 at one connection for
both paths, and the ratios and differences that matter: throughput through the gateway as a
share of direct, and the latency the gateway adds. The load generator, the upstream and the
gateway share the machine, so absolute numbers move with load; compare within one run.
`--rounds N` interleaves the variants (the figure to read for a difference between them);
`--pin` keeps the gateways on one CPU and the mock and wrk on the others:

    .venv/bin/python benches/e2e_overhead.py --pin --rounds 10 --duration 3 --variants bare,no-access-log,default

`--instances K` runs K gateways per variant and measures them in turn across the rounds, so
that no variant's figure rests on one process's own speed.

Variants (each a gateway of its own, measured in the same run, non-streamed):
- `default`: as shipped: usage ledger (SQLite), metrics and the JSON access log on.
- `bare`: ledger, metrics and access log off: what the accounting costs is the difference.
- `policies`: 100 policies, 5 of which match each request (request rate, token rate,
  concurrency, a token budget, parameter bounds): what admission and settlement cost.
- `policies-unmatched`: only the 95 that never match; `policies-rate`, `-tokens`,
  `-concurrency`, `-budget`, `-params`: those 95 and one matching policy of that kind (the
  cost of `policies`, split).
- `bare-policies`: `bare` with the 100 policies: the engine's cost without the ledger,
  metrics and access log that record its verdicts.
- `redis-policies`: the same policies with their counters in Redis (`[state] backend =
  "redis"`, a `redis-server` the bench starts on loopback): one script call per request to
  admit and one to settle. Its CPU per request is printed too (the scripts run there).
- `no-ledger`, `no-metrics`, `no-access-log`: one part of the accounting off at a time;
  `ledger-only`, `metrics-only`: one part on at a time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

KEY = "tw-bench-key"
BODY = {"model": "bench", "messages": [{"role": "user", "content": "Write one short sentence about foxes."}]}


# `--pin`: the CPUs each side runs on (inherited by every process and thread it starts);
# empty: anywhere.
PINNED: dict[str, set[int]] = {}


def _on(side: str) -> Callable[[], None] | None:
    """A `preexec_fn` that keeps a child process on `side`'s CPUs under `--pin`."""
    cpus = PINNED.get(side)
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


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
            preexec_fn=_on("load"),
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


VARIANTS = {
    "default": "",
    "bare": "[ledger]\nenabled = false\n[metrics]\nenabled = false\n[logging]\naccess_log = false\n",
    "no-ledger": "[ledger]\nenabled = false\n",
    "no-metrics": "[metrics]\nenabled = false\n",
    "no-access-log": "[logging]\naccess_log = false\n",
    # One part of the accounting on at a time (what issue 4's "ledger and metrics" costs, split).
    "ledger-only": "[metrics]\nenabled = false\n[logging]\naccess_log = false\n",
    "metrics-only": "[ledger]\nenabled = false\n[logging]\naccess_log = false\n",
}


_UNMATCHED = "".join(
    f'[[policies]]\nname = "other-{i}"\nmatch = {{ key = "other-{i}" }}\nper = "key"\nrequests = "100/min"\n'
    for i in range(95)
)
# The five policies that match the benchmark's requests, by what they exercise.
_MATCHING = {
    "rate": '[[policies]]\nname = "rpm"\nmatch = { key = "bench" }\nper = "key"\nrequests = "1000000/s"\n',
    "tokens": '[[policies]]\nname = "tpm"\nmatch = { key = "bench" }\nper = "key"\ntokens = "1000M/min"\n',
    "concurrency": '[[policies]]\nname = "inflight"\nmatch = { model = "bench" }\nper = "key"\nconcurrency = 100000\n',
    "budget": '[[policies]]\nname = "daily"\nmatch = { key = "bench" }\nper = "key"\n'
    'budget = { tokens = 1_000_000_000_000, per = "day" }\n',
    "params": '[[policies]]\nname = "bounds"\nmatch = { key = "bench" }\nparams = { max_tokens = 100000, n = 1 }\n',
}


def _hundred_policies() -> str:
    """100 policies, 5 of which match the benchmark's requests (a typical request's share)."""
    return _UNMATCHED + "".join(_MATCHING.values())


VARIANTS["policies"] = _hundred_policies()
# The same cost split: the 95 that never match, then each matching kind alone beside them.
VARIANTS["policies-unmatched"] = _UNMATCHED
VARIANTS.update({f"policies-{kind}": _UNMATCHED + text for kind, text in _MATCHING.items()})
# Without the accounting: the engine's own cost, apart from recording five verdicts per request.
VARIANTS["bare-policies"] = VARIANTS["bare"] + _hundred_policies()
VARIANTS["redis-policies"] = _hundred_policies() + '[state]\nbackend = "redis"\nurl = "{redis_url}"\n'


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    """A `redis-server` on a free loopback port, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is required for the redis variants: apt-get install redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        preexec_fn=_on("load"),
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def config_text(up_port: int, extra: str) -> str:
    """A bench gateway's configuration: one worker, the mock upstream, model `bench`, key
    `bench`, and a variant's `extra` tables."""
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    return (
        f'[server]\nworkers = 1\nlog_level = "warning"\n'
        f'[[providers]]\nname = "up"\nkind = "openai"\nbase_url = "http://127.0.0.1:{up_port}/v1"\n'
        f'[[models]]\nname = "bench"\nprovider = "up"\n'
        f'[[keys]]\nname = "bench"\nhash = "sha256:{digest}"\n' + extra
    )


def start_gateway(up_port: int, extra: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = workdir / f"bench-{port}.toml"
    config.write_text(config_text(up_port, extra))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollway.cli", "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_on("gateway"),
    )
    wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
    return proc, port


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children so far (Granian's worker is a child)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(c) for c in children.read_text().split()]
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def interleaved(variants: list[str], args: argparse.Namespace, up_port: int, redis_url: str, workdir: Path) -> None:
    """Every variant's gateways up at once; rounds of one short wrk run each, in turn; medians.

    On a shared machine whose speed drifts by tens of percent within minutes, variants measured
    one after another (the default mode) differ by the drift; here each round measures them all
    within a few seconds, and each variant's figure is also given relative to the first
    variant's in the same round (the median of those ratios is the figure to read).

    A gateway process has a speed of its own (hash seeds, memory layout: two `bare` gateways
    differed by a median of 20 us of CPU per request in one run), so with `--instances K` each
    variant runs K gateways and round i measures instance i mod K: the medians then mix K
    processes per variant instead of resting on one."""
    import statistics

    names = list(dict.fromkeys(variants))
    k = args.instances
    gateways = {
        n: [start_gateway(up_port, VARIANTS[n].replace("{redis_url}", redis_url), workdir) for _ in range(k)]
        for n in names
    }
    # Per variant, per round: req/s, CPU us per request, p50 ms, the instance measured.
    samples: dict[str, list[tuple[float, float, float, int]]] = {n: [] for n in names}
    try:
        for instances in gateways.values():
            for _, port in instances:
                wrk(f"http://127.0.0.1:{port}/v1/chat/completions", BODY, 4, 2, True)  # warm up
        print(
            f"tollway e2e, interleaved: {len(names)} variants x {k} gateway(s), {args.rounds} rounds of"
            f" {args.duration}s each, {args.connections} connections, non-streaming"
        )
        for i in range(args.rounds):
            order = names if i % 2 == 0 else names[::-1]  # no variant always first
            instance = i % k
            for name in order:
                proc, port = gateways[name][instance]
                before = cpu_seconds(proc.pid)
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                tp = wrk(url, BODY, args.connections, args.duration, True)
                cpu_us = (cpu_seconds(proc.pid) - before) / (tp["rps"] * args.duration) * 1e6
                latency = wrk(url, BODY, 1, max(1, args.duration // 2), True)
                samples[name].append((tp["rps"], cpu_us, latency["p50_ms"], instance))
            print(
                f"  round {i + 1}"
                + (f" (instance {instance + 1})" if k > 1 else "")
                + ": "
                + "   ".join(
                    f"{n} {r:.0f} req/s {c:.0f} us p50 {p:.3f} ms" for n in names for r, c, p, _ in [samples[n][-1]]
                )
            )
    finally:
        for instances in gateways.values():
            for proc, _ in instances:
                stop(proc)
    base = names[0]
    print(f"\n[interleaved, medians of {args.rounds} rounds; ratios to `{base}` taken per round]")
    for name in names:
        pairs = list(zip(samples[name], samples[base], strict=True))
        rps = statistics.median(s[0] for s, _ in pairs)
        rps_ratio = statistics.median(s[0] / b[0] for s, b in pairs)
        cpu = statistics.median(s[1] for s, _ in pairs)
        cpu_ratio = statistics.median(s[1] / b[1] for s, b in pairs)
        cpu_delta = statistics.median(s[1] - b[1] for s, b in pairs)
        p50 = statistics.median(s[2] for s, _ in pairs)
        p50_delta = statistics.median(s[2] - b[2] for s, b in pairs)
        print(
            f"  {name:>13}: {rps:6.0f} req/s ({rps_ratio:.3f}x {base}), gateway CPU {cpu:6.1f} us/request"
            f" ({cpu_ratio:.3f}x {base}, {cpu_delta:+.1f} us), p50 at 1 connection {p50:.3f} ms"
            f" ({p50_delta:+.3f} ms vs {base})"
        )
        if k > 1:
            per_instance = [
                statistics.median(s[1] for s in samples[name] if s[3] == j) for j in range(min(k, args.rounds))
            ]
            print(f"  {'':>13}  CPU us/request by instance: " + ", ".join(f"{c:.1f}" for c in per_instance))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--variants", default="default", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="interleaved mode: start every variant's gateway at once, then measure them in turn,"
        " this many rounds of --duration seconds each, and print medians (non-streaming throughput"
        " and CPU only; the machine's drift then hits every variant alike)",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        help="interleaved mode: gateways per variant, measured in turn across the rounds (a"
        " process's own speed then weighs less in the medians)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run the gateways on the last CPU and the mock upstream and wrk on the others, so that"
        " the load does not share the gateway's CPU (less noise in its CPU per request; the"
        " gateway's threads then share one CPU)",
    )
    args = parser.parse_args()
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin needs at least two CPUs")
        PINNED.update(gateway={cpus[-1]}, load=set(cpus[:-1]))
    if args.instances < 1:
        raise SystemExit("--instances must be at least 1")
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required: apt-get install wrk")

    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; expected any of {sorted(VARIANTS)}")
    up_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tollway.testing.mock_openai", "--port", str(up_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        preexec_fn=_on("load"),
    )
    workdir = Path(tempfile.mkdtemp())
    redis: subprocess.Popen[bytes] | None = None
    redis_url = ""
    if any("{redis_url}" in VARIANTS[v] for v in variants):
        redis, redis_url = start_redis()
    try:
        wait_ready(f"http://127.0.0.1:{up_port}/v1/models", upstream)
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        if args.rounds:
            interleaved(variants, args, up_port, redis_url, workdir)
            return
        print(f"tollway e2e overhead: {args.duration}s per run, wrk -t1, one gateway worker, mock upstream")
        results: dict[str, dict[str, float]] = {}
        for i, variant in enumerate(variants):
            gateway, gw_port = start_gateway(up_port, VARIANTS[variant].replace("{redis_url}", redis_url), workdir)
            uses_redis = redis is not None and "{redis_url}" in VARIANTS[variant]
            through = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
            try:
                shapes = (
                    (("non-streaming", BODY), ("streaming", {**BODY, "stream": True}))
                    if i == 0
                    else (("non-streaming", BODY),)
                )
                for label, body in shapes:
                    wrk(through, body, 4, 2, True)  # warm the pool and the caches
                    d_tp = wrk(direct, body, args.connections, args.duration, False)
                    cpu_before = cpu_seconds(gateway.pid)
                    redis_before = cpu_seconds(redis.pid) if uses_redis and redis is not None else 0.0
                    g_tp = wrk(through, body, args.connections, args.duration, True)
                    # CPU the gateway spent per request: robust to what else the machine runs.
                    cpu_us = (cpu_seconds(gateway.pid) - cpu_before) / (g_tp["rps"] * args.duration) * 1e6
                    redis_us = (
                        (cpu_seconds(redis.pid) - redis_before) / (g_tp["rps"] * args.duration) * 1e6
                        if uses_redis and redis is not None
                        else 0.0
                    )
                    d_lat = wrk(direct, body, 1, args.duration, False)
                    g_lat = wrk(through, body, 1, args.duration, True)
                    if label == "non-streaming":
                        results[variant] = {
                            "cpu_us": cpu_us,
                            "rps": g_tp["rps"],
                            "share": g_tp["rps"] / d_tp["rps"],
                            "added_p50": g_lat["p50_ms"] - d_lat["p50_ms"],
                            "redis_us": redis_us,
                        }
                    print(f"\n[{variant}: {label}]")
                    print(
                        f"  {args.connections} connections: direct {d_tp['rps']:9.0f} req/s   "
                        f"tollway {g_tp['rps']:9.0f} req/s   (tollway/direct = {g_tp['rps'] / d_tp['rps']:.2f})"
                    )
                    print(f"  gateway CPU per request: {cpu_us:.1f} us")
                    if uses_redis:
                        print(f"  redis-server CPU per request: {redis_us:.1f} us")
                    print(
                        f"  1 connection:   direct p50 {d_lat['p50_ms']:.3f} ms p99 {d_lat['p99_ms']:.3f} ms   "
                        f"tollway p50 {g_lat['p50_ms']:.3f} ms p99 {g_lat['p99_ms']:.3f} ms"
                    )
                    print(
                        f"  added latency:  p50 {g_lat['p50_ms'] - d_lat['p50_ms']:.3f} ms   "
                        f"p99 {g_lat['p99_ms'] - d_lat['p99_ms']:.3f} ms"
                    )
            finally:
                stop(gateway)
        if len(results) > 1:
            base_name = variants[0]
            base = results[base_name]
            print("\n[variants, non-streaming, this run]")
            for name, r in results.items():
                print(
                    f"  {name:>13}: {r['rps']:6.0f} req/s ({r['share']:.2f} of direct, "
                    f"{r['rps'] / base['rps']:.3f}x {base_name})   added p50 {r['added_p50']:.3f} ms   "
                    f"gateway CPU {r['cpu_us']:.1f} us/request ({r['cpu_us'] / base['cpu_us']:.3f}x)"
                    + (f" + redis-server {r['redis_us']:.1f} us" if r["redis_us"] else "")
                )
    finally:
        stop(upstream)
        if redis is not None:
            stop(redis)


if __name__ == "__main__":
    main()
