"""Images as bytes: the one PNG encoding every layer uses (the cache stores it, the API returns it base64), the
API's other output formats, and the checks an uploaded image passes before a model sees it."""

from __future__ import annotations

import io
import warnings
from enum import Enum

from PIL import Image

__all__ = ["ImageFormat", "UploadError", "decode_png", "encode_as", "png_bytes", "png_text", "read_upload"]


class ImageFormat(str, Enum):
    """The formats the API answers in (OpenAI's `output_format`)."""

    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"

    @property
    def media_type(self) -> str:
        return f"image/{self.value}"


# What an upload may be: the formats OpenAI's image edits take.
UPLOAD_FORMATS = {"PNG", "JPEG", "WEBP"}
# Modes that convert to RGB without losing what the image shows (alpha is checked separately).
UPLOAD_MODES = {"RGB", "RGBA", "L", "LA", "P", "1"}


class UploadError(ValueError):
    """An uploaded image that cannot be edited; the message says why."""


def png_bytes(image: Image.Image, text: dict[str, str] | None = None) -> bytes:
    """`image` as RGB PNG bytes, with `text` as PNG text chunks (read back with `png_text`)."""
    from PIL.PngImagePlugin import PngInfo

    info = None
    if text:
        info = PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_text(data: bytes, key: str) -> str | None:
    """The PNG text chunk `key` of `data` (written by `png_bytes`), or None (also for bytes that are not a PNG: the
    chunk is optional information, never a reason to fail a request); the pixels are not decoded."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    with Image.open(io.BytesIO(data)) as image:
        value = image.info.get(key)
    return value if isinstance(value, str) else None


def decode_png(data: bytes) -> Image.Image:
    """PNG (or any format PIL reads) bytes as an RGB image, decoded now rather than lazily."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def encode_as(png: bytes, image_format: ImageFormat, quality: int | None = None) -> bytes:
    """A PNG re-encoded in `image_format`. `quality` (0-100, JPEG and WebP only; default 100): the encoder's
    quality, so lower means smaller files and more artefacts. PNG is returned as it is (lossless)."""
    if image_format is ImageFormat.PNG:
        if quality is not None:
            raise ValueError("a quality applies to jpeg and webp only; png is lossless")
        return png
    buffer = io.BytesIO()
    decode_png(png).save(buffer, format=image_format.name, quality=100 if quality is None else quality)
    return buffer.getvalue()


def read_upload(data: bytes, *, max_side: int) -> Image.Image:
    """An uploaded image as RGB, or UploadError saying why not: not an image, not PNG/JPEG/WebP, a side over
    `max_side` pixels, a mode that is no colour image (CMYK, 16-bit, float), or transparent pixels (in OpenAI's API
    transparency marks the area to edit, which is a mask, and masks are not served)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise UploadError(f"the image is too large: {err}") from None
    except (OSError, ValueError, SyntaxError):  # PIL's UnidentifiedImageError is an OSError
        raise UploadError("the file is not an image PIL can read (send PNG, JPEG or WebP)") from None
    with image:
        if image.format not in UPLOAD_FORMATS:
            raise UploadError(f"the image is {image.format}; send PNG, JPEG or WebP")
        width, height = image.size
        if max(width, height) > max_side:
            raise UploadError(f"the image is {width}x{height}; the largest side accepted is {max_side} pixels")
        if image.mode not in UPLOAD_MODES:
            raise UploadError(f"the image's mode is {image.mode}; send an RGB, RGBA or greyscale image")
        try:
            image.load()
        except (OSError, ValueError, SyntaxError) as err:
            raise UploadError(f"the image is truncated or corrupt: {err}") from None
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA") and image.getchannel("A").getextrema()[0] < 255:
            raise UploadError(
                "the image has transparent pixels, which mark an area to edit (a mask); masks are not served: "
                "send an opaque image"
            )
        return image.convert("RGB")
