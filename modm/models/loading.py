"""One loading path for every model spec: a hub id or a local `save_pretrained` directory, real or tiny."""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path

import torch

from modm.config.schema import Dtype, ModelSpec

logger = logging.getLogger(__name__)

_TORCH_DTYPES = {Dtype.FLOAT32: torch.float32, Dtype.FLOAT16: torch.float16, Dtype.BFLOAT16: torch.bfloat16}


class ModelLoadError(RuntimeError):
    """A model spec that cannot be loaded; the message names the source and the reason."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available on this machine")
    return torch.device(device)


def torch_dtype(dtype: Dtype, device: torch.device) -> torch.dtype:
    # Half precision on CPU is slow and partly unsupported: keep float32 there.
    return torch.float32 if device.type == "cpu" else _TORCH_DTYPES[dtype]


def _looks_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or os.sep in source.strip("/").split("/", 2)[-1] or Path(source).exists()


def pipeline_index(source: str, revision: str | None) -> dict:
    from diffusers import DiffusionPipeline

    local = Path(source).expanduser()
    if local.is_dir():
        index = local / "model_index.json"
        if not index.is_file():
            raise ModelLoadError(f"{local} is not a diffusers pipeline directory (no model_index.json)")
        return json.loads(index.read_text(encoding="utf-8"))
    if _looks_local(source):
        raise ModelLoadError(f"model path does not exist: {source}")
    try:
        return dict(DiffusionPipeline.load_config(source, revision=revision))
    except Exception as err:  # hub errors come in many classes; the message is what matters
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1: the model must already be in the local hub cache)" if offline else ""
        raise ModelLoadError(f"cannot load model {source!r}{hint}: {err}") from None


def load_pipeline(spec: ModelSpec, *, device: torch.device | None = None):
    """Load the diffusers text-to-image pipeline named by spec onto device (default: spec.device)."""
    from diffusers import DiffusionPipeline

    device = device or resolve_device(spec.device)
    index = pipeline_index(spec.source, spec.revision)
    # Components saved as null (e.g. SD3 without T5) must be passed as None explicitly or loading refuses.
    absent = {
        name: None
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and value[:1] == [None]
    }
    # diffusers resolves component classes only from modules already imported; our own (the multi-stage U-Net)
    # are imported here. Other libraries named in model_index.json are never imported on a checkpoint's say-so.
    for value in index.values():
        if isinstance(value, list) and value and isinstance(value[0], str) and value[0].startswith("modm."):
            importlib.import_module(value[0])
    try:
        pipe = DiffusionPipeline.from_pretrained(
            str(Path(spec.source).expanduser()) if Path(spec.source).expanduser().is_dir() else spec.source,
            dtype=torch_dtype(spec.dtype, device),
            variant=spec.variant,
            revision=spec.revision,
            **absent,
        )
    except (OSError, ValueError, EnvironmentError) as err:
        raise ModelLoadError(f"cannot load pipeline from {spec.source!r}: {err}") from None
    pipe.set_progress_bar_config(disable=True)
    logger.info("loaded %s from %s on %s", type(pipe).__name__, spec.source, device)
    return pipe.to(device)
