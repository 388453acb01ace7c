"""Bad input: embeddings, text, PNG bytes, namespaces; weird prompts and tenants never steer a write."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cache_testkit import DIM, add_seeded, tiny_png, unit_vector

from modm.cache import CacheClosedError, CacheLockedError, ImageCache


def _add(cache, **overrides):
    args = dict(png_bytes=tiny_png(0), embedding=unit_vector(0), prompt="a cat", tenant="alice", source_model="m", k=0)
    args.update(overrides)
    png, embedding = args.pop("png_bytes"), args.pop("embedding")
    return cache.add(png, embedding, **args)


@pytest.mark.parametrize(
    ("embedding", "message"),
    [
        (np.zeros(DIM + 1, np.float32), r"shape \(16,\)"),
        (np.zeros((2, DIM), np.float32), r"shape \(16,\)"),
        (np.float32(1.0), r"shape \(16,\)"),
        (np.full(DIM, np.nan, np.float32), "NaN or infinity"),
        (np.r_[np.inf, np.zeros(DIM - 1)].astype(np.float32), "NaN or infinity"),
        (np.zeros(DIM, np.float32), "L2 norm 0.0000"),
        (2 * unit_vector(0), "L2 norm 2.0000"),
        (np.array(["a"] * DIM), "real numbers"),
    ],
)
def test_bad_embeddings_raise_value_error(open_cache, cache_dir, embedding, message):
    cache = open_cache()
    with pytest.raises(ValueError, match=message):
        _add(cache, embedding=embedding)
    with pytest.raises(ValueError, match=message):
        cache.query(embedding, ["alice"])
    assert len(cache) == 0 and not list((cache_dir / "images").iterdir())  # nothing written


def test_float64_and_row_shaped_embeddings_are_accepted(open_cache):
    cache = open_cache()
    _add(cache, embedding=unit_vector(0).astype(np.float64)[None, :])
    assert cache.query(unit_vector(0).tolist(), ["alice"]).entry_id == 0


@pytest.mark.parametrize("field", ["prompt", "tenant", "source_model"])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "must not be empty"),
        ("   \n", "must not be empty"),
        (None, "must be a string"),
        (b"bytes", "must be a string"),
        ("bad \ud800 surrogate", "is not valid Unicode"),
    ],
)
def test_bad_text_raises_value_error(open_cache, field, value, message):
    cache = open_cache()
    with pytest.raises(ValueError, match=f"{field} {message}"):
        _add(cache, **{field: value})
    assert len(cache) == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(k=-1), "k must be an integer >= 0"),
        (dict(k=2.5), "k must be an integer"),
        (dict(k=True), "k must be an integer"),
        (dict(png_bytes=b"GIF89a..."), "not a PNG image"),
        (dict(png_bytes="x.png"), "png_bytes must be bytes"),
    ],
)
def test_bad_k_and_png_raise_value_error(open_cache, overrides, message):
    cache = open_cache()
    with pytest.raises(ValueError, match=message):
        _add(cache, **overrides)


@pytest.mark.parametrize(
    ("namespaces", "message"),
    [
        ("alice", "sequence of tenant names"),
        ([], "at least one tenant"),
        ([""], "namespace must not be empty"),
        ([3], "namespace must be a string"),
        (None, "sequence of tenant names"),
    ],
)
def test_bad_namespaces_raise_value_error(open_cache, namespaces, message):
    cache = open_cache()
    with pytest.raises(ValueError, match=message):
        cache.query(unit_vector(0), namespaces)


def test_batched_query_needs_one_scope_per_row(open_cache):
    cache = open_cache()
    with pytest.raises(ValueError, match="one sequence of tenant names per query row"):
        cache.query_batch(np.stack([unit_vector(0), unit_vector(1)]), [["alice"]])


WEIRD = [
    "../../etc",
    "../../../tmp/evil",
    "/etc/passwd",
    "a/b\\c",
    "名前 テナント ✨",
    "x" * 10_000,
    "nul\x00byte",
    "..",
    "~root",
    "$(rm -rf ~)",
]


def test_weird_prompts_and_tenants_stay_inside_the_directory(tmp_path, open_cache):
    cache_dir = tmp_path / "deep" / "cache"
    cache = open_cache(directory=cache_dir)
    for seed, weird in enumerate(WEIRD):
        add_seeded(cache, seed, tenant=weird)
        cache.add(tiny_png(100 + seed), unit_vector(100 + seed), prompt=weird, tenant="alice", source_model=weird, k=0)
    cache.close()
    reopened = open_cache(directory=cache_dir)
    assert [e.tenant for e in reopened.entries()][::2] == WEIRD
    assert [e.prompt for e in reopened.entries()][1::2] == WEIRD
    assert reopened.query(unit_vector(0), ["../../etc"]).entry.tenant == "../../etc"

    # Nothing was written anywhere but the cache directory, and inside it only id-named files.
    everything = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert all(p == "deep" or p.startswith(os.path.join("deep", "cache")) for p in everything)
    names = {p.name for p in cache_dir.rglob("*")}
    assert not any(w in name for w in ("etc", "evil", "passwd", "名前", "xxxx") for name in names)
    assert len(list((cache_dir / "images").iterdir())) == 2 * len(WEIRD)


def test_use_after_close_and_second_opener_are_refused(open_cache, cache_dir):
    cache = open_cache()
    with pytest.raises(CacheLockedError, match="already open"):
        ImageCache(cache.config, DIM)
    cache.close()
    with pytest.raises(CacheClosedError):
        add_seeded(cache, 0)
    with pytest.raises(CacheClosedError):
        cache.query(unit_vector(0), ["alice"])
    cache.close()  # idempotent
    with ImageCache(cache.config, DIM) as again:  # the lock was released
        assert len(again) == 0


@pytest.mark.parametrize("dim", [0, -3, 2.0, True])
def test_bad_dim(cache_dir, dim):
    from cache_testkit import make_config

    with pytest.raises(ValueError, match="dim must be a positive integer"):
        ImageCache(make_config(cache_dir), dim)
