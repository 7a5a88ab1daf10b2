"""The yardstick gateway: a bare Granian + aiohttp passthrough, with nothing of tollway's.

An RSGI app that forwards each `POST /v1/chat/completions` body to the upstream with one pooled
aiohttp session and returns the answer as it came (streamed chunk by chunk when the upstream
streams). No keys, no policies, no accounting, no translation: what any Python gateway on
Granian costs at the least. `benches/upstream_transport.py` runs it beside tollway.

    UPSTREAM=http://127.0.0.1:9000 granian --interface rsgi --factory benches.passthrough:app
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp


class Passthrough:
    def __init__(self) -> None:
        self.upstream = os.environ["UPSTREAM"].rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    def __rsgi_init__(self, loop: Any) -> None:
        async def start() -> None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256),
                timeout=aiohttp.ClientTimeout(total=600),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
            )

        loop.run_until_complete(start())

    def __rsgi_del__(self, loop: Any) -> None:
        if self.session is not None:
            loop.run_until_complete(self.session.close())

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        if scope.method == "GET":  # readiness
            proto.response_bytes(200, [("content-type", "text/plain")], b"ok")
            return
        assert self.session is not None
        body = await proto()
        headers = {"content-type": "application/json"}
        async with self.session.post(self.upstream + scope.path, data=body, headers=headers) as resp:
            ctype = resp.headers.get("content-type", "application/json")
            if ctype.startswith("text/event-stream"):
                transport = proto.response_stream(resp.status, [("content-type", ctype)])
                async for chunk in resp.content.iter_any():
                    await transport.send_bytes(chunk)
            else:
                proto.response_bytes(resp.status, [("content-type", ctype)], await resp.read())


def app() -> Passthrough:
    return Passthrough()
