"""Centre crop of the last two axes of an image or stack."""

from __future__ import annotations

import numpy as np


def centre_crop(img: np.ndarray, size: int | tuple[int, int] | None = None, fraction: float = 0.75) -> np.ndarray:
    """Centre crop of the last two axes (a copy).

    ``size`` (int or ``(h, w)``) wins over ``fraction``; by default 0.75 of each side, i.e.
    1536 x 1536 from 2048 x 2048 (thesis). Odd margins put the extra pixel at the end.
    """
    a = np.asarray(img)
    h, w = a.shape[-2:]
    if size is None:
        if not 0 < fraction <= 1:
            raise ValueError("fraction must be in (0, 1]")
        ch, cw = int(round(h * fraction)), int(round(w * fraction))
    elif isinstance(size, (tuple, list)):
        ch, cw = int(size[0]), int(size[1])
    else:
        ch = cw = int(size)
    if not (0 < ch <= h and 0 < cw <= w):
        raise ValueError(f"crop {ch}x{cw} does not fit in {h}x{w}")
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return a[..., y0 : y0 + ch, x0 : x0 + cw].copy()
