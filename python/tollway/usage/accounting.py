"""Turning what happened into token counts and a cost: the settle step of the request path.

Where each count comes from (the record's `prompt_source` / `completion_source`):

- `provider`: the provider reported usage (non-streamed answers; streams that carried it).
- `counted`: the provider reported none, the answer was complete, and tollway counted what
  passed with the model's tokenizer (exact for OpenAI's encodings and `tokenizer.json` text;
  otherwise the documented approximation).
- `partial`: the stream broke or the client left before the end, and the provider's usage never
  arrived: the output tokens are those of the text that was delivered (never zero when
  something was delivered, never missing), and the prompt tokens are counted from the request.
- `estimated`: nothing could be counted exactly (an approximate tokenizer for the prompt).
- `none`: no model call was made.

Tokenizer for a model: the model's `tokenizer` in config (a name, or the path of a Hugging Face
`tokenizer.json`), else the catalog's, else `o200k_base` as an estimate (marked approximate).
Counters are built once per tokenizer and cached for the process.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import orjson

from tollway._native import TokenCounter
from tollway.errors import TokenCountError, TokenizerError
from tollway.usage import Usage
from tollway.usage.catalog import Catalog, Cost, ModelInfo, Provenance, price
from tollway.usage.record import TokenSource

log = logging.getLogger("tollway")

DEFAULT_TOKENIZER = "o200k_base"


@functools.cache
def counter_for(tokenizer: str, base_dir: str = "") -> TokenCounter:
    """The counter for a tokenizer name or `tokenizer.json` path (cached for the process)."""
    if tokenizer.endswith(".json"):
        path = Path(tokenizer)
        if not path.is_absolute() and base_dir:
            path = Path(base_dir) / path
        return TokenCounter.from_file(str(path))
    return TokenCounter(tokenizer)


@dataclass(frozen=True, slots=True)
class ModelAccounting:
    """How one served model is counted and priced, resolved once per (provider, model)."""

    info: ModelInfo | None
    tokenizer: str
    # The tokenizer is the model's own (config or catalog), not the fallback estimate.
    known_tokenizer: bool
    provenance: Provenance  # of `info` (meaningless when `info` is None)
    base_dir: str = ""

    @classmethod
    def resolve(
        cls, catalog: Catalog, upstream_model: str, configured_tokenizer: str | None, base_dir: str = ""
    ) -> ModelAccounting:
        info = catalog.get(upstream_model)
        tokenizer = configured_tokenizer or (info.tokenizer if info is not None else None)
        return cls(
            info=info,
            tokenizer=tokenizer or DEFAULT_TOKENIZER,
            known_tokenizer=tokenizer is not None,
            provenance=catalog.provenance(info) if info is not None else "catalog",
            base_dir=base_dir,
        )

    def counter(self) -> TokenCounter | None:
        try:
            return counter_for(self.tokenizer, self.base_dir)
        except TokenizerError as exc:
            log.warning(
                "tokenizer `%s` cannot be loaded (%s); counting with %s", self.tokenizer, exc, DEFAULT_TOKENIZER
            )
            return counter_for(DEFAULT_TOKENIZER)

    def count_prompt(self, api: str, raw_body: bytes) -> tuple[int, TokenSource]:
        """Prompt tokens of a request body in the client's API format (on the request path when
        a policy reserves prompt tokens: the cached counter is looked up without `counter()`'s
        call, which is for when it cannot be loaded)."""
        counter: TokenCounter | None
        try:
            counter = counter_for(self.tokenizer, self.base_dir)
        except TokenizerError:
            counter = self.counter()
        if counter is None:
            return 0, "estimated"
        try:
            if api == "anthropic":
                tokens, exactness = counter.count_anthropic_messages(raw_body)
            else:
                tokens, exactness = counter.count_openai_chat(raw_body)
        except TokenCountError:
            return 0, "estimated"
        return tokens, "counted" if exactness == "exact" and self.known_tokenizer else "estimated"

    def count_text(self, text: str) -> tuple[int, str]:
        """Tokens of output text, and the counter's exactness."""
        counter = self.counter()
        if counter is None or not text:
            return 0, "exact"
        return counter.count(text), counter.exactness

    @property
    def priced(self) -> bool:
        return self.info is not None and self.info.input is not None and self.info.output is not None

    def cost(self, usage: Usage) -> Cost:
        """The cost of `usage`; source `unpriced` (and $0, to be shown as unpriced) without prices."""
        return price(self.info, usage, self.provenance)


def output_text(body: bytes, api: str) -> str:
    """The text a non-streamed answer produced, in the client's API format (for counting when
    the provider reported no usage): message content, refusals, reasoning and tool calls."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(parsed, dict):
        return ""
    parts: list[str] = []
    if api == "anthropic":
        for block in parsed.get("content") or ():
            if not isinstance(block, dict):
                continue
            for field in ("text", "thinking"):
                if isinstance(block.get(field), str):
                    parts.append(block[field])
            if block.get("type") == "tool_use":
                parts.append(str(block.get("name", "")) + orjson.dumps(block.get("input", {})).decode())
        return "".join(parts)
    for choice in parsed.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        for field in ("reasoning_content", "reasoning", "content", "refusal"):
            if isinstance(message.get(field), str):
                parts.append(message[field])
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                parts.extend(v for v in (function.get("name"), function.get("arguments")) if isinstance(v, str))
    return "".join(parts)


@dataclass(slots=True)
class SettledUsage:
    usage: Usage
    prompt_source: TokenSource
    completion_source: TokenSource
    cost: Cost


def settle_usage(
    accounting: ModelAccounting,
    *,
    api: str,
    raw_body: bytes,
    reported: Usage | None,
    delivered_text: str | None,
    complete: bool,
) -> SettledUsage:
    """The usage to record for one model call.

    `reported`: the provider's usage, if any arrived. `delivered_text`: the output text that
    passed through (streams), counted only when the provider reported nothing. `complete`:
    the answer reached its end (else counts are `partial`).
    """
    if reported is not None:
        usage = reported
        usage.source = "provider"
        return SettledUsage(usage, "provider", "provider", accounting.cost(usage))
    prompt_tokens, prompt_source = accounting.count_prompt(api, raw_body)
    completion_tokens, exactness = accounting.count_text(delivered_text or "")
    if not complete:
        completion_source: TokenSource = "partial"
    elif exactness == "exact" and accounting.known_tokenizer:
        completion_source = "counted"
    else:
        completion_source = "estimated"
    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, source=completion_source)
    return SettledUsage(usage, prompt_source, completion_source, accounting.cost(usage))
