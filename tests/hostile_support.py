"""Helpers for the hostile-upstream tests (`test_upstream_hostile.py`, `test_upstream_memory.py`,
`test_upstream_abandoned.py`): the misbehaving provider (`hostile_upstream.py`) in a subprocess,
a gateway configured in front of it, calls in either client API with a nonce per request, the
verdicts on an answer (the caller's own, or a clean gateway error), and the memory of the
gateway's worker process read from `/proc`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import resource
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from conftest import ALICE_KEY, BOB_KEY, Server, free_port, key_hash, start_gateway, stop, wait_http
from gateway_support import ADMIN_KEY, record

HERE = Path(__file__).resolve().parent
MIB = 1 << 20
SCENARIOS = (
    "ok",
    "interim-100",
    "interim-103",
    "double-response",
    "double-response-late",
    "endless-headers",
    "gzip-bomb",
    "brotli-bomb",
    "zstd-bomb",
    "slow-drip",
    "early-close",
    "firehose",
    "trickle",
    "hold",
)
UPSTREAM_KEY = "sk-hostile-upstream-key"

__all__ = ["ALICE_KEY", "BOB_KEY", "record"]

T = TypeVar("T")


# -- processes ---------------------------------------------------------------------------------------
def start_hostile(cache_dir: Path) -> Server:
    """The misbehaving provider on a free port; its compression bombs are kept in `cache_dir`."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "hostile_upstream.py"), "--port", str(port), "--cache-dir", str(cache_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(port, "/_hostile/stats", proc, deadline_s=60)  # the first start builds the bombs
    except BaseException:
        stop(proc, timeout=5)
        raise
    return Server(port, proc)


def hostile_config(
    upstream_port: int,
    *,
    max_connections_per_host: int | None = None,
    connect: float = 2,
    first_byte: float = 5,
    idle: float = 5,
    total: float = 60,
) -> str:
    """A gateway whose provider `hostile` is the misbehaving upstream, one model per scenario,
    keys alice and bob, the admin key of `gateway_support`, and a ledger flushed often."""
    limit = f"max_connections_per_host = {max_connections_per_host}" if max_connections_per_host else ""
    models = "\n".join(f'[[models]]\nname = "{m}"\nprovider = "hostile"\n' for m in SCENARIOS)
    return f"""
[server]
host = "127.0.0.1"
{limit}

[server.timeouts]
connect = {connect}
first_byte = {first_byte}
idle = {idle}
total = {total}

[[providers]]
name = "hostile"
kind = "openai"
base_url = "http://127.0.0.1:{upstream_port}/v1"
api_key = {{ env = "TEST_UPSTREAM_KEY" }}

{models}

[[keys]]
name = "alice"
hash = "{key_hash(ALICE_KEY)}"

[[keys]]
name = "bob"
hash = "{key_hash(BOB_KEY)}"

[admin]
key_hash = "{key_hash(ADMIN_KEY)}"

[ledger]
path = "usage.sqlite3"
flush_interval_ms = 20

[logging]
access_log = false
"""


@contextlib.contextmanager
def hostile_gateway(upstream: Server, tmp: Path, **config: Any) -> Iterator[Server]:
    """A gateway in front of `upstream` for the length of a `with` block; its output is checked
    for the provider's key on the way out."""
    gw = start_gateway(hostile_config(upstream.port, **config), tmp, {"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    try:
        yield gw
    finally:
        assert UPSTREAM_KEY not in stop(gw.proc)


def raise_open_files_limit(wanted: int = 16384) -> None:
    """Raise this process's soft RLIMIT_NOFILE (processes started afterwards inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@contextlib.contextmanager
def running_hostile(tmp_path_factory: Any) -> Iterator[Server]:
    """The misbehaving provider for a test module; its bombs are cached for the whole session.
    The open-files limit is raised first: it inherits it, and so do gateways started later."""
    cache = tmp_path_factory.getbasetemp() / "hostile-bombs"
    cache.mkdir(exist_ok=True)
    raise_open_files_limit()
    server = start_hostile(cache)
    try:
        yield server
    finally:
        stop(server.proc, timeout=5)


# -- the upstream's statistics ----------------------------------------------------------------------
def stats(upstream: Server) -> dict[str, Any]:
    return upstream.get_json("/_hostile/stats")


def scenario_stats(upstream: Server, scenario: str) -> dict[str, int]:
    counts: dict[str, int] = stats(upstream)["scenarios"].get(scenario, {})
    return {"connections": 0, "requests": 0, "peer_closed": 0, "late_sent": 0, **counts}


def reset(upstream: Server) -> None:
    status, _, body = upstream.request("POST", "/_hostile/reset")
    assert status == 200, body


def connection_of(upstream: Server, nonce: str) -> int:
    """The upstream connection number that carried the request with `nonce`."""
    found = [r["conn"] for r in stats(upstream)["requests_log"] if r["nonce"] == nonce]
    assert len(found) == 1, f"the upstream saw {len(found)} requests with nonce {nonce!r}"
    return int(found[0])


def poll(what: str, probe: Callable[[], T | None], deadline_s: float, interval_s: float = 0.02) -> T:
    """`probe()` until it returns something true, within a deadline; that value."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {deadline_s:g}s")
        time.sleep(interval_s)


# -- calls -----------------------------------------------------------------------------------------
def nonce(who: str) -> str:
    return f"nonce-{who}-{uuid.uuid4().hex[:12]}"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float

    @property
    def request_id(self) -> str:
        return self.headers.get("x-request-id", "")


def chat(
    gw: Server,
    model: str,
    text: str,
    *,
    key: str = ALICE_KEY,
    stream: bool = False,
    api: str = "openai",
    timeout: float = 30,
) -> Reply:
    """One request whose last user message is `text`, in the OpenAI or Anthropic API."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    if stream:
        body["stream"] = True
    if api == "anthropic":
        body["max_tokens"] = 100
        headers["anthropic-version"] = "2023-06-01"
    path = "/v1/messages" if api == "anthropic" else "/v1/chat/completions"
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body).encode(), headers)
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, time.monotonic() - started)
    finally:
        conn.close()


def raw_request(gw: Server, model: str, text: str, *, stream: bool = True, api: str = "openai") -> bytes:
    """The bytes of a request for a raw socket (`Connection: close`)."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    path, extra = "/v1/chat/completions", ""
    if api == "anthropic":
        body["max_tokens"] = 100
        path, extra = "/v1/messages", "anthropic-version: 2023-06-01\r\n"
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{gw.port}\r\nauthorization: Bearer {ALICE_KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n{extra}connection: close\r\n\r\n"
    )
    return head.encode() + payload


def open_raw(gw: Server, request: bytes, rcvbuf: int | None = None) -> socket.socket:
    """A client socket that has sent `request` (with a small receive buffer if asked, so that
    the kernel holds little of what the gateway sends)."""
    sock = socket.socket()
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", gw.port))
        sock.sendall(request)
    except BaseException:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def raw_clients(gw: Server, requests: Iterable[bytes]) -> Iterator[list[socket.socket]]:
    """One client socket per request, all sent; every one is closed when the block ends (the
    clients disconnect together)."""
    socks: list[socket.socket] = []
    try:
        for request in requests:
            socks.append(open_raw(gw, request))
        yield socks
    finally:
        for sock in socks:
            sock.close()


# -- verdicts on a reply -----------------------------------------------------------------------------
def answer_text(reply: Reply, api: str = "openai") -> str:
    """The assistant text of a 200 answer, streamed or not, in either API."""
    ctype = reply.headers.get("content-type", "")
    if not ctype.startswith("text/event-stream"):
        doc = json.loads(reply.body)
        if api == "anthropic":
            return "".join(block.get("text", "") for block in doc["content"])
        return str(doc["choices"][0]["message"]["content"])
    out = []
    for line in reply.body.split(b"\n"):
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        event = json.loads(line[6:])
        if api == "anthropic":
            if event.get("type") == "content_block_delta":
                out.append(event["delta"].get("text", ""))
        else:
            for choice in event.get("choices", []):
                out.append(choice.get("delta", {}).get("content") or "")
    return "".join(out)


def stream_complete(reply: Reply, api: str = "openai") -> bool:
    """Whether a streamed body ends with its API's end event and carries no error event."""
    body = reply.body.rstrip()
    if api == "anthropic":
        return body.endswith(b'"type":"message_stop"}') and b"event: error" not in body
    return body.endswith(b"data: [DONE]") and b'"error":' not in body


def assert_own_answer(reply: Reply, text: str, *, stream: bool = False, api: str = "openai") -> None:
    """A 200 carrying the answer to this very request, complete."""
    assert reply.status == 200, f"expected 200 with its own answer, got {reply.status}: {reply.body[:300]!r}"
    got = answer_text(reply, api)
    assert got == f"answer to {text}", f"expected the answer to {text!r}, got {got[:200]!r}"
    if stream:
        assert stream_complete(reply, api), f"the stream did not end properly: {reply.body[-300:]!r}"


def assert_clean_error(reply: Reply, statuses: tuple[int, ...] = (502, 504), code: str | None = None) -> None:
    """A gateway error in OpenAI's format, carrying the request id, with one of `statuses`."""
    assert reply.status in statuses, f"expected one of {statuses}, got {reply.status}: {reply.body[:300]!r}"
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    error = json.loads(reply.body)["error"]
    assert error["type"] == "upstream_error", error
    assert error["request_id"] == reply.request_id != "", (error, reply.headers)
    if code is not None:
        assert error["code"] == code, error


def assert_own_answer_or_clean_error(reply: Reply, text: str, *, stream: bool = False) -> None:
    if reply.status == 200:
        assert_own_answer(reply, text, stream=stream)
    else:
        assert_clean_error(reply)


# -- the worker's memory -----------------------------------------------------------------------------
def worker_pid(gw: Server) -> int:
    """The one worker process of a gateway (the child of `tollway serve`)."""
    pid = gw.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, f"expected one worker under {pid}, found {children}"
    return int(children[0])


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak RSS) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


def rss(pid: int) -> int:
    return memory(pid)["VmRSS"]


def peak(pid: int) -> int:
    return memory(pid)["VmHWM"]


def mib(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


class PeakGrowth:
    """How far a process's resident memory rose above its level at the start of a `with` block,
    at its highest: the kernel's peak (VmHWM) is reset to the current RSS on entry (writing 5
    to `/proc/<pid>/clear_refs`) and read on exit."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = 0
        self.growth = 0

    def __enter__(self) -> PeakGrowth:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self.base = rss(self.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth = peak(self.pid) - self.base
