"""Step-level (continuous) batching of diffusion pipelines: the pieces behind `StepBatchingGenerator`.

`family` holds each request's state and the family interface, `sd3` and `sdxl` the two families it replays, and
`engine` the loop that admits requests at step boundaries and runs their shared denoiser passes.
"""

from __future__ import annotations

from modm.generation.stepwise.family import Denoising, Family, Job

__all__ = ["Denoising", "Family", "Job", "family_class", "unsupported_reason"]


def family_class(pipe) -> type[Family] | None:
    """The family whose text-to-image pipeline `pipe` is (exactly: a subclass may change `__call__`), or None."""
    from modm.generation.stepwise.sd3 import SD3Family
    from modm.generation.stepwise.sdxl import SDXLFamily

    for family in (SD3Family, SDXLFamily):
        if type(pipe) is family.txt2img_class:
            return family
    return None


def unsupported_reason(pipe) -> str | None:
    """Why `pipe` cannot be step-batched, or None."""
    family = family_class(pipe)
    if family is None:
        return (
            f"{type(pipe).__name__} is not a step-batched pipeline (only StableDiffusion3Pipeline and "
            "StableDiffusionXLPipeline are)"
        )
    return family.unsupported(pipe)
