"""What a translated stream costs: an OpenAI-format client streaming through tollway from an
OpenAI-format upstream (passthrough: the native relay) and from an Anthropic-format upstream
(translated event by event), measured with wrk in one run.

    .venv/bin/python benches/translated_stream.py                 # 3 rounds of 5 s measurements
    .venv/bin/python benches/translated_stream.py --duration 10 --rounds 1 --words 14,256

Both upstreams are the same server, `tollway.testing.mock_providers --event-delay-ms 0`: events
written back to back, no artificial delay, the same answer in both formats (`--words` words of
text in as many text events; 14 words is the mock's usual answer in 4 events). The gateway runs
one worker with its shipped defaults (ledger, metrics, access log). For each answer length and
each path, it measures requests/s at `--connections` (default 16), gateway CPU per request
(from /proc, robust to what else the machine runs) and latency p50 at one connection; the two
paths take turns, `--rounds` times, and the medians and their ratios translated / passthrough
are printed. The machine is shared and noisy: compare within one run. With 16 connections the
mock upstream (one Python process) shares the cores and bounds the throughput of both paths:
CPU per request is the figure that isolates the gateway.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from e2e_overhead import KEY, cpu_seconds, free_port, stop, wait_ready, wrk

MESSAGES = [{"role": "user", "content": "Write one short sentence about foxes."}]
UPSTREAM_MODELS = {"passthrough": ("oa", "gpt-4o-mini"), "translated": ("an", "claude-haiku-4-5")}


def upstream_name(base: str, words: int) -> str:
    """The mock's model name: its usual answer, or `long-<n>` (n words, one per event)."""
    return base if words == 14 else f"{base}-long-{words}"


def start_gateway(mock_port: int, words: list[int], workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    models = "".join(
        f'[[models]]\nname = "{path}-{n}"\nprovider = "{provider}"\nupstream = "{upstream_name(model, n)}"\n'
        for path, (provider, model) in UPSTREAM_MODELS.items()
        for n in words
    )
    config = workdir / f"bench-{port}.toml"
    config.write_text(
        f'[server]\nworkers = 1\nlog_level = "warning"\n'
        f'[[providers]]\nname = "oa"\nkind = "openai"\nbase_url = "http://127.0.0.1:{mock_port}/v1"\n'
        'api_key = { env = "BENCH_UPSTREAM_KEY" }\n'
        f'[[providers]]\nname = "an"\nkind = "anthropic"\nbase_url = "http://127.0.0.1:{mock_port}/v1"\n'
        'api_key = { env = "BENCH_UPSTREAM_KEY" }\n'
        f"{models}"
        f'[[keys]]\nname = "bench"\nhash = "sha256:{hashlib.sha256(KEY.encode()).hexdigest()}"\n'
        f'[ledger]\npath = "{workdir / "usage.sqlite3"}"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollway.cli", "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "BENCH_UPSTREAM_KEY": "sk-bench"},
    )
    wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
    return proc, port


def body_for(model: str) -> dict[str, object]:
    return {"model": model, "messages": MESSAGES, "stream": True}


def check_stream(url: str, model: str, words: int) -> int:
    """One streamed request, checked: complete, with the whole answer. Returns its event count."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body_for(model)).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {KEY}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        payload = response.read()
    events = [line[6:] for line in payload.split(b"\n") if line.startswith(b"data: ")]
    if events[-1] != b"[DONE]":
        raise SystemExit(f"{model}: the stream did not end with [DONE]:\n{payload.decode()[-500:]}")
    text = "".join(
        choice["delta"].get("content") or "" for e in events[:-1] for choice in json.loads(e).get("choices", [])
    )
    if len(text.split()) != words:
        raise SystemExit(f"{model}: expected {words} words, got {len(text.split())}: {text!r}")
    return len(events)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per path, taken in turns")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--words", default="14,256", help="comma-separated answer lengths (words = text events)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required: apt-get install wrk")
    words = [int(w) for w in args.words.split(",") if w]

    mock_port = free_port()
    mock = subprocess.Popen(
        [sys.executable, "-m", "tollway.testing.mock_providers", "--port", str(mock_port), "--event-delay-ms", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    workdir = Path(tempfile.mkdtemp())
    gateway = None
    try:
        wait_ready(f"http://127.0.0.1:{mock_port}/_mock/health", mock)
        gateway, port = start_gateway(mock_port, words, workdir)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        print(
            f"tollway translated vs passthrough streams: {args.duration}s per measurement, wrk -t1, "
            f"one gateway worker, OpenAI-format client, mock upstream without event delay"
        )
        for n in words:
            events = {path: check_stream(url, f"{path}-{n}", n) for path in UPSTREAM_MODELS}
            print(f"\n[{n} words: {events['passthrough']} events to the client either way]")
            runs: dict[str, list[dict[str, float]]] = {path: [] for path in UPSTREAM_MODELS}
            for _ in range(args.rounds):
                for path in UPSTREAM_MODELS:
                    body = body_for(f"{path}-{n}")
                    wrk(url, body, 4, 1, True)  # warm the pool and the caches
                    cpu_before = cpu_seconds(gateway.pid)
                    throughput = wrk(url, body, args.connections, args.duration, True)
                    cpu_us = (cpu_seconds(gateway.pid) - cpu_before) / (throughput["rps"] * args.duration) * 1e6
                    latency = wrk(url, body, 1, args.duration, True)
                    run = {"rps": throughput["rps"], "cpu_us": cpu_us, "p50_ms": latency["p50_ms"]}
                    runs[path].append(run)
                    print(
                        f"  {path:>11}: {run['rps']:7.0f} req/s at {args.connections} connections, "
                        f"gateway CPU {cpu_us:7.1f} us/request, p50 {run['p50_ms']:.3f} ms at 1 connection"
                    )
            a = {k: statistics.median(r[k] for r in runs["passthrough"]) for k in ("rps", "cpu_us", "p50_ms")}
            b = {k: statistics.median(r[k] for r in runs["translated"]) for k in ("rps", "cpu_us", "p50_ms")}
            print(
                f"  medians: passthrough {a['rps']:.0f} req/s, {a['cpu_us']:.1f} us, p50 {a['p50_ms']:.3f} ms; "
                f"translated {b['rps']:.0f} req/s, {b['cpu_us']:.1f} us, p50 {b['p50_ms']:.3f} ms\n"
                f"  translated / passthrough: req/s {b['rps'] / a['rps']:.2f}x, "
                f"gateway CPU per request {b['cpu_us'] / a['cpu_us']:.2f}x (+{b['cpu_us'] - a['cpu_us']:.1f} us, "
                f"+{(b['cpu_us'] - a['cpu_us']) / events['translated']:.2f} us per event), "
                f"p50 {b['p50_ms'] / a['p50_ms']:.2f}x (+{b['p50_ms'] - a['p50_ms']:.3f} ms)"
            )
    finally:
        if gateway is not None:
            stop(gateway)
        stop(mock)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
