"""The world CLIP: a tiny transformers `CLIPModel` trained contrastively on world (image, caption) pairs.

Saved with `save_pretrained` (model, tokenizer, image processor) so that `CLIPModel`, `CLIPTextModelWithProjection`
and `CLIPVisionModelWithProjection` all load it from the same directory. Targets are soft: in a batch, every image
whose scene has all the attributes a caption names is a positive of that caption (not only its own image), so
duplicates in a batch are not pushed apart.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from modm.world.captions import ALL, NO_POSITION, NO_SIZE
from modm.world.scene import Scene
from modm.world.tokenizer import WORLD_CONTEXT_LENGTH, build_world_tokenizer
from modm.world.world import Split, World, WorldSample

# Pixel normalisation of the world CLIP's image processor (and of its training): [0, 255] -> [-1, 1].
CLIP_IMAGE_MEAN = (0.5, 0.5, 0.5)
CLIP_IMAGE_STD = (0.5, 0.5, 0.5)
_MENTION_SETS = (ALL, NO_SIZE, NO_POSITION)


@dataclass(frozen=True)
class ClipTrainSpec:
    seed: int = 0
    width: int = 64
    layers: int = 2
    heads: int = 4
    projection_dim: int = 64
    patch_size: int = 8  # 4x4 patches of a 32x32 image: a quarter of the cost of patch 4
    steps: int = 800
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    train_images: int = 20_000
    captions_per_image: int = 3  # the image's own caption and other gallery captions of its scene
    attribute_loss_weight: float = 1.0  # auxiliary slot-attribute heads on the embeddings (training only)


def clip_config(spec: ClipTrainSpec, tokenizer, image_size: int):
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.width,
        intermediate_size=spec.width * 2,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        max_position_embeddings=WORLD_CONTEXT_LENGTH,
        projection_dim=spec.projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        image_size=image_size,
        patch_size=spec.patch_size,
        hidden_size=spec.width,
        intermediate_size=spec.width * 2,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        projection_dim=spec.projection_dim,
    )
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=spec.projection_dim)


def image_processor(image_size: int):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(CLIP_IMAGE_MEAN),
        image_std=list(CLIP_IMAGE_STD),
    )


def pixels_from_uint8(images: np.ndarray) -> torch.Tensor:
    """(n, h, w, 3) uint8 -> (n, 3, h, w) float, normalised as the image processor does."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _scene_keys(scenes: list[Scene]) -> np.ndarray:
    """(n, len(_MENTION_SETS)) ids: equal ids <=> the scenes agree on every attribute of that mention set."""
    ids: dict[tuple, int] = {}
    keys = np.empty((len(scenes), len(_MENTION_SETS)), np.int64)
    for i, scene in enumerate(scenes):
        for m, mentions in enumerate(_MENTION_SETS):
            key = (m, tuple(sorted(tuple(getattr(o, a) for a in sorted(mentions)) for o in scene.objects)))
            keys[i, m] = ids.setdefault(key, len(ids))
    return keys


@dataclass
class ClipTrainData:
    pixels: torch.Tensor  # (n, 3, h, w)
    input_ids: torch.Tensor  # (n, c, length)
    mention_set: torch.Tensor  # (n, c) index into _MENTION_SETS
    keys: torch.Tensor  # (n, len(_MENTION_SETS))
    slots: dict[str, torch.Tensor]  # judge-style slot targets (shape/colour/size per position), for the aux heads


class AttributeHeads(torch.nn.Module):
    """Training-only linear read-outs of the slot attributes from an embedding: they make the contrastive
    embedding attribute-aware in far fewer steps. Not saved; the saved model is a plain CLIPModel."""

    def __init__(self, dim: int):
        super().__init__()
        from modm.world.judge import SLOT_SHAPES
        from modm.world.scene import COLOUR_NAMES, POSITIONS, SIZES

        self.sizes = {"shape": len(SLOT_SHAPES), "colour": len(COLOUR_NAMES), "size": len(SIZES)}
        self.slots = len(POSITIONS)
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(dim, self.slots * n) for k, n in self.sizes.items()})

    def loss(self, emb: torch.Tensor, slots: dict[str, torch.Tensor]) -> torch.Tensor:
        ce = torch.nn.functional.cross_entropy
        return sum(
            ce(self.heads[k](emb).view(-1, self.sizes[k]), slots[k].flatten(), ignore_index=-100) for k in self.sizes
        )


def make_train_data(
    world: World, spec: ClipTrainSpec, tokenizer, samples: list[WorldSample] | None = None
) -> ClipTrainData:
    samples = samples if samples is not None else world.samples(0, spec.train_images, Split.TRAIN)
    captions = [[world.recaption(s.index, Split.TRAIN, v) for v in range(spec.captions_per_image)] for s in samples]
    flat = [c.text for cs in captions for c in cs]
    ids = tokenizer(
        flat, padding="max_length", max_length=WORLD_CONTEXT_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids.view(len(samples), spec.captions_per_image, -1)
    mention = torch.tensor([[_MENTION_SETS.index(c.mentions) for c in cs] for cs in captions])
    from modm.world.judge import slot_targets

    return ClipTrainData(
        pixels=pixels_from_uint8(np.stack([s.image for s in samples])),
        input_ids=ids,
        mention_set=mention,
        keys=torch.from_numpy(_scene_keys([s.scene for s in samples])),
        slots=slot_targets([s.scene for s in samples]),
    )


def soft_targets(keys: torch.Tensor, mention_set: torch.Tensor) -> torch.Tensor:
    """(B captions, B images) 1/0: image i has every attribute caption j names."""
    caption_keys = keys.gather(1, mention_set[:, None])  # (B, 1): caption j's own scene key
    image_keys = keys[:, mention_set].T  # (B_j, B_i): image i's key in caption j's set
    return (image_keys == caption_keys).float()


def contrastive_loss(
    text_emb: torch.Tensor, image_emb: torch.Tensor, logit_scale: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    logits = logit_scale.exp().clamp(max=100.0) * text_emb @ image_emb.T  # (captions, images)
    t2i = targets / targets.sum(1, keepdim=True)
    i2t = targets.T / targets.T.sum(1, keepdim=True)
    loss_t = -(t2i * logits.log_softmax(1)).sum(1).mean()
    loss_i = -(i2t * logits.T.log_softmax(1)).sum(1).mean()
    return (loss_t + loss_i) / 2


def train_clip(
    world: World,
    spec: ClipTrainSpec,
    *,
    samples: list[WorldSample] | None = None,
    progress: Callable[[int, float], None] | None = None,
):
    """Train a world CLIP on `samples` (default: train samples 0..train_images-1); returns (model, tokenizer,
    processor, seconds of training)."""
    import tempfile

    from transformers import CLIPModel

    torch.manual_seed(spec.seed)
    with tempfile.TemporaryDirectory() as bpe_dir:
        tokenizer = build_world_tokenizer(bpe_dir)
    model = CLIPModel(clip_config(spec, tokenizer, world.image_size))
    data = make_train_data(world, spec, tokenizer, samples)
    n = data.pixels.shape[0]
    image_heads, text_heads = AttributeHeads(spec.projection_dim), AttributeHeads(spec.projection_dim)
    params = [*model.parameters(), *image_heads.parameters(), *text_heads.parameters()]
    optimiser = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        done = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * done))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_at)
    generator = torch.Generator().manual_seed(spec.seed)
    model.train()
    start = time.perf_counter()
    for step in range(spec.steps):
        idx = torch.randint(0, n, (spec.batch_size,), generator=generator)
        which = torch.randint(0, spec.captions_per_image, (spec.batch_size,), generator=generator)
        input_ids = data.input_ids[idx, which]
        input_ids = input_ids[:, : int((input_ids != tokenizer.pad_token_id).sum(1).max()) + 1]  # keep one end token
        mention = data.mention_set[idx, which]
        attention_mask = torch.ones_like(input_ids)  # causal text tower, pooled at the first end token
        text = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        image = model.get_image_features(pixel_values=data.pixels[idx])
        text, image = _features(text), _features(image)
        loss = contrastive_loss(
            torch.nn.functional.normalize(text, dim=-1),
            torch.nn.functional.normalize(image, dim=-1),
            model.logit_scale,
            soft_targets(data.keys[idx], mention),
        )
        if spec.attribute_loss_weight:
            slots = {k: v[idx] for k, v in data.slots.items()}
            # captions that leave out size or position cannot say where or how big: image side only for those
            full = mention == _MENTION_SETS.index(ALL)
            text_slots = {k: torch.where(full[:, None], v, torch.full_like(v, -100)) for k, v in slots.items()}
            aux = image_heads.loss(image, slots) + text_heads.loss(text, text_slots)
            loss = loss + spec.attribute_loss_weight * aux
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        scheduler.step()
        if progress is not None:
            progress(step, loss.item())
    seconds = time.perf_counter() - start
    model.eval()
    return model, tokenizer, image_processor(world.image_size), seconds


def _features(output) -> torch.Tensor:
    """transformers 5 returns a model output from get_*_features; older versions a tensor."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output


def save_clip(model, tokenizer, processor, out_dir: str | Path, spec: ClipTrainSpec, *, fp16: bool = True) -> Path:
    import json

    from transformers import CLIPProcessor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    to_save = model.half() if fp16 else model
    to_save.save_pretrained(out_dir)
    if fp16:
        model.float()
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(out_dir)
    (out_dir / "train_spec.json").write_text(json.dumps(asdict(spec), indent=2) + "\n", encoding="utf-8")
    return out_dir
