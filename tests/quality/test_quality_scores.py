"""CLIPScore, PickScore and the Inception Score: formulas on hand-made inputs, then the tiny real networks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modm.embedding import OpenClipEmbedder
from modm.quality import (
    ClipScoreConfig,
    ClipScorer,
    PickScoreConfig,
    PickScorer,
    QualityInputError,
    clip_score_from_embeddings,
    inception_score,
    pick_score_from_embeddings,
)

from .conftest import noise_image


def test_clip_score_is_100_times_cosine_clamped_at_zero():
    images = np.array([[1.0, 0.0], [3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    texts = np.array([[1.0, 1.0], [3.0, 4.0], [-1.0, 0.2], [5.0, 0.0]])  # unnormalised on purpose
    scores = clip_score_from_embeddings(images, texts)
    assert scores == pytest.approx([100 / math.sqrt(2), 100.0, 0.0, 0.0], abs=1e-12)


def test_pick_score_is_exp_logit_scale_times_cosine_without_clamp():
    images = np.array([[1.0, 0.0], [1.0, 0.0]])
    texts = np.array([[1.0, 1.0], [-2.0, 0.0]])
    scores = pick_score_from_embeddings(images, texts, logit_scale=math.log(100.0))
    assert scores == pytest.approx([100 / math.sqrt(2), -100.0], rel=1e-12)
    with pytest.raises(QualityInputError, match="logit_scale"):
        pick_score_from_embeddings(images, texts, logit_scale=float("nan"))


def test_embedding_shapes_and_zero_vectors_are_refused():
    with pytest.raises(QualityInputError, match="one shape"):
        clip_score_from_embeddings(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(QualityInputError, match="rows \\[1\\]"):
        clip_score_from_embeddings(np.ones((2, 3)), np.array([[1.0, 0, 0], [0, 0, 0]]))


def test_clip_scorer_matches_the_embedder_and_takes_any_mode_and_size(open_clip_dir):
    cfg = ClipScoreConfig(model=f"local-dir:{open_clip_dir}", device="cpu", batch_size=2)
    scorer = ClipScorer.from_config(cfg)
    images = [noise_image(0, (64, 64)), noise_image(1, (30, 90)).convert("L"), noise_image(2, (50, 50), "RGBA")]
    prompts = ["a red fox", "a grey city", "a transparent sticker"]
    scores = scorer.score(images, prompts)
    reference = OpenClipEmbedder(f"local-dir:{open_clip_dir}", device=torch.device("cpu"))
    cosines = np.sum(reference.embed_images(images) * reference.embed_text(prompts), axis=1)
    assert scores.shape == (3,)
    assert scores == pytest.approx(100 * np.maximum(cosines, 0), abs=1e-4)
    with pytest.raises(QualityInputError, match="3 images but 2 prompts"):
        scorer.score(images, prompts[:2])


def test_pick_scorer_matches_clip_model_logits_per_image(pick_dirs):
    model_dir, processor_dir = pick_dirs
    scorer = PickScorer.from_config(
        PickScoreConfig(model=str(model_dir), processor=str(processor_dir), device="cpu", batch_size=2)
    )
    images = [noise_image(i, (40 + 8 * i, 40)) for i in range(3)]
    prompts = ["a cat", "two dogs on a beach at sunset", "a bowl of fruit"]
    scores = scorer.score(images, prompts)
    # CLIPModel's own forward: logits_per_image = exp(logit_scale) * cos, so its diagonal is the PickScore.
    inputs = scorer.processor(text=prompts, images=images, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = scorer.model(**inputs).logits_per_image.numpy()
    assert scores == pytest.approx(np.diag(logits), rel=1e-4, abs=1e-5)


def test_pick_scorer_missing_model_fails_clearly(tmp_path, pick_dirs):
    from modm.models import ModelLoadError

    with pytest.raises(ModelLoadError, match="PickScore model"):
        PickScorer.from_config(
            PickScoreConfig(model=str(tmp_path / "absent"), processor=str(pick_dirs[1]), device="cpu")
        )


def test_inception_score_known_values():
    identical = np.tile(np.array([[2.0, -1.0, 0.5, 3.0]]), (6, 1))
    assert inception_score(identical, splits=2).mean == pytest.approx(1.0, abs=1e-12)
    # Confident and evenly spread over C classes: KL = log C, so IS = C.
    confident = 60.0 * np.eye(5)
    assert inception_score(confident, splits=1).mean == pytest.approx(5.0, rel=1e-9)
    # Saturated softmax (exact zeros) must not give NaN.
    saturated = np.array([[1e4, 0.0, 0.0], [0.0, 1e4, 0.0]])
    assert inception_score(saturated, splits=1).mean == pytest.approx(2.0, rel=1e-9)


def test_inception_score_splits_and_bad_input():
    logits = np.concatenate([np.tile(60.0 * np.eye(2), (2, 1)), np.tile([[60.0, 0.0]], (4, 1))])
    result = inception_score(logits, splits=2)  # first half spread over 2 classes (IS 2), second one class (IS 1)
    assert (result.mean, result.std, result.n, result.splits) == (pytest.approx(1.5), pytest.approx(0.5), 8, 2)
    with pytest.raises(QualityInputError, match="at least 10 images"):
        inception_score(logits, splits=10)
    with pytest.raises(QualityInputError, match="non-finite"):
        inception_score(np.array([[np.nan, 1.0]]), splits=1)


def test_inception_score_of_identical_images_is_one(inception):
    image = noise_image(7, (80, 60))
    different = [noise_image(8, (80, 60)), noise_image(9, (80, 60)).point(lambda v: v // 3)]
    out = inception.extract([image, image.copy(), image.convert("RGBA"), *different])
    assert out.features.shape == (5, 64) and out.logits.shape == (5, 1000)
    assert inception_score(out.logits[:3], splits=1).mean == pytest.approx(1.0, abs=1e-9)
    assert inception_score(out.logits[2:], splits=1).mean > 1 + 1e-4  # the network does tell images apart


def test_inception_from_a_local_state_dict_matches(tmp_path, inception):
    from safetensors.torch import save_file

    from modm.models import ModelLoadError
    from modm.quality import InceptionConfig, InceptionFeatureExtractor

    state = {k: v.contiguous() for k, v in inception.model.state_dict().items()}
    save_file(state, tmp_path / "inception.safetensors")
    cfg = InceptionConfig(weights="file", path=tmp_path / "inception.safetensors", dims=64, device="cpu")
    loaded = InceptionFeatureExtractor.from_config(cfg)
    image = noise_image(3, (70, 50))
    assert np.array_equal(loaded.extract([image]).features, inception.extract([image]).features)
    assert cfg.extractor_id == "torchvision-inception-v3/file:inception.safetensors/64"
    save_file({"fc.weight": torch.zeros(10, 2048), "extra": torch.zeros(1)}, tmp_path / "wrong.safetensors")
    with pytest.raises(ModelLoadError, match="does not fit torchvision's Inception3"):
        InceptionFeatureExtractor.from_config(cfg.model_copy(update={"path": tmp_path / "wrong.safetensors"}))
    with pytest.raises(ModelLoadError, match="not found"):
        InceptionFeatureExtractor.from_config(cfg.model_copy(update={"path": tmp_path / "absent.pth"}))
