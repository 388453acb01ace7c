"""Simulator defaults, named with their units. Sources: the MoDM digest (../shared/reference/modm.md)."""

from __future__ import annotations

__all__ = [
    "A40_LARGE_S",
    "A40_SMALL_S",
    "MI210_LARGE_S",
    "MI210_SMALL_S",
    "MODM_LARGE_TO_SMALL_RATIO",
    "SANA_TO_SDXL_LATENCY",
    "NIRVANA_LATENTS_PER_PROMPT",
    "DEFAULT_LARGE_LOAD_S",
    "DEFAULT_SMALL_LOAD_S",
]

# MoDM's multinode code hard-codes these MI210 latencies (SD3.5-Large vs SDXL, 50 steps, 1024x1024) [CODE].
MI210_LARGE_S = 91.5
MI210_SMALL_S = 16.5
MODM_LARGE_TO_SMALL_RATIO = MI210_LARGE_S / MI210_SMALL_S  # about 5.5

# SANA-1.6B vs SDXL per-image latency at 1024x1024, batch 1, on an A100: 1.2 s vs 6.5 s (SANA paper, arXiv
# 2410.10629, Table 7; the same table in the README of github.com/NVlabs/Sana, "Performance"). Each model at its own
# default sampler settings there; MoDM runs both at 50 steps, so this is the published ratio, not a per-step one.
SANA_TO_SDXL_LATENCY = 1.2 / 6.5

# A40: stats.py hard-codes the SLOs as 120 s and 240 s = 2x and 4x the SD3.5-Large latency, so about 60 s [INF].
# SDXL on A40 is *derived* with the MI210 ratio; no source measures it.
A40_LARGE_S = 60.0
A40_SMALL_S = A40_LARGE_S / MODM_LARGE_TO_SMALL_RATIO

# Reloading a model (del; empty_cache; from_pretrained) takes "tens of seconds"; the paper gives no number. These
# are assumptions: SD3.5-Large bf16 is ~26 GB of weights (transformer + T5), SDXL fp16 ~7 GB.
DEFAULT_LARGE_LOAD_S = 40.0
DEFAULT_SMALL_LOAD_S = 15.0

# NIRVANA snapshots the latents after steps 5, 10, 15, 20 and 25 of every full generation.
NIRVANA_LATENTS_PER_PROMPT = 5
