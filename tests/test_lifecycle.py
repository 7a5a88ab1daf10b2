"""Process lifecycle: clean shutdown lets in-flight requests finish, then exits."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

from conftest import ALICE_KEY, UPSTREAM_SECRET, Server, gateway_config, start_gateway, stop


def test_sigterm_lets_an_in_flight_stream_finish(upstream: Server, tmp_path: Path) -> None:
    gw = start_gateway(gateway_config(upstream.port), tmp_path, {"TEST_UPSTREAM_KEY": UPSTREAM_SECRET})
    try:
        body = json.dumps(
            {"model": "slow-stream", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        ).encode()
        with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {ALICE_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            received = b""
            while b"data: " not in received:  # wait until the stream is under way
                chunk = sock.recv(65536)
                assert chunk, "gateway closed the connection before streaming"
                received += chunk
            gw.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            while b"data: [DONE]" not in received and time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        assert b"data: [DONE]" in received, received[-300:]
        assert len(re.findall(rb'"content":" ?word\d+ ', received)) == 100
        assert gw.proc.wait(15) == 0
    finally:
        stop(gw.proc)


def _start_worker_and_report_gc(config: str, report: Any) -> None:
    """A worker as Granian starts one (the factory, then `__rsgi_init__`); sends what its
    garbage collector was left with."""
    import asyncio
    import gc
    import os

    from tollway.server.app import CONFIG_ENV, create_app

    os.environ[CONFIG_ENV] = config
    gateway = create_app()
    loop = asyncio.new_event_loop()
    gateway.__rsgi_init__(loop)
    report.send((gc.get_threshold(), gc.get_freeze_count()))
    gateway.__rsgi_del__(loop)


def test_a_worker_freezes_what_startup_built_and_raises_the_first_gc_threshold(tmp_path: Path) -> None:
    import gc
    import multiprocessing

    from tollway.server.app import GC_THRESHOLD

    config = tmp_path / "tollway.toml"
    config.write_text(
        f'[ledger]\npath = "{tmp_path / "ledger.db"}"\n'
        '[[providers]]\nname = "mock"\nkind = "mock"\n'
        '[[models]]\nname = "mock-gpt"\nprovider = "mock"\n'
    )
    ctx = multiprocessing.get_context("fork")  # the worker's collector, not this process's
    receive, send = ctx.Pipe(duplex=False)
    worker = ctx.Process(target=_start_worker_and_report_gc, args=(str(config), send))
    worker.start()
    try:
        assert receive.poll(60), "the worker did not start"
        threshold, frozen = receive.recv()
    finally:
        worker.join(30)
        if worker.is_alive():
            worker.kill()
    assert threshold == (GC_THRESHOLD, *gc.get_threshold()[1:])
    assert frozen > 1000  # the modules and configuration startup built, at least
    assert gc.get_threshold()[0] != GC_THRESHOLD and gc.get_freeze_count() == 0  # this process untouched
