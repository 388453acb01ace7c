"""Persistence: round trip, compaction, capacity on reopen, and refusal of foreign or corrupt directories."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from cache_testkit import DIM, add_seeded, make_config, near_duplicate, tiny_png, unit_vector

from modm.cache import CacheCorruptError, CacheDimensionError, ImageCache

TENANTS = ("alice", "bob", "carol")


def _fill(cache, seeds):
    return [add_seeded(cache, s, TENANTS[s % 3], k=s % 4) for s in seeds]


def _queries(n=12):
    return [near_duplicate(unit_vector(s), 0.9, seed=500 + s) for s in range(n)]


def _snapshot_of_directory(root):
    """Every file under root with its bytes, to prove an operation changed nothing."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def crash_copy(cache_dir, tmp_path, name="crashed"):
    """The directory as a crash right now would leave it: a copy taken while the cache is still open."""
    return shutil.copytree(cache_dir, tmp_path / name)


def test_round_trip_keeps_entries_images_and_query_results(open_cache, cache_dir):
    cache = open_cache(capacity=10, compact_every=4)
    _fill(cache, range(14))
    before_entries = cache.entries()
    before = [cache.query(q, list(TENANTS[: 1 + s % 3])) for s, q in enumerate(_queries())]
    cache.close()

    reopened = open_cache(capacity=10, compact_every=4)
    assert reopened.entries() == before_entries
    assert [reopened.query(q, list(TENANTS[: 1 + s % 3])) for s, q in enumerate(_queries())] == before
    for entry in before_entries:
        assert reopened.get_png(entry.id) == tiny_png(entry.id)
        np.testing.assert_array_equal(reopened.get_embedding(entry.id), unit_vector(entry.id))
    assert add_seeded(reopened, 99).id == 14  # ids keep increasing across restarts


def test_journal_without_snapshot_recovers(open_cache, cache_dir, tmp_path):
    cache = open_cache(compact_every=1000)
    _fill(cache, range(7))
    assert cache.stats().pending_segments == 7
    copy = crash_copy(cache_dir, tmp_path)
    assert not list((copy / "snapshots").iterdir())

    recovered = open_cache(directory=copy, compact_every=1000)
    assert recovered.entries() == cache.entries()
    # Opening folded the journal into one snapshot.
    assert not list((copy / "journal").iterdir())
    assert len(list((copy / "snapshots").iterdir())) == 1


def test_compaction_folds_segments_into_one_snapshot_of_live_entries(open_cache, cache_dir, tmp_path):
    cache = open_cache(capacity=6, compact_every=4)
    _fill(cache, range(10))  # compactions after admissions 4 and 8
    assert cache.stats().compactions == 2
    snapshots = sorted((cache_dir / "snapshots").iterdir())
    segments = sorted(p.name for p in (cache_dir / "journal").iterdir())
    assert [p.name for p in snapshots] == ["snapshot-000000000008.parquet"]
    assert segments == ["000000000008-000000000008.parquet", "000000000009-000000000009.parquet"]
    table = pq.read_table(snapshots[0])
    assert table.column("id").to_pylist() == [2, 3, 4, 5, 6, 7]  # live at admission 8, capacity 6
    embedding_type = table.schema.field("embedding").type
    assert (embedding_type.list_size, str(embedding_type.value_type)) == (DIM, "float")
    stored = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(stored, np.stack([unit_vector(i) for i in range(2, 8)]))

    recovered = open_cache(directory=crash_copy(cache_dir, tmp_path), capacity=6, compact_every=4)
    assert [e.id for e in recovered.entries()] == [4, 5, 6, 7, 8, 9]
    assert recovered.entries() == cache.entries()


def test_reopen_with_smaller_then_larger_capacity(cache_dir):
    with ImageCache(make_config(cache_dir, capacity=8), DIM) as cache:
        _fill(cache, range(8))
    with ImageCache(make_config(cache_dir, capacity=3), DIM) as cache:
        assert [e.id for e in cache.entries()] == [5, 6, 7]
    assert sorted(p.name for p in (cache_dir / "images").iterdir()) == [f"{i:012d}.png" for i in (5, 6, 7)]
    with ImageCache(make_config(cache_dir, capacity=100), DIM) as cache:
        assert [e.id for e in cache.entries()] == [5, 6, 7]
        assert add_seeded(cache, 8).id == 8


def test_evictions_in_the_journal_stay_evicted_when_capacity_grows(open_cache, cache_dir, tmp_path, caplog):
    cache = open_cache(capacity=3, compact_every=1000)
    _fill(cache, range(6))  # entries 0-2 were evicted but are still in journal segments
    copy = crash_copy(cache_dir, tmp_path)
    with ImageCache(make_config(copy, capacity=100), DIM) as recovered:
        assert [e.id for e in recovered.entries()] == [3, 4, 5]
    assert "have no PNG" not in caplog.text  # known evicted from the FIFO watermark, not from missing files


def test_missing_png_of_a_committed_entry_drops_only_that_entry(cache_dir, caplog):
    with ImageCache(make_config(cache_dir), DIM) as cache:
        _fill(cache, range(4))
    (cache_dir / "images" / "000000000002.png").unlink()
    with ImageCache(make_config(cache_dir), DIM) as cache:
        assert [e.id for e in cache.entries()] == [0, 1, 3]
    assert "have no PNG" in caplog.text


# ------------------------------------------------------------------------------- foreign and corrupt directories
def _make_cache(cache_dir, seeds=range(5), **overrides):
    with ImageCache(make_config(cache_dir, **overrides), DIM) as cache:
        _fill(cache, seeds)


def test_foreign_directory_is_refused_untouched(cache_dir):
    cache_dir.mkdir()
    (cache_dir / "holiday.jpg").write_bytes(b"not ours")
    (cache_dir / "notes").mkdir()
    with pytest.raises(CacheCorruptError, match=r"not a modm image cache .* 'holiday.jpg', 'notes'") as err:
        ImageCache(make_config(cache_dir), DIM)
    assert err.value.path == cache_dir
    assert sorted(p.name for p in cache_dir.iterdir()) == ["holiday.jpg", "notes"]


def test_a_file_in_place_of_the_directory_is_refused(tmp_path):
    target = tmp_path / "cache"
    target.write_text("x")
    with pytest.raises(CacheCorruptError, match="not a directory"):
        ImageCache(make_config(target), DIM)


@pytest.mark.parametrize(
    ("manifest", "message", "error"),
    [
        (b"{not json", "unreadable manifest", CacheCorruptError),
        (b'["a list"]', "not a modm-image-cache manifest", CacheCorruptError),
        (
            b'{"format": "other-tool", "format_version": 1, "dim": 16}',
            "not a modm-image-cache manifest",
            CacheCorruptError,
        ),
        (b'{"format": "modm-image-cache", "format_version": 99, "dim": 16}', "format version 99", CacheCorruptError),
        (
            b'{"format": "modm-image-cache", "format_version": 1, "dim": 512}',
            "holds 512-dimensional embeddings but the embedder produces 16",
            CacheDimensionError,
        ),
    ],
)
def test_bad_manifest_is_refused_untouched(cache_dir, manifest, message, error):
    _make_cache(cache_dir)
    (cache_dir / "modm-cache.json").write_bytes(manifest)
    before = _snapshot_of_directory(cache_dir)
    with pytest.raises(error, match=message) as err:
        ImageCache(make_config(cache_dir), DIM)
    assert err.value.path.name == "modm-cache.json"
    assert _snapshot_of_directory(cache_dir) == before


def test_dim_mismatch_with_the_configured_embedder(cache_dir):
    _make_cache(cache_dir)
    with pytest.raises(CacheDimensionError, match="holds 16-dimensional embeddings but the embedder produces 768"):
        ImageCache(make_config(cache_dir), 768)
    with ImageCache(make_config(cache_dir), DIM) as cache:  # refusing it changed nothing
        assert len(cache) == 5


def test_unreadable_snapshot_is_refused_untouched(cache_dir):
    _make_cache(cache_dir)
    snapshot = next((cache_dir / "snapshots").iterdir())
    snapshot.write_bytes(snapshot.read_bytes()[:-40])
    before = _snapshot_of_directory(cache_dir)
    with pytest.raises(CacheCorruptError, match="unreadable parquet file") as err:
        ImageCache(make_config(cache_dir), DIM)
    assert err.value.path == snapshot
    assert _snapshot_of_directory(cache_dir) == before


def test_parquet_with_a_foreign_schema_is_refused(cache_dir):
    import pyarrow as pa

    _make_cache(cache_dir)
    snapshot = next((cache_dir / "snapshots").iterdir())
    pq.write_table(pa.table({"id": [1, 2], "caption": ["a", "b"]}), snapshot)
    with pytest.raises(CacheCorruptError, match="unexpected schema") as err:
        ImageCache(make_config(cache_dir), DIM)
    assert err.value.path == snapshot


def test_manifest_records_format_and_dim(cache_dir):
    _make_cache(cache_dir)
    assert json.loads((cache_dir / "modm-cache.json").read_text()) == {
        "format": "modm-image-cache",
        "format_version": 1,
        "dim": DIM,
    }
