"""The upstream client on its own: tollway's (the native transport, hyper on a runtime thread)
against aiohttp, same mock upstream, same machine, one run.

    .venv/bin/python benches/upstream_client.py [--requests 5000] [--concurrency 16]

Prints, for each client, the mean latency of sequential requests, the requests/s with
`--concurrency` requests in flight, and the client process's own CPU time per request (all its
threads: tollway's runtime thread included), and the ratios tollway/aiohttp. The event loop's
own share (the thread that also serves the gateway's requests) is printed apart: it is what the
native client takes off the thread that runs Python.
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

from tollway.config.schema import ProviderConfig, Timeouts, UpstreamLimits
from tollway.upstream import UpstreamClient

BODY = orjson.dumps({"model": "bench", "messages": [{"role": "user", "content": "Write one sentence about foxes."}]})
HEADERS = {"content-type": "application/json"}
TIMEOUTS = Timeouts()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def measure(one: Callable[[], Awaitable[bytes]], n: int, concurrency: int) -> tuple[float, float, float, float]:
    for _ in range(300):
        await one()
    started = time.perf_counter()
    for _ in range(n):
        await one()
    sequential_us = (time.perf_counter() - started) / n * 1e6

    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    started, cpu, loop_cpu = time.perf_counter(), time.process_time(), time.thread_time()
    await asyncio.gather(*[worker(n // concurrency) for _ in range(concurrency)])
    done = (n // concurrency) * concurrency
    rps = done / (time.perf_counter() - started)
    cpu_us = (time.process_time() - cpu) / done * 1e6
    loop_us = (time.thread_time() - loop_cpu) / done * 1e6
    return sequential_us, rps, cpu_us, loop_us


async def run(url: str, n: int, concurrency: int) -> None:
    client = UpstreamClient()
    egress = client.egress(ProviderConfig(name="bench", kind="openai", base_url=url), TIMEOUTS, UpstreamLimits(), None)
    endpoint = egress.endpoint(url)

    async def tollway_one() -> bytes:
        return (await egress.post("bench", endpoint, BODY, HEADERS, TIMEOUTS)).payload

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
        lat, rps, cpu, loop_cpu = results[name] = await measure(one, n, concurrency)
        print(f"{name:8s} sequential {lat:6.0f} us/request   {concurrency} in flight {rps:7.0f} req/s", end="")
        print(f", {cpu:5.1f} us CPU/request ({loop_cpu:5.1f} on the event loop's thread)")
    await session.close()
    await client.close()
    (a_lat, a_rps, a_cpu, a_loop), (t_lat, t_rps, t_cpu, t_loop) = results["aiohttp"], results["tollway"]
    print(f"tollway/aiohttp: latency {t_lat / a_lat:.2f}x, throughput {t_rps / a_rps:.2f}x", end="")
    print(f", CPU/request {t_cpu / a_cpu:.2f}x, on the event loop {t_loop / a_loop:.2f}x")


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
