from modm.config.loader import ConfigError, config_from_dict, load_config, resolve_relative_paths
from modm.config.schema import (
    MINILM_TEXT_TABLE,
    MODM_CLIP_TABLE,
    Admission,
    CacheConfig,
    Dtype,
    EmbedderConfig,
    EmbedderKind,
    KRule,
    ModelsConfig,
    ModelSpec,
    MonitorConfig,
    MonitorMode,
    PolicyConfig,
    RequestLimits,
    ServingConfig,
    Retrieval,
    SystemConfig,
    SystemMode,
)

__all__ = [
    "Admission", "CacheConfig", "ConfigError", "Dtype", "EmbedderConfig", "EmbedderKind", "KRule", "MINILM_TEXT_TABLE",
    "MODM_CLIP_TABLE", "ModelSpec", "ModelsConfig", "MonitorConfig", "MonitorMode", "PolicyConfig",
    "RequestLimits", "ServingConfig", "Retrieval", "SystemConfig", "SystemMode", "config_from_dict", "load_config",
    "resolve_relative_paths",
]
