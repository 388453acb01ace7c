"""GPU check, ready for the first GPU at hand: does every shipped config's model set run, and how fast.

    python benchmarks/gpu_check.py --json gpu_check.json          # on a CUDA machine (about 2-4 minutes on one H200)
    python benchmarks/gpu_check.py --cpu --json out.json          # twins only, on CPU (the test suite runs this)

Imports only torch, diffusers, transformers and the modm library (no ray, no open_clip: the GPU machine has neither;
without open_clip the twins' CLIP tokenizers are byte-level). It runs, per config in deployments/configs/ (local.yaml
aside):

(a) twins: the miniature twin of the config's models (modm.models.twins) in the config's dtype (bf16/fp16 on CUDA;
    float32 on CPU), a miss (large txt2img), a hit at every k of the config's table (small img2img at strength
    1 - k/T) and a NIRVANA resume at every k of NIRVANA's table (large, from its own latents after k steps; the max
    grey-level difference against the uninterrupted run is reported, 1 or less is a pass);
(b) CUDA only: the per-step latency at 1024x1024 in bf16 of the REAL-size denoisers (SD3.5-Large, SDXL, FLUX.1-dev,
    SANA 1.6B...), built with random weights from modm.models.architectures directly on the device, with the batch
    the pipeline would use (2 under classifier-free guidance, 1 for guidance-distilled FLUX), giving the measured
    large:small per-step ratio of each config;
(c) CUDA only: faiss-gpu exact inner-product query latency at 100k and 1M entries, when faiss with GPU support is
    importable (skipped, and said so, when not).

Writes everything to --json and prints a table. A failing check is recorded with its error and the script goes on;
the exit status is 1 when any twin check failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from modm.config import config_from_dict
from modm.config.schema import SystemConfig
from modm.policy.tables import NIRVANA_K_CHOICES
from modm.models.architectures import Architecture, architecture_for
from modm.models.twins import TWIN_SIDE, build_twin, load_serve_app_args

CONFIG_DIR = ROOT / "deployments" / "configs"
REAL_SIDE = 1024
PROMPT = "a lighthouse on a cliff at dawn, oil painting"
SEED = 7


def shipped_configs(names: list[str] | None = None) -> list[Path]:
    paths = sorted(p for p in CONFIG_DIR.glob("*.yaml") if p.name != "local.yaml")
    return [p for p in paths if not names or p.name in names or p.stem in names]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())


def _check(results: list, name: str, fn) -> None:
    """Run one check; record its outcome (a failure is data, not a crash)."""
    start = time.perf_counter()
    try:
        detail = fn() or {}
        results.append(
            {"check": name, "ok": bool(detail.pop("ok", True)), "seconds": time.perf_counter() - start, **detail}
        )
    except Exception as err:  # noqa: BLE001 - every failure is reported, then the next check runs
        results.append(
            {
                "check": name,
                "ok": False,
                "seconds": time.perf_counter() - start,
                "error": f"{type(err).__name__}: {err}"[:500],
                "where": traceback.format_exc(limit=-2)[-800:],
            }
        )


# ------------------------------------------------------------------------------------------------------- (a) twins
def twin_checks(path: Path, root: Path, device: torch.device, *, quick: bool = False) -> list[dict]:
    from modm.generation import DiffusionGenerator, GenerationRequest

    shipped = config_from_dict(load_serve_app_args(path)["system"], f"{path.name}: args.system")
    results: list[dict] = []
    twin_box: dict = {}

    def build():
        twin_box["twin"] = build_twin(shipped, root, device=str(device), with_embedder=False)
        return {"overrides": {k: [str(a), str(b)] for k, (a, b) in twin_box["twin"].overrides.items()}}

    _check(results, "build", build)
    if "twin" not in twin_box:
        return results
    config: SystemConfig = twin_box["twin"].config
    large_box: dict = {}

    def request(spec):
        return GenerationRequest(PROMPT, TWIN_SIDE, TWIN_SIDE, spec.num_inference_steps, SEED)

    def miss():
        gen = large_box["gen"] = DiffusionGenerator.from_spec(config.models.large, "large", device=device)
        large_box["image"] = gen.txt2img(request(config.models.large))
        return {"dtype": str(gen.pipe.dtype), "pipeline": type(gen.pipe).__name__}

    _check(results, "miss", miss)
    if config.models.small is not None and "image" in large_box:
        small_box: dict = {}

        def load_small():
            small_box["gen"] = DiffusionGenerator.from_spec(config.models.small, "small", device=device)
            return {"dtype": str(small_box["gen"].pipe.dtype), "pipeline": type(small_box["gen"].pipe).__name__}

        _check(results, "load small", load_small)
        rules = config.policy.k_table[:1] if quick else config.policy.k_table
        for rule in rules:
            strength = 1.0 - rule.k / config.policy.total_steps
            if "gen" in small_box:
                _check(
                    results,
                    f"hit@k={rule.k}",
                    lambda s=strength: {
                        "size": small_box["gen"].img2img(request(config.models.small), large_box["image"], s).size
                    },
                )
    if "gen" in large_box:
        gen, req = large_box["gen"], request(config.models.large)
        snap_box: dict = {}

        def snapshots():
            gen.check_resumable()
            snap_box["image"], snap_box["latents"] = gen.txt2img_with_snapshots(req, NIRVANA_K_CHOICES)
            return {}

        _check(results, "nirvana:snapshots", snapshots)
        for k in NIRVANA_K_CHOICES[-1:] if quick else NIRVANA_K_CHOICES:
            if "latents" not in snap_box:
                break

            def resume(k=k):
                diff = _max_diff(gen.resume(req, snap_box["latents"][k], k), snap_box["image"])
                return {"ok": diff <= 1, "max_grey_level_diff": diff}

            _check(results, f"resume@k={k}", resume)
    return results


# --------------------------------------------------------------------------------- (b) real-size per-step latency
def _denoiser_inputs(
    arch: Architecture, config: dict, guidance_scale: float, device, dtype, max_seq: int, side_px: int = REAL_SIDE
) -> dict:
    """One denoising step's inputs at side_px^2 with the batch the pipeline uses."""
    name = arch.denoiser.class_name
    text = arch.components
    distilled = bool(config.get("guidance_embeds"))
    batch = 1 if distilled or guidance_scale <= 1.0 else 2
    kw = {"device": device, "dtype": dtype}
    t = torch.full((batch,), 500.0, device=device)
    if name == "SD3Transformer2DModel":
        side = side_px // 8
        return {
            "hidden_states": torch.randn(batch, config["in_channels"], side, side, **kw),
            "encoder_hidden_states": torch.randn(batch, 77 + max_seq, config["joint_attention_dim"], **kw),
            "pooled_projections": torch.randn(batch, config["pooled_projection_dim"], **kw),
            "timestep": t,
        }
    if name == "FluxTransformer2DModel":
        tokens = (side_px // 16) ** 2  # 8x VAE, 2x2 packing
        ids = torch.zeros(tokens, 3, device=device)
        return {
            "hidden_states": torch.randn(batch, tokens, config["in_channels"], **kw),
            "encoder_hidden_states": torch.randn(batch, max_seq, config["joint_attention_dim"], **kw),
            "pooled_projections": torch.randn(batch, config["pooled_projection_dim"], **kw),
            "timestep": t / 1000,
            "img_ids": ids,
            "txt_ids": torch.zeros(max_seq, 3, device=device),
            "guidance": torch.full((batch,), guidance_scale, device=device) if distilled else None,
        }
    if name == "UNet2DConditionModel":
        side = side_px // 8
        pooled = text["text_encoder_2"].config["projection_dim"]
        return {
            "sample": torch.randn(batch, config["in_channels"], side, side, **kw),
            "timestep": t,
            "encoder_hidden_states": torch.randn(batch, 77, config["cross_attention_dim"], **kw),
            "added_cond_kwargs": {
                "text_embeds": torch.randn(batch, pooled, **kw),
                "time_ids": torch.tensor(
                    [[side_px, side_px, 0, 0, side_px, side_px]] * batch, device=device, dtype=dtype
                ),
            },
        }
    if name == "SanaTransformer2DModel":
        side = side_px // 32
        seq = max_seq  # SanaPipeline keeps max_sequence_length tokens (after its instruction prefix)
        extra = {"guidance": torch.full((batch,), guidance_scale, device=device)} if distilled else {}
        return {
            "hidden_states": torch.randn(batch, config["in_channels"], side, side, **kw),
            "encoder_hidden_states": torch.randn(batch, seq, config["caption_channels"], **kw),
            "encoder_attention_mask": torch.ones(batch, seq, device=device),
            "timestep": t,
            **extra,
        }
    raise ValueError(f"no step inputs for {name}")


def step_latency_s(
    arch: Architecture,
    guidance_scale: float,
    max_seq: int,
    device: torch.device,
    *,
    side_px: int = REAL_SIDE,
    dtype: torch.dtype = torch.bfloat16,
    warmup: int = 2,
    repeats: int = 5,
) -> dict:
    """Seconds per denoiser call of `arch` at side_px^2, random weights allocated on `device` (no host copy)."""
    import diffusers

    config = dict(arch.denoiser.config)
    with device:  # parameters are created (and randomly initialised) on the device itself
        model = getattr(diffusers, arch.denoiser.class_name)(**config)
    model = model.to(dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    inputs = _denoiser_inputs(arch, config, guidance_scale, device, dtype, max_seq, side_px)
    with torch.inference_mode():
        for _ in range(warmup):
            model(**inputs, return_dict=False)
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            model(**inputs, return_dict=False)
        _sync(device)
    seconds = (time.perf_counter() - start) / repeats
    batch = next(iter(v for v in inputs.values() if isinstance(v, torch.Tensor))).shape[0]
    del model, inputs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "model": arch.repo_id,
        "denoiser": arch.denoiser.class_name,
        "params": params,
        "batch": batch,
        "side": side_px,
        "dtype": str(dtype).removeprefix("torch."),
        "step_s": seconds,
    }


def real_size_checks(path: Path, device: torch.device, cache: dict) -> dict:
    shipped = config_from_dict(load_serve_app_args(path)["system"], f"{path.name}: args.system")
    out: dict = {}
    for role in ("large", "small"):
        spec = getattr(shipped.models, role)
        if spec is None:
            continue
        key = (spec.source, spec.guidance_scale, spec.max_sequence_length)
        try:
            if key not in cache:
                cache[key] = step_latency_s(
                    architecture_for(spec.source), spec.guidance_scale, spec.max_sequence_length, device
                )
            out[role] = cache[key]
        except Exception as err:  # noqa: BLE001 - report and go on
            out[role] = {"model": spec.source, "error": f"{type(err).__name__}: {err}"[:500]}
    if "step_s" in out.get("large", {}) and "step_s" in out.get("small", {}):
        out["large_to_small_step_ratio"] = out["large"]["step_s"] / out["small"]["step_s"]
    return out


# ------------------------------------------------------------------------------------------------- (c) faiss-gpu
def faiss_gpu_check(dim: int = 768, sizes=(100_000, 1_000_000), queries: int = 200) -> dict:
    try:
        import faiss
    except ImportError:
        return {"skipped": "faiss is not importable"}
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return {"skipped": "faiss has no GPU support here (faiss-cpu, or no visible GPU)"}
    rng = np.random.default_rng(0)
    res = faiss.StandardGpuResources()
    out = {}
    for n in sizes:
        base = rng.standard_normal((n, dim), dtype=np.float32)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        index = faiss.index_cpu_to_gpu(res, 0, faiss.IndexFlatIP(dim))
        index.add(base)
        q = base[rng.integers(0, n, queries)]
        index.search(q[:8], 1)  # warm-up
        start = time.perf_counter()
        for i in range(queries):
            index.search(q[i : i + 1], 1)
        single = (time.perf_counter() - start) / queries
        start = time.perf_counter()
        index.search(q, 1)
        batched = (time.perf_counter() - start) / queries
        out[str(n)] = {"query_s": single, "batched_query_s": batched}
        del index, base
    return out


# ----------------------------------------------------------------------------------------------------------- main
def _table(report: dict) -> str:
    lines = [f"gpu_check on {report['device']} (torch {report['torch']}, diffusers {report['diffusers']})", ""]
    for config, entry in report["configs"].items():
        lines.append(f"{config}:")
        for r in entry["twins"]:
            extra = r.get("error") or (f"max diff {r['max_grey_level_diff']}" if "max_grey_level_diff" in r else "")
            lines.append(f"  twin {r['check']:22s} {'pass' if r['ok'] else 'FAIL':5s} {r['seconds']:7.2f}s  {extra}")
        real = entry.get("real_size")
        if real:
            for role in ("large", "small"):
                r = real.get(role)
                if r:
                    what = (
                        f"{r['step_s'] * 1000:8.1f} ms/step (batch {r['batch']}, {r['params'] / 1e9:.2f}B)"
                        if "step_s" in r
                        else f"ERROR {r['error']}"
                    )
                    lines.append(f"  real {role:5s} {r['model']:52s} {what}")
            if "large_to_small_step_ratio" in real:
                lines.append(
                    f"  measured large:small per-step ratio at {REAL_SIDE}^2 bf16: "
                    f"{real['large_to_small_step_ratio']:.2f}"
                )
    if "faiss_gpu" in report:
        lines.append(f"faiss-gpu: {json.dumps(report['faiss_gpu'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import diffusers

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="twins only, on CPU")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--configs", nargs="*", help="config names (default: every shipped config but local.yaml)")
    parser.add_argument("--quick", action="store_true", help="one hit and one resume per config (the test suite)")
    parser.add_argument("--twin-dir", type=Path, help="where to build the twins (default: a temporary directory)")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device: pass --cpu for the twin checks on CPU")
    device = torch.device("cpu" if args.cpu else "cuda")
    report = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "configs": {},
    }
    root = args.twin_dir or Path(tempfile.mkdtemp(prefix="modm-twins-"))
    real_cache: dict = {}
    for path in shipped_configs(args.configs):
        entry = report["configs"][path.name] = {"twins": twin_checks(path, root, device, quick=args.quick)}
        if device.type == "cuda":
            entry["real_size"] = real_size_checks(path, device, real_cache)
    if device.type == "cuda":
        report["faiss_gpu"] = faiss_gpu_check()
    print(_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return 0 if all(r["ok"] for e in report["configs"].values() for r in e["twins"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
