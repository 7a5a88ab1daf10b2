"""`tollway check` on the per-provider egress keys (`ca_file`, `client_cert`, `client_key`,
`http2`, `proxy`, `proxy_username`, `proxy_password`): every problem at once, each at its file's
line and dotted path, exit code 1, and never a private key's or a password's content."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from egress_support import Pki, make_pki

PROXY_PASSWORD = "check-proxy-pw-31c7a0"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def check(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tollway.cli", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


class ConfigFile:
    """A config built one `[[providers]]` table at a time, remembering the line of each key."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.where: dict[tuple[int, str], int] = {}  # (provider index, key) -> 1-based line
        self.providers = 0

    def provider(self, name: str, **keys: str) -> int:
        index = self.providers
        self.providers += 1
        self.where[(index, "[[providers]]")] = len(self.lines) + 1
        self.lines += ["[[providers]]", f'name = "{name}"', 'kind = "openai"', 'base_url = "https://127.0.0.1:9/v1"']
        for key, value in keys.items():
            self.lines.append(f"{key} = {value}")
            self.where[(index, key)] = len(self.lines)
        self.lines.append("")
        return index

    def line(self, index: int, key: str) -> int:
        return self.where[(index, key)]

    def write(self, path: Path) -> Path:
        path.write_text("\n".join(self.lines) + "\n")
        return path


def problem(stderr: str, file: str, candidates: list[tuple[int, str]]) -> str:
    """The line of `stderr` reporting a problem at one of `candidates` ((line, dotted path)), as
    `FILE:LINE PATH: message`; fails when there is none."""
    for line in stderr.splitlines():
        for number, path in candidates:
            if re.match(rf"(?:.*/)?{re.escape(file)}:{number} {re.escape(path)}: ", line):
                return line
    raise AssertionError(f"no problem reported at {candidates} in:\n{stderr}")


def test_check_reports_each_egress_problem_at_its_line(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "client.pem").write_bytes(pki.client_cert.read_bytes())
    (tmp_path / "certs" / "client.key").write_bytes(pki.client_key.read_bytes())
    cfg = ConfigFile()
    missing_ca = cfg.provider("missing-ca", ca_file='"certs/missing-ca.pem"')
    cert_only = cfg.provider("cert-only", client_cert='"certs/client.pem"')
    key_only = cfg.provider("key-only", client_key='{ file = "certs/client.key" }')
    # A directory cannot be read as a key, whoever runs the check (root reads any file).
    unreadable = cfg.provider("unreadable-key", client_cert='"certs/client.pem"', client_key='{ file = "certs" }')
    socks = cfg.provider("socks-proxy", proxy='"socks5://127.0.0.1:1080"')
    bare = cfg.provider("bare-proxy", proxy='"127.0.0.1:3128"')
    http2 = cfg.provider("http2-typo", http2='"sometimes"')
    path = cfg.write(tmp_path / "egress.toml")

    result = check(path)
    assert result.returncode == 1, result.stdout + result.stderr
    err = result.stderr
    assert "missing-ca.pem" in problem(err, path.name, [(cfg.line(missing_ca, "ca_file"), "providers[0].ca_file")])
    # A certificate without its key, and the reverse: reported at the key that is there (or at the table).
    for index, present, absent in ((cert_only, "client_cert", "client_key"), (key_only, "client_key", "client_cert")):
        at = [
            (cfg.line(index, present), f"providers[{index}].{present}"),
            (cfg.line(index, "[[providers]]"), f"providers[{index}]"),
        ]
        assert f"`{absent}`" in problem(err, path.name, at)
    message = problem(err, path.name, [(cfg.line(unreadable, "client_key"), f"providers[{unreadable}].client_key")])
    assert "certs" in message, message  # names the file it could not read
    for index in (socks, bare):
        message = problem(err, path.name, [(cfg.line(index, "proxy"), f"providers[{index}].proxy")])
        assert "http://" in message, message  # says what was expected
    message = problem(err, path.name, [(cfg.line(http2, "http2"), f"providers[{http2}].http2")])
    assert "`auto`" in message and "`never`" in message, message
    assert "unknown key" not in err, err
    assert err.strip().splitlines()[-1].endswith(": 7 problems"), err
    output = result.stdout + result.stderr
    assert not [f for f in pki.key_fragments(pki.client_key) if f in output]


def test_check_never_prints_a_key_or_a_proxy_password(tmp_path: Path, pki: Pki) -> None:
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("sk-live-not-a-pem-key-4c1d9e\n")
    cfg = ConfigFile()
    cfg.provider("key-only", client_key=f'{{ file = "{pki.client_key}" }}')
    cfg.provider("garbage-key", client_cert=f'"{pki.client_cert}"', client_key='{ env = "TEST_GARBAGE_KEY" }')
    cfg.provider(
        "proxy-auth",
        proxy='"socks5://127.0.0.1:1080"',
        proxy_username='"gw"',
        proxy_password='{ env = "TEST_PROXY_PASSWORD" }',
    )
    path = cfg.write(tmp_path / "secrets.toml")
    result = check(path, {"TEST_GARBAGE_KEY": not_a_key.read_text(), "TEST_PROXY_PASSWORD": PROXY_PASSWORD})
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    for secret in [*pki.key_fragments(pki.client_key), "sk-live-not-a-pem-key-4c1d9e", PROXY_PASSWORD]:
        assert secret not in output


def test_check_accepts_the_egress_keys(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "certs").mkdir()
    for source in (pki.ca, pki.client_cert, pki.client_key):
        (tmp_path / "certs" / source.name).write_bytes(source.read_bytes())
    cfg = ConfigFile()
    cfg.provider(
        "corp",
        http2='"never"',
        ca_file='"certs/ca.pem"',  # relative to the config file, not to the working directory
        client_cert='"certs/client.pem"',
        client_key='{ file = "certs/client.key" }',
        proxy='"http://127.0.0.1:3128"',
        proxy_username='"gw"',
        proxy_password='{ env = "TEST_PROXY_PASSWORD" }',
    )
    cfg.provider(
        "direct",
        http2='"auto"',
        proxy='"none"',
        client_cert=f'"{pki.client_cert}"',
        client_key='{ env = "TEST_CLIENT_KEY" }',
    )
    path = cfg.write(tmp_path / "good.toml")
    result = check(path, {"TEST_PROXY_PASSWORD": PROXY_PASSWORD, "TEST_CLIENT_KEY": pki.client_key.read_text()})
    assert result.returncode == 0, result.stderr
    assert "ok (2 providers" in result.stdout
    output = result.stdout + result.stderr
    assert not [s for s in [*pki.key_fragments(pki.client_key), PROXY_PASSWORD] if s in output]
