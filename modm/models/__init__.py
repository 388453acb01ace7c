from modm.models.loading import ModelLoadError, load_pipeline, resolve_device, torch_dtype
from modm.models.tiny_zoo import TARGET_STEP_COST_RATIO, TinyZooPaths, build_tiny_zoo

__all__ = [
    "ModelLoadError",
    "TARGET_STEP_COST_RATIO",
    "TinyZooPaths",
    "build_tiny_zoo",
    "load_pipeline",
    "resolve_device",
    "torch_dtype",
]
