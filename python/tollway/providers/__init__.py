"""Provider adapters: one module per provider family, all with the shape of `base.ProviderAdapter`."""

from __future__ import annotations

from pathlib import Path

from tollway.config.schema import ProviderConfig, Timeouts
from tollway.config.secrets import resolve_secret
from tollway.errors import ConfigError
from tollway.providers.base import ChatCall, Completion, ProviderAdapter, StreamSink
from tollway.upstream import UpstreamClient

__all__ = ["ChatCall", "Completion", "ProviderAdapter", "StreamSink", "build_adapters"]


def build_adapters(
    providers: list[ProviderConfig], default_timeouts: Timeouts, client: UpstreamClient | None, base_dir: Path | None
) -> dict[str, ProviderAdapter]:
    """One adapter per configured provider; raise `ConfigError` listing every unloadable secret."""
    from tollway.providers.mock import MockAdapter
    from tollway.providers.openai import OpenAIAdapter

    adapters: dict[str, ProviderAdapter] = {}
    problems: list[str] = []
    for i, prov in enumerate(providers):
        timeouts = prov.timeouts or default_timeouts
        if prov.kind == "mock":
            adapters[prov.name] = MockAdapter(prov, timeouts)
            continue
        api_key = None
        if prov.api_key is not None:
            try:
                api_key = resolve_secret(prov.api_key, base_dir)
            except LookupError as exc:
                problems.append(f"providers[{i}].api_key (provider `{prov.name}`): {exc}")
                continue
        adapters[prov.name] = OpenAIAdapter(prov, timeouts, client, api_key)
    if problems:
        raise ConfigError(problems)
    return adapters
