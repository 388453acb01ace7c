"""`modm world build DIR`: an ordered list of build steps, each training one component into its own subfolder.

A step is a `BuildStep` (name, subfolder, the files it must leave there, a run function). `BUILD_STEPS` lists them
in order; later components (VAE, diffusion models) append their steps to it and may read earlier components from
the directory (`ctx.component_dir("clip")`). The manifest is rewritten after every step, so an interrupted build
leaves a directory that validation refuses with the missing components named.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from modm.world.format import WORLD_FORMAT_VERSION, ComponentRecord, WorldManifest
from modm.world.world import DEFAULT_IMAGE_SIZE, Split, World, WorldSample

# One thread: on a shared 2-core machine two intra-op threads stall on each other (measured: 14 s/step with 2
# threads vs 0.3 s/step with 1 for the world CLIP, other engineers' jobs running).
DEFAULT_BUILD_THREADS = 1


@dataclass
class BuildContext:
    world: World
    out_dir: Path
    seed: int
    quick: bool  # a few steps on a few images: checks that the build runs, trains nothing useful
    manifest: WorldManifest
    progress: Callable[[str, int], Callable[[int, float], None]]  # (label, total steps) -> per-step callback
    _samples: dict[Split, list[WorldSample]] = field(default_factory=dict)

    def component_dir(self, name: str) -> Path:
        return self.out_dir / self.manifest.components[name].path

    def train_samples(self, count: int, split: Split = Split.TRAIN) -> list[WorldSample]:
        """World samples 0..count-1, drawn once per build and shared by the steps that train on them."""
        have = self._samples.get(split, [])
        if len(have) < count:
            have = have + self.world.samples(len(have), count - len(have), split)
            self._samples[split] = have
        return have[:count]


@dataclass(frozen=True)
class StepResult:
    files: list[str]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildStep:
    name: str
    subfolder: str
    run: Callable[[BuildContext, Path], StepResult]


def _clip_step(seed_offset: int, width: int, steps: int, name: str) -> Callable[[BuildContext, Path], StepResult]:
    def run(ctx: BuildContext, out: Path) -> StepResult:
        from modm.world.clip import ClipTrainSpec, save_clip, train_clip

        spec = ClipTrainSpec(seed=ctx.seed + seed_offset, width=width, steps=steps)
        if ctx.quick:
            spec = replace(spec, steps=2, batch_size=16, train_images=32, warmup_steps=1)
        model, tokenizer, processor, seconds = train_clip(
            ctx.world, spec, samples=ctx.train_samples(spec.train_images), progress=ctx.progress(name, spec.steps)
        )
        save_clip(model, tokenizer, processor, out, spec)
        from modm.embedding.hf_clip import HfClipEmbedder
        from modm.world.eval import retrieval_accuracy

        gallery = 32 if ctx.quick else 1000
        accuracy = retrieval_accuracy(
            HfClipEmbedder(out, device=torch.device("cpu"), batch_size=256), ctx.world, gallery_size=gallery
        )
        params = sum(p.numel() for p in model.parameters())
        return StepResult(
            files=[
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "tokenizer_config.json",
                "processor_config.json",
            ],
            info={
                "train_seconds": round(seconds, 1),
                "parameters": params,
                "width": width,
                "seed": spec.seed,
                "steps": spec.steps,
                f"retrieval_top1_{gallery}": round(accuracy, 4),
            },
        )

    return run


def _judge_step(ctx: BuildContext, out: Path) -> StepResult:
    from modm.world.eval import EVAL_PROMPTS_START
    from modm.world.judge import JudgeTrainSpec, accuracy, score_image, train_judge

    spec = JudgeTrainSpec(seed=ctx.seed + 2)
    if ctx.quick:
        spec = replace(spec, steps=2, batch_size=16, train_images=32)
    n_heldout = int(spec.train_images * spec.heldout_fraction)
    samples = ctx.train_samples(spec.train_images - n_heldout) + ctx.train_samples(n_heldout, Split.HELDOUT)
    judge, seconds = train_judge(ctx.world, spec, samples=samples, progress=ctx.progress("judge", spec.steps))
    n_check = 32 if ctx.quick else 2000
    info: dict[str, Any] = {"train_seconds": round(seconds, 1), "steps": spec.steps}
    for split in (Split.TRAIN, Split.HELDOUT):
        check = ctx.world.samples(EVAL_PROMPTS_START, n_check, split)
        acc = accuracy([score_image(r, s.scene) for r, s in zip(judge.read([s.image for s in check]), check)])
        info[f"ground_truth_{split.value}"] = {k: round(v, 4) for k, v in acc.items()}
    judge.save(out, spec, info)
    return StepResult(files=["judge.safetensors", "judge.json"], info=info)


# The world CLIP (retrieval, the diffusion models' text encoder), the scoring CLIP (other seed and width, used only
# for CLIPScore) and the judge. The diffusion components append their steps after these.
BUILD_STEPS: list[BuildStep] = [
    BuildStep("clip", "clip", _clip_step(seed_offset=0, width=64, steps=800, name="clip")),
    BuildStep("clip_score", "clip_score", _clip_step(seed_offset=1, width=48, steps=400, name="clip_score")),
    BuildStep("judge", "judge", _judge_step),
]


# The VAE, the large/small/small2 diffusion pipelines and their per-step cost measurement (modm.world.model_steps).
def _model_steps() -> list[BuildStep]:
    from modm.world.model_steps import model_build_steps

    return model_build_steps()


BUILD_STEPS += _model_steps()
REQUIRED_FOR_EVAL = ("clip", "clip_score", "judge")


def tqdm_progress(label: str, total: int) -> Callable[[int, float], None]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=f"{label:<10}", unit="step", leave=True)

    def update(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if step + 1 >= total:
            bar.close()

    return update


def build_command(out_dir: str | Path, seed: int, quick: bool, only: list[str] | None) -> str:
    parts = ["modm", "world", "build", str(out_dir), "--seed", str(seed)]
    if quick:
        parts.append("--quick")
    if only:
        parts += ["--only", *only]
    return shlex.join(parts)


def build_world(
    out_dir: str | Path,
    *,
    seed: int = 0,
    quick: bool = False,
    only: list[str] | None = None,
    steps: list[BuildStep] | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    threads: int = DEFAULT_BUILD_THREADS,
    progress: Callable[[str, int], Callable[[int, float], None]] = tqdm_progress,
    log: Callable[[str], None] = print,
) -> WorldManifest:
    """Run the build steps in order (or those named in `only`, keeping the other components already there)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = BUILD_STEPS if steps is None else steps
    unknown = sorted(set(only or []) - {s.name for s in steps})
    if unknown:
        raise ValueError(f"only: unknown build step(s) {unknown}; steps are {[s.name for s in steps]}")
    manifest = WorldManifest(WORLD_FORMAT_VERSION, build_command(out_dir, seed, quick, only), seed, image_size)
    if only:
        try:
            previous = WorldManifest.load(out_dir)
            if previous.format_version == WORLD_FORMAT_VERSION:
                manifest.components = previous.components
        except ValueError:
            pass
    torch.set_num_threads(threads)
    ctx = BuildContext(World(seed=seed, image_size=image_size), out_dir, seed, quick, manifest, progress)
    started = time.perf_counter()
    for step in steps:
        if only and step.name not in only:
            continue
        t0 = time.perf_counter()
        result = step.run(ctx, out_dir / step.subfolder)
        info = {**result.info, "step_seconds": round(time.perf_counter() - t0, 1)}
        manifest.components[step.name] = ComponentRecord(step.name, step.subfolder, result.files, info)
        manifest.save(out_dir)
        log(f"{step.name}: {info}")
    log(f"built {out_dir} in {time.perf_counter() - started:.0f} s")
    return manifest
