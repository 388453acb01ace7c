"""Which faiss index the image cache uses at scale, chosen by measurement.

For each query set and gallery size, builds candidate indexes once and sweeps their search-time parameters
(efSearch, nprobe, k_factor), timing one query at a time on one faiss thread, with the all-live IDSelectorBitmap
the cache passes on every search. recall@1 is the fraction of queries whose top-1 is exact search's top-1 (a
returned entry whose exact score ties the exact top-1 within 1e-6 counts as that top-1).

Query sets (embeddings are prepared once and kept under --work, as .npy):
  random   768-d random unit vectors; queries are gallery vectors plus noise (cosine --query-cosine to their source)
  minilm   384-d all-MiniLM-L6-v2 text->text over the real DiffusionDB prompts of --prompts: the gallery is the
           unique prompts (and --minilm-edits edited variants of each), queries are word-level edits of them
           (swaps, drops, insertions); sized by what embeds on this CPU (9,798 prompts: ~10 min on a loaded core)
  world    64-d world CLIP (modm/world/weights/clip) text->image: the gallery is rendered world images, queries
           are paraphrase captions from the world's reserved query templates
  world_heldout  the same gallery, queried by captions of held-out scenes (needs world prepared first)

    nice -n 15 .venv/bin/python benchmarks/index_choice.py --prepare          # embeddings only
    nice -n 15 .venv/bin/python benchmarks/index_choice.py                    # the table, writes the JSON

The committed benchmarks/results/index_choice.json merges runs of one set each (--merge; the "runs" field lists
each run's arguments): random at 100k and at 1M (--build-threads 2), random at 100k with --ivf-kinds sq8
sq8_hnswq --hnsw-kinds sq8 --nprobe 32 64 128 (stopped before its HNSW-SQ8 build), with --nlist 256 and with
--ivf-kinds sq8 --nprobe 40 48 56 64, random at 1M with --ivf-kinds sq8 --nprobe 96 128 and (at load 3-5)
--nprobe 48 64 80 96, minilm
(--hnsw-kinds flat sq8), world prepared to 204,800 images (--hnsw-max-size 300000 --hnsw-kinds flat sq8) and
world_heldout; then IVF with 4-bit PQ fast-scan codes, random at 100k and 1M (--ivf-kinds pq4fs --hnsw-kinds
--nprobe 32 48 64 96 128 --k-factor 4 8 --build-threads 2) and minilm (--ivf-kinds pq4fs sq8 --hnsw-kinds), and
world prepared to 1M images (--sizes 1000000 --ivf-kinds sq8 --hnsw-kinds --nprobe 16 32 96 --k-factor 4), added
with --merge benchmarks/results/index_choice.json RUN.json.
    .venv/bin/python benchmarks/index_choice.py --sizes 5000 --sets random --world-images 5000 --queries 100 \
        --work /tmp/ic_smoke --out /tmp/ic_smoke.json                          # smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from modm.cache.index import PQ_DIMS_PER_CODE  # pq4fs: the cache's own code width

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PROMPTS = Path("/work/shared/data/diffusiondb_prompts_10k.tsv")
CHUNK = 65_536


# ------------------------------------------------------------------------------------------------ query sets
def unit_rows(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def prepare_random(work: Path, size: int, dim: int, queries: int, cosine: float, seed: int) -> None:
    gallery = np.lib.format.open_memmap(work / "random_gallery.npy", mode="w+", dtype=np.float32, shape=(size, dim))
    rng = np.random.default_rng(seed)
    for start in range(0, size, CHUNK):
        rows = min(CHUNK, size - start)
        gallery[start : start + rows] = unit_rows(rng.standard_normal((rows, dim), dtype=np.float32))
    gallery.flush()
    # Sources among the first 10k entries, so that every gallery size holds them.
    sources = gallery[rng.choice(min(size, 10_000), queries, replace=False)]
    noise = unit_rows(rng.standard_normal((queries, dim), dtype=np.float32))
    noise = unit_rows(noise - (noise * sources).sum(axis=1, keepdims=True) * sources)
    np.save(work / "random_queries.npy", unit_rows(cosine * sources + np.sqrt(1 - cosine**2) * noise))


def edit_prompt(rng: np.random.Generator, words: list[str], vocabulary: list[str]) -> str:
    """One to three word-level edits: swap two neighbours, drop a word, or insert a word from the corpus."""
    words = list(words)
    for _ in range(int(rng.integers(1, 4))):
        op = rng.integers(3) if len(words) > 2 else 2
        at = int(rng.integers(len(words)))
        if op == 0:
            at = min(at, len(words) - 2)
            words[at], words[at + 1] = words[at + 1], words[at]
        elif op == 1:
            del words[at]
        else:
            words.insert(at, vocabulary[int(rng.integers(len(vocabulary)))])
    return " ".join(words)


def prepare_minilm(work: Path, prompts_path: Path, edits: int, queries: int, seed: int) -> None:
    import torch

    from modm.embedding import MiniLMEmbedder

    with prompts_path.open(newline="") as f:
        prompts = sorted({row["prompt"].strip() for row in csv.DictReader(f, delimiter="\t") if row["prompt"].strip()})
    rng = np.random.default_rng(seed)
    split = [p.split() for p in prompts]
    vocabulary = sorted({w for words in split for w in words})
    gallery_texts = list(prompts)
    for words in split:
        gallery_texts += [edit_prompt(rng, words, vocabulary) for _ in range(edits)]
    gallery_texts = list(dict.fromkeys(gallery_texts))  # identical texts would tie exactly
    query_texts = [edit_prompt(rng, split[i], vocabulary) for i in rng.choice(len(split), queries, replace=False)]
    torch.set_num_threads(1)
    embedder = MiniLMEmbedder(device=torch.device("cpu"), batch_size=64)
    info_path = work / "minilm_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    if info.get("gallery") != len(gallery_texts):  # the gallery embeds slowly: kept when its texts are the same
        start = time.perf_counter()
        np.save(work / "minilm_gallery.npy", embedder.embed_text(gallery_texts))
        info = {"prompts": len(prompts), "edits_per_prompt": edits, "gallery": len(gallery_texts)}
        info["embed_s"] = time.perf_counter() - start
        info_path.write_text(json.dumps(info))
    np.save(work / "minilm_queries.npy", embedder.embed_text(query_texts))


def world_text_queries(work: Path, queries: int, seed: int, name: str, split: str, pool: int) -> None:
    """Paraphrase captions of world scenes `split`:0..pool, embedded by the world CLIP's text tower."""
    import torch
    from transformers import CLIPModel, CLIPTokenizerFast

    from modm.world.world import Split, World

    clip_dir = REPO / "modm/world/weights/clip"
    model = CLIPModel.from_pretrained(clip_dir, dtype=torch.float32).eval()
    tokenizer = CLIPTokenizerFast.from_pretrained(clip_dir)
    world = World(seed=0)
    rng = np.random.default_rng(seed)
    texts = [world.query(int(i), Split(split)).text for i in rng.choice(pool, queries, replace=False)]
    with torch.inference_mode():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=40, return_tensors="pt")
        out = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        out = out if isinstance(out, torch.Tensor) else out.pooler_output
    np.save(work / f"{name}_queries.npy", unit_rows(out.float().numpy()))


def prepare_world_heldout(work: Path, queries: int, seed: int) -> None:
    """The world gallery, queried by captions of held-out scenes (a shape-colour pair no gallery image shows):
    weaker best matches than paraphrases of gallery scenes."""
    world_text_queries(work, queries, seed, "world_heldout", "heldout", 10_000)
    for suffix in ("gallery.npy", "info.json"):
        link = work / f"world_heldout_{suffix}"
        if not link.exists():
            link.symlink_to(work / f"world_{suffix}")


def prepare_world(work: Path, size: int, queries: int, seed: int) -> None:
    import torch
    from transformers import CLIPModel, CLIPTokenizerFast

    from modm.world.clip import pixels_from_uint8
    from modm.world.world import World

    torch.set_num_threads(1)
    clip_dir = REPO / "modm/world/weights/clip"
    model = CLIPModel.from_pretrained(clip_dir, dtype=torch.float32).eval()
    tokenizer = CLIPTokenizerFast.from_pretrained(clip_dir)
    world = World(seed=0)
    with torch.inference_mode():
        rng = np.random.default_rng(seed)
        texts = [world.query(int(i)).text for i in rng.choice(min(size, 10_000), queries, replace=False)]
        batch = tokenizer(texts, padding=True, truncation=True, max_length=40, return_tensors="pt")
        out = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        out = out if isinstance(out, torch.Tensor) else out.pooler_output
        np.save(work / "world_queries.npy", unit_rows(out.float().numpy()))
        gallery = np.lib.format.open_memmap(work / "world_gallery.npy", mode="w+", dtype=np.float32, shape=(size, 64))
        render_s = embed_s = 0.0
        for start in range(0, size, 4096):
            t0 = time.perf_counter()
            images = np.stack([world.render(world.scene(i)[0]) for i in range(start, min(size, start + 4096))])
            t1 = time.perf_counter()
            out = model.get_image_features(pixel_values=pixels_from_uint8(images))
            out = out if isinstance(out, torch.Tensor) else out.pooler_output
            gallery[start : start + len(images)] = unit_rows(out.float().numpy())
            render_s, embed_s = render_s + t1 - t0, embed_s + time.perf_counter() - t1
            gallery.flush()  # progress per chunk: a partly prepared gallery is usable
            info = {"gallery": start + len(images), "render_s": render_s, "embed_s": embed_s}
            (work / "world_info.json").write_text(json.dumps(info))


# ------------------------------------------------------------------------------------------------ candidates
@dataclass
class Built:
    name: str
    build: str  # construction parameters
    index: faiss.Index
    build_s: float
    memory_bytes: int
    sweeps: list[tuple[str, faiss.SearchParameters]]  # (search parameters as text, params incl. selector)
    keep: tuple = ()  # python references faiss does not own (quantizers, refine tables)


def nlist_for(n: int) -> int:
    """A power of two near 4 * sqrt(n): 1,024 at 100k, 4,096 at 1M."""
    return 1 << int(round(np.log2(4 * np.sqrt(n))))


def all_live_selector(n: int) -> tuple[faiss.IDSelectorBitmap, np.ndarray]:
    bits = np.full((n + 7) // 8, 0xFF, dtype=np.uint8)
    return faiss.IDSelectorBitmap(bits.size, faiss.swig_ptr(bits)), bits


def with_selector(params, selector):
    if selector is not None:
        params.sel = selector
    return params


def ivf_params(nprobe: int, selector) -> faiss.SearchParametersIVF:
    p = faiss.SearchParametersIVF()
    p.nprobe = nprobe
    return with_selector(p, selector)


def hnsw_params(ef: int, selector) -> faiss.SearchParametersHNSW:
    p = faiss.SearchParametersHNSW()
    p.efSearch = ef
    return with_selector(p, selector)


def refine_params(k_factor: float, base) -> faiss.IndexRefineSearchParameters:
    p = faiss.IndexRefineSearchParameters()
    p.k_factor = k_factor
    p.base_index_params = base
    return p


def flat_bytes(index) -> int:
    return index.ntotal * index.code_size


def ivf_bytes(index) -> int:
    lists = index.invlists
    entries = sum(lists.list_size(i) for i in range(index.nlist))
    quantizer = faiss.downcast_index(index.quantizer)
    quantizer_bytes = hnsw_bytes(quantizer) if isinstance(quantizer, faiss.IndexHNSW) else flat_bytes(quantizer)
    return entries * (index.code_size + 8) + quantizer_bytes


def hnsw_bytes(index) -> int:
    h = index.hnsw
    return (
        flat_bytes(faiss.downcast_index(index.storage))
        + 4 * h.neighbors.size()
        + 8 * h.offsets.size()
        + 4 * h.levels.size()
    )


def build_candidates(x: np.ndarray, exact: faiss.IndexFlatIP, args, selector):
    """Yields each candidate as soon as it is built (IVF first; HNSW, the slowest to build, last)."""
    n, dim = x.shape
    yield from [
        Built(
            "flat",
            "IndexFlatIP",
            exact,
            0.0,
            flat_bytes(exact),
            [("-", with_selector(faiss.SearchParameters(), selector))],
        )
    ]
    # IVF: one trained coarse quantizer, shared by IVF-Flat and IVF-SQ8; assignments computed once.
    nlist = args.nlist or nlist_for(n)
    t0 = time.perf_counter()
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = args.kmeans_iters
    sample = x[np.random.default_rng(0).choice(n, min(n, args.train_per_list * nlist), replace=False)]
    ivf.train(sample)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    assign = np.concatenate([quantizer.assign(x[s : s + CHUNK], 1)[:, 0] for s in range(0, n, CHUNK)])
    assign_s = time.perf_counter() - t0
    build = f"nlist={nlist} train={len(sample)} niter={args.kmeans_iters}"
    if "flat" in args.ivf_kinds:
        t0 = time.perf_counter()
        ivf.add_core(n, faiss.swig_ptr(x), None, faiss.swig_ptr(assign))
        sweeps = [(f"nprobe={p}", ivf_params(p, selector)) for p in args.nprobe]
        build_s = train_s + assign_s + time.perf_counter() - t0
        yield Built("ivf_flat", build, ivf, build_s, ivf_bytes(ivf), sweeps, (quantizer,))
    del ivf  # its lists (n x dim floats) before the next candidate's
    if "pq4fs" in args.ivf_kinds and dim % PQ_DIMS_PER_CODE == 0:
        # 4-bit product-quantised codes of PQ_DIMS_PER_CODE dims each, scanned with SIMD lookup tables (faiss's
        # fast-scan): an eighth of SQ8's bytes per probed vector; the exact re-rank repairs the coarser scores.
        t0 = time.perf_counter()
        pq = faiss.IndexIVFPQFastScan(quantizer, dim, nlist, dim // PQ_DIMS_PER_CODE, 4, faiss.METRIC_INNER_PRODUCT)
        pq.train(sample)  # the quantizer is trained already: only the PQ codebooks (of residuals)
        for s in range(0, n, CHUNK):
            pq.add(x[s : s + CHUNK])
        refine = faiss.IndexRefine(pq, exact)
        sweeps = [
            (f"nprobe={p} k_factor={k}", refine_params(k, ivf_params(p, selector)))
            for p in args.nprobe
            for k in args.k_factor
        ]
        build = f"nlist={nlist} M={dim // PQ_DIMS_PER_CODE}x4bit train={len(sample)} niter={args.kmeans_iters}"
        build_s = train_s + time.perf_counter() - t0
        yield Built(
            "ivf_pq4fs+refine", build, refine, build_s, ivf_bytes(pq) + flat_bytes(exact), sweeps, (quantizer, pq)
        )
        del refine, pq
        build = f"nlist={nlist} train={len(sample)} niter={args.kmeans_iters}"
    if "sq8" not in args.ivf_kinds:
        return
    t0 = time.perf_counter()
    sq = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq.train(sample)  # the quantizer is trained already: only the SQ ranges
    sq.add_core(n, faiss.swig_ptr(x), None, faiss.swig_ptr(assign))
    refine = faiss.IndexRefine(sq, exact)  # the re-rank reads the exact table (shared with the ground truth)
    sweeps = [
        (f"nprobe={p} k_factor={k}", refine_params(k, ivf_params(p, selector)))
        for p in args.nprobe
        for k in args.k_factor
    ]
    sq_bytes = ivf_bytes(sq) + flat_bytes(exact)
    yield (
        Built(
            "ivf_sq8+refine",
            build,
            refine,
            train_s + assign_s + time.perf_counter() - t0,
            sq_bytes,
            sweeps,
            (quantizer, sq),
        )
    )
    del refine, sq
    if "sq8_hnswq" not in args.ivf_kinds:
        return
    # The same lists, found through an HNSW graph over the centroids instead of a scan of all of them.
    t0 = time.perf_counter()
    graph = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    graph.add(quantizer.reconstruct_n(0, nlist))
    sq = faiss.IndexIVFScalarQuantizer(graph, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq.train(sample)  # the graph holds the trained centroids: only the SQ ranges
    sq.add_core(n, faiss.swig_ptr(x), None, faiss.swig_ptr(assign))
    refine = faiss.IndexRefine(sq, exact)
    sweeps = []
    for p in args.nprobe:
        for k in args.k_factor:
            base = ivf_params(p, selector)
            base.quantizer_params = hnsw_params(max(2 * p, 64), None)
            sweeps.append((f"nprobe={p} k_factor={k} quantizer efSearch={max(2 * p, 64)}", refine_params(k, base)))
    mem = ivf_bytes(sq) + flat_bytes(exact)
    build_s = train_s + assign_s + time.perf_counter() - t0
    yield Built("ivf_hnswq_sq8+refine", build, refine, build_s, mem, sweeps, (graph, sq))

    if n <= args.hnsw_max_size:
        for kind in args.hnsw_kinds:
            t0 = time.perf_counter()
            if kind == "flat":
                hnsw = faiss.IndexHNSWFlat(dim, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            else:
                hnsw = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
                hnsw.train(sample)
            hnsw.hnsw.efConstruction = args.ef_construction
            for s in range(0, n, CHUNK):
                hnsw.add(x[s : s + CHUNK])
            build_s = time.perf_counter() - t0
            build = f"M={args.hnsw_m} efConstruction={args.ef_construction}"
            if kind == "flat":
                sweeps = [(f"efSearch={e}", hnsw_params(e, selector)) for e in args.ef_search]
                yield (Built("hnsw_flat", build, hnsw, build_s, hnsw_bytes(hnsw), sweeps))
            else:
                refine = faiss.IndexRefine(hnsw, exact)
                sweeps = [
                    (f"efSearch={e} k_factor={k}", refine_params(k, hnsw_params(e, selector)))
                    for e in args.ef_search
                    for k in args.k_factor
                ]
                mem = hnsw_bytes(hnsw) + flat_bytes(exact)
                yield (Built("hnsw_sq8+refine", build, refine, build_s, mem, sweeps, (hnsw,)))


# ------------------------------------------------------------------------------------------------ measuring
def time_queries(index, queries: np.ndarray, params) -> tuple[np.ndarray, np.ndarray, list[float], list[float]]:
    ids = np.empty(len(queries), dtype=np.int64)
    scores = np.empty(len(queries), dtype=np.float32)
    seconds, cpu_seconds = [], []
    for i in range(len(queries)):
        q = queries[i : i + 1]
        c0, t0 = time.thread_time(), time.perf_counter()
        d, label = index.search(q, 1, params=params)
        seconds.append(time.perf_counter() - t0)
        cpu_seconds.append(time.thread_time() - c0)  # one faiss thread: the search runs on this thread
        ids[i], scores[i] = label[0, 0], d[0, 0]
    return ids, scores, seconds, cpu_seconds


def recall_at_1(ids: np.ndarray, x: np.ndarray, queries: np.ndarray, exact_ids: np.ndarray, exact_scores) -> float:
    hit = ids == exact_ids
    for i in np.flatnonzero(~hit & (ids >= 0)):  # ties: the returned entry scores the same as the exact top-1
        hit[i] = float(x[ids[i]] @ queries[i]) >= exact_scores[i] - 1e-6
    return float(hit.mean())


def prepared_size(work: Path, name: str) -> int:
    info = work / f"{name}_info.json"
    gallery = len(np.load(work / f"{name}_gallery.npy", mmap_mode="r"))
    return min(gallery, json.loads(info.read_text())["gallery"]) if info.exists() else gallery


def load(work: Path, name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    gallery = np.load(work / f"{name}_gallery.npy", mmap_mode="r")[: prepared_size(work, name)]
    if len(gallery) < size:
        raise SystemExit(f"{name}: {len(gallery)} prepared gallery vectors, fewer than size {size}")
    return np.ascontiguousarray(gallery[:size]), np.load(work / f"{name}_queries.npy")


def measure(work: Path, name: str, size: int, args, on_row) -> list[dict]:
    x, queries = load(work, name, size)
    faiss.omp_set_num_threads(args.build_threads)
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    exact_scores, exact_ids = exact.search(queries, 1)
    exact_scores, exact_ids = exact_scores[:, 0], exact_ids[:, 0]
    selector, bits = all_live_selector(size)
    rows = []
    for c in build_candidates(x, exact, args, selector):
        faiss.omp_set_num_threads(1)
        print(f"  built {c.name} ({c.build}) in {c.build_s:.1f} s", flush=True)
        for text, params in c.sweeps:
            timed = queries[: args.flat_queries] if c.name == "flat" else queries
            load_before = os.getloadavg()[0]
            ids, _, seconds, cpu_seconds = time_queries(c.index, timed, params)
            row = {
                "set": name,
                "dim": int(x.shape[1]),
                "entries": size,
                "index": c.name,
                "build": c.build,
                "search": text,
                "p50_ms": 1e3 * float(np.percentile(seconds, 50)),
                "p99_ms": 1e3 * float(np.percentile(seconds, 99)),
                "cpu_p50_ms": 1e3 * float(np.percentile(cpu_seconds, 50)),
                "cpu_p99_ms": 1e3 * float(np.percentile(cpu_seconds, 99)),
                "recall_at_1": recall_at_1(ids, x, timed, exact_ids[: len(timed)], exact_scores[: len(timed)]),
                "queries": len(timed),
                "memory_mb": c.memory_bytes / 2**20,
                "build_s": c.build_s,
                "load_avg_1m": [load_before, os.getloadavg()[0]],
            }
            rows.append(row)
            print(
                f"  {name:6} {size:>8} {c.name:16} {text:24} p50 {row['p50_ms']:7.3f} p99 {row['p99_ms']:7.3f} "
                f"cpu p50 {row['cpu_p50_ms']:7.3f} "
                f"recall@1 {row['recall_at_1']:.3f}  load {load_before:.1f}",
                flush=True,
            )
        faiss.omp_set_num_threads(args.build_threads)
        on_row(rows)
    rows.append(
        {
            "set": name,
            "entries": size,
            "exact_top1_cosine": {q: float(np.percentile(exact_scores, q)) for q in (10, 50, 90)},
        }
    )
    del bits
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| set | entries | index | build | search | p50 ms | p99 ms | CPU p50 ms | recall@1 | memory MB | build s "
        "| load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "index" not in r:
            continue
        lines.append(
            f"| {r['set']} | {r['entries']:,} | {r['index']} | {r['build']} | {r['search']} | {r['p50_ms']:.3f} | "
            f"{r['p99_ms']:.3f} | {r['cpu_p50_ms']:.3f} | {r['recall_at_1']:.3f} | {r['memory_mb']:.0f} | "
            f"{r['build_s']:.1f} | {r['load_avg_1m'][0]:.1f} |"
        )
    return "\n".join(lines)


def merge(paths: list[Path], out: Path) -> None:
    """One file of the runs' rows; a file that is itself a merge (it has "runs") brings its runs and rows as they
    are, so that a new run can be added to the committed table."""
    runs = [json.loads(p.read_text()) for p in paths]
    listed = [
        r["runs"] if "runs" in r else [{"file": p.name, "args": r["args"], "prepared": r["prepared"]}]
        for p, r in zip(paths, runs)
    ]
    merged = {
        "machine": runs[0]["machine"],
        "notes": runs[0]["notes"],
        "runs": [run for entries in listed for run in entries],
        "rows": [row for r in runs for row in r["rows"]],
    }
    out.write_text(json.dumps(merged, indent=1))
    print(markdown_table(merged["rows"]))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/modm_index_choice"), help="Prepared embeddings.")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/index_choice.json")
    parser.add_argument("--prepare", action="store_true", help="Prepare the embeddings and stop.")
    parser.add_argument("--sets", nargs="+", default=["random", "minilm", "world"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--flat-queries", type=int, default=200, help="Queries timed for exact search.")
    parser.add_argument("--query-cosine", type=float, default=0.9)
    parser.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS)
    parser.add_argument("--minilm-edits", type=int, default=0, help="Edited variants of each prompt in the gallery.")
    parser.add_argument("--world-images", type=int, default=1_000_000)
    parser.add_argument("--nprobe", nargs="+", type=int, default=[8, 16, 32, 64])
    parser.add_argument("--k-factor", nargs="+", type=float, default=[4, 16])
    parser.add_argument("--ef-search", nargs="+", type=int, default=[32, 64, 128])
    parser.add_argument(
        "--ivf-kinds",
        nargs="*",
        default=["flat", "pq4fs", "sq8"],
        choices=["flat", "pq4fs", "sq8", "sq8_hnswq"],
        help="sq8_hnswq needs sq8",
    )
    parser.add_argument("--hnsw-kinds", nargs="*", default=["flat"], choices=["flat", "sq8"])
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--hnsw-max-size", type=int, default=100_000, help="HNSW is built only up to this size.")
    parser.add_argument("--nlist", type=int, default=0, help="IVF lists; 0: a power of two near 4 sqrt(n).")
    parser.add_argument("--kmeans-iters", type=int, default=10)
    parser.add_argument("--train-per-list", type=int, default=32, help="k-means training vectors per IVF list.")
    parser.add_argument("--build-threads", type=int, default=1)
    parser.add_argument(
        "--merge", nargs="+", type=Path, help="Merge these result files (runs of single sets or sizes) into --out."
    )
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return

    args.work.mkdir(parents=True, exist_ok=True)
    prepare = {
        "random": lambda: prepare_random(args.work, max(args.sizes), 768, args.queries, args.query_cosine, 0),
        "minilm": lambda: prepare_minilm(args.work, args.prompts, args.minilm_edits, args.queries, 0),
        "world": lambda: prepare_world(args.work, args.world_images, args.queries, 0),
        "world_heldout": lambda: prepare_world_heldout(args.work, args.queries, 0),
    }
    for name in args.sets:
        if not (args.work / f"{name}_queries.npy").exists():
            print(f"preparing {name}", flush=True)
            prepare[name]()
    if args.prepare:
        return
    rows: list[dict] = []

    def write(more: list[dict]) -> None:  # after every candidate, so a long run leaves its rows so far
        info = {
            name: json.loads((args.work / f"{name}_info.json").read_text())
            for name in args.sets
            if (args.work / f"{name}_info.json").exists()
        }
        result = {
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "faiss": faiss.__version__},
            "notes": "one query at a time, one faiss thread, with an all-live IDSelectorBitmap; shared, loaded "
            "machine (load_avg_1m before/after each row): p50_ms/p99_ms are wall time under that load, "
            "cpu_p50_ms/cpu_p99_ms the search thread's CPU time (what an idle core would take, less cache "
            "contention); builds on --build-threads threads",
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "prepared": info,
            "rows": rows + more,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))

    for name in args.sets:
        available = prepared_size(args.work, name)
        sizes = sorted({min(size, available) for size in args.sizes})
        for size in sizes:
            print(f"{name} at {size} entries (load {os.getloadavg()})", flush=True)
            rows += measure(args.work, name, size, args, write)
            write([])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
