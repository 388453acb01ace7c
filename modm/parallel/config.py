"""Re-export: `ParallelConfig` lives in `modm.config.parallel` so that configs load without torch."""

from modm.config.parallel import (
    DEFAULT_COMM_CHECKPOINT,
    DEFAULT_TIMEOUT_S,
    GroupNormMode,
    ParallelConfig,
    ParallelMethod,
)

__all__ = ["ParallelMethod", "GroupNormMode", "ParallelConfig", "DEFAULT_COMM_CHECKPOINT", "DEFAULT_TIMEOUT_S"]
