"""Secrets named in configuration (`{ env = "VAR" }` or `{ file = "/path" }`).

A `Secret` never shows its value in `repr`, `str`, logs or errors; only `reveal()` returns it,
and only the code that puts it on the wire calls that.
"""

from __future__ import annotations

import os
from pathlib import Path

from tollway.config.schema import SecretRef


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(****)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret is not picklable")


def resolve_secret(ref: SecretRef, base_dir: Path | None = None) -> Secret:
    """Load a secret; raise `LookupError` with a message that names the source, never the value."""
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if not value:
            raise LookupError(f"environment variable `{ref.env}` is not set")
        return Secret(value)
    if ref.file is not None:
        path = Path(ref.file).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise LookupError(f"cannot read secret file `{path}`: {exc.strerror or exc}") from None
        if not value:
            raise LookupError(f"secret file `{path}` is empty")
        return Secret(value)
    raise LookupError("no `env` or `file` given")
