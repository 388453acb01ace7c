"""Cache scopes per tenant (modm.policy.tenancy): no cross-tenant reuse unless both tenants opt into the shared pool,
as a property of the scopes and end to end on a real ImageCache."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modm.cache import ImageCache
from modm.config import CacheConfig
from modm.policy.tenancy import SHARED_NAMESPACE, cache_scope

TENANTS = ["alice", "bob", "carol", "default", "a.b-c_9"]


@given(st.sampled_from(TENANTS), st.sampled_from(TENANTS), st.frozensets(st.sampled_from(TENANTS)))
def test_a_reader_sees_a_writers_entries_only_if_same_tenant_or_both_opted_in(reader, writer, opted_in):
    visible = cache_scope(writer, opted_in).write in cache_scope(reader, opted_in).read
    assert visible == (reader == writer or (reader in opted_in and writer in opted_in))


@pytest.mark.parametrize("tenant", ["../x", "/etc/passwd", "", "nul\x00", "名前", SHARED_NAMESPACE, "x" * 65, None])
def test_only_tenant_names_get_a_scope(tenant):
    with pytest.raises(ValueError, match="not a tenant name"):
        cache_scope(tenant, set())


def test_on_a_real_cache_only_opted_in_tenants_reuse_each_others_images(tmp_path):
    dim = 8
    vector = np.eye(dim, dtype=np.float32)[0]
    opted_in = {"alice", "bob"}
    png = b"\x89PNG\r\n\x1a\n" + bytes(32)
    with ImageCache(CacheConfig(directory=str(tmp_path / "cache")), dim, durable=False) as cache:

        def admit(tenant):
            return cache.add(
                png,
                vector,
                prompt=f"by {tenant}",
                tenant=cache_scope(tenant, opted_in).write,
                source_model="large",
                k=0,
            ).id

        def found(tenant):
            match = cache.query(vector, list(cache_scope(tenant, opted_in).read))
            return None if match is None else match.entry_id

        by_alice = admit("alice")
        assert found("bob") == by_alice  # both opted in
        assert found("carol") is None  # carol did not opt in
        by_carol = admit("carol")
        assert found("carol") == by_carol
        assert found("alice") == by_alice and found("bob") == by_alice  # carol's image is not shared
        assert found("dave") is None
