"""Provider adapters: one module per provider family, all with the shape of `base.ProviderAdapter`."""

from __future__ import annotations

from pathlib import Path

from tollway.config.schema import ProviderConfig, Timeouts, UpstreamLimits
from tollway.config.secrets import Secret, resolve_secret
from tollway.errors import ConfigError
from tollway.providers._keys import KeyRing
from tollway.providers.anthropic import AnthropicAdapter
from tollway.providers.azure import AzureAdapter
from tollway.providers.base import ChatCall, Completion, ProviderAdapter, StreamSink
from tollway.providers.bedrock import BedrockAdapter
from tollway.providers.gemini import GeminiAdapter
from tollway.providers.mock import MockAdapter
from tollway.providers.openai import OpenAIAdapter
from tollway.providers.presets import PRESETS
from tollway.upstream import UpstreamClient

__all__ = ["ChatCall", "Completion", "ProviderAdapter", "StreamSink", "build_adapters"]


def build_adapters(
    providers: list[ProviderConfig],
    default_timeouts: Timeouts,
    client: UpstreamClient | None,
    base_dir: Path | None,
    default_limits: UpstreamLimits | None = None,
) -> dict[str, ProviderAdapter]:
    """One adapter per configured provider; raise `ConfigError` listing every unloadable secret,
    certificate or proxy. Without a `client` (a dry run), adapters that call out are skipped."""
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
        if client is None:
            continue
        try:
            egress = client.egress(prov, timeouts, prov.upstream_limits or default_limits or UpstreamLimits(), base_dir)
        except ConfigError as exc:
            problems.extend(f"providers[{i}]: {p}" for p in exc.problems)
            continue
        match prov.kind:
            case "openai":
                preset = PRESETS[prov.preset] if prov.preset is not None else None
                if preset is not None and preset.key_required and not keys:
                    problems.append(
                        f"providers[{i}] (provider `{prov.name}`): preset `{preset.name}` needs an `api_key`"
                    )
                    continue
                adapters[prov.name] = OpenAIAdapter(prov, timeouts, egress, ring, preset)
            case "azure":
                adapters[prov.name] = AzureAdapter(prov, timeouts, egress, ring)
            case "anthropic":
                adapters[prov.name] = AnthropicAdapter(prov, timeouts, egress, ring)
            case "gemini":
                adapters[prov.name] = GeminiAdapter(prov, timeouts, egress, ring)
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
                        egress,
                        aws["aws_access_key_id"],
                        aws["aws_secret_access_key"],
                        aws.get("aws_session_token"),
                    )
    if problems:
        raise ConfigError(problems)
    return adapters
