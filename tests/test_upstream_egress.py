"""The upstream client's egress features, end to end, against real TLS servers and real proxies.

A gateway per test (`tollway serve`, configured for what the test needs) in front of the mock
OpenAI server on Granian with TLS from a private CA (`egress_support`), driven with the official
`openai` SDK (non-streamed and streamed) and raw HTTP:

- `ca_file` trusts a private CA (a single certificate or a bundle, relative to the config file);
  without it the upstream's certificate is not trusted: 502 `upstream_unreachable`;
- `client_cert` + `client_key` (from a file or the environment) satisfy an upstream that requires
  a client certificate; without one, or with one it does not trust, 502; the key is never shown;
- `http2 = "auto"` (the default) speaks HTTP/2 when the TLS server offers it by ALPN, and
  HTTP/1.1 otherwise; `http2 = "never"` always HTTP/1.1;
- a forward proxy (tinyproxy) from `HTTPS_PROXY` / `HTTP_PROXY` (either case), bypassed for hosts
  in `NO_PROXY`; a provider's `proxy` overrides the environment, `proxy = "none"` ignores it;
- proxy basic auth from `proxy_username` / `proxy_password` or from the proxy URL's userinfo;
  wrong or missing credentials give 502 `upstream_unreachable` naming the proxy's refusal, and
  the password is never in the gateway's output, an error body or the usage record.

The first tests check the fixtures themselves (with Python's `ssl` and `http.client`), so that a
failure further down is the gateway's and not the test bench's.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from conftest import ALICE_KEY, UPSTREAM_SECRET, Server, start_gateway, stop
from egress_support import (
    PROXY_PASSWORD,
    PROXY_USER,
    Pki,
    Proxy,
    TlsUpstream,
    clear_proxy_environment,
    error_of,
    gateway_config,
    make_pki,
    provider,
    start_tinyproxy,
    start_tls_upstream,
)
from gateway_support import USER, call, record
from tollway.testing.mock_openai import REPLY

ENV = {"TEST_UPSTREAM_KEY": UPSTREAM_SECRET}
CHAT_PATH = "/v1/chat/completions"

# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_upstream(pki: Pki) -> Iterator[TlsUpstream]:
    """Offers h2 and http/1.1 by ALPN; no client certificate needed."""
    server = start_tls_upstream(pki)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def h1_tls_upstream(pki: Pki) -> Iterator[TlsUpstream]:
    """Offers only http/1.1 by ALPN."""
    server = start_tls_upstream(pki, http="1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_upstream(pki: Pki) -> Iterator[TlsUpstream]:
    """Requires a client certificate from `pki.client_ca`."""
    server = start_tls_upstream(pki, client_verify=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, tls_upstream: TlsUpstream) -> Iterator[Proxy]:
    """An open tinyproxy (CONNECT allowed to the TLS upstream only)."""
    server = start_tinyproxy(tmp_path_factory.mktemp("proxy"), [tls_upstream.port])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def auth_proxy(tmp_path_factory: pytest.TempPathFactory, tls_upstream: TlsUpstream) -> Iterator[Proxy]:
    """A tinyproxy requiring basic auth (`PROXY_USER` / `PROXY_PASSWORD`)."""
    server = start_tinyproxy(tmp_path_factory.mktemp("auth-proxy"), [tls_upstream.port], (PROXY_USER, PROXY_PASSWORD))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateways inherit this process's environment: none of its proxy variables."""
    clear_proxy_environment(monkeypatch)


Start = Callable[..., Server]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Start]:
    """`gateway(*provider_tables, env={...})` starts a gateway with those providers (each also a
    model of its name); every gateway still running is stopped when the test ends."""
    started: list[Server] = []

    def start(*providers: str, env: dict[str, str] | None = None) -> Server:
        server = start_gateway(gateway_config(*providers), tmp_path, {**ENV, **(env or {})})
        started.append(server)
        return server

    yield start
    for server in started:
        stop(server.proc)


def assert_answers(gw: Server, model: str) -> None:
    """The SDK gets the mock's answer through `model`, non-streamed and streamed."""
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=ALICE_KEY, max_retries=0, timeout=20)
    messages = [{"role": "user", "content": "Say hello to the egress tests"}]
    completion = client.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == REPLY
    with client.chat.completions.create(model=model, messages=messages, stream=True) as stream:  # type: ignore[arg-type]
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == REPLY


def assert_unreachable(gw: Server, model: str, stream: bool = False) -> tuple[dict[str, object], str]:
    """The gateway answers 502 `upstream_unreachable`; return the error object and request id."""
    status, headers, body = call(gw, "openai", {"model": model, "messages": USER, "stream": stream})
    assert status == 502, body
    error = error_of(body)
    assert error["code"] == "upstream_unreachable", error
    return error, headers["x-request-id"]


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def copy_into(tmp_path: Path, *files: Path) -> None:
    """Copy files into `tmp_path/certs`, for config paths relative to the config file."""
    certs = tmp_path / "certs"
    certs.mkdir(exist_ok=True)
    for f in files:
        shutil.copy(f, certs / f.name)


# -- the fixtures themselves -------------------------------------------------------------------


def test_fixture_tls_upstreams_offer_h2_or_only_http1_by_alpn(
    pki: Pki, tls_upstream: TlsUpstream, h1_tls_upstream: TlsUpstream
) -> None:
    for server, expected in ((tls_upstream, "h2"), (h1_tls_upstream, "http/1.1")):
        ctx = pki.client_context()
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.selected_alpn_protocol() == expected
    # The private CA is not among the system roots.
    with (
        pytest.raises(ssl.SSLCertVerificationError),
        socket.create_connection(("127.0.0.1", tls_upstream.port), timeout=5) as raw,
    ):
        ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1").close()


def test_fixture_mtls_upstream_requires_a_client_certificate_from_its_ca(pki: Pki, mtls_upstream: TlsUpstream) -> None:
    assert mtls_upstream.request("GET", "/v1/models")[0] == 200  # its context presents `client_cert`
    stranger = pki.client_context()
    stranger.load_cert_chain(str(pki.stranger_cert), str(pki.stranger_key))
    for ctx in (pki.client_context(), stranger):
        # TLS 1.3: the client's side of the handshake completes; the server's alert
        # (certificate required, or unknown CA) arrives on the first read.
        conn = http.client.HTTPSConnection("127.0.0.1", mtls_upstream.port, timeout=5, context=ctx)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            conn.request("GET", "/v1/models")
            conn.getresponse().read()
        conn.close()


def test_fixture_proxy_tunnels_with_connect_and_logs_it(pki: Pki, tls_upstream: TlsUpstream, proxy: Proxy) -> None:
    mark = proxy.mark()
    conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, timeout=5, context=pki.client_context())
    conn.set_tunnel("127.0.0.1", tls_upstream.port)
    try:
        conn.request("GET", "/v1/models")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    seen = proxy.wait_request(mark, f"CONNECT 127.0.0.1:{tls_upstream.port} ")
    assert len(seen) == 1, seen  # one tunnel, nothing else


def test_fixture_auth_proxy_requires_basic_auth_on_connect(tls_upstream: TlsUpstream, auth_proxy: Proxy) -> None:
    target = f"127.0.0.1:{tls_upstream.port}"
    for credentials, expected in (
        (None, 407),
        (f"{PROXY_USER}:wrong", auth_proxy.refusal_status),
        (f"{PROXY_USER}:{PROXY_PASSWORD}", 200),
    ):
        status, sock = auth_proxy.connect(target, credentials)
        sock.close()
        assert status == expected, credentials
    # tinyproxy 1.11 answers wrong credentials with 401 rather than 407.
    assert auth_proxy.refusal_status in (401, 407)


# -- trusting the upstream's certificate: `ca_file` ---------------------------------------------


def test_ca_file_trusts_a_private_ca(gateway: Start, pki: Pki, tls_upstream: TlsUpstream, tmp_path: Path) -> None:
    copy_into(tmp_path, pki.ca)
    gw = gateway(
        provider("private", tls_upstream.url, ca_file="certs/ca.pem"),  # relative to the config file
        provider("bundle", tls_upstream.url, ca_file=str(pki.bundle)),  # an unrelated CA, then ours
    )
    for model in ("private", "bundle"):
        assert_answers(gw, model)
    assert tls_upstream.last()["headers"]["authorization"] == f"Bearer {UPSTREAM_SECRET}"


def test_without_ca_file_a_private_ca_is_not_trusted(gateway: Start, tls_upstream: TlsUpstream) -> None:
    gw = gateway(provider("public", tls_upstream.url))
    before = tls_upstream.requests()
    for stream in (False, True):
        error, _ = assert_unreachable(gw, "public", stream)
        assert "certificate" in str(error["message"]).lower(), error
    assert tls_upstream.requests() == before  # nothing was sent over the untrusted connection


# -- client certificates (mTLS) -------------------------------------------------------------


def test_client_certificate_satisfies_an_upstream_that_requires_one(
    gateway: Start, pki: Pki, mtls_upstream: TlsUpstream, tmp_path: Path
) -> None:
    copy_into(tmp_path, pki.client_cert, pki.client_key)
    gw = gateway(
        provider(
            "mtls-file",
            mtls_upstream.url,
            ca_file=str(pki.ca),
            client_cert="certs/client.pem",
            client_key={"file": "certs/client.key"},
        ),
        provider(
            "mtls-env",
            mtls_upstream.url,
            ca_file=str(pki.ca),
            client_cert=str(pki.client_cert),
            client_key={"env": "TEST_CLIENT_KEY"},
        ),
        env={"TEST_CLIENT_KEY": pki.client_key.read_text()},
    )
    for model in ("mtls-file", "mtls-env"):
        assert_answers(gw, model)
    assert mtls_upstream.last()["headers"]["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    output = stop(gw.proc)
    for fragment in pki.key_fragments(pki.client_key):
        assert fragment not in output


def test_upstream_refuses_no_client_certificate_or_an_untrusted_one(
    gateway: Start, pki: Pki, mtls_upstream: TlsUpstream
) -> None:
    gw = gateway(
        provider("no-cert", mtls_upstream.url, ca_file=str(pki.ca)),
        provider(
            "stranger",
            mtls_upstream.url,
            ca_file=str(pki.ca),
            client_cert=str(pki.stranger_cert),
            client_key={"file": str(pki.stranger_key)},
        ),
    )
    before = mtls_upstream.requests()
    secret = pki.key_fragments(pki.stranger_key)
    for model in ("no-cert", "stranger"):
        for stream in (False, True):
            error, request_id = assert_unreachable(gw, model, stream)
            assert f"`{model}`" in str(error["message"]), error  # names the provider
            shown = json.dumps(error) + json.dumps(record(gw, request_id))
            assert not [f for f in secret if f in shown]
    assert mtls_upstream.requests() == before
    output = stop(gw.proc)
    assert not [f for f in secret if f in output]


# -- HTTP/2 by ALPN ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream_fixture", "http2", "expected"),
    [
        ("tls_upstream", "auto", "2"),
        ("tls_upstream", None, "2"),  # `auto` is the default
        ("tls_upstream", "never", "1.1"),
        ("h1_tls_upstream", "auto", "1.1"),  # the server offers only http/1.1
        ("upstream", "auto", "1.1"),  # plain http: no ALPN, no HTTP/2
    ],
)
def test_http2_by_alpn(
    gateway: Start, pki: Pki, request: pytest.FixtureRequest, upstream_fixture: str, http2: str | None, expected: str
) -> None:
    server: TlsUpstream | Server = request.getfixturevalue(upstream_fixture)
    keys: dict[str, object] = {} if http2 is None else {"http2": http2}
    if isinstance(server, TlsUpstream):
        keys["ca_file"] = str(pki.ca)
    gw = gateway(provider("up", server.url, **keys))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=ALICE_KEY, max_retries=0, timeout=20)
    messages = [{"role": "user", "content": "Which HTTP?"}]
    completion = client.chat.completions.create(model="up", messages=messages)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == REPLY
    assert server.get_json("/_mock/last")["http_version"] == expected
    with client.chat.completions.create(model="up", messages=messages, stream=True) as stream:  # type: ignore[arg-type]
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == REPLY
    assert server.get_json("/_mock/last")["http_version"] == expected


# -- proxies from the environment --------------------------------------------------------------


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy"])
def test_https_proxy_from_the_environment_tunnels_with_connect(
    gateway: Start, pki: Pki, tls_upstream: TlsUpstream, proxy: Proxy, variable: str
) -> None:
    mark = proxy.mark()
    gw = gateway(provider("corp", tls_upstream.url, ca_file=str(pki.ca)), env={variable: proxy.url})
    assert_answers(gw, "corp")
    seen = proxy.wait_request(mark, f"CONNECT 127.0.0.1:{tls_upstream.port} ")
    assert all(line.startswith("CONNECT ") for line in seen), seen  # a tunnel, never plain forwarding
    assert tls_upstream.last()["http_version"] == "2"  # ALPN is end to end, through the tunnel


@pytest.mark.parametrize(
    ("variable", "value", "proxied"),
    [
        ("NO_PROXY", "localhost,127.0.0.1", False),
        ("no_proxy", "127.0.0.1", False),
        ("NO_PROXY", "example.com", True),  # another host: still through the proxy
    ],
)
def test_no_proxy_sends_matching_hosts_direct(
    gateway: Start, pki: Pki, tls_upstream: TlsUpstream, proxy: Proxy, variable: str, value: str, proxied: bool
) -> None:
    mark = proxy.mark()
    gw = gateway(
        provider("corp", tls_upstream.url, ca_file=str(pki.ca)),
        env={"HTTPS_PROXY": proxy.url, variable: value},
    )
    assert_answers(gw, "corp")
    if proxied:
        proxy.wait_request(mark, f"CONNECT 127.0.0.1:{tls_upstream.port} ")
    else:
        # The proxy logs a request before it connects, so the answer came after any log line.
        assert proxy.requests_since(mark) == []


@pytest.mark.parametrize("source", ["HTTP_PROXY", "http_proxy", "provider"])
def test_http_upstream_through_a_proxy_in_absolute_form(
    gateway: Start, upstream: Server, proxy: Proxy, source: str
) -> None:
    mark = proxy.mark()
    if source == "provider":
        gw = gateway(provider("plain", upstream.url, proxy=proxy.url))
    else:
        gw = gateway(provider("plain", upstream.url), env={source: proxy.url})
    assert_answers(gw, "plain")
    seen = proxy.wait_request(mark, f"POST http://127.0.0.1:{upstream.port}{CHAT_PATH} ")
    assert not [line for line in seen if line.startswith("CONNECT ")], seen
    assert upstream.get_json("/_mock/last")["headers"]["authorization"] == f"Bearer {UPSTREAM_SECRET}"


@pytest.mark.parametrize(("scheme", "variable"), [("https", "HTTP_PROXY"), ("http", "HTTPS_PROXY")])
def test_proxy_variable_of_the_other_scheme_is_not_used(
    gateway: Start,
    pki: Pki,
    tls_upstream: TlsUpstream,
    upstream: Server,
    proxy: Proxy,
    scheme: str,
    variable: str,
) -> None:
    mark = proxy.mark()
    if scheme == "https":
        gw = gateway(provider("up", tls_upstream.url, ca_file=str(pki.ca)), env={variable: proxy.url})
    else:
        gw = gateway(provider("up", upstream.url), env={variable: proxy.url})
    assert_answers(gw, "up")
    assert proxy.requests_since(mark) == []


# -- a provider's own proxy ----------------------------------------------------------------------


def test_provider_proxy_overrides_the_environment(
    gateway: Start, pki: Pki, tls_upstream: TlsUpstream, proxy: Proxy, auth_proxy: Proxy
) -> None:
    mark, env_mark = proxy.mark(), auth_proxy.mark()
    gw = gateway(
        provider("corp", tls_upstream.url, ca_file=str(pki.ca), proxy=proxy.url),
        env={"HTTPS_PROXY": auth_proxy.url},  # would refuse: no credentials
    )
    assert_answers(gw, "corp")
    proxy.wait_request(mark, f"CONNECT 127.0.0.1:{tls_upstream.port} ")
    assert auth_proxy.requests_since(env_mark) == []


def test_proxy_none_ignores_the_environment(gateway: Start, pki: Pki, tls_upstream: TlsUpstream, proxy: Proxy) -> None:
    mark = proxy.mark()
    gw = gateway(
        provider("corp", tls_upstream.url, ca_file=str(pki.ca), proxy="none"),
        env={"HTTPS_PROXY": proxy.url, "https_proxy": proxy.url, "ALL_PROXY": proxy.url},
    )
    assert_answers(gw, "corp")
    assert proxy.requests_since(mark) == []


# -- proxy credentials ---------------------------------------------------------------------------


def proxy_secrets(password: str) -> list[str]:
    """A proxy password and the `Proxy-Authorization` value that carries it."""
    return [password, basic(PROXY_USER, password)]


def test_proxy_credentials_from_the_config(
    gateway: Start, pki: Pki, tls_upstream: TlsUpstream, auth_proxy: Proxy
) -> None:
    mark = auth_proxy.mark()
    gw = gateway(
        provider(
            "corp",
            tls_upstream.url,
            ca_file=str(pki.ca),
            proxy=auth_proxy.url,
            proxy_username=PROXY_USER,
            proxy_password={"env": "PROXY_PASSWORD"},
        ),
        env={"PROXY_PASSWORD": PROXY_PASSWORD},
    )
    assert_answers(gw, "corp")
    auth_proxy.wait_request(mark, f"CONNECT 127.0.0.1:{tls_upstream.port} ")
    status, headers, body = call(gw, "openai", {"model": "corp", "messages": USER})
    assert status == 200, body
    shown = json.dumps(record(gw, headers["x-request-id"])) + stop(gw.proc)
    assert not [s for s in proxy_secrets(PROXY_PASSWORD) if s in shown]


def test_wrong_proxy_password_is_refused_and_never_shown(
    gateway: Start, pki: Pki, tls_upstream: TlsUpstream, auth_proxy: Proxy
) -> None:
    wrong = "wrong-proxy-pw-8d2f07"
    gw = gateway(
        provider(
            "corp",
            tls_upstream.url,
            ca_file=str(pki.ca),
            proxy=auth_proxy.url,
            proxy_username=PROXY_USER,
            proxy_password={"env": "PROXY_PASSWORD"},
        ),
        env={"PROXY_PASSWORD": wrong},
    )
    before = tls_upstream.requests()
    secrets = proxy_secrets(wrong)
    for stream in (False, True):
        error, request_id = assert_unreachable(gw, "corp", stream)
        message = str(error["message"])
        # It says the proxy refused, with the status the proxy gave (tinyproxy: 401 for wrong
        # credentials, where the RFC says 407).
        assert "proxy" in message.lower() and str(auth_proxy.refusal_status) in message, message
        shown = json.dumps(error) + json.dumps(record(gw, request_id))
        assert not [s for s in secrets if s in shown]
    assert tls_upstream.requests() == before
    output = stop(gw.proc)
    assert not [s for s in secrets if s in output]


def test_missing_proxy_credentials_are_refused_with_407(
    gateway: Start, pki: Pki, tls_upstream: TlsUpstream, auth_proxy: Proxy
) -> None:
    gw = gateway(provider("corp", tls_upstream.url, ca_file=str(pki.ca), proxy=auth_proxy.url))
    error, _ = assert_unreachable(gw, "corp")
    message = str(error["message"])
    assert "proxy" in message.lower() and "407" in message, message


def test_proxy_credentials_in_the_environment_proxy_url(
    gateway: Start, pki: Pki, tls_upstream: TlsUpstream, auth_proxy: Proxy
) -> None:
    mark = auth_proxy.mark()
    gw = gateway(
        provider("corp", tls_upstream.url, ca_file=str(pki.ca)),
        env={"https_proxy": auth_proxy.url_with(PROXY_USER, PROXY_PASSWORD)},
    )
    assert_answers(gw, "corp")
    auth_proxy.wait_request(mark, f"CONNECT 127.0.0.1:{tls_upstream.port} ")
    output = stop(gw.proc)
    assert not [s for s in proxy_secrets(PROXY_PASSWORD) if s in output]
