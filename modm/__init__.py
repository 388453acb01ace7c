"""modm: serve text-to-image diffusion with a mixture of models and a cache of final images.

The library is Ray-free; `deployments/` wraps it in Ray Serve.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
