"""Helpers for the provider tests: run one adapter against the mock upstream, and read what it
produced with the official SDKs' own types and stream accumulators (so "the client format is
right" means "the SDK accepts it")."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any

import orjson
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from tollway.config.loader import parse_config
from tollway.config.schema import ModelConfig
from tollway.providers import ChatCall, build_adapters
from tollway.providers.base import StreamMeter
from tollway.testing.mock_providers import MOCK_AWS_SECRET
from tollway.upstream import UpstreamClient
from tollway.usage import Usage

SECRETS = {
    "TW_TEST_KEY": "test-key-1",
    "TW_TEST_KEY2": "test-key-2",
    "TW_TEST_BAD_KEY": "bad-key-0",
    "TW_TEST_LIMITED_KEY": "limited-key-0",
    "TW_TEST_AWS_ID": "AKIDMOCKEXAMPLE",
    "TW_TEST_AWS_SECRET": MOCK_AWS_SECRET,
}

PROVIDER_TABLES = {
    "openai": 'kind = "openai"\nbase_url = "{url}/v1"\napi_key = {{ env = "TW_TEST_KEY" }}',
    "anthropic": 'kind = "anthropic"\nbase_url = "{url}/v1"\napi_key = {{ env = "TW_TEST_KEY" }}',
    "gemini": 'kind = "gemini"\nbase_url = "{url}/v1beta"\napi_key = {{ env = "TW_TEST_KEY" }}',
    "bedrock": (
        'kind = "bedrock"\nbase_url = "{url}"\nregion = "us-east-1"\n'
        'aws_access_key_id = {{ env = "TW_TEST_AWS_ID" }}\naws_secret_access_key = {{ env = "TW_TEST_AWS_SECRET" }}'
    ),
    "azure": 'kind = "azure"\nbase_url = "{url}"\napi_version = "2024-10-21"\napi_key = {{ env = "TW_TEST_KEY" }}',
}

USER = [{"role": "user", "content": "Say hello to the tollway tests"}]
WEATHER_TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


class RecordingSink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    @property
    def started(self) -> bool:
        return bool(self.chunks)

    async def send(self, data: bytes) -> None:
        self.chunks.append(data)


@dataclass
class Outcome:
    body: bytes
    usage: Usage | None
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)


def config_text(
    kind: str, url: str, extra: str = "", idle: float = 1.0, first_byte: float = 3.0, table: str | None = None
) -> str:
    table = (table or PROVIDER_TABLES[kind]).format(url=url)
    return f"""
[server.timeouts]
connect = 2
first_byte = {first_byte}
idle = {idle}
total = 10

[[providers]]
name = "p"
{table}
{extra}
"""


def run(
    kind: str,
    url: str,
    model: str,
    body: dict[str, Any],
    *,
    api: str = "openai",
    stream: bool = False,
    extra: str = "",
    idle: float = 1.0,
    first_byte: float = 3.0,
    calls: int = 1,
    table: str | None = None,
    meter: StreamMeter | None = None,
) -> Outcome:
    """Build the provider `p` from a config and run one call (or `calls` calls, returning the
    last) with the real upstream client; `UpstreamError` propagates. `table` replaces the
    provider's config table (`{url}` is the mock's URL)."""
    config = parse_config(config_text(kind, url, extra, idle, first_byte, table))
    previous = {name: os.environ.get(name) for name in SECRETS}
    os.environ.update(SECRETS)

    async def go() -> Outcome:
        client = UpstreamClient()
        try:
            adapter = build_adapters(config.providers, config.server.timeouts, client, None)["p"]
            outcome = Outcome(b"", None)
            for _ in range(calls):
                call = ChatCall(
                    request_id="req_" + os.urandom(12).hex(),
                    body=body,
                    raw=orjson.dumps(body),
                    model=ModelConfig(name="alias", provider="p", upstream=model),
                    stream=stream,
                    api=api,  # type: ignore[arg-type]
                    meter=meter,
                )
                if stream:
                    sink = RecordingSink()
                    usage = await adapter.chat_stream(call, sink)
                    outcome = Outcome(b"".join(sink.chunks), usage, [], sink.chunks)
                else:
                    completion = await adapter.chat(call)
                    outcome = Outcome(completion.body, completion.usage, completion.headers)
            return outcome
        finally:
            await client.close()

    try:
        return asyncio.run(go())
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# -- reading results with the SDKs --------------------------------------------------------------


def openai_completion(body: bytes) -> ChatCompletion:
    return ChatCompletion.model_validate_json(body)


def openai_stream(body: bytes) -> tuple[list[ChatCompletionChunk], Any]:
    """The chunks of an OpenAI stream and the SDK's accumulated final completion."""
    frames = body.split(b"\n\n")
    assert frames[-1] == b"", "the stream must end with a blank line"
    assert frames[-2] == b"data: [DONE]", "the stream must end with `data: [DONE]`"
    state = ChatCompletionStreamState()
    chunks = []
    for frame in frames[:-2]:
        assert frame.startswith(b"data: "), frame
        if b'"prompt_filter_results"' in frame and b'"choices":[]' in frame:
            continue  # Azure's own first event (empty `object`), relayed as Azure sent it
        chunk = ChatCompletionChunk.model_validate_json(frame[6:])
        state.handle_chunk(chunk)
        chunks.append(chunk)
    return chunks, state.get_final_completion()


_ANTHROPIC_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


def anthropic_message(body: bytes) -> Message:
    return Message.model_validate_json(body)


def anthropic_stream(body: bytes) -> tuple[list[Any], Message]:
    """The events of an Anthropic stream (each named as its `type`) and the SDK's accumulated message."""
    frames = body.split(b"\n\n")
    assert frames[-1] == b""
    events: list[Any] = []
    snapshot = None
    buffers: dict[int, bytes] = {}
    for frame in frames[:-1]:
        name_line, data_line = frame.split(b"\n")
        assert name_line.startswith(b"event: ") and data_line.startswith(b"data: "), frame
        if name_line == b"event: ping":
            continue
        event = _ANTHROPIC_EVENT.validate_json(data_line[6:])
        assert event.type == name_line[7:].decode()
        events.append(event)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    assert snapshot is not None
    return events, Message.model_validate(snapshot.model_dump())
