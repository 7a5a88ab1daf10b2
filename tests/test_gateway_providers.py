"""Every provider kind behind the real gateway, through the official SDKs.

One `tollway serve` runs in front of the multi-provider mock (`tollway.testing.mock_providers`)
with one provider per kind (OpenAI, Anthropic, Gemini, Bedrock with SigV4 the mock verifies,
Azure). For every kind, each client SDK (`openai` on `/v1/chat/completions`, `anthropic` on
`/v1/messages`), streamed and not:

- the SDK parses the answer, and its text is the mock's;
- usage is right in the SDK's object and in the usage record read back through the admin API
  (tokens by type equal to what the mock reported, `provider` as their source, the catalog's
  price for them);
- a tool call reaches the SDK with parsed arguments, and the tool's result sent back in a
  second turn gets the answer;
- errors (401, 404, 429, 5xx) come back in the caller's API, as the SDK's typed exceptions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion

from conftest import Server, start_gateway, stop
from gateway_support import (
    ALICE_KEY,
    KINDS,
    SECRETS,
    USER,
    common_tables,
    provider_table,
    record,
)
from providers_support import WEATHER_TOOL_ANTHROPIC, WEATHER_TOOL_OPENAI
from tollway.testing.mock_providers import REPLY, TOOL_PREAMBLE
from tollway.usage.catalog import Catalog

# Upstream models the shipped catalog prices, so the record's cost can be checked.
UPSTREAM = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5",
    "gemini": "gemini-2.5-flash",
    "bedrock": "global.anthropic.claude-haiku-4-5-20251001-v1:0",
    "azure": "gpt-4o-mini",
}
# `tool-call` in the upstream name makes the mock call the request's first tool; a `[[catalog]]`
# entry prices it (cost source `config`).
TOOL_PRICES = {"input": 1.0, "output": 2.0, "cached_input": 0.5, "cache_write": 1.25}
ARGUMENTS = {"city": "Paris"}  # what the mock fills a string property with
TOOL_RESULT = "18 degrees and sunny"
STREAMS = [False, True]


def config(mock_url: str) -> str:
    tables = [provider_table(kind, kind, mock_url) for kind in KINDS]
    for kind in KINDS:
        for suffix, upstream in (
            ("chat", UPSTREAM[kind]),
            ("tools", "tool-call"),
            ("429", "fail-429"),
            ("503", "fail-503"),
        ):
            tables.append(f'[[models]]\nname = "{kind}-{suffix}"\nprovider = "{kind}"\nupstream = "{upstream}"\n')
    prices = "\n".join(f"{k} = {v}" for k, v in TOOL_PRICES.items())
    tables.append(f'[[catalog]]\nname = "tool-call"\nprovider = "openai"\n{prices}\n')
    return f"""
[server]
host = "127.0.0.1"

[server.timeouts]
connect = 2
first_byte = 3
idle = 2
total = 10
{common_tables()}
{"".join(tables)}
"""


@pytest.fixture(scope="module")
def gw(mock_providers: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_gateway(config(mock_providers.url), tmp_path_factory.mktemp("gw-providers"), SECRETS)
    yield server
    output = stop(server.proc)
    for secret in (ALICE_KEY, SECRETS["TW_TEST_KEY"], SECRETS["TW_TEST_AWS_SECRET"]):
        assert secret not in output


@pytest.fixture(scope="module")
def oa(gw: Server) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=ALICE_KEY, max_retries=0, timeout=20)
    yield client
    client.close()


@pytest.fixture(scope="module")
def an(gw: Server) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=gw.url, api_key=ALICE_KEY, max_retries=0, timeout=20)
    yield client
    client.close()


def reported(mock: Server) -> dict[str, int]:
    """The usage the mock reported for the last chat request (in OpenAI's sense: prompt tokens
    include the cached and cache-written ones)."""
    usage: dict[str, int] = mock.get_json("/_mock/last")["usage"]
    return usage


def assert_recorded(rec: dict[str, Any], kind: str, upstream: str, usage: dict[str, int], stream: bool) -> None:
    """The usage record: who served it, tokens by type as the provider reported them, and the
    price of exactly those tokens."""
    assert rec["status"] == 200 and rec["error_code"] is None
    assert (rec["provider"], rec["upstream_model"], rec["stream"]) == (kind, upstream, stream)
    assert [(a["provider"], a["reason"], a["outcome"], a["status"]) for a in rec["attempts"]] == [
        (kind, "primary", "ok", 200)
    ]
    assert rec["prompt_tokens"] == usage["prompt_tokens"]
    assert rec["completion_tokens"] == usage["completion_tokens"]
    assert rec["cached_tokens"] == usage["cached_tokens"]
    assert rec["cache_write_tokens"] == usage["cache_write_tokens"]
    assert rec["prompt_source"] == rec["completion_source"] == "provider"
    info = Catalog.load().get(upstream)
    if info is None:  # the `tool-call` model, priced by this config
        source, prices = "config", TOOL_PRICES
    else:
        source = "catalog"
        prices = {"input": info.input, "output": info.output, "cached_input": info.cached_input}
        prices["cache_write"] = info.cache_write if info.cache_write is not None else info.input
    fresh = usage["prompt_tokens"] - usage["cached_tokens"] - usage["cache_write_tokens"]
    expected = (
        fresh * prices["input"]
        + usage["cached_tokens"] * (prices["cached_input"] or prices["input"])
        + usage["cache_write_tokens"] * prices["cache_write"]
        + usage["completion_tokens"] * prices["output"]
    ) / 1e6
    assert rec["cost_source"] == source
    assert rec["cost_usd"] == pytest.approx(expected, rel=1e-9)
    # The attempt is timed, streamed or not (a streamed one also to its first byte).
    attempt = rec["attempts"][0]
    assert 0 < attempt["latency_ms"] <= rec["latency_ms"]
    assert rec["overhead_ms"] < rec["latency_ms"]
    if stream:
        assert rec["ttft_ms"] is not None and 0 < rec["ttft_ms"] <= rec["latency_ms"]
        assert attempt["ttft_ms"] is not None and 0 < attempt["ttft_ms"] <= attempt["latency_ms"]
    else:
        assert attempt["ttft_ms"] is None


# -- the OpenAI SDK ----------------------------------------------------------------------------


def openai_call(
    client: openai.OpenAI, model: str, stream: bool, messages: list[Any], **extra: Any
) -> tuple[ChatCompletion, str]:
    """A completion as the SDK parsed it (a stream accumulated by the SDK's own state), and the
    gateway's request id."""
    if not stream:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, **extra)
        return raw.parse(), raw.headers["x-request-id"]
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages, stream=True, stream_options={"include_usage": True}, **extra
    )
    state = ChatCompletionStreamState()
    with raw.parse() as chunks:
        for chunk in chunks:
            state.handle_chunk(chunk)
    return state.get_final_completion(), raw.headers["x-request-id"]


def assert_openai_usage(completion: ChatCompletion, usage: dict[str, int]) -> None:
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == usage["prompt_tokens"]
    assert completion.usage.completion_tokens == usage["completion_tokens"]
    assert completion.usage.total_tokens == usage["prompt_tokens"] + usage["completion_tokens"]
    details = completion.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens == usage["cached_tokens"]
    if usage["cache_write_tokens"]:
        assert details.cache_write_tokens == usage["cache_write_tokens"]


@pytest.mark.parametrize("stream", STREAMS, ids=["json", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_openai_sdk_answer_and_usage(
    kind: str, stream: bool, gw: Server, oa: openai.OpenAI, mock_providers: Server
) -> None:
    completion, request_id = openai_call(oa, f"{kind}-chat", stream, USER)
    usage = reported(mock_providers)
    choice = completion.choices[0]
    assert choice.message.content == REPLY
    assert choice.finish_reason == "stop"
    assert_openai_usage(completion, usage)
    assert_recorded(record(gw, request_id), kind, UPSTREAM[kind], usage, stream)


@pytest.mark.parametrize("kind", KINDS)
def test_openai_stream_without_usage_option_still_records_provider_usage(
    kind: str, gw: Server, oa: openai.OpenAI, mock_providers: Server
) -> None:
    """The client did not ask for usage: it gets none, and the record still has the provider's."""
    raw = oa.chat.completions.with_raw_response.create(model=f"{kind}-chat", messages=USER, stream=True)  # type: ignore[arg-type]
    with raw.parse() as chunks:
        received = list(chunks)
    assert "".join(c.choices[0].delta.content or "" for c in received if c.choices) == REPLY
    assert all(c.usage is None for c in received)
    assert_recorded(record(gw, raw.headers["x-request-id"]), kind, UPSTREAM[kind], reported(mock_providers), True)


@pytest.mark.parametrize("stream", STREAMS, ids=["json", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_openai_sdk_tool_call_round_trip(
    kind: str, stream: bool, gw: Server, oa: openai.OpenAI, mock_providers: Server
) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    completion, request_id = openai_call(oa, f"{kind}-tools", stream, messages, tools=[WEATHER_TOOL_OPENAI])
    usage = reported(mock_providers)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    tool_call = choice.message.tool_calls[0]
    assert tool_call.type == "function" and tool_call.id
    assert tool_call.function.name == "get_weather"
    assert json.loads(tool_call.function.arguments) == ARGUMENTS
    assert_openai_usage(completion, usage)
    assert_recorded(record(gw, request_id), kind, "tool-call", usage, stream)

    # The second turn: the assistant's call and the tool's result go back; the model answers.
    messages += [
        choice.message.model_dump(exclude_none=True, include={"role", "content", "tool_calls"}),
        {"role": "tool", "tool_call_id": tool_call.id, "content": TOOL_RESULT},
    ]
    completion, request_id = openai_call(oa, f"{kind}-tools", stream, messages, tools=[WEATHER_TOOL_OPENAI])
    usage = reported(mock_providers)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content == REPLY
    assert not completion.choices[0].message.tool_calls
    assert_openai_usage(completion, usage)
    assert_recorded(record(gw, request_id), kind, "tool-call", usage, stream)
    # The tool's result reached the provider, in its own format.
    assert TOOL_RESULT in json.dumps(mock_providers.get_json("/_mock/last")["body"])


# -- the Anthropic SDK -------------------------------------------------------------------------


def anthropic_call(
    client: anthropic.Anthropic, model: str, stream: bool, messages: list[Any], **extra: Any
) -> tuple[anthropic.types.Message, str]:
    if not stream:
        raw = client.messages.with_raw_response.create(model=model, max_tokens=200, messages=messages, **extra)
        return raw.parse(), raw.headers["x-request-id"]
    with client.messages.stream(model=model, max_tokens=200, messages=messages, **extra) as events:
        message = events.get_final_message()
        return message, events.response.headers["x-request-id"]


def assert_anthropic_usage(message: anthropic.types.Message, usage: dict[str, int]) -> None:
    u = message.usage
    assert u.input_tokens == usage["prompt_tokens"] - usage["cached_tokens"] - usage["cache_write_tokens"]
    assert (u.cache_read_input_tokens or 0) == usage["cached_tokens"]
    assert (u.cache_creation_input_tokens or 0) == usage["cache_write_tokens"]
    assert u.output_tokens == usage["completion_tokens"]


@pytest.mark.parametrize("stream", STREAMS, ids=["json", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_anthropic_sdk_answer_and_usage(
    kind: str, stream: bool, gw: Server, an: anthropic.Anthropic, mock_providers: Server
) -> None:
    message, request_id = anthropic_call(an, f"{kind}-chat", stream, USER)
    usage = reported(mock_providers)
    assert message.role == "assistant" and message.type == "message"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == REPLY  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert_anthropic_usage(message, usage)
    assert_recorded(record(gw, request_id), kind, UPSTREAM[kind], usage, stream)


@pytest.mark.parametrize("stream", STREAMS, ids=["json", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_anthropic_sdk_tool_use_round_trip(
    kind: str, stream: bool, gw: Server, an: anthropic.Anthropic, mock_providers: Server
) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    message, request_id = anthropic_call(an, f"{kind}-tools", stream, messages, tools=[WEATHER_TOOL_ANTHROPIC])
    usage = reported(mock_providers)
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[0].text == TOOL_PREAMBLE  # type: ignore[union-attr]
    tool_use = message.content[1]
    assert tool_use.type == "tool_use" and tool_use.id
    assert tool_use.name == "get_weather"
    assert tool_use.input == ARGUMENTS
    assert_anthropic_usage(message, usage)
    assert_recorded(record(gw, request_id), kind, "tool-call", usage, stream)

    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": TOOL_RESULT}],
        },
    ]
    message, request_id = anthropic_call(an, f"{kind}-tools", stream, messages, tools=[WEATHER_TOOL_ANTHROPIC])
    usage = reported(mock_providers)
    assert message.stop_reason == "end_turn"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == REPLY  # type: ignore[union-attr]
    assert_anthropic_usage(message, usage)
    assert_recorded(record(gw, request_id), kind, "tool-call", usage, stream)
    assert TOOL_RESULT in json.dumps(mock_providers.get_json("/_mock/last")["body"])


# -- errors in the caller's API ----------------------------------------------------------------


def test_anthropic_sdk_typed_errors_for_gateway_refusals(gw: Server, an: anthropic.Anthropic) -> None:
    wrong = anthropic.Anthropic(base_url=gw.url, api_key="tw-not-a-key", max_retries=0, timeout=20)
    with pytest.raises(anthropic.AuthenticationError) as auth:
        wrong.messages.create(model="openai-chat", max_tokens=50, messages=USER)
    wrong.close()
    assert auth.value.status_code == 401
    assert_anthropic_body(auth.value, "authentication_error")
    with pytest.raises(anthropic.NotFoundError) as missing:
        an.messages.create(model="no-such-model", max_tokens=50, messages=USER)
    assert missing.value.status_code == 404
    assert "no-such-model" in assert_anthropic_body(missing.value, "not_found_error")


def test_openai_sdk_typed_errors_for_gateway_refusals(gw: Server, oa: openai.OpenAI) -> None:
    wrong = openai.OpenAI(base_url=gw.url + "/v1", api_key="tw-not-a-key", max_retries=0, timeout=20)
    with pytest.raises(openai.AuthenticationError) as auth:
        wrong.chat.completions.create(model="openai-chat", messages=USER)  # type: ignore[arg-type]
    wrong.close()
    assert auth.value.status_code == 401 and auth.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as missing:
        oa.chat.completions.create(model="no-such-model", messages=USER)  # type: ignore[arg-type]
    assert missing.value.status_code == 404 and missing.value.code == "model_not_found"


def assert_anthropic_body(exc: anthropic.APIStatusError, error_type: str) -> str:
    """Anthropic's error shape, with the gateway's request id; returns the message."""
    body = exc.body
    assert isinstance(body, dict) and body["type"] == "error", body
    assert body["error"]["type"] == error_type
    assert body["request_id"] == exc.response.headers["x-request-id"]
    message: str = body["error"]["message"]
    return message


@pytest.mark.parametrize("stream", STREAMS, ids=["json", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_anthropic_sdk_typed_errors_for_upstream_failures(
    kind: str, stream: bool, gw: Server, an: anthropic.Anthropic
) -> None:
    """A provider's 429 and 503, in whatever format it sent them, reach an Anthropic client as
    Anthropic errors (a stream that failed before its first byte answers with a JSON error)."""

    def create(model: str) -> None:
        if stream:
            with an.messages.stream(model=model, max_tokens=50, messages=USER) as events:
                events.until_done()
        else:
            an.messages.create(model=model, max_tokens=50, messages=USER)

    with pytest.raises(anthropic.RateLimitError) as limited:
        create(f"{kind}-429")
    assert limited.value.status_code == 429
    assert limited.value.response.headers["retry-after"] == "7"
    assert f"provider `{kind}`" in assert_anthropic_body(limited.value, "rate_limit_error")
    with pytest.raises(anthropic.InternalServerError) as down:
        create(f"{kind}-503")
    assert down.value.status_code == 502
    assert f"provider `{kind}`" in assert_anthropic_body(down.value, "api_error")
    rec = record(gw, down.value.response.headers["x-request-id"])
    assert rec["status"] == 502 and rec["error_code"] == "upstream_server_error"
    assert [(a["outcome"], a["status"]) for a in rec["attempts"]] == [("server_error", 503)]
    assert rec["completion_source"] == "none" and rec["cost_usd"] == 0


@pytest.mark.parametrize("stream", STREAMS, ids=["json", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_openai_sdk_typed_errors_for_upstream_failures(kind: str, stream: bool, oa: openai.OpenAI) -> None:
    def create(model: str) -> None:
        if stream:
            with oa.chat.completions.create(model=model, messages=USER, stream=True) as chunks:  # type: ignore[arg-type]
                list(chunks)
        else:
            oa.chat.completions.create(model=model, messages=USER)  # type: ignore[arg-type]

    with pytest.raises(openai.RateLimitError) as limited:
        create(f"{kind}-429")
    assert limited.value.status_code == 429 and limited.value.code == "upstream_rate_limited"
    assert limited.value.response.headers["retry-after"] == "7"
    assert f"provider `{kind}`" in limited.value.message
    with pytest.raises(openai.InternalServerError) as down:
        create(f"{kind}-503")
    assert down.value.status_code == 502 and down.value.code == "upstream_server_error"
    assert f"provider `{kind}`" in down.value.message
    body = down.value.body
    assert isinstance(body, dict) and body["request_id"] == down.value.response.headers["x-request-id"]
