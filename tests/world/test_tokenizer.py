"""The world's CLIP tokenizer: CLIP's own segmentation of the world's words, a small vocabulary, a round trip."""

from __future__ import annotations

from modm.world import World
from modm.world.tokenizer import WORLD_CONTEXT_LENGTH, build_world_tokenizer


def test_world_words_segment_as_in_clip_and_captions_fit(tmp_path):
    from transformers import AutoTokenizer

    from modm.models.tokenizer import build_clip_tokenizer

    world_tok = build_world_tokenizer(tmp_path / "world")
    clip_tok = build_clip_tokenizer(tmp_path / "clip")
    assert len(world_tok) < 1000
    world = World(seed=2)
    texts = [t for i in range(100) for t in (world.sample(i).prompt, world.query(i).text)]
    for text in texts:
        assert world_tok.tokenize(text) == clip_tok.tokenize(text), text
        assert len(world_tok(text).input_ids) <= WORLD_CONTEXT_LENGTH
    assert world_tok.tokenize("a giraffe")  # an unknown word still tokenizes (into smaller pieces)
    world_tok.save_pretrained(tmp_path / "saved")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert loaded(texts).input_ids == world_tok(texts).input_ids
    assert loaded.model_max_length == WORLD_CONTEXT_LENGTH
