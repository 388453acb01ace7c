"""Flatten a block's output (tensors, None, nested tuples/lists) into one 1-D tensor and back, for broadcasting.

Plays the role of AsyncDiff's ResultPicker without its per-model special cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["OutputStructure", "describe", "flatten_into", "rebuild"]


@dataclass(frozen=True)
class OutputStructure:
    """Nested layout: ("tensor", shape, dtype), ("none",) or (container type, [children])."""

    spec: Any
    numel: int


def describe(output: Any) -> OutputStructure:
    def walk(value):
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(value.shape), value.dtype), value.numel()
        if value is None:
            return ("none",), 0
        if isinstance(value, (tuple, list)):
            specs, total = [], 0
            for item in value:
                spec, n = walk(item)
                specs.append(spec)
                total += n
            return (type(value), specs), total
        raise TypeError(f"cannot cache a block output of type {type(value).__name__}")

    spec, numel = walk(output)
    return OutputStructure(spec, numel)


def flatten_into(output: Any, flat: torch.Tensor) -> None:
    """Copy every tensor of `output` into `flat` (1-D, `describe(output).numel` long), depth-first."""
    offset = 0

    def walk(value):
        nonlocal offset
        if isinstance(value, torch.Tensor):
            n = value.numel()
            flat[offset : offset + n].copy_(value.reshape(-1))
            offset += n
        elif isinstance(value, (tuple, list)):
            for item in value:
                walk(item)

    walk(output)


def rebuild(structure: OutputStructure, flat: torch.Tensor) -> Any:
    """Views into `flat` shaped like the described output. Callers must not modify them in place."""
    offset = 0

    def walk(spec):
        nonlocal offset
        if spec[0] == "tensor":
            _, shape, _ = spec
            n = 1
            for d in shape:
                n *= d
            view = flat[offset : offset + n].view(shape)
            offset += n
            return view
        if spec[0] == "none":
            return None
        container, children = spec
        return container(walk(child) for child in children)

    return walk(structure.spec)
