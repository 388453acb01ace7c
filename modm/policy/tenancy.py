"""Which cache namespaces a tenant's requests read from and write to: its own, plus the shared pool only when the
tenant opted in. A tenant that did not opt in can neither see shared entries nor have its own entries shared."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from modm.config.schema import TENANT_PATTERN

__all__ = ["SHARED_NAMESPACE", "CacheScope", "cache_scope"]

# '@' is outside TENANT_PATTERN, so no tenant can name (and so read or fill) the shared pool directly.
SHARED_NAMESPACE = "@shared"


@dataclass(frozen=True)
class CacheScope:
    read: tuple[str, ...]  # namespaces a retrieval searches
    write: str  # namespace a result of this tenant is admitted to


def cache_scope(tenant: str, shared_pool_tenants: Collection[str]) -> CacheScope:
    if not isinstance(tenant, str) or not TENANT_PATTERN.match(tenant):
        raise ValueError(f"not a tenant name: {tenant!r:.80}")
    if tenant in shared_pool_tenants:
        # Opted-in tenants fill only the shared pool: one copy per image, seen by every opted-in tenant. Their
        # own namespace keeps what they cached before opting in.
        return CacheScope(read=(tenant, SHARED_NAMESPACE), write=SHARED_NAMESPACE)
    return CacheScope(read=(tenant,), write=tenant)
