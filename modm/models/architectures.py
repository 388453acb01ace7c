"""Architecture facts of the real models the shipped GPU configs name, as data.

Each `Architecture` is the published `model_index.json` of one hub repository (pipeline class, component classes)
plus, per component, the numbers of its `config.json` / `scheduler_config.json` that define its shape. The twins
(`modm.models.twins`) scale these down by rule and `benchmarks/gpu_check.py` builds them at full size, so nothing here
is a hand-picked stand-in: a number is either quoted from the named file or, where noted, the diffusers/transformers
class default that the saved file carries.

Where the numbers come from (no hub access here; the search tool's code corpus was used, July 2026 snapshot):
- `CONVERT_SD3`: diffusers `scripts/convert_sd3_to_diffusers.py` (the script that wrote the SD3/SD3.5 diffusers repos):
  `SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, joint_attention_dim=4096,
  num_attention_heads=num_layers, qk_norm="rms_norm" for 3.5, ...)`, VAE = SDXL's VAE config with latent_channels=16,
  scaling_factor=1.5305, shift_factor=0.0609, no quant convs. SD3.5-Large's num_layers=38, caption_projection_dim=2432
  (=38*64) and pos_embed_max_size=192 are read from the checkpoint by that script; the values are those quoted by
  third-party loaders of `stabilityai/stable-diffusion-3.5-large/transformer/config.json` found with the search tool
  (e.g. "_SD35_LARGE_CONFIG ... 38 heads x 64 dim = 2432").
- `CONVERT_SANA`: diffusers `scripts/convert_sana_to_diffusers.py`, `model_kwargs["SanaMS_1600M_P1_D20"]`
  (70 heads x 32, 20 cross heads x 112, cross_attention_dim 2240, 20 layers), caption_channels 2304, mlp_ratio 2.5,
  sample_size 1024 // 32, norm_eps 1e-6; its scheduler `DPMSolverMultistepScheduler(flow_shift=3.0,
  use_flow_sigmas=True, prediction_type="flow_prediction")` (the other keys of the saved scheduler_config.json are the
  class defaults); VAE `mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers`; text encoder
  `Efficient-Large-Model/gemma-2-2b-it` (`AutoModelForCausalLM(...).get_decoder()`: a Gemma2Model), its tokenizer with
  padding_side "right".
- `HUB_QUOTE`: the hub file quoted verbatim by third-party code in the search tool's code corpus (the hub mirrors
  themselves are not stored there); each use names the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

CONVERT_SD3 = "huggingface/diffusers:scripts/convert_sd3_to_diffusers.py"
CONVERT_SANA = "huggingface/diffusers:scripts/convert_sana_to_diffusers.py"
HUB_QUOTE = "hub file quoted by third-party code (search tool, code corpus)"


@dataclass(frozen=True)
class Component:
    """One entry of model_index.json: its library and class, and the numbers of its config file."""

    library: str  # "diffusers" or "transformers"
    class_name: str
    config: Mapping  # config.json numbers (for a tokenizer: model_max_length and its special settings)
    source: str  # "<repo>/<file>: how the numbers were obtained"

    def __post_init__(self):
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))


@dataclass(frozen=True)
class Architecture:
    repo_id: str
    pipeline_class: str
    components: Mapping[str, Component | None]  # model_index.json; None = saved as [null, null]
    aliases: tuple[str, ...] = ()  # other hub ids with the same files (e.g. a BF16 re-upload)
    default_steps: int = 50
    notes: str = ""
    _frozen: bool = field(default=True, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "components", MappingProxyType(dict(self.components)))

    @property
    def denoiser_name(self) -> str:
        return "unet" if "unet" in self.components else "transformer"

    @property
    def denoiser(self) -> Component:
        return self.components[self.denoiser_name]


# --- text encoders shared by several pipelines --------------------------------------------------------------------
# openai/clip-vit-large-patch14 text tower (SD3 text_encoder, SDXL text_encoder, FLUX text_encoder). The numbers are
# those of <repo>/text_encoder/config.json of each pipeline (HUB_QUOTE: "CLIPL_CONFIG = {hidden_act: quick_gelu,
# hidden_size: 768, intermediate_size: 3072, num_attention_heads: 12, num_hidden_layers: 12}"); projection_dim 768,
# vocab 49408 and 77 positions are the CLIPTextConfig values of that file.
_CLIP_L = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
    "layer_norm_eps": 1e-5,
}
# laion/CLIP-ViT-bigG-14 text tower (SD3 and SDXL text_encoder_2; HUB_QUOTE "CLIPG_CONFIG = {hidden_act: gelu,
# hidden_size: 1280, intermediate_size: 5120, num_attention_heads: 20, num_hidden_layers: 32}"), projection 1280.
_CLIP_G = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "hidden_act": "gelu",
    "projection_dim": 1280,
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
    "layer_norm_eps": 1e-5,
}
# google/t5-v1_1-xxl encoder (SD3.5 text_encoder_3, FLUX text_encoder_2): HUB_QUOTE of text_encoder_*/config.json
# ("d_ff": 10240, "d_kv": 64, "d_model": 4096, "dense_act_fn": "gelu_new", "feed_forward_proj": "gated-gelu",
# "is_gated_act": true, "layer_norm_epsilon": 1e-06, "num_heads": 64, "num_layers": 24, vocab 32128).
_T5_XXL = {
    "d_model": 4096,
    "d_ff": 10240,
    "d_kv": 64,
    "num_heads": 64,
    "num_layers": 24,
    "feed_forward_proj": "gated-gelu",
    "dense_act_fn": "gelu_new",
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-6,
    "vocab_size": 32128,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "pad_token_id": 0,
    "eos_token_id": 1,
}
_CLIP_TOKENIZER = {"model_max_length": 77}
_T5_TOKENIZER = {"model_max_length": 512}

# stabilityai/stable-diffusion-xl-base-1.0/vae/config.json (HUB_QUOTE: block_out_channels [128, 256, 512, 512],
# 4 DownEncoderBlock2D / UpDecoderBlock2D, layers_per_block 2, norm_num_groups 32, latent_channels 4,
# scaling_factor 0.13025, force_upcast true, sample_size 1024).
_SDXL_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}

SD35_LARGE = Architecture(
    repo_id="stabilityai/stable-diffusion-3.5-large",
    pipeline_class="StableDiffusion3Pipeline",
    components={
        "transformer": Component(
            "diffusers",
            "SD3Transformer2DModel",
            {
                "sample_size": 128,
                "patch_size": 2,
                "in_channels": 16,
                "out_channels": 16,
                "num_layers": 38,
                "attention_head_dim": 64,
                "num_attention_heads": 38,
                "joint_attention_dim": 4096,
                "caption_projection_dim": 2432,
                "pooled_projection_dim": 2048,
                "pos_embed_max_size": 192,
                "qk_norm": "rms_norm",
                "dual_attention_layers": (),
            },
            f"transformer/config.json: {CONVERT_SD3} + {HUB_QUOTE}",
        ),
        "scheduler": Component(
            "diffusers",
            "FlowMatchEulerDiscreteScheduler",
            {
                "num_train_timesteps": 1000,
                "shift": 3.0,
            },
            f"scheduler/scheduler_config.json: {HUB_QUOTE}",
        ),
        "vae": Component(
            "diffusers",
            "AutoencoderKL",
            {
                **_SDXL_VAE,
                "latent_channels": 16,
                "scaling_factor": 1.5305,
                "shift_factor": 0.0609,
                "use_quant_conv": False,
                "use_post_quant_conv": False,
            },
            f"vae/config.json: {CONVERT_SD3} (SDXL's VAE config, latent_channels=16, scaling 1.5305, shift 0.0609)",
        ),
        "text_encoder": Component(
            "transformers", "CLIPTextModelWithProjection", _CLIP_L, f"text_encoder/config.json: {HUB_QUOTE}"
        ),
        "tokenizer": Component("transformers", "CLIPTokenizer", _CLIP_TOKENIZER, "tokenizer/: CLIP BPE, 77 tokens"),
        "text_encoder_2": Component(
            "transformers", "CLIPTextModelWithProjection", _CLIP_G, f"text_encoder_2/config.json: {HUB_QUOTE}"
        ),
        "tokenizer_2": Component("transformers", "CLIPTokenizer", _CLIP_TOKENIZER, "tokenizer_2/: CLIP BPE"),
        "text_encoder_3": Component(
            "transformers", "T5EncoderModel", _T5_XXL, f"text_encoder_3/config.json: {HUB_QUOTE}"
        ),
        "tokenizer_3": Component(
            "transformers",
            "T5TokenizerFast",
            _T5_TOKENIZER,
            "tokenizer_3/: T5 sentencepiece (unigram), 32100 pieces + 28 extra ids",
        ),
    },
)

SDXL_BASE = Architecture(
    repo_id="stabilityai/stable-diffusion-xl-base-1.0",
    pipeline_class="StableDiffusionXLPipeline",
    components={
        # HUB_QUOTE of unet/config.json (several identical copies in the corpus).
        "unet": Component(
            "diffusers",
            "UNet2DConditionModel",
            {
                "sample_size": 128,
                "in_channels": 4,
                "out_channels": 4,
                "layers_per_block": 2,
                "block_out_channels": (320, 640, 1280),
                "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                "mid_block_type": "UNetMidBlock2DCrossAttn",
                "attention_head_dim": (5, 10, 20),
                "transformer_layers_per_block": (1, 2, 10),
                "cross_attention_dim": 2048,
                "use_linear_projection": True,
                "norm_num_groups": 32,
                "norm_eps": 1e-5,
                "act_fn": "silu",
                "addition_embed_type": "text_time",
                "addition_time_embed_dim": 256,
                "projection_class_embeddings_input_dim": 2816,
                "flip_sin_to_cos": True,
                "freq_shift": 0,
            },
            f"unet/config.json: {HUB_QUOTE}",
        ),
        # HUB_QUOTE of scheduler/scheduler_config.json, every key.
        "scheduler": Component(
            "diffusers",
            "EulerDiscreteScheduler",
            {
                "beta_end": 0.012,
                "beta_schedule": "scaled_linear",
                "beta_start": 0.00085,
                "clip_sample": False,
                "interpolation_type": "linear",
                "num_train_timesteps": 1000,
                "prediction_type": "epsilon",
                "sample_max_value": 1.0,
                "set_alpha_to_one": False,
                "skip_prk_steps": True,
                "steps_offset": 1,
                "timestep_spacing": "leading",
                "trained_betas": None,
                "use_karras_sigmas": False,
            },
            f"scheduler/scheduler_config.json: {HUB_QUOTE}",
        ),
        "vae": Component("diffusers", "AutoencoderKL", _SDXL_VAE, f"vae/config.json: {HUB_QUOTE}"),
        "text_encoder": Component("transformers", "CLIPTextModel", _CLIP_L, f"text_encoder/config.json: {HUB_QUOTE}"),
        "tokenizer": Component("transformers", "CLIPTokenizer", _CLIP_TOKENIZER, "tokenizer/: CLIP BPE"),
        "text_encoder_2": Component(
            "transformers", "CLIPTextModelWithProjection", _CLIP_G, f"text_encoder_2/config.json: {HUB_QUOTE}"
        ),
        "tokenizer_2": Component("transformers", "CLIPTokenizer", _CLIP_TOKENIZER, "tokenizer_2/: CLIP BPE"),
        "image_encoder": None,
        "feature_extractor": None,
    },
    notes="The fp16 variant (variant: fp16) holds the same architecture in half precision.",
)

FLUX_DEV = Architecture(
    repo_id="black-forest-labs/FLUX.1-dev",
    pipeline_class="FluxPipeline",
    components={
        # HUB_QUOTE of transformer/config.json ("Real FLUX.1-dev transformer/config.json values", several copies).
        "transformer": Component(
            "diffusers",
            "FluxTransformer2DModel",
            {
                "patch_size": 1,
                "in_channels": 64,
                "out_channels": None,
                "num_layers": 19,
                "num_single_layers": 38,
                "attention_head_dim": 128,
                "num_attention_heads": 24,
                "joint_attention_dim": 4096,
                "pooled_projection_dim": 768,
                "guidance_embeds": True,
                "axes_dims_rope": (16, 56, 56),
            },
            f"transformer/config.json: {HUB_QUOTE}",
        ),
        # HUB_QUOTE of scheduler/scheduler_config.json.
        "scheduler": Component(
            "diffusers",
            "FlowMatchEulerDiscreteScheduler",
            {
                "base_image_seq_len": 256,
                "base_shift": 0.5,
                "max_image_seq_len": 4096,
                "max_shift": 1.15,
                "num_train_timesteps": 1000,
                "shift": 3.0,
                "use_dynamic_shifting": True,
            },
            f"scheduler/scheduler_config.json: {HUB_QUOTE}",
        ),
        # HUB_QUOTE of vae/config.json (block_out_channels [128, 256, 512, 512], latent 16, scaling 0.3611,
        # shift 0.1159, no quant convs).
        "vae": Component(
            "diffusers",
            "AutoencoderKL",
            {
                **_SDXL_VAE,
                "latent_channels": 16,
                "scaling_factor": 0.3611,
                "shift_factor": 0.1159,
                "use_quant_conv": False,
                "use_post_quant_conv": False,
                "force_upcast": True,
            },
            f"vae/config.json: {HUB_QUOTE}",
        ),
        "text_encoder": Component("transformers", "CLIPTextModel", _CLIP_L, f"text_encoder/config.json: {HUB_QUOTE}"),
        "tokenizer": Component("transformers", "CLIPTokenizer", _CLIP_TOKENIZER, "tokenizer/: CLIP BPE"),
        "text_encoder_2": Component(
            "transformers", "T5EncoderModel", _T5_XXL, f"text_encoder_2/config.json: {HUB_QUOTE}"
        ),
        "tokenizer_2": Component("transformers", "T5TokenizerFast", _T5_TOKENIZER, "tokenizer_2/: T5 sentencepiece"),
    },
)

# Efficient-Large-Model/Sana_1600M_1024px_diffusers (the id is listed in NVlabs/Sana asset/docs/model_zoo.md; MoDM
# used its BF16 re-upload Sana_1600M_1024px_BF16_diffusers, same architecture).
SANA_1600M_1024 = Architecture(
    repo_id="Efficient-Large-Model/Sana_1600M_1024px_diffusers",
    aliases=("Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers",),
    pipeline_class="SanaPipeline",
    components={
        "transformer": Component(
            "diffusers",
            "SanaTransformer2DModel",
            {
                "in_channels": 32,
                "out_channels": 32,
                "num_attention_heads": 70,
                "attention_head_dim": 32,
                "num_layers": 20,
                "num_cross_attention_heads": 20,
                "cross_attention_head_dim": 112,
                "cross_attention_dim": 2240,
                "caption_channels": 2304,
                "mlp_ratio": 2.5,
                "attention_bias": False,
                "sample_size": 32,
                "patch_size": 1,
                "norm_elementwise_affine": False,
                "norm_eps": 1e-6,
                "interpolation_scale": None,
            },
            f"transformer/config.json: {CONVERT_SANA} (model_kwargs['SanaMS_1600M_P1_D20'], image_size 1024)",
        ),
        "scheduler": Component(
            "diffusers",
            "DPMSolverMultistepScheduler",
            {
                "flow_shift": 3.0,
                "use_flow_sigmas": True,
                "prediction_type": "flow_prediction",
            },
            f"scheduler/scheduler_config.json: {CONVERT_SANA} (other keys: the class defaults)",
        ),
        # HUB_QUOTE of vae/config.json (mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers, copied into the pipeline repo).
        "vae": Component(
            "diffusers",
            "AutoencoderDC",
            {
                "in_channels": 3,
                "latent_channels": 32,
                "attention_head_dim": 32,
                "encoder_block_types": ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
                "decoder_block_types": ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
                "encoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
                "decoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
                "encoder_layers_per_block": (2, 2, 2, 3, 3, 3),
                "decoder_layers_per_block": (3, 3, 3, 3, 3, 3),
                "encoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
                "decoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
                "downsample_block_type": "Conv",
                "upsample_block_type": "interpolate",
                "decoder_norm_types": "rms_norm",
                "decoder_act_fns": "silu",
                "scaling_factor": 0.41407,
            },
            f"vae/config.json: {HUB_QUOTE}",
        ),
        # HUB_QUOTE of text_encoder/config.json (Gemma2Model from gemma-2-2b-it).
        "text_encoder": Component(
            "transformers",
            "Gemma2Model",
            {
                "hidden_size": 2304,
                "intermediate_size": 9216,
                "num_hidden_layers": 26,
                "num_attention_heads": 8,
                "num_key_value_heads": 4,
                "head_dim": 256,
                "hidden_activation": "gelu_pytorch_tanh",
                "max_position_embeddings": 8192,
                "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0,
                "attn_logit_softcapping": 50.0,
                "final_logit_softcapping": 30.0,
                "query_pre_attn_scalar": 256,
                "sliding_window": 4096,
                "vocab_size": 256000,
                "pad_token_id": 0,
                "eos_token_id": 1,
                "bos_token_id": 2,
                "attention_bias": False,
            },
            f"text_encoder/config.json: {HUB_QUOTE}",
        ),
        # Its model_max_length is not in the sources found; SanaPipeline passes max_length itself (its
        # max_sequence_length, 300 by default), so the twin keeps the transformers default.
        "tokenizer": Component(
            "transformers",
            "GemmaTokenizerFast",
            {"padding_side": "right"},
            f"tokenizer/: {CONVERT_SANA} (gemma-2-2b-it tokenizer, padding_side right)",
        ),
    },
)

# SANA-Sprint 1.6B: gpu-flux-sana.yaml named it before switching to SANA 1.6B; kept so that a config naming it gets
# a twin (whose 503 at 50 steps is the defect the twin test caught: SCM pipelines run 2 steps only).
SANA_SPRINT_1600M_1024 = Architecture(
    repo_id="Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers",
    pipeline_class="SanaSprintPipeline",
    components={
        **SANA_1600M_1024.components,
        "transformer": Component(
            "diffusers",
            "SanaTransformer2DModel",
            {
                **SANA_1600M_1024.components["transformer"].config,
                "guidance_embeds": True,
                "qk_norm": "rms_norm_across_heads",
            },
            f"transformer/config.json: {CONVERT_SANA} (SanaSprint_1600M_P1_D20: guidance_embeds, qk_norm)",
        ),
        "scheduler": Component(
            "diffusers",
            "SCMScheduler",
            {
                "num_train_timesteps": 1000,
                "prediction_type": "trigflow",
                "max_timesteps": 1.57080,
                "intermediate_timesteps": 1.3,
                "sigma_data": 0.5,
            },
            f"scheduler/scheduler_config.json: {CONVERT_SANA} (SCM scheduler config)",
        ),
    },
    default_steps=2,
)

ARCHITECTURES: tuple[Architecture, ...] = (SD35_LARGE, SDXL_BASE, FLUX_DEV, SANA_1600M_1024, SANA_SPRINT_1600M_1024)


class UnknownArchitectureError(KeyError):
    """A model source whose architecture facts are not recorded here."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


def architecture_for(source: str) -> Architecture:
    """The facts of the hub repository `source` names (its id or an alias)."""
    for arch in ARCHITECTURES:
        if source == arch.repo_id or source in arch.aliases:
            return arch
    known = sorted(i for a in ARCHITECTURES for i in (a.repo_id, *a.aliases))
    raise UnknownArchitectureError(
        f"no architecture facts for model source {source!r}: a twin needs the published config of a known hub "
        f"model (one of {known}); add its facts to modm/models/architectures.py"
    )
