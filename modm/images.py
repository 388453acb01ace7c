"""Images as bytes: the one PNG encoding every layer uses (the cache stores it, the API returns it base64)."""

from __future__ import annotations

import io

from PIL import Image


def png_bytes(image: Image.Image) -> bytes:
    """`image` as RGB PNG bytes."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes) -> Image.Image:
    """PNG (or any format PIL reads) bytes as an RGB image, decoded now rather than lazily."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")
