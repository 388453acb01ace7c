"""The judge: a small CNN trained on the world's ground truth, for GenEval-style scoring and FID features.

It reads an image as five position slots; for each, whether an object is there and its shape, colour and size.
`score_image` compares that reading with the scene a prompt described (GenEval's question: does the image show
what was asked?). Its penultimate layer (`FEATURE_DIM` values) is the feature space of the world's FID.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modm.world.captions import ALL
from modm.world.scene import COLOUR_NAMES, POSITIONS, SHAPES, SIZES, Scene
from modm.world.world import Split, World, WorldSample

FEATURE_DIM = 64
EMPTY = "empty"
SLOT_SHAPES = (EMPTY, *SHAPES)  # class 0: no object in the slot
ATTRIBUTES = ("count", "shape", "colour", "size", "position", "shape_colour", "all")
WEIGHTS_NAME, CONFIG_NAME = "judge.safetensors", "judge.json"


class JudgeNet(nn.Module):
    def __init__(self, width: int = 32, image_size: int = 32):
        super().__init__()
        w = width

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.conv = nn.Sequential(
            *block(3, w, 1),
            *block(w, 2 * w, 2),
            *block(2 * w, 2 * w, 1),
            *block(2 * w, 4 * w, 2),
            *block(4 * w, 4 * w, 2),
        )
        side = image_size // 8
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * side * side, FEATURE_DIM))
        n_slots = len(POSITIONS)
        self.shape_head = nn.Linear(FEATURE_DIM, n_slots * len(SLOT_SHAPES))
        self.colour_head = nn.Linear(FEATURE_DIM, n_slots * len(COLOUR_NAMES))
        self.size_head = nn.Linear(FEATURE_DIM, n_slots * len(SIZES))

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The penultimate layer before its ReLU: after it, units that are never active make the FID covariance
        singular."""
        return self.embed(self.conv(pixels))

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        f = torch.relu(self.features(pixels))
        n = pixels.shape[0]
        return {
            "shape": self.shape_head(f).view(n, len(POSITIONS), -1),
            "colour": self.colour_head(f).view(n, len(POSITIONS), -1),
            "size": self.size_head(f).view(n, len(POSITIONS), -1),
        }


def judge_pixels(images: np.ndarray) -> torch.Tensor:
    """(n, h, w, 3) uint8 -> (n, 3, h, w) float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def slot_targets(scenes: Sequence[Scene]) -> dict[str, torch.Tensor]:
    """Per scene and slot: shape class (0 = empty), colour and size classes (-100 where the slot is empty)."""
    n = len(scenes)
    shape = torch.zeros(n, len(POSITIONS), dtype=torch.long)
    colour = torch.full((n, len(POSITIONS)), -100, dtype=torch.long)
    size = torch.full((n, len(POSITIONS)), -100, dtype=torch.long)
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            p = POSITIONS.index(o.position)
            shape[i, p] = SLOT_SHAPES.index(o.shape)
            colour[i, p] = COLOUR_NAMES.index(o.colour)
            size[i, p] = SIZES.index(o.size)
    return {"shape": shape, "colour": colour, "size": size}


@dataclass(frozen=True)
class JudgeReading:
    """What the judge sees: position -> (shape, colour, size)."""

    objects: dict[str, tuple[str, str, str]]


@dataclass(frozen=True)
class JudgeTrainSpec:
    seed: int = 0
    width: int = 32
    steps: int = 800
    batch_size: int = 128
    lr: float = 2e-3
    train_images: int = 20_000
    heldout_fraction: float = 0.1  # the judge grades held-out pairs, so it sees them (it is not a model under test)


class Judge:
    def __init__(self, net: JudgeNet, image_size: int, device: torch.device | None = None):
        self.device = device or torch.device("cpu")
        self.net = net.to(self.device).eval()
        self.image_size = image_size

    def _pixels(self, images: np.ndarray | Sequence) -> torch.Tensor:
        arr = as_uint8_batch(images, self.image_size)
        return judge_pixels(arr).to(self.device)

    @torch.inference_mode()
    def read(self, images, batch_size: int = 256) -> list[JudgeReading]:
        readings: list[JudgeReading] = []
        arr = as_uint8_batch(images, self.image_size)
        for start in range(0, len(arr), batch_size):
            out = self.net(judge_pixels(arr[start : start + batch_size]).to(self.device))
            shape, colour, size = (out[k].argmax(-1).cpu().numpy() for k in ("shape", "colour", "size"))
            for i in range(shape.shape[0]):
                readings.append(
                    JudgeReading(
                        {
                            POSITIONS[p]: (SLOT_SHAPES[shape[i, p]], COLOUR_NAMES[colour[i, p]], SIZES[size[i, p]])
                            for p in range(len(POSITIONS))
                            if shape[i, p] != 0
                        }
                    )
                )
        return readings

    @torch.inference_mode()
    def features(self, images, batch_size: int = 256) -> np.ndarray:
        arr = as_uint8_batch(images, self.image_size)
        out = [
            self.net.features(judge_pixels(arr[s : s + batch_size]).to(self.device)).cpu().numpy()
            for s in range(0, len(arr), batch_size)
        ]
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, FEATURE_DIM))

    def save(self, out_dir: str | Path, spec: JudgeTrainSpec, info: dict) -> Path:
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().cpu().half().contiguous() if v.is_floating_point() else v.cpu().contiguous()
            for k, v in self.net.state_dict().items()
        }
        save_file(state, str(out_dir / WEIGHTS_NAME))
        (out_dir / CONFIG_NAME).write_text(
            json.dumps(
                {"width": spec.width, "image_size": self.image_size, "train_spec": asdict(spec), **info}, indent=2
            )
            + "\n",
            encoding="utf-8",
        )
        return out_dir

    @classmethod
    def load(cls, path: str | Path, device: torch.device | None = None) -> Judge:
        from safetensors.torch import load_file

        path = Path(path)
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            if not (path / name).is_file():
                raise FileNotFoundError(f"judge {path}: missing {name}")
        cfg = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
        net = JudgeNet(width=int(cfg["width"]), image_size=int(cfg["image_size"]))
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path / WEIGHTS_NAME)).items()}
        net.load_state_dict(state)
        return cls(net, int(cfg["image_size"]), device)


def as_uint8_batch(images, image_size: int) -> np.ndarray:
    """PIL images or uint8 arrays -> (n, size, size, 3) uint8, resized (bilinear) to the judge's size if needed."""
    from PIL import Image

    if isinstance(images, np.ndarray) and images.ndim == 4:
        arr = images
        if arr.shape[1:3] == (image_size, image_size):
            return arr.astype(np.uint8, copy=False)
        images = [Image.fromarray(a) for a in arr]
    out = []
    for im in images:
        if isinstance(im, np.ndarray):
            im = Image.fromarray(im.astype(np.uint8))
        im = im.convert("RGB")
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.BILINEAR)
        out.append(np.asarray(im))
    return np.stack(out) if out else np.zeros((0, image_size, image_size, 3), np.uint8)


def score_image(reading: JudgeReading, scene: Scene, mentions: frozenset[str] = ALL) -> dict[str, bool]:
    """Per attribute, whether the image shows it for every object the prompt asked for (GenEval-style)."""
    free = dict(reading.objects)
    per_object = []
    for o in scene.objects:
        if o.position in free:
            seen_position, seen = o.position, free.pop(o.position)
        elif free:  # the object is elsewhere: take the reading most like it
            seen_position = max(
                free, key=lambda p: (free[p][0] == o.shape) + (free[p][1] == o.colour) + (free[p][2] == o.size)
            )
            seen = free.pop(seen_position)
        else:
            per_object.append(dict.fromkeys(("shape", "colour", "size", "position"), False))
            continue
        per_object.append(
            {
                "shape": seen[0] == o.shape,
                "colour": seen[1] == o.colour,
                "size": seen[2] == o.size,
                "position": seen_position == o.position,
            }
        )
    result = {"count": len(reading.objects) == scene.count}
    for attribute in ("shape", "colour", "size", "position"):
        result[attribute] = all(p[attribute] for p in per_object) if attribute in mentions else True
    result["shape_colour"] = result["shape"] and result["colour"]
    result["all"] = all(result[a] for a in ("count", "shape", "colour", "size", "position"))
    return result


def accuracy(scores: Sequence[dict[str, bool]]) -> dict[str, float]:
    if not scores:
        raise ValueError("accuracy of no images")
    return {a: float(np.mean([s[a] for s in scores])) for a in ATTRIBUTES}


def train_judge(
    world: World,
    spec: JudgeTrainSpec,
    *,
    samples: list[WorldSample] | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[Judge, float]:
    """Train on ground-truth images of both splits (default: the spec's share of each, from index 0); returns the
    judge and the seconds of training."""
    torch.manual_seed(spec.seed)
    if samples is None:
        n_heldout = int(spec.train_images * spec.heldout_fraction)
        samples = world.samples(0, spec.train_images - n_heldout, Split.TRAIN)
        samples += world.samples(0, n_heldout, Split.HELDOUT)
    pixels = judge_pixels(np.stack([s.image for s in samples]))
    targets = slot_targets([s.scene for s in samples])
    net = JudgeNet(width=spec.width, image_size=world.image_size)
    optimiser = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=spec.lr, total_steps=spec.steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(spec.seed)
    ce = nn.CrossEntropyLoss(ignore_index=-100)
    net.train()
    start = time.perf_counter()
    for step in range(spec.steps):
        idx = torch.randint(0, len(samples), (spec.batch_size,), generator=generator)
        out = net(pixels[idx])
        loss = sum(ce(out[k].flatten(0, 1), targets[k][idx].flatten()) for k in ("shape", "colour", "size"))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        if progress is not None:
            progress(step, loss.item())
    seconds = time.perf_counter() - start
    return Judge(net, world.image_size), seconds
