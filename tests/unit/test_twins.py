"""The twins follow the facts: same classes and scheduler config as the real model, sizes by the rule, every changed
config field listed, and a clear error for a config that has no twin."""

from __future__ import annotations

import json
from pathlib import Path

import re

import pytest

from modm.config import config_from_dict
from modm.models.architectures import (
    ARCHITECTURES,
    SD35_LARGE,
    SDXL_BASE,
    architecture_for,
)
from modm.models.twins import (
    MAX_HEADS,
    MAX_LAYERS,
    TWIN_OVERRIDES,
    WIDTH_DIVISOR,
    TwinError,
    build_twin,
    load_serve_app_args,
    mode_variant,
    scaled_config,
    twin_actor_options,
)

CONFIGS = Path(__file__).resolve().parents[2] / "deployments" / "configs"
SD3_SDXL = CONFIGS / "gpu-sd35-sdxl.yaml"


def shipped(path: Path):
    return config_from_dict(load_serve_app_args(path)["system"], path.name)


@pytest.fixture(scope="module")
def sd3_twin(tmp_path_factory):
    return build_twin(shipped(SD3_SDXL), tmp_path_factory.mktemp("twins"), cache_dir="/tmp/unused-twin-cache")


def _saved(directory: Path, name: str, file: str = "config.json") -> dict:
    return json.loads((directory / name / file).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def flux_twin(tmp_path_factory):
    return build_twin(shipped(CONFIGS / "gpu-flux-sana.yaml"), tmp_path_factory.mktemp("twins"), with_embedder=False)


@pytest.mark.parametrize(
    "twin_name, role", [("sd3_twin", "large"), ("sd3_twin", "small"), ("flux_twin", "large"), ("flux_twin", "small")]
)
def test_the_twin_has_the_real_classes_and_scheduler_config(request, twin_name, role):
    twin = request.getfixturevalue(twin_name)
    arch = architecture_for(getattr(twin.original.models, role).source)
    directory = twin.model_dirs[role]
    index = json.loads((directory / "model_index.json").read_text(encoding="utf-8"))
    assert index["_class_name"] == arch.pipeline_class
    for name, component in arch.components.items():
        if component is None:
            assert index[name] == [None, None], name
            continue
        library, cls = index[name]
        # transformers 5 names the fast tokenizers without "Fast" (T5TokenizerFast is T5Tokenizer).
        assert (library, cls.removesuffix("Fast")) == (component.library, component.class_name.removesuffix("Fast"))
    scheduler = _saved(directory, "scheduler", "scheduler_config.json")
    for key, value in arch.components["scheduler"].config.items():
        assert scheduler[key] == (list(value) if isinstance(value, tuple) else value), key
    vae = _saved(directory, "vae")
    assert vae["latent_channels"] == arch.components["vae"].config["latent_channels"]
    assert vae["scaling_factor"] == arch.components["vae"].config["scaling_factor"]


def test_the_twin_keeps_the_variant_and_the_sd3_t5_encoder(sd3_twin):
    small = sd3_twin.model_dirs["small"]
    assert list((small / "unet").glob("*.fp16.safetensors")), "variant fp16 files, as the config loads them"
    t5 = _saved(sd3_twin.model_dirs["large"], "text_encoder_3")
    assert t5["architectures"] == ["T5EncoderModel"] and t5["d_model"] == 4096 // WIDTH_DIVISOR


def test_every_changed_field_is_a_listed_override(sd3_twin):
    original = sd3_twin.original.model_dump(mode="json")
    twin = sd3_twin.config.model_dump(mode="json")

    def diff(a, b, prefix=""):
        if isinstance(a, dict) and isinstance(b, dict):
            for key in a.keys() | b.keys():
                yield from diff(a.get(key), b.get(key), f"{prefix}{key}.")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):  # models.small_tiers
            for i, (x, y) in enumerate(zip(a, b)):
                yield from diff(x, y, f"{prefix}{i}.")
        elif a != b:
            yield prefix.rstrip(".")

    changed = set(diff(original, twin))
    assert changed == set(sd3_twin.overrides)
    generic = {re.sub(r"\.(large|small|small_tiers\.\d+)\.", ".*.", f) for f in changed}
    assert generic <= set(TWIN_OVERRIDES)
    # Steps, guidance, dtype, variant, sequence length and the table are the shipped ones.
    for role in ("large", "small"):
        a, b = getattr(sd3_twin.original.models, role), getattr(sd3_twin.config.models, role)
        assert (a.num_inference_steps, a.guidance_scale, a.dtype, a.variant, a.max_sequence_length) == (
            b.num_inference_steps,
            b.guidance_scale,
            b.dtype,
            b.variant,
            b.max_sequence_length,
        )
    assert sd3_twin.config.policy == sd3_twin.original.policy
    assert "models.large.source" in sd3_twin.describe()


def test_the_embedder_twin_has_the_settings_of_its_pretrained_tag(sd3_twin):
    cfg = json.loads((sd3_twin.model_dirs["embedder"] / "open_clip_config.json").read_text(encoding="utf-8"))
    assert cfg["model_cfg"]["quick_gelu"] is True  # ViT-L-14 / openai was trained with QuickGELU
    assert cfg["twin_of"] == {"model": "ViT-L-14", "pretrained": "openai"}
    assert cfg["model_cfg"]["embed_dim"] == 768 // WIDTH_DIVISOR


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: a.repo_id)
def test_the_scale_rule_keeps_channels_and_shrinks_widths(arch):
    real = dict(arch.denoiser.config)
    twin = scaled_config(arch.denoiser)
    assert twin["in_channels"] == real["in_channels"]
    assert twin.get("patch_size") == real.get("patch_size")
    for key in ("num_layers", "num_single_layers"):
        if key in real:
            assert twin[key] == min(real[key], MAX_LAYERS)
    if "num_attention_heads" in real and "attention_head_dim" in real and arch.denoiser_name == "transformer":
        assert twin["num_attention_heads"] <= MAX_HEADS
        assert (
            twin["num_attention_heads"] * twin["attention_head_dim"]
            == real["num_attention_heads"] * real["attention_head_dim"] // WIDTH_DIVISOR
        )
    if "axes_dims_rope" in twin:
        assert sum(twin["axes_dims_rope"]) == twin["attention_head_dim"]
        assert all(d % 2 == 0 for d in twin["axes_dims_rope"])


def test_dims_that_must_agree_still_agree_after_scaling():
    unet = scaled_config(SDXL_BASE.denoiser)
    clip_l = scaled_config(SDXL_BASE.components["text_encoder"])
    clip_g = scaled_config(SDXL_BASE.components["text_encoder_2"])
    assert unet["cross_attention_dim"] == clip_l["hidden_size"] + clip_g["hidden_size"]
    assert (
        unet["projection_class_embeddings_input_dim"] == 6 * unet["addition_time_embed_dim"] + clip_g["projection_dim"]
    )
    sd3 = scaled_config(SD35_LARGE.denoiser)
    assert (
        sd3["pooled_projection_dim"]
        == scaled_config(SD35_LARGE.components["text_encoder"])["projection_dim"]
        + scaled_config(SD35_LARGE.components["text_encoder_2"])["projection_dim"]
    )
    assert sd3["joint_attention_dim"] == scaled_config(SD35_LARGE.components["text_encoder_3"])["d_model"]


def test_a_local_source_or_an_unknown_model_has_no_twin(tmp_path):
    base = load_serve_app_args(SD3_SDXL)["system"]
    local = {**base, "models": {**base["models"], "large": {**base["models"]["large"], "source": str(tmp_path)}}}
    with pytest.raises(TwinError, match=r"models\.large\.source=.* is a local directory"):
        build_twin(config_from_dict(local, "t"), tmp_path / "twins")
    unknown = {**base, "models": {**base["models"], "small": {**base["models"]["small"], "source": "acme/not-a-model"}}}
    with pytest.raises(
        TwinError, match=r"models\.small\.source: no architecture facts for model source 'acme/not-a-model'"
    ):
        build_twin(config_from_dict(unknown, "t"), tmp_path / "twins")
    assert architecture_for("Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers").pipeline_class == "SanaPipeline"


def test_mode_variants_change_only_what_the_mode_needs():
    system = shipped(SD3_SDXL)
    nirvana = mode_variant(system, "nirvana")
    assert nirvana.mode.value == "nirvana" and nirvana.embedder.effective_retrieval.value == "text-text"
    assert nirvana.models == system.models
    parallel = mode_variant(system, "vanilla", parallel={"method": "asyncdiff", "world_size": 2})
    assert parallel.models.large.parallel.method.value == "asyncdiff" and parallel.models.small == system.models.small
    options, overrides = twin_actor_options({"LargeModel": {"num_cpus": 4, "num_gpus": 1}})
    assert options == {"LargeModel": {"num_cpus": 0.25}}
    assert set(overrides) == {"actor_options.LargeModel.num_gpus", "actor_options.LargeModel.num_cpus"}
