"""Per-image quality control: measures, artifact rules and review flags.

QC fails *artifacts*, never biology (thesis 2.5: out-of-focus images, debris, clipping /
saturation; plus empty fields and unreadable files). Intensity levels move with biology
(SSc donors) and with optics (objectives), so they only raise *review* flags.

Measures follow CellProfiler's ``MeasureImageQuality`` where one exists (focus score =
``PowerLogLogSlope``, ``percent_maximal``), so numbers can be compared with a CellProfiler
pipeline run on the same images. Rules (:func:`apply_qc_rules`, thresholds in
:class:`QcConfig`):

- absolute, physically meaningful (catch a plate that is bad throughout): pixels at the
  camera maximum, nuclei signal above the camera noise (empty field / no stain), nuclei
  edge width in um (focus), constant or unreadable images;
- relative: a site against its own well's other sites (same donor, same biology) and its
  acquisition group (same optics), never against plate-wide intensity levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.fft


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


def power_log_log_slope(image: np.ndarray, mask: np.ndarray | None = None, counts: np.ndarray | None = None) -> float:
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
    raw = np.asarray(image)
    if mask is None and raw.dtype == np.uint16:
        # exact mean and median |img - mean| from the 65,536-bin histogram (no float64 copy, no sort)
        counts = (np.bincount(raw.ravel(), minlength=1) if counts is None else counts).astype(np.float64)
        values = np.arange(counts.size, dtype=np.float64)
        n = raw.size
        mean = float(counts @ values) / n
        if np.count_nonzero(counts) < 2:
            return float("nan")
        dist = np.abs(values - mean)
        order = np.argsort(dist, kind="stable")
        cum = np.cumsum(counts[order])
        lo = dist[order][np.searchsorted(cum, (n - 1) // 2 + 1)]
        hi = dist[order][np.searchsorted(cum, n // 2 + 1)]
        mad = 0.5 * (lo + hi)
        centred = raw.astype(np.float32)
        centred -= np.float32(mean)
        if mad > 0:
            centred *= np.float32(1.0 / mad)
        h, w = raw.shape
    else:
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
    spec = scipy.fft.rfft2(np.asarray(centred, dtype=np.float32), workers=1)
    power = spec.real * spec.real
    power += spec.imag * spec.imag  # float32; the ring sums accumulate in float64
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


def intensity_stats(image: np.ndarray, counts: np.ndarray | None = None) -> dict[str, float]:
    """Intensity statistics of a 2-D uint16 image, in raw intensity units (counts).

    ``percent_maximal`` is CellProfiler's: 100 x the fraction of pixels equal to the image's
    maximum (large for saturated images). Quantiles use the lower (inverted-CDF) definition
    and are computed exactly from a 65,536-bin histogram, which is much faster than sorting.
    """
    img = np.asarray(image)
    if img.dtype != np.uint16:
        img = np.clip(np.asarray(image, dtype=np.float64), 0, 65535).astype(np.uint16)
    counts = np.bincount(img.ravel(), minlength=65536) if counts is None else counts
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


def noise_sd(image: np.ndarray) -> float:
    """Pixel noise SD (counts) from horizontal second differences on every other row:
    1.4826 x median |I(y, x-1) - 2 I(y, x) + I(y, x+1)| / sqrt(6). Smooth structure
    (vignetting ramps, cell interiors) cancels, so this is the camera + shot noise of the
    background (the median ignores object edges)."""
    a = np.asarray(image)
    if a.shape[1] < 3:
        return float("nan")
    rows = a[::2].astype(np.int32, copy=False)
    d = np.abs(rows[:, :-2] - 2 * rows[:, 1:-1] + rows[:, 2:]).ravel()
    if a.dtype == np.uint16:
        counts = np.bincount(d, minlength=1)
        med = float(np.searchsorted(np.cumsum(counts), (d.size + 1) // 2))
    else:
        med = float(np.median(d))
    return 1.4826 * med / np.sqrt(6.0)


def edge_width_px(image: np.ndarray, percentile: float = 99.5) -> float:
    """Blur of the sharpest object edges, as a Gaussian sigma in px (a physical focus measure).

    For a step of contrast C blurred by a Gaussian of sigma s, the steepest gradient is
    C / (s sqrt(2 pi)). After a sigma-1 smoothing (noise), C = q99 - median of the image
    and G = the ``percentile`` of the gradient magnitude (Sobel), so s_total = C / (G
    sqrt(2 pi)) and the edge sigma is sqrt(s_total^2 - 1). Objects much brighter than the
    cells (median + 1.5 C: debris, dust) and a margin around them are left out, so a few
    sharp specks cannot make a blurred field look sharp. Meant for the nuclei channel,
    whose objects have sharp edges in focus; NaN for a flat image.
    """
    import cv2

    a = np.asarray(image, dtype=np.float32)
    if min(a.shape) < 8:
        return float("nan")
    s = cv2.GaussianBlur(a, (0, 0), 1.0, borderType=cv2.BORDER_REFLECT)
    sub = s[::2, ::2].ravel()
    k50, k99 = int(0.5 * (sub.size - 1)), int(0.99 * (sub.size - 1))
    part = np.partition(sub, (k50, k99))
    med, contrast = float(part[k50]), float(part[k99] - part[k50])
    if not contrast > 0:
        return float("nan")
    gx = cv2.Sobel(s, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(s, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    g = cv2.magnitude(gx, gy)
    very_bright = (s > med + 1.5 * contrast).astype(np.uint8)
    if very_bright.any():
        r = max(3, int(round(0.01 * max(a.shape))))
        near = cv2.dilate(very_bright, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * r + 1, 2 * r + 1))) > 0
        g = g[~near]
    gv = g[1:-1:2] if g.ndim == 2 else g[::2]
    gv = gv.ravel()
    if gv.size < 16:
        return float("nan")
    kg = int(percentile / 100.0 * (gv.size - 1))
    grad = float(np.partition(gv, kg)[kg])
    if not grad > 0:
        return float("nan")
    total = contrast / (grad * np.sqrt(2.0 * np.pi))
    return float(np.sqrt(max(total * total - 1.0, 0.0)))


def image_qc(
    image: np.ndarray,
    *,
    channel: str | None = None,
    pixel_size_um: float | None = None,
    saturation_level: float = 65535.0,
) -> dict[str, float]:
    """All QC measures of one (H, W) image, in raw counts unless stated.

    Intensity statistics (:func:`intensity_stats`), ``focus_score`` (PowerLogLogSlope,
    dimensionless), ``saturated_fraction`` (fraction of pixels >= ``saturation_level``, the
    camera maximum), ``noise_sd`` (:func:`noise_sd`), ``snr`` = (q99 - median) / noise_sd,
    ``contrast`` = q99 - median, ``bright_contrast`` = q99 - q01; for the nuclei channel also
    ``edge_width_um`` (:func:`edge_width_px` x ``pixel_size_um``; px when no pixel size).
    """
    a = np.asarray(image)
    counts = np.bincount(a.ravel(), minlength=65536) if a.dtype == np.uint16 else None  # shared by the measures
    out = intensity_stats(image, counts)
    if counts is not None:
        out["saturated_fraction"] = float(counts[min(int(np.ceil(saturation_level)), counts.size):].sum()) / max(a.size, 1)
    else:
        out["saturated_fraction"] = np.count_nonzero(a >= saturation_level) / max(a.size, 1)
    out["noise_sd"] = noise_sd(a)
    out["contrast"] = out["q99"] - out["median"]
    out["bright_contrast"] = out["q99"] - out["q01"]
    out["snr"] = out["contrast"] / out["noise_sd"] if out["noise_sd"] > 0 else (0.0 if out["contrast"] == 0 else float("inf"))
    out["focus_score"] = power_log_log_slope(image, counts=counts)
    if channel == "nuclei":
        out["edge_width_um"] = edge_width_px(a) * (pixel_size_um or 1.0)
    return out


@dataclass(frozen=True)
class QcConfig:
    """QC thresholds. Absolute rules are physical; relative ones use robust z-scores
    ((x - median) / (1.4826 MAD)) within a site's well or acquisition group x channel.

    - ``max_saturated_fraction``: fail above this fraction of pixels at the camera maximum;
    - ``min_nuclei_snr``: fail a nuclei image whose (q99 - median) is below this many noise
      SDs (empty field, no stain, camera noise only);
    - ``min_nuclei_contrast_ratio``: fail a nuclei image whose contrast is below this
      fraction of its well's (or group's) median: a cell-free field among cells;
    - ``max_edge_width_um`` / ``max_edge_width_px``: fail nuclei whose edge blur sigma
      exceeds the larger of the two (out of focus, whatever the plate);
    - ``z_focus``: fail a site whose nuclei edge width is this many robust SDs above its
      acquisition group; a focus score this many robust SDs below its well (residuals
      pooled over the group) is only flagged for review (PowerLogLogSlope also moves with
      specks of debris and texture);
    - ``debris_ratio``: fail a site whose background-subtracted q99 (q99 - q01) is this many
      times its well's median in the nuclei channel AND another channel (autofluorescent
      debris is bright everywhere; biology is not);
    - ``z_review``: a site whose intensity (median, q99) differs from its own well's by
      this many robust SDs (log ratios pooled over the acquisition group x channel, MAD
      floored at ``review_log_mad_floor``) is flagged for review, never failed;
    - ``min_group_sites``: smaller groups are not used for group statistics.
    """

    max_saturated_fraction: float = 0.01
    min_nuclei_snr: float = 10.0
    min_nuclei_contrast_ratio: float = 0.25
    max_edge_width_um: float = 1.5
    max_edge_width_px: float = 1.5
    z_focus: float = 5.0
    focus_mad_floor: float = 0.05
    edge_mad_floor_um: float = 0.1
    debris_ratio: float = 1.75
    z_review: float = 5.0
    review_log_mad_floor: float = 0.05
    min_group_sites: int = 6


def robust_z(values: pd.Series, mad_floor: float = 0.0, rel_mad_floor: float = 0.0) -> pd.Series:
    """(x - median) / (1.4826 * MAD), with MAD floored at ``max(mad_floor, rel_mad_floor*|median|)``."""
    v = values.astype(float)
    med = v.median()
    mad = (v - med).abs().median()
    floor = max(mad_floor, rel_mad_floor * abs(med), 1e-12)
    return (v - med) / (1.4826 * max(mad, floor))


SITE_COLS = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
#: Separates the channels' reasons in a site-level reason.
CHANNEL_SEP = " // "
GROUP_COL = "Metadata_AcquisitionGroup"


def _well_reference(df: pd.DataFrame, measure: str, exclude: pd.Series | None = None) -> pd.Series:
    """Median of ``measure`` over each image's well (same channel), leaving out images in
    ``exclude`` (already failed); NaN where fewer than 2 images remain (single-site wells)."""
    v = df[measure] if exclude is None else df[measure].where(~exclude.reindex(df.index, fill_value=False))
    keys = [df["Metadata_Plate"], df["Metadata_Well"], df["channel"]]
    med = v.groupby(keys).transform("median")
    n = v.groupby(keys).transform("count")
    return med.where(n >= 2)


def apply_qc_rules(qc: pd.DataFrame, config: QcConfig = QcConfig()) -> pd.DataFrame:
    """Artifact failures and review flags for one plate's QC table.

    Input: one row per image with ``Metadata_Plate, Metadata_Well, Metadata_Site, channel``,
    the measures of :func:`image_qc`, optional ``Metadata_AcquisitionGroup`` (one group
    when absent), ``read_error`` (str or None) and ``Metadata_PixelSizeUm``. Output: the same
    rows plus ``z_focus_score``, ``z_median``, ``z_q99`` (robust z of the site against its
    well, pooled over the group x channel),
    ``image_passed`` / ``image_reason`` (artifacts), ``image_review`` / ``review_reason``
    (intensity outliers, kept) and the site-level ``passed_qc``, ``qc_reason``,
    ``qc_review``, ``review_reason_site``. Unreadable images always fail and never enter
    the statistics.
    """
    out = _with_qc_defaults(qc)
    reasons = _Reasons(out.index)
    readable = out["read_error"].isna()
    reasons.add(reasons.fail, ~readable, lambda i: f"unreadable: {out.at[i, 'read_error']}")
    r = out[readable]
    blurred = _absolute_rules(out, r, config, reasons)
    _well_relative_rules(out, r, config, reasons)
    _group_rules(out, r, blurred, config, reasons)
    _site_columns(out, reasons)
    return out


_QC_MEASURES = ("saturated_fraction", "snr", "contrast", "bright_contrast", "edge_width_um", "focus_score", "median", "q99", "std")


def _with_qc_defaults(qc: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``qc`` with ``read_error``, the acquisition group and every measure the
    rules use (NaN when absent)."""
    out = qc.copy()
    if "read_error" not in out:
        out["read_error"] = None
    if GROUP_COL not in out:
        out[GROUP_COL] = "all"
    for m in _QC_MEASURES:
        if m not in out:
            out[m] = np.nan
    return out


class _Reasons:
    """Failure and review texts of every image of a QC table, in the table's row order."""

    def __init__(self, index: pd.Index) -> None:
        self.fail: list[list[str]] = [[] for _ in range(len(index))]
        self.review: list[list[str]] = [[] for _ in range(len(index))]
        self._pos = {idx: i for i, idx in enumerate(index)}

    def add(self, target: list[list[str]], mask: pd.Series, text) -> None:
        """Append ``text`` (a str, or a function of the row label) to ``target`` for rows in ``mask``."""
        for idx in mask.index[mask.fillna(False).astype(bool)]:
            target[self._pos[idx]].append(text(idx) if callable(text) else text)


def _absolute_rules(out: pd.DataFrame, r: pd.DataFrame, config: QcConfig, reasons: _Reasons) -> pd.Series:
    """Physical rules on the readable images ``r``: constant, saturated, empty nuclei field,
    blurred nuclei edges. Returns the ``blurred`` mask (indexed like ``r``)."""
    px = pd.to_numeric(out.get("Metadata_PixelSizeUm", pd.Series(np.nan, index=out.index)), errors="coerce")
    nuc = r["channel"] == "nuclei"
    fail = reasons.fail
    reasons.add(fail, (r["std"] == 0) | (r["focus_score"].isna() & r["std"].notna()), "constant image (no signal)")
    reasons.add(fail, r["saturated_fraction"] > config.max_saturated_fraction,
                lambda i: f"saturated: {100 * out.at[i, 'saturated_fraction']:.1f} % of pixels at the camera maximum")
    reasons.add(fail, nuc & (r["snr"] < config.min_nuclei_snr) & (r["std"] > 0),
                lambda i: f"empty field / no nuclei stain: nuclei signal {out.at[i, 'snr']:.1f} noise SDs above background")
    limit = np.maximum(config.max_edge_width_um, config.max_edge_width_px * px.fillna(1.0))
    empty = nuc & (r["snr"] < config.min_nuclei_snr)
    blurred = nuc & (r["edge_width_um"] > limit[r.index]) & ~empty  # no edges to judge in an empty field
    reasons.add(fail, blurred, lambda i: f"out of focus: nuclei edge blur {out.at[i, 'edge_width_um']:.2f} um "
                                         f"(limit {limit[i]:.2f} um)")
    return blurred


def _well_relative_rules(out: pd.DataFrame, r: pd.DataFrame, config: QcConfig, reasons: _Reasons) -> None:
    """Rules relative to the well (same donor and biology), leaving out sites failed so far;
    capped by the acquisition group's median so that artifacts cannot inflate a well's level."""
    failed_so_far = pd.Series([bool(x) for x in reasons.fail], index=out.index)[r.index]
    site_failed = failed_so_far.groupby([r[c] for c in SITE_COLS]).transform("any")
    _cell_free_rule(out, r, site_failed, config, reasons)
    _debris_rule(r, site_failed, config, reasons)


def _cell_free_rule(out: pd.DataFrame, r: pd.DataFrame, site_failed: pd.Series, config: QcConfig,
                    reasons: _Reasons) -> None:
    """Fail a nuclei image whose contrast is a small fraction of its well's (a cell-free field)."""
    nuc = r["channel"] == "nuclei"
    grp_contrast = r["contrast"].where(~site_failed).groupby([r[GROUP_COL], r["channel"]]).transform("median")
    ref = np.fmin(_well_reference(r, "contrast", site_failed), grp_contrast)
    reasons.add(reasons.fail,
                nuc & (r["contrast"] < config.min_nuclei_contrast_ratio * ref) & (r["snr"] >= config.min_nuclei_snr),
                lambda i: f"cell-free field: nuclei contrast {out.at[i, 'contrast']:.0f} counts, "
                          f"{out.at[i, 'contrast'] / max(ref[i], 1e-9):.0%} of its well")


def _debris_rule(r: pd.DataFrame, site_failed: pd.Series, config: QcConfig, reasons: _Reasons) -> None:
    """Fail images of a site bright against its well in the nuclei channel AND another one."""
    nuc = r["channel"] == "nuclei"
    grp_bright = r["bright_contrast"].where(~site_failed).groupby([r[GROUP_COL], r["channel"]]).transform("median")
    site_key = [r[c] for c in SITE_COLS]
    debris = pd.Series(False, index=r.index)
    for _ in range(3):  # iterate: a well with two debris sites must not hide the second one
        excluded = site_failed | debris.groupby(site_key).transform("any")
        bright = r["bright_contrast"] / _well_reference(r, "bright_contrast", excluded).fillna(grp_bright)
        is_bright = bright >= config.debris_ratio
        nuc_bright = (is_bright & nuc).groupby(site_key).transform("any")
        other_bright = (is_bright & ~nuc).groupby(site_key).transform("any")
        new = is_bright & nuc_bright & other_bright
        if new.equals(debris):
            break
        debris = new
    reasons.add(reasons.fail, debris,
                lambda i: f"debris / bright artifact: q99 {bright[i]:.1f}x its well")


def _group_rules(out: pd.DataFrame, r: pd.DataFrame, blurred: pd.Series, config: QcConfig, reasons: _Reasons) -> None:
    """Statistics per acquisition group x channel (groups of >= ``min_group_sites`` sites):
    sets ``z_focus_score``, ``z_median``, ``z_q99`` and adds the group-relative reasons."""
    focus_res = r["focus_score"] - _well_reference(r, "focus_score")
    out["z_focus_score"] = np.nan
    out["z_median"] = np.nan
    out["z_q99"] = np.nan
    for (_, ch), g in r.groupby([GROUP_COL, "channel"], sort=False):
        sites_in_group = g.drop_duplicates(SITE_COLS).shape[0]
        if sites_in_group < config.min_group_sites:
            continue
        _focus_review(out, focus_res[g.index].dropna(), config, reasons)
        if ch == "nuclei":
            _edge_outlier_rule(out, g, blurred, config, reasons)
        _intensity_review(out, g, config, reasons)


def _focus_review(out: pd.DataFrame, res: pd.Series, config: QcConfig, reasons: _Reasons) -> None:
    """Flag for review images whose focus score residual (to the well) is far below the group's."""
    if len(res) >= config.min_group_sites:
        zf = res / (1.4826 * max((res - res.median()).abs().median(), config.focus_mad_floor))
        out.loc[zf.index, "z_focus_score"] = zf
        reasons.add(reasons.review, zf < -config.z_focus,
                    lambda i: f"less sharp than its well: focus score {out.at[i, 'z_focus_score']:.1f} robust SD below")


def _edge_outlier_rule(out: pd.DataFrame, g: pd.DataFrame, blurred: pd.Series, config: QcConfig,
                       reasons: _Reasons) -> None:
    """Fail nuclei images whose edge width is far above their acquisition group's."""
    ze = robust_z(g["edge_width_um"], config.edge_mad_floor_um)
    reasons.add(reasons.fail, (ze > config.z_focus) & ~blurred[g.index],
                lambda i: f"out of focus: nuclei edge blur {out.at[i, 'edge_width_um']:.2f} um, "
                          f"robust z={ze[i]:.1f} in its acquisition group")


def _intensity_review(out: pd.DataFrame, g: pd.DataFrame, config: QcConfig, reasons: _Reasons) -> None:
    """Set ``z_median`` / ``z_q99`` and flag intensity levels unusual for the site's well."""
    for m, word in (("median", "background"), ("q99", "bright signal")):
        # log ratio to the site's own well (same donor); the group level for single-site wells
        logv = np.log(g[m].clip(lower=1.0))
        ref = np.log(_well_reference(g, m).clip(lower=1.0))
        res = (logv - ref).fillna(logv - logv.median())
        z = res / (1.4826 * max(float((res - res.median()).abs().median()), config.review_log_mad_floor))
        out.loc[g.index, f"z_{m}"] = z
        reasons.add(reasons.review, z.abs() > config.z_review,
                    lambda i, m=m, word=word: f"unusual {word} level for its well: {m} robust z={out.at[i, f'z_{m}']:.1f}")


def _site_columns(out: pd.DataFrame, reasons: _Reasons) -> None:
    """Image- and site-level pass / review columns from the collected reasons."""
    out["image_reason"] = ["; ".join(dict.fromkeys(x)) for x in reasons.fail]
    out["image_passed"] = out["image_reason"] == ""
    out["review_reason"] = ["; ".join(dict.fromkeys(x)) for x in reasons.review]
    out["image_review"] = (out["review_reason"] != "") & out["image_passed"]
    keys = [out[c] for c in SITE_COLS]
    out["passed_qc"] = out.groupby(keys)["image_passed"].transform("all").astype(bool)
    out["qc_reason"] = _site_text(out, "image_reason", ~out["image_passed"], keys)
    out["qc_review"] = out.groupby(keys)["image_review"].transform("any").astype(bool) & out["passed_qc"]
    out["review_reason_site"] = _site_text(out, "review_reason", out["image_review"], keys)


def _site_text(out: pd.DataFrame, col: str, use: pd.Series, keys) -> pd.Series:
    """Site-level text: ``"<channel>: <reason>"`` of the site's images, joined with
    :data:`CHANNEL_SEP` (no ``|``: it would break markdown tables)."""
    labelled = (out["channel"] + ": " + out[col]).where(use, "")
    return labelled.groupby(keys).transform(lambda s: CHANNEL_SEP.join(x for x in s if x))


def apply_overrides(qc: pd.DataFrame) -> pd.DataFrame:
    """Apply the user's ``qc_overrides.csv`` decisions (columns ``qc_override`` = "pass" /
    "fail" / None and ``qc_override_note`` on the rows of a site).

    ``fail`` fails the site whatever QC said; ``pass`` passes a site that QC failed, except
    for unreadable or missing images (nothing to process). ``qc_decision`` records
    ``auto`` / ``user pass`` / ``user fail``.
    """
    out = qc.copy()
    out["qc_decision"] = "auto"
    if "qc_override" not in out:
        return out
    dec = out["qc_override"].astype(object)
    note = out.get("qc_override_note", pd.Series("", index=out.index)).fillna("").astype(str)
    unreadable = out["read_error"].notna().groupby([out[c] for c in SITE_COLS]).transform("any")
    fail = dec == "fail"
    out.loc[fail, "passed_qc"] = False
    out.loc[fail, "qc_reason"] = ("user decision: fail" + note[fail].map(lambda n: f" ({n})" if n else "")
                                  + out.loc[fail, "qc_reason"].map(lambda r: f"{CHANNEL_SEP}auto: {r}" if r else ""))
    ok = (dec == "pass") & ~unreadable
    flip = ok & ~out["passed_qc"]
    out.loc[flip, "qc_reason"] = ("user decision: pass" + note[flip].map(lambda n: f" ({n})" if n else "")
                                  + CHANNEL_SEP + "auto: " + out.loc[flip, "qc_reason"])
    out.loc[ok, "passed_qc"] = True
    out.loc[fail, "qc_decision"] = "user fail"
    out.loc[ok, "qc_decision"] = "user pass"
    return out


#: Measures shown in the ``site_qc`` histograms (those the rules use).
QC_HISTOGRAM_MEASURES = ("focus_score", "edge_width_um", "snr", "saturated_fraction", "bright_contrast", "median", "q99")


def qc_thresholds(config: QcConfig, qc: pd.DataFrame | None = None) -> dict[tuple[str, str], float]:
    """Absolute thresholds to draw on the histograms: (channel or "*", measure) -> value."""
    px = 1.0
    if qc is not None and "Metadata_PixelSizeUm" in qc and qc["Metadata_PixelSizeUm"].notna().any():
        px = float(pd.to_numeric(qc["Metadata_PixelSizeUm"], errors="coerce").median())
    return {
        ("*", "saturated_fraction"): config.max_saturated_fraction,
        ("nuclei", "snr"): config.min_nuclei_snr,
        ("nuclei", "edge_width_um"): max(config.max_edge_width_um, config.max_edge_width_px * px),
    }


def failure_counts(reasons: pd.Series) -> pd.DataFrame:
    """Sites per failure kind (a site with several kinds counts once in each): the text before
    ':' of each channel's reasons; a user's decision counts as "user fail" and the automatic
    reasons kept after it (``auto:``) are not counted again."""
    kinds: dict[str, int] = {}
    for text in reasons.fillna(""):
        seen = set()
        if text.startswith("user decision: fail"):
            seen.add("user fail")
        else:
            for part in text.split(CHANNEL_SEP):
                body = part.split(": ", 1)[1] if ": " in part else part
                for item in body.split("; "):
                    kind = item.split(":")[0].strip()
                    if kind:
                        seen.add(kind)
        for kind in seen:
            kinds[kind] = kinds.get(kind, 0) + 1
    return pd.DataFrame(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])), columns=["reason", "n_sites"])
