"""Judge the images a serving system answered with, in the world.

The prompts of a world trace (`modm.world.demo_workload`) are captions of known scenes, so each image a system
served can be read by the world's judge and checked against the attributes its prompt named, as `modm.world.eval`
does for a model called directly: judge accuracy per attribute, CLIPScore of the second CLIP (the one that never
retrieves) and FID on judge features against real world images (not reported at <= 64 images; the row says so).
A benchmark of several systems on one trace compares like with like; the numbers are those of the world's 32x32
models, not of any production model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from modm.world.captions import Caption
from modm.world.eval import REAL_IMAGES_MIN, ModelEval, clip_score, fid_on_judge_features, real_features
from modm.world.judge import accuracy, score_image
from modm.world.scene import Scene

__all__ = ["PromptTruth", "ServedJudge", "trace_truth"]


@dataclass(frozen=True)
class PromptTruth:
    """What a world prompt asked for: its scene, and the attributes the caption named (the only ones judged)."""

    scene: Scene
    mentions: frozenset[str]


def trace_truth(rows: Iterable[tuple[str, Scene, Caption]]) -> dict[str, PromptTruth]:
    """Prompt text -> what it asked for, from (user, scene, caption) rows. Two scenes captioned with the same text
    agree on every attribute the text names, so either one judges an image of that prompt the same way."""
    return {caption.text: PromptTruth(scene, caption.mentions) for _, scene, caption in rows}


class ServedJudge:
    """The world's judge, scoring CLIP and real-image features, loaded once to score many sets of served images."""

    def __init__(self, world_dir: str | Path, *, real_images: int = REAL_IMAGES_MIN):
        import torch

        from modm.embedding.hf_clip import HfClipEmbedder
        from modm.world.format import validate_world_dir
        from modm.world.judge import Judge
        from modm.world.world import World

        world_dir = Path(world_dir)
        manifest = validate_world_dir(world_dir, ("judge", "clip_score"))
        device = torch.device("cpu")
        self.judge = Judge.load(world_dir / manifest.components["judge"].path, device)
        self.scorer = HfClipEmbedder(world_dir / manifest.components["clip_score"].path, device=device, batch_size=256)
        self.real = real_features(World(seed=manifest.seed, image_size=manifest.image_size), self.judge, real_images)

    def servable(
        self, images: Sequence[Image.Image], prompts: Sequence[str], truth: dict[str, PromptTruth]
    ) -> list[bool]:
        """Per request, whether an image served for an earlier one already shows every attribute its prompt names:
        the hits an oracle retrieval over those images could serve with no loss (a hit inherits its image's errors).
        """
        _check_prompts("servable", images, prompts, truth)
        readings = self.judge.read(images) if images else []
        return [
            any(score_image(readings[j], truth[p].scene, truth[p].mentions)["all"] >= 1.0 for j in range(i))
            for i, p in enumerate(prompts)
        ]

    def evaluate(
        self, name: str, images: Sequence[Image.Image], prompts: Sequence[str], truth: dict[str, PromptTruth]
    ) -> ModelEval:
        """Judge accuracy, CLIPScore and FID of `images`, the answers to `prompts` (each a key of `truth`)."""
        _check_prompts(name, images, prompts, truth)
        if not images:
            raise ValueError(f"{name}: no images to judge")
        readings = self.judge.read(images)
        scores = [score_image(r, truth[p].scene, truth[p].mentions) for r, p in zip(readings, prompts)]
        fid, note = fid_on_judge_features(self.judge, images, self.real)
        return ModelEval(
            name=name,
            samples=len(images),
            judge=accuracy(scores),
            judge_heldout=None,
            clip_score=clip_score(self.scorer, images, prompts),
            fid=fid,
            fid_note=note,
        )


def _check_prompts(name: str, images: Sequence, prompts: Sequence[str], truth: dict[str, PromptTruth]) -> None:
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    unknown = sorted({p for p in prompts if p not in truth})
    if unknown:
        raise ValueError(f"{name}: {len(unknown)} prompt(s) are not captions of the trace, e.g. {unknown[:3]}")
