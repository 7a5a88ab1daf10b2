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
Counters are built once per tokenizer and cached for the process; a tokenizer that cannot be
loaded is logged when a model's accounting is resolved (once per target and configuration) and
replaced by `o200k_base`, whose counts are then `estimated`, never `counted`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from tollway._native import TokenCounter
from tollway.errors import TokenCountError, TokenizerError
from tollway.usage import Usage
from tollway.usage.catalog import Catalog, Cost, ModelInfo, Provenance, price
from tollway.usage.record import TokenSource

if TYPE_CHECKING:
    from tollway.config.schema import ModelConfig

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


def load_counter(tokenizer: str, base_dir: str = "") -> tuple[TokenCounter, TokenizerError | None]:
    """The counter for `tokenizer`, and why it could not be loaded (`None` when it was): a
    tokenizer that cannot be loaded (an unknown name, a `tokenizer.json` that is not there) is
    replaced by `DEFAULT_TOKENIZER`, whose counts are then estimates, not counts."""
    try:
        return counter_for(tokenizer, base_dir), None
    except TokenizerError as exc:
        return counter_for(DEFAULT_TOKENIZER), exc


def tokenizer_warnings(models: Sequence[ModelConfig], base_dir: str) -> list[str]:
    """For `tollway check`: the models whose configured tokenizer cannot be loaded. The gateway
    serves them anyway, counting with `DEFAULT_TOKENIZER` and recording the counts as estimates."""
    out: list[str] = []
    for i, model in enumerate(models):
        if model.tokenizer is not None and (failed := load_counter(model.tokenizer, base_dir)[1]) is not None:
            out.append(
                f"models[{i}] (`{model.name}`): tokenizer `{model.tokenizer}` cannot be loaded ({failed}); its"
                f" tokens would be counted with {DEFAULT_TOKENIZER}, as estimates"
            )
    return out


@dataclass(frozen=True, slots=True)
class ModelAccounting:
    """How one served model is counted and priced, resolved once per (provider, model)."""

    info: ModelInfo | None
    tokenizer: str
    # Counts are exact counts, not estimates: the tokenizer is the model's own (config or
    # catalog), not the fallback, and it could be loaded.
    known_tokenizer: bool
    provenance: Provenance  # of `info` (meaningless when `info` is None)
    counter: TokenCounter  # `tokenizer`'s, or `DEFAULT_TOKENIZER`'s when it cannot be loaded

    @classmethod
    def resolve(
        cls, catalog: Catalog, upstream_model: str, configured_tokenizer: str | None, base_dir: str = ""
    ) -> ModelAccounting:
        info = catalog.get(upstream_model)
        tokenizer = configured_tokenizer or (info.tokenizer if info is not None else None)
        name = tokenizer or DEFAULT_TOKENIZER
        counter, failed = load_counter(name, base_dir)
        if failed is not None:
            log.warning(
                "tokenizer `%s` cannot be loaded (%s); counting with %s instead", name, failed, DEFAULT_TOKENIZER
            )
        return cls(
            info=info,
            tokenizer=name,
            known_tokenizer=tokenizer is not None and failed is None,
            provenance=catalog.provenance(info) if info is not None else "catalog",
            counter=counter,
        )

    def count_prompt(self, api: str, raw_body: bytes) -> tuple[int, TokenSource]:
        """Prompt tokens of a request body in the client's API format (on the request path when
        a policy reserves prompt tokens); a body the counter cannot read counts 0, estimated."""
        try:
            tokens, exactness = self.counter.count_prompt(api, raw_body)
        except TokenCountError:
            return 0, "estimated"
        return tokens, "counted" if exactness == "exact" and self.known_tokenizer else "estimated"

    def count_text(self, text: str) -> tuple[int, str]:
        """Tokens of output text, and the counter's exactness."""
        if not text:
            return 0, "exact"
        return self.counter.count(text), self.counter.exactness

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
    delivered_tokens: int,
    complete: bool,
) -> SettledUsage:
    """The usage to record for one model call.

    `reported`: the provider's usage, if any arrived. `delivered_tokens`: the output tokens
    counted by the gateway, with the model's counter, from what passed through (used only when
    the provider reported nothing). `complete`: the answer reached its end (else counts are
    `partial`).
    """
    if reported is not None:
        usage = reported
        usage.source = "provider"
        return SettledUsage(usage, "provider", "provider", accounting.cost(usage))
    prompt_tokens, prompt_source = accounting.count_prompt(api, raw_body)
    completion_tokens, exactness = delivered_tokens, accounting.counter.exactness
    if not complete:
        completion_source: TokenSource = "partial"
    elif exactness == "exact" and accounting.known_tokenizer:
        completion_source = "counted"
    else:
        completion_source = "estimated"
    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, source=completion_source)
    return SettledUsage(usage, prompt_source, completion_source, accounting.cost(usage))
