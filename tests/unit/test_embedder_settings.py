"""open_clip models are built with the settings their pretrained weights need (activation, normalisation), and a
model/tag pair or override that disagrees is refused before anything is downloaded -- for every tag in open_clip's
registry. No weights: the resolver is pure, and builds happen at a tiny width with random weights."""

import open_clip
import pytest

from modm.config import ConfigError, EmbedderConfig
from modm.embedding import build_embedder
from modm.embedding.clip_settings import check_built, open_clip_create_kwargs, resolve_open_clip_settings
from modm.quality.clip_score import ClipScorer
from modm.quality.config import ClipScoreConfig

REGISTRY = open_clip.list_pretrained()
MODELS = set(open_clip.list_models())
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _needs_quick_gelu(model, tag) -> bool:
    return bool(open_clip.get_pretrained_cfg(model, tag).get("quick_gelu", False))


def _builds_quick_gelu(model) -> bool:
    return bool(open_clip.get_model_config(model).get("quick_gelu", False))


def test_the_gpu_configs_clip_is_built_with_quick_gelu_and_openai_normalisation():
    settings = resolve_open_clip_settings("ViT-L-14", "openai")
    assert settings.quick_gelu and settings.force_quick_gelu
    assert settings.mean == open_clip.OPENAI_DATASET_MEAN and settings.std == open_clip.OPENAI_DATASET_STD
    assert open_clip_create_kwargs(settings) == {
        "force_quick_gelu": True,
        "image_mean": settings.mean,
        "image_std": settings.std,
    }
    assert not resolve_open_clip_settings("ViT-L-14-quickgelu", "openai").force_quick_gelu  # already QuickGELU


@pytest.mark.parametrize("model,tag", REGISTRY, ids=[f"{m}/{t}" for m, t in REGISTRY])
def test_every_registry_tag_resolves_to_its_training_settings_or_is_refused(model, tag):
    needed, builds = _needs_quick_gelu(model, tag), _builds_quick_gelu(model)
    if builds and not needed:  # open_clip's own configs disagree for this pair (e.g. roberta-ViT-B-32)
        with pytest.raises(ConfigError, match="embedder.model: .* builds QuickGELU but .* trained with GELU"):
            resolve_open_clip_settings(model, tag)
        return
    settings = resolve_open_clip_settings(model, tag)
    cfg = open_clip.get_pretrained_cfg(model, tag)
    assert settings.quick_gelu == needed and settings.force_quick_gelu == (needed and not builds)
    assert settings.mean == tuple(cfg["mean"]) and settings.std == tuple(cfg["std"])
    # An explicit activation that disagrees with the weights is refused; one that agrees is accepted.
    with pytest.raises(ConfigError, match="embedder.quick_gelu"):
        resolve_open_clip_settings(model, tag, quick_gelu=not needed)
    assert resolve_open_clip_settings(model, tag, quick_gelu=needed) == settings
    # The '-quickgelu' architecture with this tag: accepted exactly when the weights were trained with QuickGELU.
    sibling = model if model.endswith("-quickgelu") else f"{model}-quickgelu"
    if sibling in MODELS and sibling != model:
        if needed:
            assert resolve_open_clip_settings(sibling, tag).quick_gelu
        else:
            with pytest.raises(ConfigError, match=f"use '{model}'"):
                resolve_open_clip_settings(sibling, tag)


def test_unknown_tags_and_architectures_are_named():
    with pytest.raises(ConfigError, match=r"embedder.pretrained: 'openia' is neither an open_clip tag of 'ViT-L-14'"):
        resolve_open_clip_settings("ViT-L-14", "openia")
    with pytest.raises(ConfigError, match="clip.model: 'ViT-Q-99' is not an open_clip architecture"):
        resolve_open_clip_settings("ViT-Q-99", "openai", field="clip")
    with pytest.raises(ConfigError, match="quick_gelu: cannot be set"):
        resolve_open_clip_settings("local-dir:/x", None, quick_gelu=True)


def _tiny_build(settings, **overrides):
    kwargs = {**open_clip_create_kwargs(settings), **overrides}
    model, _, preprocess = open_clip.create_model_and_transforms(settings.model, pretrained=None, **kwargs, **TINY)
    return model, preprocess


def test_a_tiny_build_with_the_resolved_settings_has_the_weights_activation_and_normalisation():
    from open_clip.transformer import QuickGELU

    settings = resolve_open_clip_settings("ViT-L-14", "openai")
    model, preprocess = _tiny_build(settings)
    assert any(isinstance(m, QuickGELU) for m in model.modules())
    check_built(model, preprocess, settings)
    # What open_clip builds from the plain name without the settings: GELU and its default normalisation.
    plain, plain_preprocess = _tiny_build(settings, force_quick_gelu=False)
    with pytest.raises(ConfigError, match="built with GELU but its 'openai' weights need QuickGELU"):
        check_built(plain, plain_preprocess, settings)
    laion = resolve_open_clip_settings("ViT-L-14", "laion2b_s32b_b82k")  # GELU, mean/std 0.5
    model, preprocess = _tiny_build(laion)
    check_built(model, preprocess, laion)
    with pytest.raises(ConfigError, match="normalises with"):
        check_built(model, _tiny_build(settings)[1], laion)  # OpenAI's normalisation for LAION weights


def test_embedder_and_clip_score_refuse_a_disagreeing_activation_before_fetching_weights():
    with pytest.raises(ConfigError, match="embedder.quick_gelu: False disagrees"):
        build_embedder(
            EmbedderConfig(kind="open_clip", model="ViT-L-14", pretrained="openai", quick_gelu=False, device="cpu")
        )
    with pytest.raises(ConfigError, match="clip.quick_gelu: False disagrees"):
        ClipScorer.from_config(ClipScoreConfig(quick_gelu=False, device="cpu"))
    with pytest.raises(ConfigError, match="clip.model: 'ViT-L-14-quickgelu' builds QuickGELU"):
        ClipScorer.from_config(
            ClipScoreConfig(model="ViT-L-14-quickgelu", pretrained="laion2b_s32b_b82k", device="cpu")
        )
    default = ClipScoreConfig()
    assert resolve_open_clip_settings(default.model, default.pretrained).quick_gelu  # CLIPScore's ViT-L/14


def test_the_tiny_zoo_clip_still_builds(tiny_zoo):
    embedder = build_embedder(EmbedderConfig(kind="open_clip", model=f"local-dir:{tiny_zoo.clip}", device="cpu"))
    assert embedder.embed_text(["a cat"]).shape == (1, 64)
    assert not embedder.settings.from_registry
