"""Load a `tollway.toml`: parse, decode into typed structs, validate, and report every problem.

Decoding walks the msgspec struct types field by field instead of calling `msgspec.convert`
once, because `convert` stops at the first error and tollway promises all of them at once,
each as `FILE:LINE dotted.path: message`. Once a document has no problem, the walk's output is
handed to `msgspec.convert` so the result is exactly what msgspec would build.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any, Literal, get_args, get_origin

import msgspec

from tollway._native import Transport
from tollway.config._toml_lines import LineIndex, Path, format_path
from tollway.config.schema import Config, ProviderConfig, SecretRef, UpstreamLimits
from tollway.errors import ConfigError
from tollway.state.config import memory_workers_problem
from tollway.usage.catalog import entry_problems as catalog_entry_problems

KEY_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str


def _describe(value: Any) -> str:
    """How a TOML value is shown in an error: short, and typed the way TOML writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f'"{shown}"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


_EXPECTED = {str: "a string", int: "an integer", float: "a number", bool: "a boolean (true or false)"}


def _type_name(tp: Any) -> str:
    if tp in _EXPECTED:
        return _EXPECTED[tp]
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in get_args(tp))
    if origin is list:
        return "an array"
    if origin is dict or (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
        return "a table"
    return str(tp)


_INVALID: Any = object()  # marks a value that did not fit its type (already reported)


class _Decoder:
    """Walks a TOML value against a type, collecting problems instead of raising.

    `clean` returns the value when it fits, with unfit struct fields dropped (so their
    defaults apply) and unfit list items replaced by `None`, or `_INVALID`. That lets the
    cross-field checks run on everything that did decode, so one run reports it all.
    """

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self._hints: dict[type, dict[str, Any]] = {}

    def problem(self, path: Path, message: str) -> None:
        self.problems.append(Problem(path, message))

    def clean(self, value: Any, tp: Any, path: Path) -> Any:
        origin = get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            options = [a for a in get_args(tp) if a is not type(None)]
            if len(options) == 1:
                return self.clean(value, options[0], path)
            for option in options:
                saved = len(self.problems)
                out = self.clean(value, option, path)
                del self.problems[saved:]
                if out is not _INVALID:
                    return out
            self.problem(path, f"expected {' or '.join(_type_name(a) for a in options)}, got {_describe(value)}")
            return _INVALID
        if origin is Literal:
            allowed = get_args(tp)
            if value in allowed and type(value) is type(allowed[0]):
                return value
            self.problem(path, f"expected {_type_name(tp)}, got {_describe(value)}")
            return _INVALID
        if origin is list:
            if not isinstance(value, list):
                self.problem(path, f"expected an array, got {_describe(value)}")
                return _INVALID
            (item_tp,) = get_args(tp)
            items = [self.clean(v, item_tp, (*path, i)) for i, v in enumerate(value)]
            return [None if v is _INVALID else v for v in items]
        if origin is dict:
            if not isinstance(value, dict):
                self.problem(path, f"expected a table, got {_describe(value)}")
                return _INVALID
            _, item_tp = get_args(tp)
            entries = {k: self.clean(v, item_tp, (*path, k)) for k, v in value.items()}
            return {k: v for k, v in entries.items() if v is not _INVALID}
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            return self._struct(value, tp, path)
        if tp is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif tp is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, tp)
        if ok:
            return value
        self.problem(path, f"expected {_type_name(tp)}, got {_describe(value)}")
        return _INVALID

    def _struct(self, value: Any, tp: type[msgspec.Struct], path: Path) -> Any:
        if not isinstance(value, dict):
            self.problem(path, f"expected a table, got {_describe(value)}")
            return _INVALID
        hints = self._hints.get(tp)
        if hints is None:
            hints = self._hints[tp] = typing.get_type_hints(tp)
        # Keys as written in TOML (`encode_name`: a field may be renamed, as `not_` is `not`).
        fields = {f.encode_name: f for f in msgspec.structs.fields(tp)}
        for key in value:
            if key not in fields:
                known = ", ".join(f"`{k}`" for k in fields)
                self.problem((*path, key), f"unknown key `{key}`; expected one of {known}")
        kwargs: dict[str, Any] = {}
        complete = True
        for key, field in fields.items():
            if key in value:
                out = self.clean(value[key], hints[field.name], (*path, key))
                if out is not _INVALID:
                    kwargs[field.name] = out
                elif field.required:
                    complete = False
            elif field.required:
                self.problem(path, f"missing required key `{key}`")
                complete = False
        # Struct __init__ does not type-check, so a list field may hold `None` for an unusable
        # item here; only `_validate` sees such a partial value, never a caller.
        return tp(**kwargs) if complete else _INVALID


def _declared_names(raw: dict[str, Any], section: str) -> set[str]:
    """Names declared in a section, including items that failed to decode (so that references
    to them are not reported as unknown on top of the item's own problem)."""
    items = raw.get(section)
    if not isinstance(items, list):
        return set()
    return {i["name"] for i in items if isinstance(i, dict) and isinstance(i.get("name"), str)}


def _validate(config: Config, raw: dict[str, Any], decoder: _Decoder, base_dir: FsPath | None = None) -> None:
    """Rules that span fields: names, references, hashes, ranges; files named, when `base_dir`."""
    p = decoder.problem
    server = config.server
    # `config` may be partial here: list items that did not decode are `None`.
    if not 0 < server.port < 65536:
        p(("server", "port"), f"expected a port between 1 and 65535, got {server.port}")
    if server.workers < 1:
        p(("server", "workers"), f"expected at least 1 worker, got {server.workers}")
    if server.max_body_bytes < 1024:
        p(("server", "max_body_bytes"), f"expected at least 1024 bytes, got {server.max_body_bytes}")
    _check_timeouts(server.timeouts, ("server", "timeouts"), decoder)
    if server.max_connections_per_host < 1:
        p(("server", "max_connections_per_host"), f"expected at least 1, got {server.max_connections_per_host}")
    if server.stream_buffer_bytes < 16 * 1024:
        p(("server", "stream_buffer_bytes"), f"expected at least 16384 bytes, got {server.stream_buffer_bytes}")
    _check_upstream_limits(server.upstream_limits, ("server", "upstream_limits"), decoder)

    _check_unique_names(config.providers, "providers", "provider", decoder)
    for i, prov in enumerate(config.providers):
        at = ("providers", i)
        if prov is None:
            continue
        if prov.kind == "openai" and not prov.base_url and prov.preset is None:
            p(at, "missing `base_url` (for example `https://api.openai.com/v1`) or a `preset`")
        if prov.kind == "azure" and not prov.base_url:
            p(at, "missing `base_url`: the Azure OpenAI resource endpoint, as `https://NAME.openai.azure.com`")
        if prov.base_url and not prov.base_url.startswith(("http://", "https://")):
            p((*at, "base_url"), f"expected an http:// or https:// URL, got {_describe(prov.base_url)}")
        if prov.preset is not None and prov.kind != "openai":
            p(
                (*at, "preset"),
                f'presets are OpenAI-compatible servers: `preset` needs `kind = "openai"`, not `{prov.kind}`',
            )
        if prov.kind == "bedrock":
            if not prov.region:
                p(at, "missing `region` (for example `us-east-1`)")
            elif not _REGION_RE.match(prov.region):
                p((*at, "region"), f"expected an AWS region such as `us-east-1`, got {_describe(prov.region)}")
            if prov.aws_access_key_id is None or prov.aws_secret_access_key is None:
                p(at, 'missing `aws_access_key_id` and `aws_secret_access_key` (as `{ env = "AWS_ACCESS_KEY_ID" }`)')
        if isinstance(prov.api_key, list):
            if not prov.api_key:
                p((*at, "api_key"), "expected at least one key")
            for j, ref in enumerate(prov.api_key):
                if ref is not None:
                    _check_secret_ref(ref, (*at, "api_key", j), decoder)
        elif prov.api_key is not None:
            _check_secret_ref(prov.api_key, (*at, "api_key"), decoder)
        for field_name in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
            ref = getattr(prov, field_name)
            if ref is not None:
                _check_secret_ref(ref, (*at, field_name), decoder)
        if prov.default_max_tokens < 1:
            p((*at, "default_max_tokens"), f"expected at least 1, got {prov.default_max_tokens}")
        if prov.timeouts is not None:
            _check_timeouts(prov.timeouts, (*at, "timeouts"), decoder)
        if prov.mock.stream_chunks < 1:
            p((*at, "mock", "stream_chunks"), f"expected at least 1, got {prov.mock.stream_chunks}")
        _check_egress(prov, at, decoder, base_dir)

    declared_providers = _declared_names(raw, "providers")
    _check_unique_names(config.models, "models", "model", decoder)
    for i, model in enumerate(config.models):
        at = ("models", i)
        if model is None:
            continue
        if model.provider not in declared_providers:
            known = ", ".join(f"`{n}`" for n in sorted(declared_providers)) or "(no providers are configured)"
            p((*at, "provider"), f"unknown provider `{model.provider}`; expected one of {known}")

    declared_models = _declared_names(raw, "models")
    declared_routes = _declared_names(raw, "routes")
    _check_unique_names(config.keys, "keys", "key", decoder)
    hashes: dict[str, int] = {}
    for i, key in enumerate(config.keys):
        at = ("keys", i)
        if key is None:
            continue
        if not _NAME_RE.match(key.name):
            p((*at, "name"), f"expected a name of letters, digits and `._:/@-`, got {_describe(key.name)}")
        if not KEY_HASH_RE.match(key.hash):
            p((*at, "hash"), "expected `sha256:` followed by 64 lowercase hex digits (run `tollway keys new`)")
        elif key.hash in hashes:
            p((*at, "hash"), f"same hash as keys[{hashes[key.hash]}]: two names for one key")
        hashes.setdefault(key.hash, i)
        for j, model_name in enumerate(key.models or []):
            if model_name not in declared_models and model_name not in declared_routes:
                p((*at, "models", j), f"unknown model `{model_name}`; it is not in [[models]] or [[routes]]")

    if config.admin.key_hash is not None and not KEY_HASH_RE.match(config.admin.key_hash):
        p(("admin", "key_hash"), "expected `sha256:` followed by 64 lowercase hex digits (run `tollway keys new`)")

    from tollway.routing.config import validate_routes, validate_routing

    for path, message in validate_routes(
        config.routes, declared_models, declared_providers, key_names=_declared_names(raw, "keys")
    ):
        p(path, message)
    for path, message in validate_routing(config.routing):
        p(path, message)
    for i, entry in enumerate(config.catalog):
        if entry is not None:
            for message in catalog_entry_problems(entry, f"catalog[{i}]"):
                field, _, text = message.partition(": ")
                p(("catalog", i, field.rsplit(".", 1)[-1]), text)
    from tollway.policy.engine import policy_problems

    for path, message in policy_problems(config.policies):
        p(path, message)
    if config.limits.default_max_output_tokens < 1:
        p(
            ("limits", "default_max_output_tokens"),
            f"expected at least 1, got {config.limits.default_max_output_tokens}",
        )
    for field_name, message in config.ledger.problems():
        p(("ledger", field_name), message)
    if config.state.backend == "memory" and (problem := memory_workers_problem(server.workers)) is not None:
        p(("server", "workers"), problem)
    for field_name, message in config.state.problems():
        p(("state", field_name), message)
    if not 0.0 <= config.tracing.sample_ratio <= 1.0:
        p(("tracing", "sample_ratio"), f"expected a number between 0 and 1, got {config.tracing.sample_ratio}")
    endpoint = config.tracing.otlp_endpoint
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        p(("tracing", "otlp_endpoint"), f"expected an http:// or https:// URL, got {_describe(endpoint)}")


def _check_unique_names(items: list[Any], section: str, what: str, decoder: _Decoder) -> None:
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        if item is None:
            continue
        if item.name in first:
            decoder.problem(
                (section, i, "name"), f"duplicate {what} name `{item.name}` (first at {section}[{first[item.name]}])"
            )
        first.setdefault(item.name, i)


def _check_timeouts(t: Any, at: Path, decoder: _Decoder) -> None:
    for name in ("connect", "first_byte", "idle", "total"):
        if getattr(t, name) <= 0:
            decoder.problem((*at, name), f"expected a positive number of seconds, got {getattr(t, name)}")


# The smallest bounds that still let real providers through (hyper's read buffer is at least 8 KiB).
_LIMIT_FLOORS = {
    "max_header_bytes": 8192,
    "max_body_bytes": 1024,
    "max_decompressed_ratio": 2,
    "max_sse_line_bytes": 1024,
}


def _check_upstream_limits(limits: UpstreamLimits, at: Path, decoder: _Decoder) -> None:
    for name, floor in _LIMIT_FLOORS.items():
        value = getattr(limits, name)
        if value < floor:
            decoder.problem((*at, name), f"expected at least {floor}, got {value}")


_EGRESS_KEYS = ("ca_file", "client_cert", "client_key", "proxy", "proxy_username", "proxy_password")


def _check_egress(prov: ProviderConfig, at: Path, decoder: _Decoder, base_dir: FsPath | None) -> None:
    """A provider's way out: certificates that can be read and used, a proxy it can go through."""
    p = decoder.problem
    if prov.upstream_limits is not None:
        _check_upstream_limits(prov.upstream_limits, (*at, "upstream_limits"), decoder)
    if prov.kind == "mock":
        for name in _EGRESS_KEYS:
            if getattr(prov, name) is not None:
                p((*at, name), "the `mock` provider makes no network calls; remove it")
        return
    if prov.client_key is not None:
        _check_secret_ref(prov.client_key, (*at, "client_key"), decoder)
    if prov.client_cert is not None and prov.client_key is None:
        p((*at, "client_cert"), "a client certificate needs its private key: add `client_key`")
    if prov.client_key is not None and prov.client_cert is None:
        p((*at, "client_key"), "a private key needs its certificate chain: add `client_cert`")
    pems: dict[str, bytes] = {}
    for name in ("ca_file", "client_cert"):
        value = getattr(prov, name)
        if value is not None and base_dir is not None:
            text = _read_config_file(value, base_dir, (*at, name), decoder)
            if text is not None:
                pems[name] = text
    key = prov.client_key
    if key is not None and key.file is not None and base_dir is not None:
        text = _read_config_file(key.file, base_dir, (*at, "client_key"), decoder)
        if text is not None:
            pems["client_key"] = text
    if pems and ("client_cert" in pems) == ("client_key" in pems):
        try:
            Transport.check_tls(pems.get("ca_file"), pems.get("client_cert"), pems.get("client_key"))
        except ConfigError as exc:
            field = "ca_file" if "ca_file" in exc.problems[0] else "client_cert"
            p((*at, field), exc.problems[0])
    if prov.proxy is not None:
        try:
            Transport.check_proxy(prov.proxy, prov.proxy_username, "-" if prov.proxy_password is not None else None)
        except ConfigError as exc:
            p((*at, "proxy"), exc.problems[0])
    if prov.proxy_password is not None:
        _check_secret_ref(prov.proxy_password, (*at, "proxy_password"), decoder)
        if prov.proxy_username is None:
            p((*at, "proxy_password"), "a proxy password needs `proxy_username`")
    if (prov.proxy_username is not None or prov.proxy_password is not None) and prov.proxy in (None, "none"):
        p(
            at,
            "`proxy_username` and `proxy_password` go with a `proxy` URL"
            " (credentials for a proxy from the environment belong in its URL)",
        )


def _read_config_file(name: str, base_dir: FsPath, at: Path, decoder: _Decoder) -> bytes | None:
    """A file the config names (relative to the config file), or `None` and a problem; never
    its content in the message."""
    path = FsPath(name).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    try:
        return path.read_bytes()
    except OSError as exc:
        decoder.problem(at, f"cannot read `{path}`: {exc.strerror or exc}")
        return None


def _check_secret_ref(ref: SecretRef, at: Path, decoder: _Decoder) -> None:
    if (ref.env is None) == (ref.file is None):
        decoder.problem(at, 'expected exactly one of `env` or `file`, as in `{ env = "OPENAI_API_KEY" }`')


@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration and where it came from."""

    config: Config
    path: FsPath


def load_config(path: str | FsPath) -> LoadedConfig:
    """Read and validate a config file; raise `ConfigError` listing every problem."""
    fs_path = FsPath(path)
    label = fs_path.name
    try:
        text = fs_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{fs_path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{fs_path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    return LoadedConfig(parse_config(text, label, fs_path.parent), fs_path)


def parse_config(text: str, label: str = "tollway.toml", base_dir: FsPath | None = None) -> Config:
    """Validate TOML text; `label` is the file name used in messages. Files the config names
    (relative to `base_dir`, the config file's folder) are checked only when it is given."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)"; restate it as FILE:LINE.
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)$", msg)
        if m:
            msg = f"{label}:{m.group(1)}: invalid TOML: {msg[: m.start()].strip()} (column {m.group(2)})"
        else:
            msg = f"{label}: invalid TOML: {msg}"
        raise ConfigError([msg]) from None

    decoder = _Decoder()
    partial = decoder.clean(raw, Config, ())
    if partial is not _INVALID:
        _validate(partial, raw, decoder, base_dir)
    if decoder.problems:
        lines = LineIndex(text)
        out = []
        located = sorted(((lines.line_of(p.path) or 0, i, p) for i, p in enumerate(decoder.problems)))
        for line, _, prob in located:
            where = f"{label}:{line}" if line else label
            dotted = format_path(prob.path)
            out.append(f"{where} {dotted}: {prob.message}" if dotted else f"{where}: {prob.message}")
        raise ConfigError(out)
    return msgspec.convert(raw, Config)
