"""MultiStageUNet: decoder per timestep, mixed batches, save/load, bad configs, a standard diffusers pipeline."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

from modm.multistage.boundaries import BoundaryOrderError
from modm.multistage.unet import CheckpointClassError, MultiStageUNet, StageCountError


def tiny_unet(**overrides) -> MultiStageUNet:
    torch.manual_seed(0)
    kwargs = dict(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        decoder_block_out_channels=((16, 16), (8, 16), (8, 8)),
        stage_boundaries=(333.0, 666.0),
        layers_per_block=1,
        norm_num_groups=4,
    )
    kwargs.update(overrides)
    return MultiStageUNet(**kwargs)


def record_decoder_calls(model: MultiStageUNet) -> list[tuple[int, int]]:
    calls = []
    for k, decoder in enumerate(model.decoders):
        decoder.register_forward_hook(lambda module, args, out, k=k: calls.append((k, out.shape[0])))
    return calls


def test_each_timestep_reaches_its_decoder():
    model = tiny_unet()
    calls = record_decoder_calls(model)
    sample = torch.randn(1, 1, 8, 8)
    for t, stage in [(0, 0), (332, 0), (333, 1), (665, 1), (666, 2), (999, 2)]:
        calls.clear()
        with torch.no_grad():
            model(sample, torch.tensor(t))
        assert calls == [(stage, 1)], f"timestep {t}"
        assert model.stage_of(t).tolist() == [stage]


def test_mixed_batch_equals_per_sample_routing():
    model = tiny_unet()
    calls = record_decoder_calls(model)
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(5, 1, 8, 8, generator=generator)
    t = torch.tensor([900, 10, 500, 400, 5])
    with torch.no_grad():
        batched = model(sample, t).sample
        assert sorted(calls) == [(0, 2), (1, 2), (2, 1)]  # one call per stage, grouped
        single = torch.cat([model(sample[i : i + 1], t[i : i + 1]).sample for i in range(5)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_a_step_trains_the_encoder_and_only_its_stage_decoder():
    model = tiny_unet()
    model(torch.randn(2, 1, 8, 8), torch.tensor([700, 800])).sample.square().mean().backward()
    has_grad = {k: any(p.grad is not None for p in d.parameters()) for k, d in enumerate(model.decoders)}
    assert has_grad == {0: False, 1: False, 2: True}
    assert model.conv_in.weight.grad is not None


def test_save_load_round_trip(tmp_path):
    model = tiny_unet()
    model.save_pretrained(tmp_path)
    loaded = MultiStageUNet.from_pretrained(tmp_path)
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[name], restored[name]) for name in saved)
    sample, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 400, 800])
    with torch.no_grad():  # same weights; kernels may pick another summation order, hence the tolerance
        torch.testing.assert_close(loaded(sample, t).sample, model(sample, t).sample, atol=1e-5, rtol=1e-5)
    assert loaded.config.stage_boundaries == [333.0, 666.0] and loaded.num_stages == 3


def test_checkpoint_of_another_class_is_refused(tmp_path):
    UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).save_pretrained(tmp_path)
    with pytest.raises(CheckpointClassError, match="UNet2DModel"):
        MultiStageUNet.from_pretrained(tmp_path)


def test_bad_configs_are_rejected():
    with pytest.raises(StageCountError, match="3 stages but 2 decoders"):
        tiny_unet(decoder_block_out_channels=((8, 16), (8, 16)))
    with pytest.raises(BoundaryOrderError, match="strictly increase"):
        tiny_unet(stage_boundaries=(666.0, 333.0))
    with pytest.raises(ValueError, match="norm_num_groups"):
        tiny_unet(decoder_block_out_channels=((16, 16), (8, 16), (6, 8)))
    with pytest.raises(ValueError, match="levels"):
        tiny_unet(decoder_block_out_channels=((16, 16), (8, 16), (8,)))


def test_bad_forward_inputs_are_rejected():
    model = tiny_unet()
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(1, 1, 8, 8), 5, encoder_hidden_states=torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="class_labels"):
        model(torch.randn(1, 1, 8, 8), 5, class_labels=torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.randn(1, 3, 8, 8), 5)
    conditioned = tiny_unet(cross_attention_dim=8)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        conditioned(torch.randn(1, 1, 8, 8), 5)


def test_cross_attention_changes_the_output_with_the_text():
    model = tiny_unet(cross_attention_dim=8)
    sample, t = torch.randn(2, 1, 8, 8), torch.tensor([100, 900])
    text = torch.randn(2, 4, 8)
    with torch.no_grad():
        out_a, out_b = model(sample, t, text).sample, model(sample, t, text.flip(0)).sample
    assert not torch.allclose(out_a, out_b)


def test_runs_in_a_standard_ddim_pipeline_deterministically():
    model = tiny_unet()
    calls = record_decoder_calls(model)
    pipe = DDIMPipeline(unet=model, scheduler=DDIMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    run = lambda seed: (
        pipe(
            batch_size=2, num_inference_steps=6, generator=torch.Generator().manual_seed(seed), output_type="np"
        ).images
    )
    first, again, other = run(0), run(0), run(1)
    assert first.shape == (2, 8, 8, 1)
    assert (first == again).all() and not (first == other).all()
    assert {k for k, _ in calls} == {0, 1, 2}  # the trajectory crosses all three stages
