"""Each fault of the mock upstream, for every provider adapter and both client APIs, surfaces
as the `FailureKind` the router and the server rely on (retry, fall back, or which status)."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Server
from providers_support import USER, anthropic_stream, openai_stream, run
from tollway._native import TokenCounter
from tollway.errors import UpstreamError
from tollway.providers.base import StreamMeter
from tollway.testing.mock_providers import REPLY
from tollway.upstream import FailureKind, failure_of

KINDS = ["anthropic", "openai", "gemini", "bedrock", "azure"]
APIS = ["openai", "anthropic"]

# (model, streamed, expected kind)
FAULTS = [
    ("fail-429", False, FailureKind.RATE_LIMITED),
    ("fail-429", True, FailureKind.RATE_LIMITED),
    ("fail-429-bare", False, FailureKind.RATE_LIMITED),
    ("fail-503", False, FailureKind.SERVER_ERROR),
    ("fail-503", True, FailureKind.SERVER_ERROR),
    ("fail-401", False, FailureKind.CREDENTIALS),
    ("fail-400", False, FailureKind.CLIENT_ERROR),
    ("context-length", False, FailureKind.CONTEXT_LENGTH),
    ("context-length", True, FailureKind.CONTEXT_LENGTH),
    ("reset", False, FailureKind.UNREACHABLE),
    ("reset", True, FailureKind.UNREACHABLE),
    ("hang", False, FailureKind.TIMEOUT),
    ("slow-first-token", True, FailureKind.TIMEOUT),
    ("cut-stream", False, FailureKind.BROKEN_STREAM),
    ("cut-stream", True, FailureKind.BROKEN_STREAM),
    ("stall-stream", True, FailureKind.TIMEOUT),
    ("malformed-chunk", False, FailureKind.BAD_RESPONSE),
    ("malformed-chunk", True, FailureKind.BAD_RESPONSE),
    ("no-done", True, FailureKind.BROKEN_STREAM),
]


def body_for(api: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "alias", "messages": USER, "max_tokens": 100}
    if stream:
        body["stream"] = True
    return body


def relayed_unread(kind: str, api: str, model: str, stream: bool) -> bool:
    """The OpenAI and Azure adapters relay an OpenAI client's stream without reading events that
    carry no usage (`rust/core/src/chat_stream.rs`), so a malformed content event reaches that
    client as is."""
    return kind in ("openai", "azure") and api == "openai" and model == "malformed-chunk" and stream


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    ("model", "stream", "expected"), FAULTS, ids=[f"{m}-{'stream' if s else 'json'}" for m, s, _ in FAULTS]
)
def test_fault_becomes_its_failure_kind(
    kind: str, api: str, model: str, stream: bool, expected: FailureKind, mock_providers: Server
) -> None:
    if relayed_unread(kind, api, model, stream):
        out = run(kind, mock_providers.url, model, body_for(api, stream), api=api, stream=stream)
        assert b'data: {"id": "chatcmpl-mock", "choices": [\n\n' in out.body
        return
    with pytest.raises(UpstreamError) as info:
        run(kind, mock_providers.url, model, body_for(api, stream), api=api, stream=stream, first_byte=1.0)
    failure = failure_of(info.value)
    assert failure.kind is expected, failure.message
    assert failure.provider == "p" and "p" in failure.message
    if model == "fail-429":
        assert failure.retry_after == "7"
    if model == "fail-429-bare":
        assert failure.retry_after is None
    if model == "context-length":
        assert failure.upstream_message  # the provider's own words, for the client's 400


@pytest.mark.parametrize("kind", KINDS)
def test_500_then_200(kind: str, mock_providers: Server) -> None:
    mock_providers.request("POST", "/_mock/reset")
    with pytest.raises(UpstreamError) as info:
        run(kind, mock_providers.url, "fail-500-once", body_for("openai", False))
    assert failure_of(info.value).kind is FailureKind.SERVER_ERROR
    out = run(kind, mock_providers.url, "fail-500-once", body_for("openai", False))
    assert REPLY.encode() in out.body
    assert mock_providers.get_json("/_mock/counts")["fail-500-once"] == 2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("api", APIS)
def test_slow_first_token_within_the_idle_timeout_succeeds(kind: str, api: str, mock_providers: Server) -> None:
    out = run(kind, mock_providers.url, "slow-first-token", body_for(api, True), api=api, stream=True, idle=3.0)
    if api == "openai":
        assert openai_stream(out.body)[1].choices[0].message.content == REPLY
    else:
        assert anthropic_stream(out.body)[1].content[0].text == REPLY  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("api", APIS)
def test_stream_meter_gets_usage_when_complete_and_text_when_broken(
    kind: str, api: str, mock_providers: Server
) -> None:
    """The pipeline settles a broken stream by counting what was delivered: the adapter must
    report the provider's usage only for a complete stream, and the delivered text always."""
    counter = TokenCounter("o200k_base")
    meter = StreamMeter(counter)
    out = run(kind, mock_providers.url, "plain", body_for(api, True), api=api, stream=True, meter=meter)
    assert meter.usage == out.usage and out.usage is not None
    meter = StreamMeter(counter)
    with pytest.raises(UpstreamError):
        run(kind, mock_providers.url, "cut-stream", body_for(api, True), api=api, stream=True, meter=meter)
    assert meter.usage is None
    # What was delivered before the cut is counted: a prefix of the reply, never nothing.
    delivered = meter.output_tokens()
    assert 0 < delivered < counter.count(REPLY) + 1, delivered
