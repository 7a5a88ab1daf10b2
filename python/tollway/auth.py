"""Virtual keys -> `Identity`.

Keys are stored only as `sha256:<hex>` of the key text. A presented key is hashed and looked up
by digest. The lookup compares digests, not keys: an attacker who measures the lookup's timing
learns about the SHA-256 of their own guess, which says nothing about any stored key (finding an
input whose digest shares a prefix with a stored digest is a preimage search). The final
equality uses `hmac.compare_digest` all the same. Keys are high-entropy random strings
(`tollway keys new`), so a fast hash is the right one; a slow password hash would only cost
latency on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from tollway.config.schema import KeyConfig

KEY_PREFIX = "tw-"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: resolved once per request from the virtual key."""

    key_name: str
    team: str | None = None
    user: str | None = None
    tags: tuple[str, ...] = ()
    # `None` means every configured model.
    models: frozenset[str] | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh virtual key: 256 bits of randomness, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyStore:
    def __init__(self, keys: list[KeyConfig]) -> None:
        self._by_digest: dict[bytes, tuple[bytes, Identity]] = {}
        for key in keys:
            digest = bytes.fromhex(key.hash.removeprefix("sha256:"))
            identity = Identity(
                key_name=key.name,
                team=key.team,
                user=key.user,
                tags=tuple(key.tags),
                models=None if key.models is None else frozenset(key.models),
                metadata=dict(key.metadata),
            )
            self._by_digest[digest] = (digest, identity)

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, presented: str) -> Identity | None:
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        hit = self._by_digest.get(digest)
        if hit is None or not hmac.compare_digest(hit[0], digest):
            return None
        return hit[1]


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a client sent: `Authorization: Bearer <key>` (OpenAI SDKs) or `x-api-key`
    (Anthropic SDKs). The scheme is matched case-insensitively, as HTTP requires."""
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    return None
