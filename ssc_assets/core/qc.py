"""Per-image quality control: focus score, intensity statistics and robust outlier flags.

Definitions follow CellProfiler's ``MeasureImageQuality`` where one exists, so numbers
can be compared with a CellProfiler pipeline run on the same images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.fft

MEASURES = (
    "focus_score",
    "percent_maximal",
    "median",
    "std",
    "q01",
    "q25",
    "q75",
    "q99",
    "total_intensity",
)


def _cp_ring_labels(h: int, w: int) -> np.ndarray:
    """CellProfiler's ring label floor(r) + 1 of every bin of an (h, w) FFT, int32.

    CellProfiler folds distances with ``flipud``/``fliplr`` (index i -> h - 1 - i), so the
    per-axis distance is min(i, h - 1 - i); this is kept for identical numbers.
    """
    fy = np.minimum(np.arange(h), h - 1 - np.arange(h)).astype(np.float64)
    fx = np.minimum(np.arange(w), w - 1 - np.arange(w)).astype(np.float64)
    r = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    return (np.floor(r) + 1).astype(np.int32)


_RING_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _half_spectrum_labels(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Ring labels for an ``rfft2`` half spectrum: its own bins and their conjugate partners.

    For real input, bin (i, j) of the full spectrum with j > w // 2 has the power of half-
    spectrum bin ((h - i) % h, w - j). Returns (labels of the half spectrum (h, w//2 + 1),
    labels of the partners of half columns 1 .. w - w//2 - 1).
    """
    key = (h, w)
    if key not in _RING_CACHE:
        full = _cp_ring_labels(h, w)
        half = full[:, : w // 2 + 1]
        ks = np.arange(1, w - w // 2)
        rows = (h - np.arange(h)) % h
        partner = full[rows][:, w - ks]
        _RING_CACHE[key] = (np.ascontiguousarray(half), np.ascontiguousarray(partner))
    return _RING_CACHE[key]


def _slope(radii: np.ndarray, power: np.ndarray) -> float:
    keep = power > 0
    if keep.sum() < 2:
        return float("nan")
    x, y = np.log(radii[keep].astype(np.float64)), np.log(power[keep])
    x0 = x - x.mean()
    return float(np.dot(x0, y - y.mean()) / np.dot(x0, x0))


def power_log_log_slope(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """CellProfiler ``ImageQuality_PowerLogLogSlope`` of a 2-D image (any dtype).

    1. masked-out pixels are replaced by the mean of the masked-in pixels;
    2. the image is divided by median(|img - mean|) (intensity invariance);
    3. power = |fft2(img - mean)|^2;
    4. ring label = floor(r) + 1 (CellProfiler's folded distances); rings
       2 .. floor(min(h, w) / 8) - 1 are kept, the ring label is the radius;
    5. power is SUMMED per ring;
    6. the result is the least-squares slope of log(power) against log(radius), over rings
       with power > 0.

    A real half-spectrum FFT (float32) halves the work; the conjugate half is added back
    exactly. Returns a dimensionless slope (more negative = blurrier); NaN for a flat image.
    """
    img = np.asarray(image, dtype=np.float64)
    if mask is not None:
        img = img.copy()
        img[~mask] = img[mask].mean() if mask.any() else 0.0
    h, w = img.shape
    centred = img - img.mean()
    mad = np.median(np.abs(centred))
    if not np.any(centred):
        return float("nan")
    if mad > 0:
        centred /= mad
    spec = scipy.fft.rfft2(centred.astype(np.float32), workers=1)
    power = (spec.real.astype(np.float64) ** 2 + spec.imag.astype(np.float64) ** 2)
    half, partner = _half_spectrum_labels(h, w)
    n_labels = int(np.floor(min(h, w) / 8.0))
    sums = np.bincount(half.ravel(), weights=power.ravel(), minlength=n_labels + 1)[: n_labels + 1]
    sums += np.bincount(
        partner.ravel(), weights=power[:, 1 : w - w // 2].ravel(), minlength=n_labels + 1
    )[: n_labels + 1]
    radii = np.arange(2, n_labels)
    return _slope(radii, sums[2:n_labels])


def power_log_log_slope_reference(image: np.ndarray) -> float:
    """Direct transcription of CellProfiler's ``rps`` + slope (full complex FFT; for tests)."""
    import scipy.ndimage

    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape
    radii2 = (np.arange(h).reshape((h, 1)) ** 2) + (np.arange(w) ** 2)
    radii2 = np.minimum(radii2, np.flipud(radii2))
    radii2 = np.minimum(radii2, np.fliplr(radii2))
    maxwidth = min(h, w) / 8.0
    if np.ptp(img) > 0:
        img = img / np.median(abs(img - img.mean()))
    power = abs(np.fft.fft2(img - np.mean(img))) ** 2
    radii = np.floor(np.sqrt(radii2)).astype(int) + 1
    labels = np.arange(2, np.floor(maxwidth)).astype(int)
    powersum = np.asarray(scipy.ndimage.sum(power, radii, labels))
    return _slope(labels, powersum)


def intensity_stats(image: np.ndarray) -> dict[str, float]:
    """Intensity statistics of a 2-D uint16 image, in raw intensity units (counts).

    ``percent_maximal`` is CellProfiler's: 100 x the fraction of pixels equal to the image's
    maximum (large for saturated images). Quantiles use the lower (inverted-CDF) definition
    and are computed exactly from a 65,536-bin histogram, which is much faster than sorting.
    """
    img = np.asarray(image)
    if img.dtype != np.uint16:
        img = np.clip(np.asarray(image, dtype=np.float64), 0, 65535).astype(np.uint16)
    counts = np.bincount(img.ravel(), minlength=65536)
    n = img.size
    cdf = np.cumsum(counts)
    values = np.arange(counts.size)

    def q(p: float) -> float:
        return float(np.searchsorted(cdf, max(1, int(np.ceil(p * n)))))

    total = float(np.dot(counts.astype(np.float64), values))
    mean = total / n
    var = float(np.dot(counts.astype(np.float64), (values - mean) ** 2)) / n
    vmax = int(np.flatnonzero(counts)[-1])
    return {
        "percent_maximal": 100.0 * counts[vmax] / n,
        "median": q(0.5),
        "std": var**0.5,
        "q01": q(0.01),
        "q25": q(0.25),
        "q75": q(0.75),
        "q99": q(0.99),
        "total_intensity": total,
        "mean": mean,
        "max": float(vmax),
    }


def image_qc(image: np.ndarray) -> dict[str, float]:
    """All QC measures of one image (see :data:`MEASURES`)."""
    out = intensity_stats(image)
    out["focus_score"] = power_log_log_slope(image)
    return out


@dataclass(frozen=True)
class OutlierRule:
    """Flag a measure whose robust z-score passes ``z`` on ``side`` ("low", "high" or "both").

    ``mad_floor`` is a minimum MAD in the measure's own units, so that a measure that is
    nearly constant across a plate (e.g. percent maximal) does not flag tiny differences.
    """

    measure: str
    side: str
    hint: str
    mad_floor: float = 0.0
    rel_mad_floor: float = 0.0


@dataclass(frozen=True)
class QcConfig:
    z_threshold: float = 5.0
    rules: tuple[OutlierRule, ...] = field(
        default_factory=lambda: (
            OutlierRule("focus_score", "low", "out of focus / blurred", mad_floor=0.05),
            OutlierRule("percent_maximal", "high", "saturated", mad_floor=0.05),
            OutlierRule("median", "both", "abnormal background level", rel_mad_floor=0.02),
            OutlierRule("std", "low", "empty / no signal", rel_mad_floor=0.02),
            OutlierRule("q99", "high", "abnormally bright (saturation, debris)", rel_mad_floor=0.02),
        )
    )


def robust_z(values: pd.Series, mad_floor: float = 0.0, rel_mad_floor: float = 0.0) -> pd.Series:
    """(x - median) / (1.4826 * MAD), with MAD floored at ``max(mad_floor, rel_mad_floor*|median|)``."""
    v = values.astype(float)
    med = v.median()
    mad = (v - med).abs().median()
    floor = max(mad_floor, rel_mad_floor * abs(med), 1e-12)
    return (v - med) / (1.4826 * max(mad, floor))


def flag_outliers(qc: pd.DataFrame, config: QcConfig = QcConfig()) -> pd.DataFrame:
    """Add robust z-scores and outlier flags per plate x channel.

    Input: one row per image with ``Metadata_Plate, channel`` and the :data:`MEASURES`
    columns, plus an optional ``read_error`` column (str or None). Output: the same rows with
    ``z_<measure>`` columns, ``image_passed`` (bool), ``image_reason`` (str, "" if passed),
    and site-level ``passed_qc`` / ``qc_reason`` (a site fails if any of its images fails).
    Unreadable images always fail and never enter the statistics.
    """
    out = qc.copy()
    if "read_error" not in out:
        out["read_error"] = None
    readable = out["read_error"].isna()
    reasons: list[list[str]] = [[] for _ in range(len(out))]
    pos = {idx: i for i, idx in enumerate(out.index)}
    for idx, err in out.loc[~readable, "read_error"].items():
        reasons[pos[idx]].append(f"unreadable: {err}")
    for rule in config.rules:
        out[f"z_{rule.measure}"] = np.nan
    for _, grp in out[readable].groupby(["Metadata_Plate", "channel"], sort=False):
        for rule in config.rules:
            z = robust_z(grp[rule.measure], rule.mad_floor, rule.rel_mad_floor)
            out.loc[grp.index, f"z_{rule.measure}"] = z
            bad = (z < -config.z_threshold) if rule.side == "low" else (z > config.z_threshold)
            if rule.side == "both":
                bad = z.abs() > config.z_threshold
            for idx in z.index[bad.fillna(rule.measure == "focus_score")]:
                reasons[pos[idx]].append(f"{rule.hint}: {rule.measure} robust z={z[idx]:.1f}")
    out["image_reason"] = ["; ".join(r) for r in reasons]
    out["image_passed"] = out["image_reason"] == ""
    site_cols = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    site_fail = out.groupby(site_cols)["image_passed"].transform("all")
    out["passed_qc"] = site_fail.astype(bool)
    labelled = out["channel"] + ": " + out["image_reason"]
    labelled = labelled.where(~out["image_passed"], "")
    out["qc_reason"] = labelled.groupby([out[c] for c in site_cols]).transform(
        lambda s: " | ".join(x for x in s if x)
    )
    return out
