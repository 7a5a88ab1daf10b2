"""Configuration: typed decoding, every problem at once with file:line and dotted path, and the
`tollway check` / `tollway keys new` commands."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tollway.auth import KeyStore, hash_key, presented_key
from tollway.config import load_config, parse_config
from tollway.config._toml_lines import LineIndex, format_path
from tollway.config.schema import KeyConfig
from tollway.errors import ConfigError

BAD = textwrap.dedent(
    """\
    [server]
    port = "80"
    wrkers = 2

    [[providers]]
    name = "up"
    kind = "openia"
    base_url = "http://x"

    [[providers]]
    name = "m"
    kind = "mock"
    api_key = { env = "A", file = "b" }

    [[models]]
    name = "gpt"
    provider = "nope"

    [[keys]]
    name = "a"
    hash = "sha256:00"

    [[keys]]
    name = "b"
    team = 3
    models = ["gpt", "other"]

    [[keys]]
    name = "c"
    hash = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
    models = ["missing-model"]
    """
)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tollway.cli", *args], capture_output=True, text=True, timeout=30, env=env
    )


def test_every_problem_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "tollway.toml"
    path.write_text(BAD)
    result = run_cli("check", str(path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[:-1] == [
        'tollway.toml:2 server.port: expected an integer, got "80"',
        "tollway.toml:3 server.wrkers: unknown key `wrkers`; expected one of `host`, `port`, `workers`, "
        "`max_body_bytes`, `timeouts`, `max_connections_per_host`, `stream_buffer_bytes`, `upstream_limits`, "
        "`log_level`, `watch_config`",
        "tollway.toml:7 providers[0].kind: expected one of `openai`, `mock`, `anthropic`, `gemini`, `bedrock`, "
        '`azure`, got "openia"',
        "tollway.toml:13 providers[1].api_key: expected exactly one of `env` or `file`, as in "
        '`{ env = "OPENAI_API_KEY" }`',
        "tollway.toml:17 models[0].provider: unknown provider `nope`; expected one of `m`, `up`",
        "tollway.toml:21 keys[0].hash: expected `sha256:` followed by 64 lowercase hex digits (run `tollway keys new`)",
        "tollway.toml:23 keys[1]: missing required key `hash`",
        "tollway.toml:25 keys[1].team: expected a string, got 3",
        "tollway.toml:31 keys[2].models[0]: unknown model `missing-model`; it is not in [[models]] or [[routes]]",
    ]
    assert lines[-1].endswith("9 problems")


def test_good_config_passes_with_summary() -> None:
    root = Path(__file__).resolve().parent.parent
    result = run_cli("check", str(root / "examples" / "quickstart.toml"))
    assert result.returncode == 0, result.stderr
    assert "ok (1 providers, 1 models, 1 keys" in result.stdout


def test_missing_secret_is_reported_without_value(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        '[[providers]]\nname = "o"\nkind = "openai"\nbase_url = "https://api.openai.com/v1"\n'
        'api_key = { env = "TOLLWAY_TEST_UNSET_VAR" }\n'
    )
    result = run_cli("check", str(path), env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert (
        "providers[0].api_key (provider `o`): environment variable `TOLLWAY_TEST_UNSET_VAR` is not set" in result.stderr
    )


def test_secret_from_file_is_loaded_but_never_shown(tmp_path: Path) -> None:
    (tmp_path / "key.txt").write_text("sk-file-secret\n")
    path = tmp_path / "t.toml"
    path.write_text(
        '[[providers]]\nname = "o"\nkind = "openai"\nbase_url = "https://api.openai.com/v1"\n'
        'api_key = { file = "key.txt" }\n'
    )
    from tollway.config.secrets import resolve_secret

    loaded = load_config(path)
    secret = resolve_secret(loaded.config.providers[0].api_key, tmp_path)  # type: ignore[arg-type]
    assert secret.reveal() == "sk-file-secret"
    assert "sk-file" not in repr(secret) and "sk-file" not in str(secret) and "sk-file" not in f"{secret}"
    result = run_cli("check", str(path))
    assert result.returncode == 0, result.stderr
    assert "sk-file-secret" not in result.stdout + result.stderr


def test_check_warns_about_a_tokenizer_that_cannot_be_loaded(tmp_path: Path) -> None:
    (tmp_path / "tok").mkdir()
    path = tmp_path / "t.toml"
    path.write_text(
        '[[providers]]\nname = "m"\nkind = "mock"\n'
        '[[models]]\nname = "typo"\nprovider = "m"\ntokenizer = "o200k"\n'
        '[[models]]\nname = "gone"\nprovider = "m"\ntokenizer = "tok/tokenizer.json"\n'
        '[[models]]\nname = "fine"\nprovider = "m"\ntokenizer = "cl100k_base"\n'
    )
    result = run_cli("check", str(path))
    assert result.returncode == 0, result.stderr  # served anyway, with estimates
    warnings = [line for line in result.stderr.splitlines() if "tokenizer" in line]
    assert len(warnings) == 2, result.stderr
    assert "models[0] (`typo`): tokenizer `o200k` cannot be loaded" in warnings[0]
    assert "models[1] (`gone`): tokenizer `tok/tokenizer.json` cannot be loaded" in warnings[1]
    assert all("counted with o200k_base, as estimates" in w for w in warnings)


def test_invalid_toml_points_at_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[server]\nport = = 3\n")
    assert info.value.problems[0].startswith("tollway.toml:2: invalid TOML")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_config("[server]\nport = 0\n")


def test_defaults_and_types() -> None:
    config = parse_config('[[providers]]\nname = "m"\nkind = "mock"\n[[models]]\nname = "x"\nprovider = "m"\n')
    assert config.server.port == 8080
    assert config.server.max_body_bytes == 4 * 1024 * 1024
    assert config.server.timeouts.first_byte == 120.0
    assert config.models[0].upstream_model == "x"


def test_line_index_handles_tricky_toml() -> None:
    text = textwrap.dedent(
        '''\
        # comment [not a table]
        [server]
        host = "a]#b" # trailing
        timeouts = { connect = 1, total = 2 }

        [[providers]]
        name = """multi
        [[line]]
        """
        headers = { "x-a" = "1" }

        [[providers]]
        'kind' = "mock"
        models = [
          "a",
          { name = "b" },
        ]
        [providers.mock]
        latency_ms = 3
        '''
    )
    index = LineIndex(text)
    assert index.line_of(("server", "host")) == 3
    assert index.line_of(("server", "timeouts", "total")) == 4
    assert index.line_of(("providers", 0, "headers", "x-a")) == 10
    assert index.line_of(("providers", 1, "kind")) == 13
    assert index.line_of(("providers", 1, "models", 1, "name")) == 16
    assert index.line_of(("providers", 1, "mock", "latency_ms")) == 19
    assert index.line_of(("providers", 1, "nothing")) == 12  # falls back to the table header
    assert format_path(("keys", 1, "team")) == "keys[1].team"
    assert format_path(("a", "b c")) == 'a."b c"'


def test_keys_new_prints_a_key_whose_hash_it_prints() -> None:
    result = run_cli("keys", "new", "--name", "ci-bot")
    assert result.returncode == 0
    key = re.search(r"^\s+(tw-\S+)$", result.stdout, re.M)
    digest = re.search(r'^hash = "(sha256:[0-9a-f]{64})"$', result.stdout, re.M)
    assert key and digest
    assert 'name = "ci-bot"' in result.stdout
    assert hash_key(key.group(1)) == digest.group(1)
    store = KeyStore([KeyConfig(name="ci-bot", hash=digest.group(1))])
    identity = store.lookup(key.group(1))
    assert identity is not None and identity.key_name == "ci-bot"
    assert store.lookup(key.group(1) + "x") is None
    # The printed entry is valid config.
    parse_config(f'[[keys]]\nname = "ci-bot"\nhash = "{digest.group(1)}"\n')


def test_two_keys_new_differ() -> None:
    a = run_cli("keys", "new").stdout
    b = run_cli("keys", "new").stdout
    assert a != b


def test_presented_key_parsing() -> None:
    assert presented_key("Bearer abc", None) == "abc"
    assert presented_key("bearer  abc ", None) == "abc"
    assert presented_key("Basic abc", "k") == "k"
    assert presented_key(None, "k") == "k"
    assert presented_key("Bearer ", None) is None
    assert presented_key(None, None) is None


def test_duplicates_and_two_names_for_one_key() -> None:
    digest = "sha256:" + "ab" * 32
    with pytest.raises(ConfigError) as info:
        parse_config(
            '[[providers]]\nname = "m"\nkind = "mock"\n[[providers]]\nname = "m"\nkind = "mock"\n'
            '[[models]]\nname = "x"\nprovider = "m"\n[[models]]\nname = "x"\nprovider = "m"\n'
            f'[[keys]]\nname = "a"\nhash = "{digest}"\n[[keys]]\nname = "a"\nhash = "{digest}"\n'
        )
    assert info.value.problems == [
        "tollway.toml:5 providers[1].name: duplicate provider name `m` (first at providers[0])",
        "tollway.toml:11 models[1].name: duplicate model name `x` (first at models[0])",
        "tollway.toml:17 keys[1].name: duplicate key name `a` (first at keys[0])",
        "tollway.toml:18 keys[1].hash: same hash as keys[0]: two names for one key",
    ]
