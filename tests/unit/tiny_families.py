"""Tiny randomly initialised FLUX and SANA pipelines with tokenizers built offline, for unit tests.

Component shapes follow diffusers' own dummy components for these pipelines (tests/pipelines/flux, .../sana), with
the published models' scheduler settings (FLUX.1-dev: dynamic shifting; SANA 1.6B: DPM-Solver++ on flow sigmas) so
that the schedule code paths are the real ones.
"""

from __future__ import annotations

import string
import torch

_CHARS = string.ascii_letters + string.digits + string.punctuation


def build_t5_tokenizer():
    """A Unigram T5Tokenizer over single characters (plus '▁'-prefixed letters), built without the hub."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    vocab += [(c, -2.0) for c in _CHARS] + [("\u2581" + c, -1.5) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_gemma_tokenizer():
    """A BPE GemmaTokenizer over single characters, built without the hub."""
    from transformers import GemmaTokenizer

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "\u2581", *_CHARS])}
    return GemmaTokenizer(vocab=vocab, merges=[])


def tiny_flux_pipeline(clip_tokenizer):
    """FluxPipeline: FluxTransformer2DModel (guidance-distilled like FLUX.1-dev), CLIP + T5 encoders, 16-ch packing."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    t5_tokenizer = build_t5_tokenizer()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=True,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            hidden_act="gelu",
            projection_dim=32,
        )
    )
    torch.manual_seed(0)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            decoder_start_token_id=0,
            dropout_rate=0.0,
        )
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(  # FLUX.1-dev's scheduler_config.json
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    return _ready(pipe)


def tiny_sana_pipeline():
    """SanaPipeline: SanaTransformer2DModel, AutoencoderDC, Gemma2 text encoder, SANA 1.6B's DPM-Solver++ config."""
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    tokenizer = build_gemma_tokenizer()
    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_attention_heads=2,
        attention_head_dim=4,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=8,
        sample_size=32,
    )
    torch.manual_seed(0)
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    torch.manual_seed(0)
    text_encoder = Gemma2Model(
        Gemma2Config(
            head_dim=16,
            hidden_size=8,
            intermediate_size=64,
            max_position_embeddings=8192,
            num_attention_heads=2,
            num_hidden_layers=1,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            attn_implementation="eager",
        )
    )
    scheduler = DPMSolverMultistepScheduler(  # Sana_1600M_1024px_diffusers' scheduler_config.json
        beta_schedule="linear",
        beta_start=0.0001,
        beta_end=0.02,
        flow_shift=3.0,
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        solver_order=2,
        algorithm_type="dpmsolver++",
        final_sigmas_type="zero",
        lower_order_final=True,
        num_train_timesteps=1000,
    )
    pipe = SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    return _ready(pipe)


def _ready(pipe):
    """As `from_pretrained` leaves a pipeline: every model in eval mode (T5's dropout off), no progress bars."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3_pipeline(clip_tokenizer):
    """StableDiffusion3Pipeline: the tiny zoo's components with a 3-block transformer (fast enough for T=50)."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    from modm.models.tiny_zoo import large_components

    components = large_components(clip_tokenizer)
    torch.manual_seed(0)
    components["transformer"] = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=3,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        pos_embed_max_size=96,
    )
    pipe = StableDiffusion3Pipeline(**components)
    return _ready(pipe)
