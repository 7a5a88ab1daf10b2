"""OpenAI-compatible presets (base URL, key, quirks), Azure deployments, and the provider config."""

from __future__ import annotations

import orjson
import pytest

from conftest import Server
from providers_support import USER, anthropic_message, openai_completion, openai_stream, run
from tollway.config.loader import parse_config
from tollway.errors import ConfigError
from tollway.providers import build_adapters
from tollway.providers.openai import OpenAIAdapter
from tollway.providers.presets import PRESETS
from tollway.testing.mock_providers import REPLY
from tollway.upstream import UpstreamClient


def test_mistral_quirks() -> None:
    body = orjson.dumps(
        {
            "model": "m",
            "messages": USER,
            "seed": 7,
            "max_completion_tokens": 50,
            "stream_options": {"include_usage": True},
            "user": "u",
            "temperature": 0.2,
        }
    )
    assert orjson.loads(PRESETS["mistral"].rewrite(body)) == {
        "model": "m",
        "messages": USER,
        "random_seed": 7,
        "max_tokens": 50,
        "temperature": 0.2,
    }


def test_openai_preset_uses_max_completion_tokens() -> None:
    out = orjson.loads(PRESETS["openai"].rewrite(b'{"model": "o3", "max_tokens": 9, "messages": []}'))
    assert out == {"model": "o3", "max_completion_tokens": 9, "messages": []}


def test_groq_drops_what_it_rejects() -> None:
    body = {
        "messages": [{"role": "user", "name": "ann", "content": "hi"}],
        "logprobs": True,
        "top_logprobs": 2,
        "logit_bias": {"1": 1},
        "n": 1,
    }
    assert orjson.loads(PRESETS["groq"].rewrite(orjson.dumps(body))) == {
        "messages": [{"role": "user", "content": "hi"}],
        "n": 1,
    }


def test_a_body_without_quirky_parameters_is_not_touched() -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"hello"}]}'
    assert PRESETS["mistral"].rewrite(body) is body
    # A parameter's name inside message text only costs a parse; the text is left alone.
    text = b'{"model":"m","messages":[{"role":"user","content":"what is \\"seed\\"?"}]}'
    assert orjson.loads(PRESETS["mistral"].rewrite(text)) == orjson.loads(text)


def test_every_preset_has_a_base_url_and_its_name() -> None:
    for name, preset in PRESETS.items():
        assert preset.name == name and preset.base_url.startswith(("https://", "http://localhost"))


def _build(providers: str) -> dict[str, object]:
    config = parse_config(providers)
    return build_adapters(config.providers, config.server.timeouts, UpstreamClient(), None)  # type: ignore[return-value]


def test_preset_supplies_the_base_url_and_a_configured_one_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TW_TEST_KEY", "k")
    adapters = _build(
        """
[[providers]]
name = "groq"
kind = "openai"
preset = "groq"
api_key = { env = "TW_TEST_KEY" }

[[providers]]
name = "local"
kind = "openai"
preset = "vllm"
base_url = "http://10.0.0.5:9000/v1"

[[providers]]
name = "ollama"
kind = "openai"
preset = "ollama"
"""
    )
    groq, local, ollama = adapters["groq"], adapters["local"], adapters["ollama"]
    assert isinstance(groq, OpenAIAdapter) and isinstance(local, OpenAIAdapter) and isinstance(ollama, OpenAIAdapter)
    assert groq.chat_endpoint.url == "https://api.groq.com/openai/v1/chat/completions"
    assert local.chat_endpoint.url == "http://10.0.0.5:9000/v1/chat/completions"
    assert ollama.chat_endpoint.url == "http://localhost:11434/v1/chat/completions"


def test_a_hosted_preset_needs_a_key() -> None:
    with pytest.raises(ConfigError, match="preset `mistral` needs an `api_key`"):
        _build('[[providers]]\nname = "m"\nkind = "openai"\npreset = "mistral"\n')


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            'kind = "anthropic"\npreset = "groq"',
            'presets are OpenAI-compatible servers: `preset` needs `kind = "openai"`',
        ),
        ('kind = "openai"', "missing `base_url`"),
        ('kind = "openai"\npreset = "nope"', "expected one of `openai`, `groq`"),
        ('kind = "azure"', "missing `base_url`: the Azure OpenAI resource endpoint"),
        ('kind = "bedrock"', "missing `region`"),
        ('kind = "bedrock"\nregion = "us-east-1"', "missing `aws_access_key_id` and `aws_secret_access_key`"),
        ('kind = "bedrock"\nregion = "Mars; rm"', "expected an AWS region"),
        ('kind = "gemini"\napi_key = []', "expected at least one key"),
        ('kind = "gemini"\napi_key = [{ env = "A" }, { file = "x", env = "B" }]', "exactly one of `env` or `file`"),
        ('kind = "anthropic"\ndefault_max_tokens = 0', "expected at least 1"),
    ],
)
def test_provider_config_problems(table: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f'[[providers]]\nname = "p"\n{table}\n')
    assert any(message in problem for problem in info.value.problems), info.value.problems


def test_mistral_preset_end_to_end(mock_providers: Server) -> None:
    table = 'kind = "openai"\npreset = "mistral"\nbase_url = "{url}/v1"\napi_key = {{ env = "TW_TEST_KEY" }}'
    body = {"model": "alias", "messages": USER, "seed": 3, "max_completion_tokens": 100, "stream": True}
    out = run("openai", mock_providers.url, "mistral-small", body, stream=True, table=table)
    assert openai_stream(out.body)[1].choices[0].message.content == REPLY
    sent = mock_providers.get_json("/_mock/last")["body"]
    assert sent["random_seed"] == 3 and sent["max_tokens"] == 100
    assert "seed" not in sent and "stream_options" not in sent and "max_completion_tokens" not in sent
    # An Anthropic-format client's translated request gets the same treatment.
    anthropic_body = {"model": "alias", "max_tokens": 100, "messages": USER, "metadata": {"user_id": "u-1"}}
    out = run("openai", mock_providers.url, "mistral-small", anthropic_body, api="anthropic", table=table)
    assert anthropic_message(out.body).content[0].text == REPLY  # type: ignore[union-attr]
    assert "user" not in mock_providers.get_json("/_mock/last")["body"]


def test_azure_deployment_api_version_and_key(mock_providers: Server) -> None:
    table = (
        'kind = "azure"\nbase_url = "{url}"\napi_key = {{ env = "TW_TEST_KEY" }}\n'
        'deployments = {{ "gpt-4o" = "prod-gpt4o" }}'
    )
    out = run("azure", mock_providers.url, "gpt-4o", {"model": "alias", "messages": USER}, table=table)
    assert openai_completion(out.body).choices[0].message.content == REPLY
    last = mock_providers.get_json("/_mock/last")
    assert last["path"] == "/openai/deployments/prod-gpt4o/chat/completions"
    assert last["query"] == {"api-version": "2024-10-21"}
    assert last["headers"]["api-key"] == "test-key-1" and "authorization" not in last["headers"]
    # A model without a mapping is its own deployment; an explicit api_version is used as is.
    table = (
        'kind = "azure"\nbase_url = "{url}"\napi_version = "2025-01-01-preview"\napi_key = {{ env = "TW_TEST_KEY" }}'
    )
    run("azure", mock_providers.url, "gpt-4o-mini", {"model": "alias", "messages": USER}, table=table)
    last = mock_providers.get_json("/_mock/last")
    assert last["path"] == "/openai/deployments/gpt-4o-mini/chat/completions"
    assert last["query"] == {"api-version": "2025-01-01-preview"}


def test_every_toml_example_in_the_providers_doc_is_a_valid_config() -> None:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "providers.md").read_text()
    examples = re.findall(r"```toml\n(.*?)```", doc, re.DOTALL)
    assert len(examples) >= 6
    for example in examples:
        parse_config(example, "providers.md")
