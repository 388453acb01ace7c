"""API keys: `Authorization: Bearer <key>` → the tenant the key is bound to. Keys are known only by their SHA-256
(from the config inline, or a file of '<sha256-hex> <tenant>' lines), so the config and the file leak no key."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from pydantic import ValidationError

from modm.config.schema import ApiKey, AuthConfig

__all__ = ["ApiKeyRing", "AuthenticationError", "parse_api_keys_file"]

MAX_KEY_CHARS = 512  # longer Authorization values are refused before hashing


class AuthenticationError(ValueError):
    """A request without a valid key; the message is the reason given to the client."""


def parse_api_keys_file(text: str, source: str) -> dict[str, str]:
    """'<sha256-hex> <tenant>' per line, '#' starts a comment. Errors name the file and line."""
    keys: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"{source}:{number}: expected '<sha256-hex> <tenant>', got {len(fields)} field(s)")
        try:
            key = ApiKey(sha256=fields[0], tenant=fields[1])
        except ValidationError as err:
            raise ValueError(f"{source}:{number}: {err.errors()[0]['msg'].removeprefix('Value error, ')}") from None
        if keys.setdefault(key.sha256, key.tenant) != key.tenant:
            raise ValueError(f"{source}:{number}: this key hash is already bound to tenant {keys[key.sha256]!r}")
    return keys


@dataclass(frozen=True)
class ApiKeyRing:
    tenant_by_sha256: Mapping[str, str]

    @classmethod
    def from_config(cls, auth: AuthConfig) -> ApiKeyRing | None:
        """None when the config names no keys (the API is open); reads api_keys_file if set."""
        if not auth.enabled:
            return None
        keys: dict[str, str] = {}
        if auth.api_keys_file is not None:
            path = Path(auth.api_keys_file)
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise ValueError(f"auth.api_keys_file {path}: cannot read it ({err})") from None
            keys = parse_api_keys_file(text, str(path))
        for key in auth.api_keys:
            if keys.setdefault(key.sha256, key.tenant) != key.tenant:
                raise ValueError(f"auth.api_keys: the key hash {key.sha256[:12]}... is bound to two tenants")
        if not keys:
            raise ValueError(f"auth.api_keys_file {auth.api_keys_file} holds no key: every request would be refused")
        return cls(MappingProxyType(keys))

    def tenant_for(self, authorization: str | None) -> str:
        """The tenant of the key in an Authorization header value; AuthenticationError says why there is none."""
        if authorization is None or not authorization.strip():
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise AuthenticationError("the Authorization header must be 'Bearer <key>'")
        if len(key) > MAX_KEY_CHARS:
            raise AuthenticationError(f"invalid API key (longer than {MAX_KEY_CHARS} characters)")
        try:
            # HTTP servers decode header bytes as ISO-8859-1; encoding back gives the bytes the client sent.
            raw = key.encode("latin-1")
        except UnicodeEncodeError:
            raise AuthenticationError("invalid API key") from None
        # Looking up a SHA-256 digest leaks nothing useful through timing: a near-miss digest is no near-miss key.
        tenant = self.tenant_by_sha256.get(hashlib.sha256(raw).hexdigest())
        if tenant is None:
            raise AuthenticationError("invalid API key")
        return tenant
