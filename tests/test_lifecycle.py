"""Process lifecycle: clean shutdown lets in-flight requests finish, then exits."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from pathlib import Path

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


def test_tune_gc_freezes_what_startup_built_and_raises_the_first_threshold() -> None:
    import gc

    from tollway.server.app import GC_THRESHOLD, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 1000  # this process's modules, at least
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
