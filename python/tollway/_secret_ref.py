"""`SecretRef`, in a module of its own outside `tollway.config`, so that configuration sections
defined in other packages (`tollway.state.config`) can name a secret without importing the
config package, whose `__init__` imports the loader, which imports those sections."""

from __future__ import annotations

import msgspec


class SecretRef(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where a secret comes from: `{ env = "VAR" }` or `{ file = "/path" }` (exactly one)."""

    env: str | None = None
    file: str | None = None
