"""Reading (never writing) raw MetaSeries TIFFs, with errors that name the file."""

from __future__ import annotations

import os

import numpy as np
import tifffile

EXPECTED_DTYPE = np.dtype("uint16")


class ImageReadError(ValueError):
    """An image file is unreadable or does not meet the input contract. Names the file."""


def read_header_description(path: str | os.PathLike) -> tuple[tuple[int, ...], str, str | None]:
    """Shape, dtype and ImageDescription (MetaSeries XML on ImageXpress files, or None) of
    the first page of a TIFF, without reading pixels. Raises :class:`ImageReadError`."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            return tuple(int(s) for s in page.shape), str(page.dtype), page.description or None
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types on corrupt files
        raise ImageReadError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from exc


def validate_image(arr: np.ndarray, path: str | os.PathLike, expected_shape: tuple[int, int] | None = None) -> None:
    """Check the input contract: 2-D, uint16, square-or-not but matching ``expected_shape``."""
    if arr.ndim != 2:
        raise ImageReadError(f"{path}: expected a 2-D single-channel image, got shape {arr.shape}")
    if arr.dtype != EXPECTED_DTYPE:
        raise ImageReadError(f"{path}: expected 16-bit (uint16) pixels, got {arr.dtype}")
    if expected_shape is not None and tuple(arr.shape) != tuple(expected_shape):
        raise ImageReadError(f"{path}: shape {arr.shape} differs from the plate's image shape {tuple(expected_shape)}")


def read_image(path: str | os.PathLike, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read one raw image as a (H, W) uint16 array, validated against the input contract.

    Raises :class:`ImageReadError` naming the file for corrupt/truncated files, wrong dtype
    or dimensionality, and a shape other than ``expected_shape`` (when given).
    """
    try:
        arr = tifffile.imread(path, key=0)
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(f"{path}: cannot read pixels ({type(exc).__name__}: {exc})") from exc
    validate_image(arr, path, expected_shape)
    return arr
