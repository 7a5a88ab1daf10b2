"""Fixtures that run real processes: the mock upstreams and `tollway serve`.

Every server is a subprocess on a free loopback port, started once per session where it can be
shared, and stopped (SIGTERM, then SIGKILL after a deadline) at the end. Readiness is polled
with a deadline, never slept for.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_SECRET = "sk-upstream-secret-value-7f3a"
ALICE_KEY = "tw-test-alice-key"
BOB_KEY = "tw-test-bob-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def key_hash(key: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


# Processes whose output goes to a file rather than a pipe (`start_gateway`): `stop` reads it there.
_OUTPUT_FILES: weakref.WeakKeyDictionary[subprocess.Popen[bytes], Path] = weakref.WeakKeyDictionary()


def wait_http(port: int, path: str, proc: subprocess.Popen[bytes], deadline_s: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            if proc in _OUTPUT_FILES:
                out = _OUTPUT_FILES[proc].read_text(errors="replace")
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready:\n{out}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"server on port {port} not ready within {deadline_s}s")


# `tollway serve` gives a worker that does not stop on SIGTERM 30 s (Granian's
# `workers_kill_timeout`) before it kills it; wait past that before killing anything ourselves.
STOP_TIMEOUT_S = 35.0


def stop(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> str:
    """SIGTERM, wait, SIGKILL if needed; return everything it printed.

    The SIGKILL goes to the process group when the process leads one (`start_gateway` starts
    each gateway in its own session): killing only Granian's parent would leave its workers
    running, holding the output pipe open (reading it would then block)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait(5)
    if proc in _OUTPUT_FILES:
        return _OUTPUT_FILES[proc].read_text(errors="replace")
    if proc.stdout is None or proc.stdout.closed:
        return ""  # stopped before, and its output read then
    out = proc.stdout.read().decode(errors="replace")
    proc.stdout.close()
    return out


@dataclass
class Server:
    port: int
    proc: subprocess.Popen[bytes]
    output: list[str] = field(default_factory=list)
    # Where its output goes, for processes that write to a file (`start_gateway`).
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> dict:  # type: ignore[type-arg]
        status, _, body = self.request("GET", path)
        assert status == 200, body
        return json.loads(body)  # type: ignore[no-any-return]


def start_upstream() -> Server:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollway.testing.mock_openai", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wait_http(port, "/v1/models", proc)
    return Server(port, proc)


def start_mock_providers() -> Server:
    """The multi-provider mock upstream (`tollway.testing.mock_providers`)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollway.testing.mock_providers", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wait_http(port, "/_mock/health", proc)
    return Server(port, proc)


def start_gateway(config_text: str, tmp: Path, env: dict[str, str] | None = None) -> Server:
    """`tollway serve` on a free port. Its output goes to a file next to its config (`stop`
    returns it): a pipe nobody reads until the end holds 64 KiB, and a gateway that logs more
    (a line per client that left a stream) would block writing to it and stop serving. A gateway
    that does not start is stopped, and the error carries its output."""
    port = free_port()
    config = tmp / f"tollway-{port}.toml"
    config.write_text(config_text)
    log = tmp / f"tollway-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tollway.cli", "serve", "--config", str(config), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its workers can be killed with it (see `stop`)
        )
    _OUTPUT_FILES[proc] = log
    try:
        wait_http(port, "/healthz", proc)
        wait_http(port, "/readyz", proc)
    except BaseException as exc:
        output = stop(proc, timeout=10)
        raise RuntimeError(f"the gateway did not start ({exc}):\n{output}") from None
    return Server(port, proc, log=log)


def gateway_config(upstream_port: int, **server: object) -> str:
    server_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in server.items())
    models = [
        "fail-500",
        "fail-503",
        "fail-429",
        "fail-401",
        "fail-400",
        "slow-headers",
        "stall-stream",
        "broken-stream",
        "slow-stream",
        "not-json",
    ]
    model_tables = "\n".join(f'[[models]]\nname = "{m}"\nprovider = "up"\n' for m in models)
    return f"""
[server]
host = "127.0.0.1"
{server_lines}

[server.timeouts]
connect = 2
first_byte = 2
idle = 1
total = 10

[[providers]]
name = "up"
kind = "openai"
base_url = "http://127.0.0.1:{upstream_port}/v1"
api_key = {{ env = "TEST_UPSTREAM_KEY" }}

[[providers]]
name = "dead"
kind = "openai"
base_url = "http://127.0.0.1:{free_port()}/v1"

[[providers]]
name = "mock"
kind = "mock"
mock = {{ stream_chunks = 4, reply = "one two three four five six seven eight" }}

[[providers]]
name = "slowmock"
kind = "mock"
mock = {{ latency_ms = 1500 }}

[[models]]
name = "gpt-test"
provider = "up"
upstream = "gpt-mock"

[[models]]
name = "gpt-dead"
provider = "dead"

[[models]]
name = "mock-gpt"
provider = "mock"

[[models]]
name = "mock-slow"
provider = "slowmock"

{model_tables}

[[keys]]
name = "alice"
hash = "{key_hash(ALICE_KEY)}"
team = "research"

[[keys]]
name = "bob"
hash = "{key_hash(BOB_KEY)}"
models = ["gpt-test"]
"""


@pytest.fixture(scope="session")
def upstream() -> Iterator[Server]:
    server = start_upstream()
    yield server
    stop(server.proc)


@pytest.fixture(scope="session")
def mock_providers() -> Iterator[Server]:
    server = start_mock_providers()
    yield server
    stop(server.proc)


@pytest.fixture(scope="session")
def gateway_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway")


@pytest.fixture(scope="session")
def gateway(upstream: Server, gateway_tmp: Path) -> Iterator[Server]:
    server = start_gateway(
        gateway_config(upstream.port, max_body_bytes=65536), gateway_tmp, {"TEST_UPSTREAM_KEY": UPSTREAM_SECRET}
    )
    yield server
    output = stop(server.proc)
    # Secrets never reach the logs, whatever happened during the session.
    assert UPSTREAM_SECRET not in output
    assert ALICE_KEY not in output


@pytest.fixture
def openai_client(gateway: Server) -> Iterator[object]:
    import openai

    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=ALICE_KEY, max_retries=0, timeout=20)
    yield client
    with contextlib.suppress(Exception):
        client.close()


# -- Redis (the shared state backend) --------------------------------------------------------


@dataclass
class RedisServer:
    """A `redis-server` of the test session's own: loopback, a free port, no persistence."""

    port: int
    proc: subprocess.Popen[bytes]
    binary: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL: the port refuses connections until `restart`."""
        self.proc.kill()
        self.proc.wait(5)

    def restart(self) -> None:
        """A new server on the same port, empty."""
        if self.proc.poll() is None:
            self.kill()
        self.proc = _spawn_redis(self.binary, self.port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
        stop(self.proc, timeout=5)


def _spawn_redis(binary: str, port: int) -> subprocess.Popen[bytes]:
    # Its log goes to a file rather than a pipe nobody reads (a full pipe would stall it).
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_redis(proc, port)
        except BaseException:
            log.seek(0)
            raise RuntimeError(f"redis-server did not start:\n{log.read().decode(errors='replace')}") from None
    return proc


def _wait_redis(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.02)
    proc.kill()
    proc.wait(5)
    raise TimeoutError(f"redis-server on port {port} not ready within 10 s")


def redis_tool(name: str) -> str:
    """The path of `redis-server` or `redis-cli` (the system package). Skips the test when it
    is missing, except in CI (`$CI` set), where a skipped Redis test would hide a broken
    environment: there it fails."""
    found = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/local/bin/{name}") if os.path.exists(p)), None
    )
    if found is None:
        message = f"{name} is not installed (apt-get install redis-server); the Redis backend is untested"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI requires it)", pytrace=False)
        pytest.skip(message)
    return found


def start_redis() -> RedisServer:
    """Start a `redis-server` on a free port (see `redis_tool` for when it is not installed)."""
    binary = redis_tool("redis-server")
    port = free_port()
    return RedisServer(port, _spawn_redis(binary, port), binary)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis for the session; tests use their own key prefix or flush it."""
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis for one test, which may kill, freeze or restart it."""
    server = start_redis()
    yield server
    server.stop()


@dataclass
class RedisCluster:
    """A Redis Cluster of three primaries (no replicas) on free loopback ports."""

    nodes: list[subprocess.Popen[bytes]]
    ports: list[int]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def stop(self) -> None:
        for proc in self.nodes:
            stop(proc, timeout=5)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    binary, cli = redis_tool("redis-server"), redis_tool("redis-cli")
    workdir = tmp_path_factory.mktemp("redis-cluster")
    ports = [free_port() for _ in range(3)]
    nodes = [
        subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf", "--dir", str(workdir),
             # The bus port defaults to port + 10000, which may be taken or past 65535.
             "--cluster-port", str(free_port())],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]  # fmt: skip
    cluster = RedisCluster(nodes, ports)
    try:
        for proc, port in zip(nodes, ports, strict=True):
            _wait_redis(proc, port)
        create = [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0"]
        subprocess.run(
            [*create, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 20
        while True:
            info = subprocess.run([cli, "-p", str(ports[0]), "cluster", "info"], capture_output=True, timeout=5)
            if b"cluster_state:ok" in info.stdout:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Redis Cluster did not become ready: {info.stdout.decode()}")
            time.sleep(0.1)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def _close_sdk_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close every `openai`/`anthropic` SDK client a test makes, when the test ends.

    An SDK client keeps a pooled connection open until it is closed or garbage-collected; left
    to the collector, its socket is reported as a `ResourceWarning` in whichever later test
    happens to trigger the collection (and warnings are errors here)."""
    import anthropic
    import openai

    made: list[Any] = []
    for module, name in ((openai, "OpenAI"), (anthropic, "Anthropic")):
        base = getattr(module, name)
        tracked = type(name, (base,), {"__init__": _tracking_init(base, made)})
        monkeypatch.setattr(module, name, tracked)
    yield
    for client in made:
        with contextlib.suppress(Exception):
            client.close()


def _tracking_init(base: type, made: list[Any]) -> Any:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, *args, **kwargs)  # type: ignore[misc]
        made.append(self)

    return __init__
