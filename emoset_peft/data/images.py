"""Opening EmoSet images: always RGB, and a clear error for a corrupt or truncated file.

EmoSet's web photos include grayscale, CMYK, palette and alpha JPEG/PNG files, and a few may
be damaged. :func:`open_image` decodes the whole file at once (so truncation shows up here, not
in the middle of a transform), applies the EXIF orientation like ``datasets.Image`` does, and
returns an RGB image. A file that cannot be decoded raises :class:`CorruptImageError`, which a
training pipeline can catch, count and skip.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

from PIL import Image, ImageOps

from emoset_peft.errors import EmoSetError

# Modes with an alpha channel, composited onto white (how a browser shows a transparent photo).
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_WHITE = (255, 255, 255)


class CorruptImageError(EmoSetError):
    """An image file that is missing, corrupt or truncated. The message names the path
    (``path`` holds it too when known)."""

    def __init__(self, message: str, path: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.path = path
        self.reason = reason  # what went wrong, without the advice (for callers' own messages)


def open_image(
    source: str | os.PathLike | bytes | dict[str, Any], *, draft_size: tuple[int, int] | None = None
) -> Image.Image:
    """Decode an image fully and return it as RGB.

    ``source`` is a path, the raw bytes of a file, or a ``datasets.Image(decode=False)`` value
    (``{"path": ..., "bytes": ...}``; bytes win when both are set). Grayscale, CMYK, palette and
    16-bit images are converted; transparency is composited onto white. With ``draft_size``
    (width, height) a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale that is still at
    least that large, which is several times faster for images bound to be shrunk anyway.

    Raises :class:`CorruptImageError` (an :class:`EmoSetError`) when the file is missing, not an
    image, truncated, or larger than PIL's decompression-bomb limit. (A caller that sets
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True`` turns truncation into grey pixels instead.)
    """
    path, data = _path_and_bytes(source)
    try:
        with warnings.catch_warnings():
            # Possibly-corrupt EXIF is common in web photos and harmless for classification.
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(io.BytesIO(data) if data is not None else path) as image:
                if draft_size is not None:
                    image.draft(None, tuple(draft_size))  # JPEG only; other formats ignore it
                image.load()  # decode every byte now: a truncated file raises here
                return as_rgb(image)
    except FileNotFoundError:
        raise _unreadable(path, "file not found") from None
    except Image.DecompressionBombError as err:
        raise _unreadable(path, f"too large to decode safely ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        # UnidentifiedImageError and "image file is truncated" are OSErrors; some plugins raise
        # SyntaxError or ValueError on malformed headers.
        raise _unreadable(path, f"{type(err).__name__}: {err}") from None


def as_rgb(image: Image.Image) -> Image.Image:
    """An already decoded PIL image as :func:`open_image` returns a file: EXIF orientation
    applied, converted to RGB."""
    return _to_rgb(ImageOps.exif_transpose(image))


def is_readable_image(source: str | os.PathLike | bytes | dict[str, Any]) -> bool:
    """True when :func:`open_image` would succeed (decodes the whole file)."""
    try:
        open_image(source)
    except CorruptImageError:
        return False
    return True


def _unreadable(path: str, reason: str) -> CorruptImageError:
    return CorruptImageError(
        f"cannot read image {path}: {reason}. Replace the file from the "
        "EmoSet download, or remove its record from the split file",
        path,
        reason,
    )


def _path_and_bytes(source) -> tuple[str, bytes | None]:
    if isinstance(source, dict):
        data = source.get("bytes")
        path = source.get("path")
        if data is None and path is None:
            raise _unreadable("<no path>", "the image value has neither 'path' nor 'bytes'")
        return (str(path) if path is not None else "<bytes>"), data
    if isinstance(source, (bytes, bytearray)):
        return "<bytes>", bytes(source)
    return os.fspath(source), None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits before converting (PIL would clip at 255).
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray((array * (255.0 / peak)).clip(0, 255).astype(np.uint8), "L")
    return image.convert("RGB")
