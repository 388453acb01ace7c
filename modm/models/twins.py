"""Miniature twins of a shipped config: the same classes and settings as the real models, scaled down by one rule.

A twin of a `SystemConfig` replaces each model `source` (a hub id) by a local `save_pretrained` directory holding a
randomly initialised pipeline of exactly the real one's pipeline class, denoiser class, scheduler class and scheduler
config (copied verbatim from `modm.models.architectures`), text-encoder set, tokenizer kinds, VAE class and latent
channels. Only sizes shrink, by `SCALE_RULE`:

- every width (hidden sizes, channels, projection and joint-attention dims) is divided by `WIDTH_DIVISOR`, so that
  dims which must agree across components (SD3's pooled 2048 = 768 + 1280, SDXL's 2816 = 6*256 + 1280) still agree;
- layer counts are capped at `MAX_LAYERS` (per U-Net/VAE block: `MAX_BLOCK_LAYERS`);
- heads become the largest divisor of the new width that is at most min(real heads, `MAX_HEADS`), head dims follow;
- vocabularies follow the tokenizer: CLIP keeps its real 49408-token BPE (offline, from open_clip); T5 and Gemma get
  a tiny character-level vocabulary in the real tokenizer class (their real sentencepiece files are not on PyPI).

Latent channels, patch sizes, sample sizes, scheduler configs, activations, norms and every flag are kept. The
config's steps, guidance, max_sequence_length, dtype, variant, mode and parallel settings are kept as they are; the
only fields that change are in `TWIN_OVERRIDES` (one place; `describe_overrides` prints them). Half precision is not
overridden: the loader already runs float32 on CPU (`modm.models.loading.torch_dtype`).

The embedder twin is the same open_clip architecture name at a tiny width with the construction settings its
pretrained tag implies (`quick_gelu`, mean/std), saved in open_clip's `local-dir:` format.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modm.config.schema import EmbedderKind, ModelSpec, SystemConfig, SystemMode
from modm.roles import small_tier_name
from modm.models.architectures import (
    Architecture,
    Component,
    UnknownArchitectureError,
    architecture_for,
)

WIDTH_DIVISOR = 32
MAX_LAYERS = 2
MAX_BLOCK_LAYERS = 1
MAX_HEADS = 2
TWIN_SEED = 0
TWIN_SIDE = 64  # the twin's default image side: the smallest multiple of every size rule that is at least 64
# Bump when the rule or a builder changes, so cached twins are rebuilt.
TWIN_VERSION = 2

SCALE_RULE = (
    f"widths // {WIDTH_DIVISOR}; layers <= {MAX_LAYERS} (per block <= {MAX_BLOCK_LAYERS}); heads = largest "
    f"divisor of the new width <= min(heads, {MAX_HEADS}); latent channels, patch sizes, schedulers, flags "
    "kept; T5/Gemma vocabularies from a tiny offline tokenizer"
)

# Every field a twin changes, and why. Nothing else in the config differs from the shipped file.
TWIN_OVERRIDES: dict[str, str] = {
    "models.*.source": "the twin's save_pretrained directory (hub weights cannot be downloaded here)",
    "models.*.device": "cpu: the test machine has no CUDA (gpu_check.py keeps the config's device)",
    "models.*.default_size": f"{TWIN_SIDE}: the smallest side every size rule allows (the real default is 1024)",
    "models.*.max_size": f"{2 * TWIN_SIDE}",
    "embedder.model": "local-dir:<twin>: the same open_clip architecture name at a tiny width",
    "embedder.pretrained": "None: the twin's weights are in its directory, built with the tag's settings",
    "embedder.device": "cpu",
    "cache.directory": "a temporary directory",
    "monitor.gpu_budget": "2: one large and one small replica fit 2 CPU cores",
    "actor_options.*.num_gpus": "removed: no GPUs",
    "actor_options.*.num_cpus": "lowered so that several twin apps share the 2-core test cluster",
}


class TwinError(ValueError):
    """A config that has no twin (a local source, an unknown model); the message names the field."""


# ---------------------------------------------------------------------------------------------------- the rule
def width(n: int) -> int:
    return max(1, int(n) // WIDTH_DIVISOR)


def layers(n: int, cap: int = MAX_LAYERS) -> int:
    return max(1, min(int(n), cap))


def heads_for(new_width: int, real_heads: int) -> int:
    """The largest divisor of new_width that is at most min(real_heads, MAX_HEADS)."""
    for h in range(min(int(real_heads), MAX_HEADS), 0, -1):
        if new_width % h == 0:
            return h
    return 1


def scaled_attention(real_heads: int, real_head_dim: int) -> tuple[int, int]:
    """(heads, head_dim) of the scaled inner width: heads divide it and stay at most min(real_heads, MAX_HEADS)."""
    inner = width(real_heads * real_head_dim)
    heads = heads_for(inner, real_heads)
    return heads, inner // heads


def _groups(channels) -> int:
    """GroupNorm groups: the largest divisor of every channel count that is at most 32 (the real models' 32)."""
    g = 0
    for c in channels:
        g = math.gcd(g, int(c))
    return max(d for d in range(1, min(g, 32) + 1) if g % d == 0)


def _even_split(total: int, parts) -> tuple[int, ...]:
    """RoPE axes: scale to `total`, each even, the remainder on the last axis."""
    scale = total / sum(parts)
    dims = [max(2, int(p * scale) // 2 * 2) for p in parts[:-1]]
    return (*dims, total - sum(dims))


def _scale_sd3(c: dict) -> dict:
    heads, head_dim = scaled_attention(c["num_attention_heads"], c["attention_head_dim"])
    return {
        **c,
        "num_layers": layers(c["num_layers"]),
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "caption_projection_dim": width(c["caption_projection_dim"]),
        "joint_attention_dim": width(c["joint_attention_dim"]),
        "pooled_projection_dim": width(c["pooled_projection_dim"]),
        "dual_attention_layers": tuple(i for i in c.get("dual_attention_layers", ()) if i < layers(c["num_layers"])),
    }


def _scale_flux(c: dict) -> dict:
    heads, head_dim = scaled_attention(c["num_attention_heads"], c["attention_head_dim"])
    return {
        **c,
        "num_layers": layers(c["num_layers"]),
        "num_single_layers": layers(c["num_single_layers"]),
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "joint_attention_dim": width(c["joint_attention_dim"]),
        "pooled_projection_dim": width(c["pooled_projection_dim"]),
        "axes_dims_rope": _even_split(head_dim, c["axes_dims_rope"]),
    }


def _scale_sana(c: dict) -> dict:
    heads, head_dim = scaled_attention(c["num_attention_heads"], c["attention_head_dim"])
    cross_heads, cross_head_dim = scaled_attention(c["num_cross_attention_heads"], c["cross_attention_head_dim"])
    return {
        **c,
        "num_layers": layers(c["num_layers"]),
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "num_cross_attention_heads": cross_heads,
        "cross_attention_head_dim": cross_head_dim,
        "cross_attention_dim": width(c["cross_attention_dim"]),
        "caption_channels": width(c["caption_channels"]),
    }


def _scale_unet(c: dict) -> dict:
    channels = tuple(width(ch) for ch in c["block_out_channels"])
    heads = c["attention_head_dim"]  # diffusers' name; the U-Net reads it as the head count per block
    heads = (heads,) * len(channels) if isinstance(heads, int) else heads
    tl = c.get("transformer_layers_per_block", 1)
    tl = (tl,) * len(channels) if isinstance(tl, int) else tl
    return {
        **c,
        "block_out_channels": channels,
        "attention_head_dim": tuple(heads_for(ch, h) for ch, h in zip(channels, heads)),
        "transformer_layers_per_block": tuple(layers(n, MAX_BLOCK_LAYERS) for n in tl),
        "layers_per_block": layers(c["layers_per_block"], MAX_BLOCK_LAYERS),
        "norm_num_groups": _groups(channels),
        "cross_attention_dim": width(c["cross_attention_dim"]),
        "addition_time_embed_dim": width(c["addition_time_embed_dim"]),
        "projection_class_embeddings_input_dim": width(c["projection_class_embeddings_input_dim"]),
    }


def _scale_vae_kl(c: dict) -> dict:
    channels = tuple(width(ch) for ch in c["block_out_channels"])
    return {
        **c,
        "block_out_channels": channels,
        "layers_per_block": layers(c["layers_per_block"], MAX_BLOCK_LAYERS),
        "norm_num_groups": _groups(channels),
    }


def _scale_vae_dc(c: dict) -> dict:
    enc = tuple(width(ch) for ch in c["encoder_block_out_channels"])
    dec = tuple(width(ch) for ch in c["decoder_block_out_channels"])
    vit = [
        ch
        for ch, kind in zip(enc + dec, tuple(c["encoder_block_types"]) + tuple(c["decoder_block_types"]))
        if kind == "EfficientViTBlock"
    ]
    # DC-AE's heads are channels // attention_head_dim: the narrowest EfficientViT stage gets MAX_HEADS heads.
    head_dim = max(1, min(vit) // MAX_HEADS) if vit else width(c["attention_head_dim"])
    return {
        **c,
        "encoder_block_out_channels": enc,
        "decoder_block_out_channels": dec,
        "attention_head_dim": head_dim,
        "encoder_layers_per_block": tuple(layers(n, MAX_BLOCK_LAYERS) for n in c["encoder_layers_per_block"]),
        "decoder_layers_per_block": tuple(layers(n, MAX_BLOCK_LAYERS) for n in c["decoder_layers_per_block"]),
    }


def _scale_clip_text(c: dict) -> dict:
    hidden = width(c["hidden_size"])
    return {
        **c,
        "hidden_size": hidden,
        "intermediate_size": width(c["intermediate_size"]),
        "num_attention_heads": heads_for(hidden, c["num_attention_heads"]),
        "num_hidden_layers": layers(c["num_hidden_layers"]),
        "projection_dim": width(c["projection_dim"]),
    }


def _scale_t5(c: dict) -> dict:
    heads, head_dim = scaled_attention(c["num_heads"], c["d_kv"])
    return {
        **c,
        "d_model": width(c["d_model"]),
        "d_ff": width(c["d_ff"]),
        "num_heads": heads,
        "d_kv": head_dim,
        "num_layers": layers(c["num_layers"]),
    }


def _scale_gemma2(c: dict) -> dict:
    heads, head_dim = scaled_attention(c["num_attention_heads"], c["head_dim"])
    group = max(1, c["num_attention_heads"] // c["num_key_value_heads"])  # keep the GQA ratio where it fits
    return {
        **c,
        "hidden_size": width(c["hidden_size"]),
        "intermediate_size": width(c["intermediate_size"]),
        "num_hidden_layers": layers(c["num_hidden_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // group),
        "head_dim": head_dim,
        # Gemma2 scales queries by query_pre_attn_scalar**-0.5; the real value is its head_dim.
        "query_pre_attn_scalar": head_dim
        if c["query_pre_attn_scalar"] == c["head_dim"]
        else c["query_pre_attn_scalar"],
    }


SCALERS: dict[str, Callable[[dict], dict]] = {
    "SD3Transformer2DModel": _scale_sd3,
    "FluxTransformer2DModel": _scale_flux,
    "SanaTransformer2DModel": _scale_sana,
    "UNet2DConditionModel": _scale_unet,
    "AutoencoderKL": _scale_vae_kl,
    "AutoencoderDC": _scale_vae_dc,
    "CLIPTextModel": _scale_clip_text,
    "CLIPTextModelWithProjection": _scale_clip_text,
    "T5EncoderModel": _scale_t5,
    "Gemma2Model": _scale_gemma2,
}


def scaled_config(component: Component) -> dict:
    """The twin's config of one model component: the real numbers through `SCALE_RULE`."""
    if component.class_name not in SCALERS:
        raise TwinError(f"no scale rule for {component.class_name}")
    return SCALERS[component.class_name](dict(component.config))


# ------------------------------------------------------------------------------------------------- tokenizers
_TINY_PIECES = list(string.ascii_lowercase + string.digits + string.punctuation) + list(string.ascii_uppercase)


def build_t5_tokenizer(max_length: int):
    """The real T5 tokenizer class (unigram model) over a tiny character vocabulary, offline."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    vocab += [(p, -2.0) for p in _TINY_PIECES] + [("\u2581" + p, -1.5) for p in _TINY_PIECES]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_length)


def build_gemma_tokenizer(max_length: int | None, padding_side: str):
    """The real Gemma tokenizer class (BPE with byte fallback) over a tiny character vocabulary, offline."""
    from transformers import GemmaTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    pieces = specials + ["\u2581"] + _TINY_PIECES + [f"<0x{b:02X}>" for b in range(256)]
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    tok = GemmaTokenizerFast(vocab=vocab, merges=[], **({"model_max_length": max_length} if max_length else {}))
    tok.padding_side = padding_side
    return tok


def _byte_chars() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values, in byte order."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def build_byte_clip_tokenizer(work_dir: Path, max_length: int):
    """CLIPTokenizer over bytes only (no merges): for machines without open_clip's BPE file (the GPU check)."""
    from transformers import CLIPTokenizer

    work_dir.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]  # specials last, like CLIP
    (work_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (work_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer(str(work_dir / "vocab.json"), str(work_dir / "merges.txt"), model_max_length=max_length)


def _tokenizer(component: Component, work_dir: Path):
    kind, cfg = component.class_name, component.config
    if kind == "CLIPTokenizer":
        try:
            from modm.models.tokenizer import build_clip_tokenizer

            return build_clip_tokenizer(work_dir / "clip-bpe")
        except ImportError:  # no open_clip (and so no CLIP BPE file) on this machine
            return build_byte_clip_tokenizer(work_dir / "clip-bytes", cfg["model_max_length"])
    if kind == "T5TokenizerFast":
        return build_t5_tokenizer(cfg["model_max_length"])
    if kind == "GemmaTokenizerFast":
        return build_gemma_tokenizer(cfg.get("model_max_length"), cfg.get("padding_side", "left"))
    raise TwinError(f"no offline builder for tokenizer {kind}")


# ---------------------------------------------------------------------------------------------------- builders
def _model(component: Component, config: dict, tokenizer=None):
    import diffusers
    import transformers

    if component.library == "diffusers":
        cls = getattr(diffusers, component.class_name)
        if component.class_name.endswith("Scheduler"):
            return cls.from_config(dict(component.config))  # verbatim: schedulers are not scaled
        return cls(**config)
    config_cls = {
        "CLIPTextModel": transformers.CLIPTextConfig,
        "CLIPTextModelWithProjection": transformers.CLIPTextConfig,
        "T5EncoderModel": transformers.T5Config,
        "Gemma2Model": transformers.Gemma2Config,
    }[component.class_name]
    if tokenizer is not None and component.class_name in ("T5EncoderModel", "Gemma2Model"):
        config = {**config, "vocab_size": len(tokenizer)}
        if component.class_name == "Gemma2Model":
            config.update(
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id,
            )
    return getattr(transformers, component.class_name)(config_cls(**config))


def _paired_tokenizer(name: str) -> str:
    return name.replace("text_encoder", "tokenizer")


def build_pipeline_twin(arch: Architecture, out_dir: str | Path, *, variant: str | None = None) -> Path:
    """Build and save_pretrained the twin of `arch` into out_dir (deterministic)."""
    import diffusers

    out_dir = Path(out_dir)
    work = out_dir.parent / f".{out_dir.name}-work"
    components: dict[str, Any] = {}
    tokenizers = {
        name: _tokenizer(c, work)
        for name, c in arch.components.items()
        if c is not None and c.library == "transformers" and "Tokenizer" in c.class_name
    }
    for name, component in arch.components.items():
        if component is None:
            components[name] = None
        elif name in tokenizers:
            components[name] = tokenizers[name]
        else:
            torch.manual_seed(TWIN_SEED + len(components))
            config = {} if component.class_name.endswith("Scheduler") else scaled_config(component)
            components[name] = _model(component, config, tokenizers.get(_paired_tokenizer(name)))
    pipe = getattr(diffusers, arch.pipeline_class)(**components)
    pipe.save_pretrained(out_dir, variant=variant)
    (out_dir / "twin.json").write_text(
        json.dumps({"version": TWIN_VERSION, "of": arch.repo_id, "variant": variant, "rule": SCALE_RULE}, indent=2),
        encoding="utf-8",
    )
    return out_dir


def _open_clip_twin_config(model: str, pretrained: str | None) -> tuple[dict, dict]:
    """open_clip model_cfg of `model` through SCALE_RULE, with the construction settings `pretrained` implies."""
    import open_clip

    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise TwinError(f"embedder.model: unknown open_clip model {model!r}")
    tag = open_clip.get_pretrained_cfg(model, pretrained) if pretrained else {}
    vision, text = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"])
    vision_width = width(vision["width"])
    vision_heads = heads_for(vision_width, vision["width"] // vision.get("head_width", 64))
    vision.update(width=vision_width, layers=layers(vision["layers"]), head_width=vision_width // vision_heads)
    text_width = width(text["width"])
    text.update(width=text_width, heads=heads_for(text_width, text.get("heads", 8)), layers=layers(text["layers"]))
    twin = {**cfg, "embed_dim": width(cfg["embed_dim"]), "vision_cfg": vision, "text_cfg": text}
    if tag.get("quick_gelu"):
        twin["quick_gelu"] = True  # what open_clip's create_model should have been told for this tag
    preprocess = {
        "mean": list(tag.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        "std": list(tag.get("std", open_clip.OPENAI_DATASET_STD)),
    }
    return twin, preprocess


def build_open_clip_twin(model: str, pretrained: str | None, out_dir: str | Path) -> Path:
    import open_clip
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_cfg, preprocess = _open_clip_twin_config(model, pretrained)
    torch.manual_seed(TWIN_SEED)
    clip = open_clip.CLIP(**{k: v for k, v in model_cfg.items() if k != "custom_text"})
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, out_dir / "open_clip_model.safetensors")
    (out_dir / "open_clip_config.json").write_text(
        json.dumps(
            {
                "model_cfg": model_cfg,
                "preprocess_cfg": preprocess,
                "twin_of": {"model": model, "pretrained": pretrained},
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    return out_dir


# ------------------------------------------------------------------------------------------------- the config
def _check_source(spec: ModelSpec, field: str) -> Architecture:
    source = spec.source
    if source.startswith((".", "/", "~")) or Path(source).expanduser().exists():
        raise TwinError(
            f"{field}.source={source!r} is a local directory: a twin is built from a hub model's "
            "published architecture, which a local directory does not name"
        )
    try:
        return architecture_for(source)
    except UnknownArchitectureError as err:
        raise TwinError(f"{field}.source: {err}") from None


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _is_current(path: Path) -> bool:
    try:
        return json.loads((path / "twin.json").read_text(encoding="utf-8"))["version"] == TWIN_VERSION
    except (OSError, ValueError, KeyError):
        return False


@dataclass(frozen=True)
class Twin:
    """A twin system config and what it was built from."""

    original: SystemConfig
    config: SystemConfig
    model_dirs: dict[str, Path]
    overrides: dict[str, tuple[Any, Any]]  # field -> (shipped value, twin value); every key is in TWIN_OVERRIDES

    def describe(self) -> str:
        lines = [f"twin overrides (rule: {SCALE_RULE}):"]
        lines += [
            f"  {field}: {old!r} -> {new!r}  ({_override_reason(field)})"
            for field, (old, new) in self.overrides.items()
        ]
        return "\n".join(lines)


def _override_reason(field: str) -> str:
    if field in TWIN_OVERRIDES:
        return TWIN_OVERRIDES[field]
    parts = field.split(".")
    if parts[:2] == ["models", "small_tiers"] and len(parts) > 2 and parts[2].isdigit():
        parts = parts[:2] + parts[3:]  # a small-model tier: the same overrides as any model
    generic = (
        ".".join(part if i != 1 else "*" for i, part in enumerate(parts))
        if field.startswith(("models.", "actor_options."))
        else field
    )
    if generic not in TWIN_OVERRIDES:
        raise KeyError(f"twin override {field!r} is not listed in TWIN_OVERRIDES")
    return TWIN_OVERRIDES[generic]


def build_twin(
    system: SystemConfig,
    root: str | Path,
    *,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    with_embedder: bool = True,
) -> Twin:
    """The twin of `system`: models built (or reused) under root, the config pointing at them. `with_embedder=False`
    leaves the embedder out (no open_clip needed: gpu_check.py checks the diffusion models only)."""
    root = Path(root)
    data = system.model_dump(mode="json")
    overrides: dict[str, tuple[Any, Any]] = {}

    def override(path: str, value) -> None:
        node = data
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        overrides[path] = (node.get(keys[-1]), value)
        node[keys[-1]] = value

    model_dirs: dict[str, Path] = {}
    # (name in model_dirs, config path): the large model, the small one, each further small-model tier.
    models = [("large", "models.large", system.models.large), ("small", "models.small", system.models.small)]
    models += [
        (small_tier_name(i + 1), f"models.small_tiers.{i}", spec) for i, spec in enumerate(system.models.small_tiers)
    ]
    for name, path, spec in models:
        if spec is None:
            continue
        arch = _check_source(spec, path)
        out = root / _slug(f"{arch.repo_id}@{spec.variant or 'default'}")
        if not _is_current(out):
            build_pipeline_twin(arch, out, variant=spec.variant)
        model_dirs[name] = out
        override(f"{path}.source", str(out))
        override(f"{path}.device", device)
        if spec.max_size != 2 * TWIN_SIDE or spec.default_size != TWIN_SIDE:
            override(f"{path}.default_size", TWIN_SIDE)
            override(f"{path}.max_size", 2 * TWIN_SIDE)
    if with_embedder and system.embedder.kind is EmbedderKind.OPEN_CLIP:
        model = system.embedder.model or "ViT-L-14"
        if model.startswith("local-dir:"):
            raise TwinError(f"embedder.model={model!r} is a local directory: a twin needs an open_clip model name")
        pretrained = system.embedder.pretrained if system.embedder.model else (system.embedder.pretrained or "openai")
        out = root / _slug(f"open_clip-{model}-{pretrained}")
        if not (out / "open_clip_config.json").is_file():
            build_open_clip_twin(model, pretrained, out)
        model_dirs["embedder"] = out
        override("embedder.model", f"local-dir:{out}")
        override("embedder.pretrained", None)
    override("embedder.device", device)
    if cache_dir is not None:
        override("cache.directory", str(cache_dir))
    if system.monitor.gpu_budget > 2:
        override("monitor.gpu_budget", 2)
    twin = SystemConfig.model_validate(data)
    for field in overrides:
        _override_reason(field)  # every change is a listed one
    return Twin(original=system, config=twin, model_dirs=model_dirs, overrides=overrides)


def mode_variant(config: SystemConfig, mode: SystemMode | str, *, parallel: dict | None = None) -> SystemConfig:
    """The same models in another mode (what the mode itself requires changes, nothing else), optionally with the
    large model parallel."""
    mode = SystemMode(mode)
    data = config.model_dump(mode="json")
    data["mode"] = mode.value
    if mode is SystemMode.NIRVANA:
        data["embedder"]["retrieval"] = "text-text"  # NIRVANA retrieves prompt against prompt
        data["policy"].pop("k_table", None)  # and runs its own k table
        data["models"]["large"]["parallel"] = {}
    if parallel is not None:
        data["models"]["large"]["parallel"] = parallel
    return SystemConfig.model_validate(data)


def twin_actor_options(actor_options: dict[str, dict], *, num_cpus: float = 0.25) -> tuple[dict, dict]:
    """Serve actor options of the twin app: no GPUs, few CPUs; returns (options, overrides)."""
    out, overrides = {}, {}
    for name, options in actor_options.items():
        changed = {k: v for k, v in options.items() if k != "num_gpus"}
        if "num_gpus" in options:
            overrides[f"actor_options.{name}.num_gpus"] = (options["num_gpus"], None)
        if "num_cpus" in changed and changed["num_cpus"] != num_cpus:
            overrides[f"actor_options.{name}.num_cpus"] = (changed["num_cpus"], num_cpus)
            changed["num_cpus"] = num_cpus
        out[name] = changed
    return out, overrides


def load_serve_app_args(path: str | Path) -> dict:
    """applications[0].args of a Serve config file."""
    import yaml

    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    try:
        return doc["applications"][0]["args"]
    except (KeyError, IndexError, TypeError):
        raise TwinError(f"{path}: not a Serve config with applications[0].args") from None
