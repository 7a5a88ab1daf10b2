"""Support for the upstream egress tests (`test_upstream_egress.py`): a private PKI, TLS upstreams
that speak OpenAI's API (with and without client-certificate verification, HTTP/2 by ALPN or
HTTP/1.1 only), real forward proxies (tinyproxy, with and without basic auth) whose logs show
what went through them, and gateway configs that use the per-provider egress keys.

Every server is a subprocess on a free loopback port; readiness is polled with a deadline.

tinyproxy (1.11, Debian bookworm) facts the tests rely on, checked by the fixture tests:
- it logs one `Request (file descriptor N): <request line>` line per request at `LogLevel Info`,
  before it connects upstream, so a tunnel or a forwarded request is in the log by the time its
  response comes back;
- with `BasicAuth`, a CONNECT without `Proxy-Authorization` gets `407 Proxy Authentication
  Required`, but one with wrong credentials gets `401 Unauthorized` (not 407): `refusal_status`
  holds what the proxy actually answers, probed at start.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port, stop

MOCK_APP = "tollway.testing.mock_openai:MockOpenAI"
UPSTREAM_MODEL = "gpt-mock"
PROXY_USER = "gw"
PROXY_PASSWORD = "proxy-pw-5b1e9c"  # tinyproxy's `BasicAuth` takes it as one bare word
PROXY_ENV_VARS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
NO_PROXY_ENV_VARS = ("NO_PROXY", "no_proxy")


# -- the private PKI ------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """PEM files: `ca` signs the servers' certificate (for `127.0.0.1` and `localhost`);
    `client_ca` signs `client_cert`, the only client certificate the mTLS upstream accepts;
    `stranger_cert` is a client certificate from `ca`, which the mTLS upstream does not trust;
    `bundle` is an unrelated CA followed by `ca` (a `ca_file` with several certificates).
    Private keys are PKCS#8 (Granian takes no other)."""

    dir: Path
    ca: Path
    bundle: Path
    client_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path

    def client_context(self, cert: bool = False) -> ssl.SSLContext:
        """A context trusting `ca`, presenting `client_cert` when `cert`."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if cert:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx

    def key_fragments(self, key: Path) -> list[str]:
        """What must never be printed of a private key: the whole PEM and each base64 line."""
        text = key.read_text()
        return [text.strip(), *(line for line in text.splitlines() if line and not line.startswith("-----"))]


def make_pki(directory: Path) -> Pki:
    import trustme
    from cryptography.hazmat.primitives import serialization

    def pkcs8(blob: Any) -> bytes:
        key = serialization.load_pem_private_key(blob.bytes(), password=None)
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def write_leaf(leaf: Any, name: str) -> tuple[Path, Path]:
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        key.write_bytes(pkcs8(leaf.private_key_pem))
        key.chmod(0o600)
        return cert, key

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="tollway test server CA")
    client_ca = trustme.CA(organization_name="tollway test client CA")
    unrelated = trustme.CA(organization_name="tollway test unrelated CA")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    client_ca.cert_pem.write_to_path(str(directory / "client-ca.pem"))
    (directory / "bundle.pem").write_bytes(unrelated.cert_pem.bytes() + ca.cert_pem.bytes())
    server_cert, server_key = write_leaf(ca.issue_cert("127.0.0.1", "localhost"), "server")
    client_cert, client_key = write_leaf(
        client_ca.issue_cert("gateway@tollway.test", common_name="tollway gateway"), "client"
    )
    stranger_cert, stranger_key = write_leaf(ca.issue_cert("stranger@tollway.test", common_name="stranger"), "stranger")
    return Pki(
        directory,
        directory / "ca.pem",
        directory / "bundle.pem",
        directory / "client-ca.pem",
        server_cert,
        server_key,
        client_cert,
        client_key,
        stranger_cert,
        stranger_key,
    )


# -- TLS upstreams ----------------------------------------------------------------------------


@dataclass
class TlsUpstream:
    """The mock OpenAI server (`tollway.testing.mock_openai`) on Granian with TLS."""

    port: int
    proc: subprocess.Popen[bytes]
    context: ssl.SSLContext  # trusts the server; presents the client certificate when required
    log: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def request(self, method: str, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=self.context)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> dict[str, Any]:
        status, body = self.request("GET", path)
        assert status == 200, body
        return json.loads(body)  # type: ignore[no-any-return]

    def last(self) -> dict[str, Any]:
        """Headers, body and HTTP version (`"2"` or `"1.1"`) of the last chat request."""
        return self.get_json("/_mock/last")

    def requests(self) -> int:
        return int(self.get_json("/_mock/stats")["requests"])

    def stop(self) -> None:
        stop(self.proc, timeout=10)


def start_tls_upstream(pki: Pki, *, client_verify: bool = False, http: str = "auto") -> TlsUpstream:
    """`http="auto"` offers h2 and http/1.1 by ALPN; `http="1"` offers only http/1.1.
    With `client_verify`, the handshake requires a client certificate from `pki.client_ca`."""
    port = free_port()
    args = [sys.executable, "-m", "granian", "--interface", "rsgi", "--factory", "--no-ws", "--workers", "1"]
    args += ["--host", "127.0.0.1", "--port", str(port), "--http", http, "--log-level", "warning"]
    args += ["--ssl-certificate", str(pki.server_cert), "--ssl-keyfile", str(pki.server_key)]
    if client_verify:
        args += ["--ssl-ca", str(pki.client_ca), "--ssl-client-verify"]
    log = Path(tempfile.mkstemp(prefix=f"tls-upstream-{port}-", suffix=".log", dir=pki.dir)[1])
    with log.open("wb") as out:  # a file, not a pipe nobody reads (a full pipe would stall it)
        proc = subprocess.Popen([*args, MOCK_APP], stdout=out, stderr=subprocess.STDOUT)
    server = TlsUpstream(port, proc, pki.client_context(cert=client_verify), log)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the TLS upstream exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError):
            if server.request("GET", "/v1/models")[0] == 200:
                return server
        if time.monotonic() > deadline:
            server.stop()
            raise TimeoutError(f"the TLS upstream on port {port} was not ready within 20 s:\n{log.read_text()}")
        time.sleep(0.05)


# -- forward proxies (tinyproxy) ----------------------------------------------------------------


def tinyproxy_binary() -> str:
    """The path of `tinyproxy` (the Debian package). Skips the test when it is missing, except in
    CI (`$CI` set), where a skipped proxy test would hide a broken environment: there it fails."""
    found = shutil.which("tinyproxy") or next(
        (p for p in ("/usr/bin/tinyproxy", "/usr/sbin/tinyproxy", "/usr/local/bin/tinyproxy") if os.path.exists(p)),
        None,
    )
    if found is None:
        message = "tinyproxy is not installed (apt-get install tinyproxy); the upstream proxy support is untested"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI requires it)", pytrace=False)
        pytest.skip(message)
    return found


REQUEST_LINE = re.compile(r"Request \(file descriptor \d+\): (.+?)\s*$")


@dataclass
class Proxy:
    """A tinyproxy on a free loopback port, logging every request it is asked to make."""

    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    config: Path
    credentials: tuple[str, str] | None
    refusal_status: int | None = None  # what it answers to wrong credentials (401 for tinyproxy 1.11)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def mark(self) -> int:
        """Where the log ends now; `requests_since(mark)` reads what was asked of it after."""
        return self.log.stat().st_size

    def requests_since(self, mark: int) -> list[str]:
        """Request lines (`CONNECT host:port HTTP/1.1`, `POST http://... HTTP/1.1`) logged after `mark`."""
        with self.log.open("rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        return [m.group(1) for line in text.splitlines() if (m := REQUEST_LINE.search(line))]

    def wait_request(self, mark: int, prefix: str, deadline_s: float = 5.0) -> list[str]:
        """The request lines since `mark`, once one starts with `prefix` (polled with a deadline)."""
        deadline = time.monotonic() + deadline_s
        while True:
            seen = self.requests_since(mark)
            if any(line.startswith(prefix) for line in seen):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"the proxy on port {self.port} logged no `{prefix}...` request; it saw {seen}")
            time.sleep(0.02)

    def connect(self, target: str, authorization: str | None = None) -> tuple[int, socket.socket]:
        """Send `CONNECT target` directly; return the proxy's status and the open socket."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        if authorization is not None:
            head += f"Proxy-Authorization: Basic {base64.b64encode(authorization.encode()).decode()}\r\n"
        sock.sendall(head.encode() + b"\r\n")
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        status_line = received.split(b"\r\n", 1)[0].decode(errors="replace")
        match = re.match(r"HTTP/1\.[01] (\d{3})", status_line)
        if match is None:
            sock.close()
            raise AssertionError(f"the proxy answered CONNECT with {received!r}")
        return int(match.group(1)), sock

    def stop(self) -> None:
        stop(self.proc, timeout=10)


def start_tinyproxy(directory: Path, connect_ports: list[int], credentials: tuple[str, str] | None = None) -> Proxy:
    """A tinyproxy allowing CONNECT to `connect_ports` only, with basic auth when `credentials`."""
    binary = tinyproxy_binary()
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log, config = directory / f"tinyproxy-{port}.log", directory / f"tinyproxy-{port}.conf"
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Allow 127.0.0.1",
        "Timeout 30",
        "MaxClients 50",
        f'LogFile "{log}"',
        "LogLevel Info",
        "DisableViaHeader Yes",
        *(f"ConnectPort {p}" for p in connect_ports),
    ]
    if credentials is not None:
        lines.append(f"BasicAuth {credentials[0]} {credentials[1]}")
    config.write_text("\n".join(lines) + "\n")
    log.touch()
    stderr = directory / f"tinyproxy-{port}.stderr"
    # `-d`: stay in the foreground, so this process is the proxy and SIGTERM stops it.
    with stderr.open("wb") as err:
        proc = subprocess.Popen([binary, "-d", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=err)
    proxy = Proxy(port, proc, log, config, credentials)
    deadline = time.monotonic() + 10
    while "Accepting connections" not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            raise RuntimeError(
                f"tinyproxy exited with {proc.returncode}:\n{stderr.read_text(errors='replace')}"
                f"\n{log.read_text(errors='replace')}"
            )
        if time.monotonic() > deadline:
            proxy.stop()
            raise TimeoutError(f"tinyproxy on port {port} not ready within 10 s:\n{log.read_text(errors='replace')}")
        time.sleep(0.02)
    if credentials is not None and connect_ports:
        status, sock = proxy.connect(f"127.0.0.1:{connect_ports[0]}", f"{credentials[0]}:not-{credentials[1]}")
        sock.close()
        proxy.refusal_status = status
    return proxy


def clear_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every proxy variable from this process's environment, which the gateways inherit
    (`start_gateway` starts them with `os.environ` plus the test's variables)."""
    for name in (*PROXY_ENV_VARS, *NO_PROXY_ENV_VARS):
        monkeypatch.delenv(name, raising=False)


# -- gateway configs ----------------------------------------------------------------------------


def toml_value(value: object) -> str:
    """A TOML value: strings and numbers as JSON spells them, a dict as an inline table."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def provider(name: str, base_url: str, **keys: object) -> str:
    """An OpenAI-kind `[[providers]]` table with the upstream key from `$TEST_UPSTREAM_KEY`."""
    extra = "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items())
    return (
        f'[[providers]]\nname = "{name}"\nkind = "openai"\nbase_url = "{base_url}/v1"\n'
        f'api_key = {{ env = "TEST_UPSTREAM_KEY" }}\n{extra}\n'
        f'[[models]]\nname = "{name}"\nprovider = "{name}"\nupstream = "{UPSTREAM_MODEL}"\n\n'
    )


def gateway_config(*providers: str) -> str:
    """`[server]` on loopback with short upstream timeouts, the given providers (each also a model
    of its own name), and the admin key, ledger and Alice's key of `gateway_support`."""
    from gateway_support import common_tables

    server = '[server]\nhost = "127.0.0.1"\n\n[server.timeouts]\nconnect = 3\nfirst_byte = 5\nidle = 5\ntotal = 15\n\n'
    return server + "".join(providers) + common_tables()


def error_of(body: bytes) -> dict[str, Any]:
    """The OpenAI-style `error` object of a gateway error response."""
    payload = json.loads(body)
    assert set(payload) == {"error"}, payload
    error: dict[str, Any] = payload["error"]
    assert error["request_id"], error
    return error
