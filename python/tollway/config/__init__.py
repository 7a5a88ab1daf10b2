"""Configuration: TOML file -> validated, typed `Config` (see docs/configuration.md)."""

from tollway.config.loader import LoadedConfig, load_config, parse_config
from tollway.config.schema import Config, KeyConfig, ModelConfig, ProviderConfig, ServerConfig, Timeouts
from tollway.config.secrets import Secret, resolve_secret

__all__ = [
    "Config",
    "KeyConfig",
    "LoadedConfig",
    "ModelConfig",
    "ProviderConfig",
    "Secret",
    "ServerConfig",
    "Timeouts",
    "load_config",
    "parse_config",
    "resolve_secret",
]
