"""Benchmark: 1 vs 2 ranks (one torch thread each, gloo on CPU) for DistriFusion, its naive-patch baseline,
AsyncDiff and Ulysses context parallelism.

The model is a randomly initialised ~52M-parameter SD-style UNet2DConditionModel at 512 px (64x64 latent) inside a
stock diffusers StableDiffusionPipeline with classifier-free guidance, so the denoiser dominates and the work is
compute bound. Each configuration runs in fresh processes: one untimed call (allocation, AsyncDiff profiling),
then `--repeats` timed calls; the best time is reported. PSNR compares the decoded image with the single-device
image of the same seed (data range 1; infinite = identical). Besides wall time, the busiest rank's CPU time is
reported: on a shared machine it shows what the split costs per rank when every rank has a core to itself.

Ulysses (diffusers' context parallelism) needs a transformer with a context-parallel plan, so its row runs a
randomly initialised ~25M-parameter FluxTransformer2DModel (width 256, 2 double + 4 single blocks, 64 text tokens)
in a stock FluxPipeline at the same size and steps, against `single_flux`, the same pipeline on one rank; PSNR and
max_abs compare its decoded image with that one. Ring attention has no CPU backend in diffusers 0.42.1 and is not
benchmarked here. On CPU over gloo these numbers check correctness and communication overhead only: an all-to-all
over loopback TCP costs far more, relative to the compute, than NVLink does.

    .venv/bin/python benchmarks/parallel_bench.py --steps 8 --json benchmarks/results/parallel_bench.json

Timings are wall-clock on whatever else the machine is doing: compare rows of one run, not across machines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.multiprocessing as mp

# Each entry: (row label, world size, ParallelConfig overrides, model). warmup_steps is filled from the CLI.
CONFIGS = {
    "single": (1, dict(method="none"), "sd"),
    "distrifusion": (2, dict(method="distrifusion"), "sd"),
    "distrifusion_cfg_split": (2, dict(method="distrifusion", cfg_split=True), "sd"),
    "naive_patch": (2, dict(method="naive_patch"), "sd"),
    "asyncdiff": (2, dict(method="asyncdiff", model_n=2, stride=1), "sd"),
    "single_flux": (1, dict(method="none"), "flux"),
    "ulysses": (2, dict(method="ulysses"), "flux"),
}
BASELINES = {"sd": "single", "flux": "single_flux"}
FLUX_TEXT_TOKENS = 64


@dataclass
class Row:
    method: str
    ranks: int
    resolution: int
    steps: int
    warmup_steps: int
    seconds: float
    speedup: float
    cpu_seconds: float  # busiest rank's CPU time: what the call costs with a free core per rank
    cpu_speedup: float
    psnr_db: float
    max_abs_vs_single: float


def _clip_text_encoder(hidden: int, **config):
    """A 2-layer CLIP text tower of width `hidden` on CLIP's vocabulary; seeded by the caller."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            **config,
        )
    )


def _clip_tokenizer(tokenizer_dir: str):
    """CLIP's BPE tokenizer from the files the parent wrote once (every rank only reads them)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        os.path.join(tokenizer_dir, "vocab.json"), os.path.join(tokenizer_dir, "merges.txt"), model_max_length=77
    )


def build_pipeline(tokenizer_dir: str):
    """SD-style pipeline: 52M-parameter UNet, 2-layer CLIP text encoder, 8x VAE; seeded, so identical per rank."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from modm.models.tiny_zoo import tiny_vae

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(96, 192, 384, 384),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=256,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(0)
    vae = tiny_vae(4, sample_size=512)
    torch.manual_seed(0)
    text_encoder = _clip_text_encoder(256, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    tokenizer = _clip_tokenizer(tokenizer_dir)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_flux_pipeline(tokenizer_dir: str):
    """FLUX-style pipeline: ~25M-parameter FluxTransformer2DModel, 2-layer CLIP and T5 encoders, 16-channel VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from modm.models.tiny_zoo import tiny_vae
    from modm.models.twins import build_t5_tokenizer

    t5_tokenizer = build_t5_tokenizer(FLUX_TEXT_TOKENS)
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=2,
        num_single_layers=4,
        attention_head_dim=64,
        num_attention_heads=4,
        joint_attention_dim=128,
        pooled_projection_dim=128,
        axes_dims_rope=(8, 28, 28),
        guidance_embeds=True,
    )
    torch.manual_seed(0)
    text_encoder = _clip_text_encoder(128, projection_dim=128)
    torch.manual_seed(0)
    text_encoder_2 = T5EncoderModel(
        T5Config(vocab_size=len(t5_tokenizer), d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4)
    )
    torch.manual_seed(0)
    vae = tiny_vae(16, sample_size=512, shift_factor=0.1159, scaling_factor=0.3611)  # FLUX's factors
    tokenizer = _clip_tokenizer(tokenizer_dir)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _decode(pipe, latents: torch.Tensor, size: int) -> np.ndarray:
    vae = pipe.vae
    with torch.no_grad():
        if hasattr(pipe, "_unpack_latents"):  # FLUX returns packed 2x2 latent patches
            latents = pipe._unpack_latents(latents, size, size, pipe.vae_scale_factor)
            latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        else:
            latents = latents / vae.config.scaling_factor
        image = vae.decode(latents).sample
    return ((image.clamp(-1, 1) + 1) / 2).numpy()


def _rank_main(
    rank: int, world_size: int, port: int, overrides: dict, model: str, args: dict, tokenizer_dir: str, results
):
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import torch.distributed as dist

    from modm.parallel import ParallelConfig, ParallelPipeline, init_parallel

    cfg = ParallelConfig(world_size=world_size, warmup_steps=args["warmup_steps"], **overrides)
    ctx = init_parallel(cfg, rank=rank, world_size=world_size, init_method=f"tcp://127.0.0.1:{port}", timeout_s=1800)
    build = build_flux_pipeline if model == "flux" else build_pipeline
    pipe = ParallelPipeline(build(tokenizer_dir), ctx)
    extra = dict(guidance_scale=3.5, max_sequence_length=FLUX_TEXT_TOKENS) if model == "flux" else {}
    call = dict(
        prompt="a watercolor lighthouse at dawn",
        num_inference_steps=args["steps"],
        height=args["size"],
        width=args["size"],
        guidance_scale=5.0,
        output_type="latent",
    )
    call.update(extra)
    pipe(**call, generator=torch.Generator().manual_seed(1))  # untimed: allocation, profiling, caches
    walls, cpus = [], []
    for _ in range(args["repeats"]):
        if world_size > 1:
            dist.barrier()
        start, start_cpu = time.perf_counter(), time.process_time()
        latents = pipe(**call, generator=torch.Generator().manual_seed(args["seed"])).images
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)  # all threads of this rank, gloo's included
    image = _decode(pipe.pipe, latents, args["size"]) if rank == 0 else None
    results.put((rank, min(walls), min(cpus), image))
    ctx.destroy()


def run_config(name: str, args: dict, tokenizer_dir: str) -> tuple[float, float, np.ndarray]:
    """(wall seconds of rank 0, largest CPU seconds of any rank, rank 0's decoded image)."""
    world_size, overrides, model = CONFIGS[name]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [
        ctx.Process(target=_rank_main, args=(r, world_size, port, overrides, model, args, tokenizer_dir, results))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    try:
        reports = [results.get(timeout=args["timeout_s"]) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    by_rank = {rank: (wall, cpu, image) for rank, wall, cpu, image in reports}
    return by_rank[0][0], max(cpu for _, cpu, _ in by_rank.values()), by_rank[0][2]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per image")
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=1,
        help="exact steps at the start (DistriFusion synchronous, AsyncDiff full model)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per configuration (best is kept)")
    parser.add_argument("--seed", type=int, default=0)
    methods = [name for name in CONFIGS if name not in BASELINES.values()]
    parser.add_argument("--methods", nargs="+", default=methods, choices=methods)
    parser.add_argument("--timeout-s", type=float, default=3600)
    parser.add_argument("--json", default="benchmarks/results/parallel_bench.json", help="where to write the rows")
    opts = parser.parse_args()
    args = dict(
        size=opts.size,
        steps=opts.steps,
        warmup_steps=opts.warmup_steps,
        repeats=opts.repeats,
        seed=opts.seed,
        timeout_s=opts.timeout_s,
    )

    from modm.models.tokenizer import write_clip_bpe_files

    tokenizer_dir = tempfile.mkdtemp(prefix="modm-bench-tok-")
    write_clip_bpe_files(tokenizer_dir)
    load_before = os.getloadavg()
    rows, baselines = [], {}
    for model in dict.fromkeys(CONFIGS[name][2] for name in opts.methods):
        label = BASELINES[model]
        baselines[model] = run_config(label, args, tokenizer_dir)
        seconds, cpu, _ = baselines[model]
        rows.append(Row(label, 1, opts.size, opts.steps, opts.warmup_steps, seconds, 1.0, cpu, 1.0, math.inf, 0.0))
    for name in opts.methods:
        base_seconds, base_cpu, base_image = baselines[CONFIGS[name][2]]
        seconds, cpu, image = run_config(name, args, tokenizer_dir)
        rows.append(
            Row(
                name,
                CONFIGS[name][0],
                opts.size,
                opts.steps,
                opts.warmup_steps,
                seconds,
                base_seconds / seconds,
                cpu,
                base_cpu / cpu,
                psnr(image, base_image),
                float(np.abs(image - base_image).max()),
            )
        )
        print(f"  done {name}: {seconds:.2f} s", flush=True)
    load_after = os.getloadavg()

    header = (
        f"{'method':<24}{'ranks':>6}{'resolution':>12}{'seconds':>10}{'speed-up':>10}{'PSNR dB':>10}"
        f"{'CPU s':>9}{'CPU speed-up':>14}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.method:<24}{r.ranks:>6}{r.resolution:>12}{r.seconds:>10.2f}{r.speedup:>9.2f}x{r.psnr_db:>10.2f}"
            f"{r.cpu_seconds:>9.2f}{r.cpu_speedup:>13.2f}x"
        )
    print(f"load average before/after: {load_before[0]:.1f} / {load_after[0]:.1f} on {os.cpu_count()} cores")

    os.makedirs(os.path.dirname(opts.json) or ".", exist_ok=True)
    with open(opts.json, "w", encoding="utf-8") as fh:
        json.dump(
            {
                "rows": [{**asdict(r), "psnr_db": None if math.isinf(r.psnr_db) else r.psnr_db} for r in rows],
                "params": args,
                "torch": torch.__version__,
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
                "load_average_before": load_before,
                "load_average_after": load_after,
            },
            fh,
            indent=2,
        )
    print(f"wrote {opts.json}")


if __name__ == "__main__":
    main()
