"""Rank function for the AsyncDiff traffic test (importable by the spawned ranks)."""

from __future__ import annotations

import torch
from diffusers import SD3Transformer2DModel

from modm.parallel import ParallelConfig, ParallelPipeline, init_parallel
from tiny import sd3_inputs, tiny_sd3_pipeline

SD35_LARGE_BLOCKS = 38  # stabilityai/stable-diffusion-3.5-large transformer/config.json: num_layers


def asyncdiff_sd3_traffic(
    rank: int, world_size: int, init_method: str, tokenizer, steps: int, warmup_steps: int
) -> dict:
    """One SD3 AsyncDiff run per cache-sync rule on 2 ranks, with SD3.5-Large's 38 blocks at a tiny width: bytes
    broadcast (caches, predictions), the image, and the cache layout."""
    pipe = tiny_sd3_pipeline(tokenizer)
    torch.manual_seed(0)
    pipe.transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=SD35_LARGE_BLOCKS,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=64,
        caption_projection_dim=16,
        pooled_projection_dim=64,
        pos_embed_max_size=96,
        qk_norm="rms_norm",
    ).eval()
    out = {}
    try:
        for name, boundaries_only in (("boundaries", True), ("every_block", False)):
            cfg = ParallelConfig(method="asyncdiff", world_size=world_size, model_n=2, warmup_steps=warmup_steps)
            ctx = init_parallel(cfg, rank=rank, world_size=world_size, init_method=init_method, timeout_s=60)
            parallel = ParallelPipeline(pipe, ctx)
            runner = parallel.parallel
            runner.boundaries_only = boundaries_only  # False: what every AsyncDiff run broadcast before
            runner._set_components([1.0] * len(runner.unit_keys))  # one split for both runs (not timed)
            try:
                image = parallel(**sd3_inputs(steps=steps)).images.numpy()
                itemsize = runner._buffers[0].element_size()
                out[name] = {
                    "cache_bytes": runner.cache_bytes_broadcast,
                    "prediction_bytes": runner.prediction_bytes_broadcast,
                    "image": image,
                    "buffer_bytes": [b.numel() * itemsize for b in runner._buffers],
                    "boundary_bytes": [runner._unit_view(end - 1).numel() * itemsize for _, end in runner.components],
                    "units": len(runner.unit_keys),
                }
            finally:
                parallel.remove()
        return out
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
