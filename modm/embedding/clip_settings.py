"""The construction settings an open_clip model needs for its pretrained weights, resolved before building it.

open_clip's registry records, per (architecture, tag), how the weights were trained: `quick_gelu` (OpenAI's CLIP and
several others use QuickGELU, open_clip's default architecture configs use GELU) and the image normalisation
(`mean`/`std`). Built with the wrong activation, open_clip only warns and the embeddings are silently not those the
weights produce (MoDM's 0.25-0.30 score table is calibrated on the right ones). `resolve_open_clip_settings` turns a
config into the settings to build with and refuses a pair whose settings disagree; `check_built` verifies the built
model and preprocessing against them. Pure: nothing is downloaded or built here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from modm.config.loader import ConfigError

__all__ = ["OpenClipSettings", "check_built", "open_clip_create_kwargs", "resolve_open_clip_settings"]

QUICKGELU_SUFFIX = "-quickgelu"


@dataclass(frozen=True)
class OpenClipSettings:
    model: str
    pretrained: str | None
    quick_gelu: bool  # the activation the weights were trained with
    architecture_quick_gelu: bool  # what open_clip's config for `model` builds without being forced
    mean: tuple[float, ...] | None  # image normalisation of the weights (None: open_clip's default)
    std: tuple[float, ...] | None
    from_registry: bool  # False: no registry entry to check against (local files, random weights)

    @property
    def force_quick_gelu(self) -> bool:
        return self.quick_gelu and not self.architecture_quick_gelu


def _is_schema_model(model: str) -> bool:
    return model.startswith(("local-dir:", "hf-hub:"))


def resolve_open_clip_settings(
    model: str, pretrained: str | None, *, quick_gelu: bool | None = None, field: str = "embedder"
) -> OpenClipSettings:
    """Settings to build `model` with for `pretrained`; ConfigError naming `{field}.<name>` when they disagree.

    `quick_gelu`: an explicit activation from the config (None: whatever the weights need). Refused: a tag that is
    neither in open_clip's registry for this architecture nor a file; an architecture that builds QuickGELU (the
    `-quickgelu` names) with weights trained with GELU, or the reverse forced by `quick_gelu`.
    """
    import open_clip

    if _is_schema_model(model):
        # The model's directory or hub repo carries its own model and preprocessing config: nothing to resolve.
        if quick_gelu is not None:
            raise ConfigError(f"{field}.quick_gelu: cannot be set for {model!r}, whose own config fixes it")
        return OpenClipSettings(model, None, False, False, None, None, from_registry=False)
    model_cfg = open_clip.get_model_config(model)
    if model_cfg is None:
        raise ConfigError(
            f"{field}.model: {model!r} is not an open_clip architecture "
            f"(e.g. {', '.join(open_clip.list_models()[:4])}, ...)"
        )
    architecture_quick_gelu = bool(model_cfg.get("quick_gelu", False))
    tag_cfg = open_clip.get_pretrained_cfg(model, pretrained) if pretrained else {}
    if pretrained and not tag_cfg:
        if os.path.isfile(pretrained):  # a checkpoint file: it carries no record of its training settings
            return _unregistered(model, pretrained, architecture_quick_gelu, quick_gelu, field)
        base = model.removesuffix(QUICKGELU_SUFFIX)
        base_cfg = open_clip.get_pretrained_cfg(base, pretrained) if base != model else {}
        if base_cfg:  # e.g. ViT-L-14-quickgelu with a tag open_clip registers under ViT-L-14 only
            trained = "QuickGELU" if base_cfg.get("quick_gelu") else "GELU"
            raise ConfigError(
                f"{field}.model: {model!r} builds QuickGELU and open_clip registers {pretrained!r} "
                f"(trained with {trained}) only under {base!r}; use {base!r}"
            )
        known = open_clip.list_pretrained_tags_by_model(model)
        raise ConfigError(
            f"{field}.pretrained: {pretrained!r} is neither an open_clip tag of {model!r} "
            f"(known: {', '.join(known) or 'none'}) nor a checkpoint file"
        )
    if not pretrained:
        return _unregistered(model, None, architecture_quick_gelu, quick_gelu, field)
    needed = bool(tag_cfg.get("quick_gelu", False))
    if architecture_quick_gelu and not needed:
        raise ConfigError(
            f"{field}.model: {model!r} builds QuickGELU but the {pretrained!r} weights were trained with GELU; "
            f"use {model.removesuffix(QUICKGELU_SUFFIX)!r}"
            if model.endswith(QUICKGELU_SUFFIX)
            else f"{field}.model: {model!r} builds QuickGELU but the {pretrained!r} weights were trained with GELU "
            "(open_clip's registry disagrees with itself for this pair); pick another tag"
        )
    if quick_gelu is not None and quick_gelu != needed:
        act = "QuickGELU" if needed else "GELU"
        raise ConfigError(
            f"{field}.quick_gelu: {quick_gelu} disagrees with the {model!r}/{pretrained!r} weights, "
            f"which were trained with {act}; leave it unset"
        )
    mean, std = tag_cfg.get("mean"), tag_cfg.get("std")
    return OpenClipSettings(
        model,
        pretrained,
        needed,
        architecture_quick_gelu,
        tuple(mean) if mean else None,
        tuple(std) if std else None,
        from_registry=True,
    )


def _unregistered(
    model: str, pretrained: str | None, architecture_quick_gelu: bool, quick_gelu: bool | None, field: str
) -> OpenClipSettings:
    if quick_gelu is False and architecture_quick_gelu:  # open_clip can force QuickGELU on, never off
        raise ConfigError(f"{field}.quick_gelu: False, but {model!r} always builds QuickGELU")
    chosen = architecture_quick_gelu if quick_gelu is None else quick_gelu
    return OpenClipSettings(model, pretrained, chosen, architecture_quick_gelu, None, None, from_registry=False)


def open_clip_create_kwargs(settings: OpenClipSettings) -> dict:
    """Keyword arguments for `open_clip.create_model_and_transforms` that build what the settings say."""
    kwargs: dict = {"force_quick_gelu": settings.force_quick_gelu}
    if settings.mean is not None:
        kwargs.update(image_mean=settings.mean, image_std=settings.std)
    return kwargs


def check_built(model, preprocess, settings: OpenClipSettings, *, field: str = "embedder") -> None:
    """Refuse a built model whose activation or image normalisation is not what the settings say."""
    import torch
    from open_clip.transformer import QuickGELU
    from torchvision.transforms import Normalize

    has_quick_gelu = any(isinstance(m, QuickGELU) for m in model.modules())
    has_gelu = any(isinstance(m, torch.nn.GELU) for m in model.modules())
    if settings.from_registry and (has_quick_gelu or has_gelu) and has_quick_gelu != settings.quick_gelu:
        raise ConfigError(
            f"{field}.model: {settings.model!r} was built with "
            f"{'QuickGELU' if has_quick_gelu else 'GELU'} but its {settings.pretrained!r} weights need "
            f"{'QuickGELU' if settings.quick_gelu else 'GELU'}"
        )
    if settings.mean is None:
        return
    norms = [t for t in getattr(preprocess, "transforms", []) if isinstance(t, Normalize)]
    if len(norms) != 1 or not (_close(norms[0].mean, settings.mean) and _close(norms[0].std, settings.std)):
        found = [(tuple(n.mean), tuple(n.std)) for n in norms]
        raise ConfigError(
            f"{field}.pretrained: the image preprocessing normalises with {found}, not the "
            f"{settings.pretrained!r} weights' mean {settings.mean} / std {settings.std}"
        )


def _close(a, b) -> bool:
    a, b = tuple(float(x) for x in a), tuple(float(x) for x in b)
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b))
