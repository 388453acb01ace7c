"""The world: an unbounded, seeded stream of captioned images, index -> sample.

Sample i of split s under seed z depends on (z, s, i) alone (its own numpy Generator), so any range can be drawn in
any order, and in parallel, with the same result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from modm.world.captions import Caption, TemplateSet, caption_scene
from modm.world.render import DEFAULT_SUPERSAMPLE, render_scene
from modm.world.scene import Scene, Split, sample_scene

DEFAULT_IMAGE_SIZE = 32
_SPLIT_IDS = {Split.TRAIN: 0, Split.HELDOUT: 1}
# Separate streams for a sample's scene and for its paraphrase queries, so that adding a query draws nothing
# from the scene's stream.
_SCENE_STREAM, _QUERY_STREAM, _RECAPTION_STREAM = 0, 1, 2


@dataclass(frozen=True)
class WorldSample:
    index: int
    split: Split
    scene: Scene
    caption: Caption
    image: np.ndarray  # (size, size, 3) uint8

    @property
    def prompt(self) -> str:
        return self.caption.text

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image)


class World:
    def __init__(self, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE, supersample: int = DEFAULT_SUPERSAMPLE):
        if image_size < 16 or image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 and at least 16, got {image_size}")
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.supersample = int(supersample)

    def _rng(self, split: Split, index: int, stream: int, variant: int = 0) -> np.random.Generator:
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        return np.random.default_rng([self.seed, _SPLIT_IDS[Split(split)], int(index), stream, int(variant)])

    def scene(self, index: int, split: Split = Split.TRAIN) -> tuple[Scene, Caption]:
        rng = self._rng(split, index, _SCENE_STREAM)
        scene = sample_scene(rng, Split(split))
        return scene, caption_scene(scene, rng, TemplateSet.GALLERY)

    def sample(self, index: int, split: Split = Split.TRAIN) -> WorldSample:
        scene, caption = self.scene(index, split)
        return WorldSample(index=int(index), split=Split(split), scene=scene, caption=caption, image=self.render(scene))

    def samples(self, start: int, count: int, split: Split = Split.TRAIN) -> list[WorldSample]:
        return [self.sample(i, split) for i in range(start, start + count)]

    def render(self, scene: Scene) -> np.ndarray:
        return render_scene(scene, self.image_size, self.supersample)

    def query(self, index: int, split: Split = Split.TRAIN, variant: int = 0) -> Caption:
        """A paraphrase of sample `index`'s scene from the reserved QUERY templates (never a gallery caption)."""
        scene, _ = self.scene(index, split)
        return caption_scene(scene, self._rng(split, index, _QUERY_STREAM, variant), TemplateSet.QUERY)

    def recaption(self, index: int, split: Split = Split.TRAIN, variant: int = 1) -> Caption:
        """Another GALLERY caption of the same scene (variant 0 is the sample's own caption)."""
        scene, own = self.scene(index, split)
        if variant == 0:
            return own
        return caption_scene(scene, self._rng(split, index, _RECAPTION_STREAM, variant), TemplateSet.GALLERY)

    def image_batch(
        self, indices: Iterable[int], split: Split = Split.TRAIN
    ) -> tuple[np.ndarray, list[str], list[Scene]]:
        """(n, size, size, 3) uint8 images, their captions and scenes."""
        images, captions, scenes = [], [], []
        for i in indices:
            s = self.sample(i, split)
            images.append(s.image)
            captions.append(s.caption.text)
            scenes.append(s.scene)
        return np.stack(images), captions, scenes
