"""Provider adapters: one module per provider family, all with the shape of `base.ProviderAdapter`."""

from __future__ import annotations

from pathlib import Path

from tollway.config.schema import ProviderConfig, Timeouts
from tollway.config.secrets import Secret, resolve_secret
from tollway.errors import ConfigError
from tollway.providers.base import ChatCall, Completion, ProviderAdapter, StreamSink
from tollway.upstream import UpstreamClient

__all__ = ["ChatCall", "Completion", "ProviderAdapter", "StreamSink", "build_adapters"]


def build_adapters(
    providers: list[ProviderConfig], default_timeouts: Timeouts, client: UpstreamClient | None, base_dir: Path | None
) -> dict[str, ProviderAdapter]:
    """One adapter per configured provider; raise `ConfigError` listing every unloadable secret."""
    from tollway.providers._keys import KeyRing
    from tollway.providers.anthropic import AnthropicAdapter
    from tollway.providers.bedrock import BedrockAdapter
    from tollway.providers.gemini import GeminiAdapter
    from tollway.providers.mock import MockAdapter
    from tollway.providers.openai import OpenAIAdapter

    adapters: dict[str, ProviderAdapter] = {}
    problems: list[str] = []
    for i, prov in enumerate(providers):
        timeouts = prov.timeouts or default_timeouts
        if prov.kind == "mock":
            adapters[prov.name] = MockAdapter(prov, timeouts)
            continue
        refs = prov.api_key if isinstance(prov.api_key, list) else [prov.api_key] if prov.api_key is not None else []
        keys: list[Secret] = []
        for j, ref in enumerate(refs):
            where = f"providers[{i}].api_key" + (f"[{j}]" if isinstance(prov.api_key, list) else "")
            try:
                keys.append(resolve_secret(ref, base_dir))
            except LookupError as exc:
                problems.append(f"{where} (provider `{prov.name}`): {exc}")
        if len(keys) != len(refs):
            continue
        ring = KeyRing(keys) if keys else None
        match prov.kind:
            case "openai" if prov.base_url is None:
                problems.append(f"providers[{i}] (provider `{prov.name}`): presets are not supported yet")
            case "openai":
                adapters[prov.name] = OpenAIAdapter(prov, timeouts, client, keys[0] if keys else None)
            case "anthropic":
                adapters[prov.name] = AnthropicAdapter(prov, timeouts, client, ring)
            case "gemini":
                adapters[prov.name] = GeminiAdapter(prov, timeouts, client, ring)
            case "bedrock":
                aws: dict[str, Secret] = {}
                for field_name in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
                    ref = getattr(prov, field_name)
                    try:
                        if ref is not None:
                            aws[field_name] = resolve_secret(ref, base_dir)
                    except LookupError as exc:
                        problems.append(f"providers[{i}].{field_name} (provider `{prov.name}`): {exc}")
                if "aws_access_key_id" in aws and "aws_secret_access_key" in aws:
                    adapters[prov.name] = BedrockAdapter(
                        prov,
                        timeouts,
                        client,
                        aws["aws_access_key_id"],
                        aws["aws_secret_access_key"],
                        aws.get("aws_session_token"),
                    )
            case _:
                problems.append(f"providers[{i}] (provider `{prov.name}`): kind `{prov.kind}` has no adapter yet")
    if problems:
        raise ConfigError(problems)
    return adapters
