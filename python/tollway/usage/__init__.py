"""Token usage of one request, as the provider reported it or as the gateway counted it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Usage:
    """Tokens of one request, by type, in the OpenAI sense of each field:

    - `prompt_tokens`: every input token, cached ones included (`cached_tokens` and
      `cache_write_tokens` are parts of it, priced differently);
    - `completion_tokens`: every output token, reasoning ones included (`reasoning_tokens` is a
      part of it).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Input tokens read from the provider's prompt cache.
    cached_tokens: int = 0
    # Input tokens written to the provider's prompt cache (Anthropic's cache_creation_input_tokens).
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    # Where the numbers came from: `provider` (reported upstream), `counted` (by tollway from
    # what passed through), `partial` (counted from what was delivered before the stream broke
    # or the client left) or `estimated` (tollway's estimate, nothing delivered to count).
    source: str = "provider"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_from_openai(usage: Any) -> Usage | None:
    """Read an OpenAI `usage` object (chat completions); `None` if there is none."""
    if not isinstance(usage, dict):
        return None
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    return Usage(
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
        cached_tokens=_int(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0,
        reasoning_tokens=_int(completion_details.get("reasoning_tokens"))
        if isinstance(completion_details, dict)
        else 0,
    )


def usage_from_responses(usage: Any) -> Usage | None:
    """Read the `usage` of OpenAI's Responses API (`input_tokens`, `output_tokens`, details)."""
    if not isinstance(usage, dict):
        return None
    input_details = usage.get("input_tokens_details")
    output_details = usage.get("output_tokens_details")
    return Usage(
        prompt_tokens=_int(usage.get("input_tokens")),
        completion_tokens=_int(usage.get("output_tokens")),
        cached_tokens=_int(input_details.get("cached_tokens")) if isinstance(input_details, dict) else 0,
        reasoning_tokens=_int(output_details.get("reasoning_tokens")) if isinstance(output_details, dict) else 0,
    )
