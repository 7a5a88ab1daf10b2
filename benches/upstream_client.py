"""The upstream client on its own: tollway's (asyncio + llhttp) against aiohttp, same mock
upstream, same machine, one run. This is the measurement behind replacing aiohttp.

    .venv/bin/python benches/upstream_client.py [--requests 5000] [--concurrency 16]

Prints, for each client, the mean latency of sequential requests, the requests/s with
`--concurrency` requests in flight, and the client process's own CPU time per request (the
number that matters in the gateway, where the client shares one core with everything else;
requests/s here is bounded by the mock upstream), and the ratios tollway/aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import uvloop

from tollway.config.schema import Timeouts
from tollway.upstream import Endpoint, UpstreamClient

BODY = orjson.dumps({"model": "bench", "messages": [{"role": "user", "content": "Write one sentence about foxes."}]})
HEADERS = {"content-type": "application/json"}
TIMEOUTS = Timeouts()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def measure(one: Callable[[], Awaitable[bytes]], n: int, concurrency: int) -> tuple[float, float, float]:
    for _ in range(300):
        await one()
    started = time.perf_counter()
    for _ in range(n):
        await one()
    sequential_us = (time.perf_counter() - started) / n * 1e6

    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*[worker(n // concurrency) for _ in range(concurrency)])
    done = (n // concurrency) * concurrency
    rps = done / (time.perf_counter() - started)
    cpu_us = (time.process_time() - cpu) / done * 1e6
    return sequential_us, rps, cpu_us


async def run(url: str, n: int, concurrency: int) -> None:
    client = UpstreamClient()
    endpoint = Endpoint.parse(url)

    async def tollway_one() -> bytes:
        resp, deadline = await client.post("bench", endpoint, BODY, HEADERS, TIMEOUTS)
        return await resp.read(deadline)

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None),
        cookie_jar=aiohttp.DummyCookieJar(),
    )

    async def aiohttp_one() -> bytes:
        async with session.post(url, data=BODY, headers=HEADERS) as resp:
            return await resp.read()

    results = {}
    for name, one in (("aiohttp", aiohttp_one), ("tollway", tollway_one)):
        lat, rps, cpu = results[name] = await measure(one, n, concurrency)
        print(f"{name:8s} sequential {lat:6.0f} us/request   {concurrency} in flight {rps:7.0f} req/s", end="")
        print(f", {cpu:5.1f} us CPU/request")
    await session.close()
    await client.close()
    (a_lat, a_rps, a_cpu), (t_lat, t_rps, t_cpu) = results["aiohttp"], results["tollway"]
    print(f"tollway/aiohttp: latency {t_lat / a_lat:.2f}x, throughput {t_rps / a_rps:.2f}x", end="")
    print(f", CPU/request {t_cpu / a_cpu:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "tollway.testing.mock_openai", "--port", str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        uvloop.run(run(f"http://127.0.0.1:{port}/v1/chat/completions", args.requests, args.concurrency))
    finally:
        upstream.terminate()
        upstream.wait(10)


if __name__ == "__main__":
    main()
