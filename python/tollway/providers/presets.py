"""Known OpenAI-compatible servers (`kind = "openai"`, `preset = "<name>"`), as data.

A preset supplies what differs between servers that all speak OpenAI's chat completions: the
base URL (a configured `base_url` wins, for a proxy or a self-hosted port), whether an API key
is needed (always sent as `Authorization: Bearer`), and the parameters the server is known to
name differently or to reject. Those quirks are applied to the request body on its way out
(`rewrite`), for OpenAI- and Anthropic-format clients alike:

- `renamed`: sent under the server's name (Mistral's `random_seed` for `seed`); a rename to
  `max_tokens` / `max_completion_tokens` makes the request use the server's name for the
  output cap, whichever the client sent.
- `dropped`: parameters the server rejects with an error; they are removed (and listed per
  preset in `docs/providers.md`), so a request that names them still gets an answer.
- `drop_message_names`: the server rejects `messages[].name`.

The rewrite costs one regular-expression scan for a request that names none of those
parameters: the body is parsed only when a member with one of their names occurs in it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import orjson

from tollway.config.schema import PresetName


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    base_url: str
    key_required: bool
    renamed: tuple[tuple[str, str], ...] = ()
    dropped: tuple[str, ...] = ()
    drop_message_names: bool = False

    @property
    def changes_bodies(self) -> bool:
        return bool(self.renamed or self.dropped or self.drop_message_names)

    def rewrite(self, body: bytes) -> bytes:
        """The request body with this server's quirks applied (the same bytes when none applies)."""
        if not _keys_pattern(self).search(body):
            return body
        parsed = orjson.loads(body)
        if not isinstance(parsed, dict):
            return body
        return orjson.dumps(self.apply(parsed))

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in body.items() if k not in self.dropped}
        for old, new in self.renamed:
            if old in out:
                value = out.pop(old)
                out.setdefault(new, value)
        if self.drop_message_names and isinstance(out.get("messages"), list):
            out["messages"] = [
                {k: v for k, v in m.items() if k != "name"} if isinstance(m, dict) else m for m in out["messages"]
            ]
        return out


@functools.cache
def _keys_pattern(preset: Preset) -> re.Pattern[bytes]:
    """Matches a JSON member named as one of the parameters the preset changes (`"seed":`)."""
    names = [old for old, _ in preset.renamed] + list(preset.dropped)
    if preset.drop_message_names:
        names.append("name")
    return re.compile(b'"(' + b"|".join(re.escape(n.encode()) for n in names) + rb')"\s*:')


PRESETS: dict[PresetName, Preset] = {
    # OpenAI accepts `max_completion_tokens` for every chat model; its reasoning models reject
    # the deprecated `max_tokens`.
    "openai": Preset("openai", "https://api.openai.com/v1", True, renamed=(("max_tokens", "max_completion_tokens"),)),
    # Groq answers 400 to these (console.groq.com/docs/openai).
    "groq": Preset(
        "groq",
        "https://api.groq.com/openai/v1",
        True,
        dropped=("logprobs", "top_logprobs", "logit_bias"),
        drop_message_names=True,
    ),
    # Mistral rejects unknown fields (422) and names the seed `random_seed`; it reports stream
    # usage in the last chunk on its own, without `stream_options`.
    "mistral": Preset(
        "mistral",
        "https://api.mistral.ai/v1",
        True,
        renamed=(("seed", "random_seed"), ("max_completion_tokens", "max_tokens")),
        dropped=(
            "stream_options",
            "user",
            "logit_bias",
            "logprobs",
            "top_logprobs",
            "store",
            "metadata",
            "service_tier",
        ),
    ),
    "together": Preset("together", "https://api.together.xyz/v1", True),
    "deepseek": Preset(
        "deepseek", "https://api.deepseek.com/v1", True, renamed=(("max_completion_tokens", "max_tokens"),)
    ),
    "fireworks": Preset("fireworks", "https://api.fireworks.ai/inference/v1", True),
    "xai": Preset("xai", "https://api.x.ai/v1", True),
    "openrouter": Preset("openrouter", "https://openrouter.ai/api/v1", True),
    # Self-hosted servers, on their default ports; no key unless the server was started with one.
    "vllm": Preset("vllm", "http://localhost:8000/v1", False),
    "ollama": Preset("ollama", "http://localhost:11434/v1", False, renamed=(("max_completion_tokens", "max_tokens"),)),
    "lmstudio": Preset(
        "lmstudio", "http://localhost:1234/v1", False, renamed=(("max_completion_tokens", "max_tokens"),)
    ),
}
