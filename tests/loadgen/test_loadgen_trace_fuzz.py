"""Any file content, in any trace format: the reader returns requests or raises a ValueError that names the file,
never another exception (the malformed cases with exact messages are in test_loadgen_readers.py)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modm.workload.config import TraceConfig
from modm.workload.readers import load_trace

text_like = st.text(st.characters(codec="utf-8"), max_size=200).map(lambda s: s.encode("utf-8"))
json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
).map(lambda v: json.dumps(v).encode())
contents = st.binary(max_size=300) | text_like | json_like


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".txt", ".json", ".parquet"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=contents, n_requests=st.integers(1, 5))
def test_any_content_reads_or_names_the_file(tmp_path, suffix, content, n_requests):
    path = tmp_path / f"trace{suffix}"
    path.write_bytes(content)
    try:
        requests = load_trace(TraceConfig(path=path, n_requests=n_requests))
    except ValueError as err:
        assert str(path) in str(err), str(err)
    else:
        assert len(requests) == n_requests and all(r.prompt.strip() for r in requests)
