"""Provider adapters: one module per provider family, all with the shape of `base.ProviderAdapter`."""

from __future__ import annotations

from pathlib import Path

import msgspec

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
    from tollway.providers._keys import KeyRing, RotatingClient
    from tollway.providers.anthropic import AnthropicAdapter
    from tollway.providers.azure import AzureAdapter
    from tollway.providers.bedrock import BedrockAdapter
    from tollway.providers.gemini import GeminiAdapter
    from tollway.providers.mock import MockAdapter
    from tollway.providers.openai import OpenAIAdapter
    from tollway.providers.presets import PRESETS

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
            case "openai":
                preset = PRESETS[prov.preset] if prov.preset is not None else None
                if preset is not None and preset.key_required and not keys:
                    problems.append(
                        f"providers[{i}] (provider `{prov.name}`): preset `{preset.name}` needs an `api_key`"
                    )
                    continue
                if prov.base_url is None and preset is not None:
                    prov = msgspec.structs.replace(prov, base_url=preset.base_url)
                rewrite = preset.rewrite if preset is not None and preset.changes_bodies else None
                if client is not None and (len(keys) > 1 or rewrite is not None):
                    # Keys and quirks applied per request, under the adapter (see `RotatingClient`).
                    wrapped = RotatingClient(client, ring, "authorization", "Bearer ", rewrite)
                    adapters[prov.name] = OpenAIAdapter(prov, timeouts, wrapped, None)
                else:
                    adapters[prov.name] = OpenAIAdapter(prov, timeouts, client, keys[0] if keys else None)
            case "azure":
                adapters[prov.name] = AzureAdapter(prov, timeouts, client, ring)
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
    if problems:
        raise ConfigError(problems)
    return adapters
