"""Which generated images enter the cache (MoDM §5.4: cache-large vs cache-all)."""

from __future__ import annotations

from modm.config.schema import Admission

__all__ = ["should_admit"]


def should_admit(admission: Admission | str, *, from_large_model: bool, refined: bool = False) -> bool:
    """Whether an output is admitted under `admission`.

    cache-large admits only full generations of the large model (a miss); cache-all also admits refined hits,
    whichever model refined them. `refined` marks an img2img refinement (k > 0): in quality mode an idle
    large-model replica may refine a hit, and cache-large must still refuse that output.
    """
    try:
        admission = Admission(admission)
    except ValueError:
        raise ValueError(
            f"unknown admission policy {admission!r}; choose one of {[a.value for a in Admission]}"
        ) from None
    for name, value in (("from_large_model", from_large_model), ("refined", refined)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a bool, got {value!r}")
    if admission is Admission.CACHE_ALL:
        return True
    return from_large_model and not refined
