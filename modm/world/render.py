"""Rasterise a `Scene` with numpy: each shape is an inside-test on a supersampled grid, averaged down (antialiasing)."""

from __future__ import annotations

import numpy as np

from modm.world.scene import POSITION_CENTRES, SIZE_RADII, Scene, WorldObject

DEFAULT_SUPERSAMPLE = 4


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Coverage test in object units: (u, v) = (pixel - centre) / radius, v pointing down."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    if shape == "triangle":  # apex up, flat base
        return (v <= 0.8) & (np.abs(u) <= (v + 1.0) / 1.8 * 1.05)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.1
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.32) & (av <= 1.0)) | ((av <= 0.32) & (au <= 1.0))
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.5 * 0.5)
    raise ValueError(f"unknown shape {shape!r}")


def object_coverage(obj: WorldObject, size: int, supersample: int = DEFAULT_SUPERSAMPLE) -> np.ndarray:
    """(size, size) float32 in [0, 1]: the fraction of each pixel the object covers."""
    fine = size * supersample
    cx, cy = POSITION_CENTRES[obj.position]
    cx, cy = (cx + obj.dx) * fine, (cy + obj.dy) * fine
    radius = SIZE_RADII[obj.size] * obj.radius_scale * fine
    coords = np.arange(fine, dtype=np.float32) + 0.5
    u = ((coords - cx) / radius)[None, :]
    v = ((coords - cy) / radius)[:, None]
    mask = _inside(obj.shape, u, v).astype(np.float32)
    return mask.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def render_scene(scene: Scene, size: int = 32, supersample: int = DEFAULT_SUPERSAMPLE) -> np.ndarray:
    """(size, size, 3) uint8 RGB."""
    image = np.empty((size, size, 3), np.float32)
    image[:] = np.asarray(scene.background, np.float32)
    for obj in scene.objects:
        alpha = object_coverage(obj, size, supersample)[..., None]
        image = image * (1.0 - alpha) + alpha * np.asarray(obj.rgb, np.float32)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
