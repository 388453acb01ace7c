"""Who a request is from: with API keys the key names the tenant (X-Tenant-Id may only repeat it); without, the
X-Tenant-Id header does (or the default tenant)."""

from __future__ import annotations

from modm.config.schema import TENANT_PATTERN, TENANT_RULE
from modm.constants import DEFAULT_TENANT
from modm.policy.api_keys import ApiKeyRing, AuthenticationError
from modm.serving.errors import AuthenticationFailed, PermissionDenied, RequestInvalid

__all__ = ["TenantResolver"]


class TenantResolver:
    def __init__(self, api_keys: ApiKeyRing | None):
        self.api_keys = api_keys

    def tenant(self, header: str | None, authorization: str | None) -> str:
        if self.api_keys is not None:
            tenant = self.authenticate(authorization)
            if header is not None and header != tenant:
                raise PermissionDenied("X-Tenant-Id names another tenant than the API key's")
            return tenant
        if header is None:
            return DEFAULT_TENANT
        if not TENANT_PATTERN.match(header):
            raise RequestInvalid(f"X-Tenant-Id must be {TENANT_RULE}")
        return header

    def authenticate(self, authorization: str | None) -> str | None:
        """The key's tenant; None when the API is open."""
        if self.api_keys is None:
            return None
        try:
            return self.api_keys.tenant_for(authorization)
        except AuthenticationError as err:
            raise AuthenticationFailed(str(err)) from None

    def presented(self, header: str | None, authorization: str | None) -> str | None:
        """The tenant of the credentials a caller presented (an API key where keys are configured — the OpenAI
        client always sends one — else X-Tenant-Id), or None when it presented none."""
        presented = authorization is not None if self.api_keys is not None else header is not None
        return self.tenant(header, authorization) if presented else None
