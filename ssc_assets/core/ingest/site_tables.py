"""From a plate folder to the ``raw_sites`` index and the ``site_qc`` table (pure functions)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ssc_assets.core.ingest.acquisition import acquisition_frame, assign_acquisition_groups, fill_acquisition
from ssc_assets.core.ingest.channels import IMAGE_CHANNELS, ChannelMap
from ssc_assets.core.ingest.metaxpress import (
    PlateScan,
    expected_images,
    missing_images,
    missing_required_channels,
    normalize_well,
    plate_wavelengths,
    scan_plate,
)
from ssc_assets.core.ingest.platemap import PlateMapError, read_platemap
from ssc_assets.core.ingest.qc import QcConfig, apply_overrides, apply_qc_rules, image_qc
from ssc_assets.core.io.tiff import EXPECTED_DTYPE, ImageReadError, read_header_description, read_image
from ssc_assets.core.schema import is_metadata, metadata_columns

#: Optional user decisions in a plate folder: well, site, decision (pass|fail), note.
OVERRIDES_FILE = "qc_overrides.csv"


class PlateError(ValueError):
    """The plate cannot be indexed at all (empty folder, no plate map...). Names the folder."""


@dataclass
class RawSites:
    """``table``: one row per site x channel (see :func:`build_raw_sites`); ``excluded``: ignored
    files with reasons; ``problems``: plate-level findings for the asset checks."""

    table: pd.DataFrame
    excluded: pd.DataFrame
    scan: PlateScan
    missing: list[tuple[str, int, int]]
    wells_without_images: list[str]
    problems: list[str] = field(default_factory=list)


def _headers(paths: list[str], workers: int = 8) -> list[tuple[tuple[int, ...] | None, str | None, str | None, str | None]]:
    """(shape, dtype, error, ImageDescription) of every file, headers only."""
    def one(p: str):
        try:
            shape, dtype, desc = read_header_description(p)
            return shape, dtype, None, desc
        except ImageReadError as exc:
            return None, None, str(exc), None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, paths))


def strict_channels_for(channel_map: ChannelMap, strict_channels: bool | None) -> bool:
    """HTD wavelength names that disagree with the channel map stop the plate (``True``)
    or are only reported (``False``). ``None``: strict unless the map was set explicitly
    (:attr:`~ssc_assets.core.ingest.channels.ChannelMap.explicit`)."""
    return (not channel_map.explicit) if strict_channels is None else bool(strict_channels)


def channel_mismatch_message(scan: PlateScan, channel_map: ChannelMap) -> str:
    """Why a plate whose HTD wavelength names disagree with the channel map is not used."""
    return (
        f"{scan.htd.path if scan.htd else scan.plate_dir}: HTD wavelength names disagree with the channel map "
        f"{channel_map.to_string()!r}: " + "; ".join(scan.channel_mismatches)
        + ". Set SSC_CHANNEL_MAP to the plate's layout (then this is only a warning)"
    )


def build_raw_sites(plate_dir: str | os.PathLike, channel_map: ChannelMap | None = None, time_point: int = 1,
                    strict_channels: bool | None = None) -> RawSites:
    """Index one plate folder into the ``raw_sites`` table without modifying anything in it.

    Columns: ``Metadata_Plate, Metadata_Well, Metadata_Row, Metadata_Column, Metadata_Site,
    Metadata_TimePoint, channel, wavelength, acquisition, path, file_size (bytes), mtime_ns,
    height, width, dtype, header_error`` (str or None, names the file), every plate-map column
    (``Metadata_Donor, Metadata_Condition, Metadata_Group``, extras as ``Metadata_<col>``), the
    acquisition metadata of :data:`~ssc_assets.core.ingest.acquisition.ACQUISITION_COLUMNS` (from
    each file's MetaSeries XML, else the plate map, HTD and defaults),
    ``Metadata_AcquisitionGroup``, and ``qc_override`` / ``qc_override_note`` from the
    optional ``qc_overrides.csv``.

    Raises :class:`PlateError` for an empty folder, a missing plate map, or HTD wavelength
    names that disagree with the channel map when ``strict_channels`` (default: the map was
    not set explicitly, see :func:`strict_channels_for`; otherwise they are listed in
    ``problems``), and :class:`~ssc_assets.core.ingest.platemap.PlateMapError` for an unusable plate
    map. A plate-map well without any image is listed in ``wells_without_images`` and
    ``problems`` (the ``plate_complete`` check fails on either).
    """
    channel_map = channel_map or ChannelMap()
    scan, platemap = _scan_with_platemap(plate_dir, channel_map, time_point, strict_channels)
    problems = list(scan.problems)
    excluded = [scan.excluded]
    images = _drop_unmapped_wells(scan.images, platemap, excluded)
    images = _check_headers(_with_headers(images))
    table = _site_table(images, platemap, scan, channel_map, problems)
    missing, wells_without = _coverage_problems(scan, table, platemap, channel_map, problems)
    return RawSites(
        table=table,
        excluded=pd.concat([e for e in excluded if len(e)] or [excluded[0]], ignore_index=True),
        scan=scan,
        missing=missing,
        wells_without_images=wells_without,
        problems=problems,
    )


def _scan_with_platemap(plate_dir: str | os.PathLike, channel_map: ChannelMap, time_point: int,
                        strict_channels: bool | None) -> tuple[PlateScan, pd.DataFrame]:
    """Scan the plate folder and read its plate map; :class:`PlateError` if the plate cannot be used."""
    scan = scan_plate(plate_dir, channel_map, time_point)
    if scan.platemap_path is None:
        raise PlateError(f"{plate_dir}: no platemap.csv in the plate folder (required: well,donor_id,condition,group)")
    platemap = read_platemap(scan.platemap_path)
    if scan.channel_mismatches and strict_channels_for(channel_map, strict_channels):
        raise PlateError(channel_mismatch_message(scan, channel_map))
    if scan.images.empty:
        raise PlateError(
            f"{plate_dir}: no usable images found ({len(scan.excluded)} files excluded"
            + (f", e.g. {scan.excluded.iloc[0].path}: {scan.excluded.iloc[0].reason}" if len(scan.excluded) else "")
            + ")"
        )
    return scan, platemap


def _drop_unmapped_wells(images: pd.DataFrame, platemap: pd.DataFrame, excluded: list[pd.DataFrame]) -> pd.DataFrame:
    """Images of wells in the plate map; the others are appended to ``excluded`` with a reason."""
    in_map = images["Metadata_Well"].isin(set(platemap["Metadata_Well"]))
    if (~in_map).any():
        dropped = images[~in_map]
        excluded.append(pd.DataFrame({"path": dropped["path"], "reason": "well " + dropped["Metadata_Well"] + " is not in platemap.csv"}))
        images = images[in_map]
    return images


def _with_headers(images: pd.DataFrame) -> pd.DataFrame:
    """``images`` (fresh index) plus each file's header: height, width, ndim, dtype,
    header_error and the acquisition metadata of its MetaSeries XML."""
    headers = _headers(images["path"].tolist())
    images = images.assign(
        height=[h[0][0] if h[0] and len(h[0]) >= 2 else -1 for h in headers],
        width=[h[0][1] if h[0] and len(h[0]) >= 2 else -1 for h in headers],
        ndim=[len(h[0]) if h[0] else -1 for h in headers],
        dtype=[h[1] or "" for h in headers],
        header_error=[h[2] for h in headers],
    )
    return pd.concat([images.reset_index(drop=True), acquisition_frame([h[3] for h in headers])], axis=1)


def _check_headers(images: pd.DataFrame) -> pd.DataFrame:
    """Set ``header_error`` for a wrong dtype, a non-2-D image or a shape other than the
    plate's most common one; drops the ``ndim`` column."""
    ok = images["header_error"].isna()
    bad_dtype = ok & (images["dtype"] != str(EXPECTED_DTYPE))
    images.loc[bad_dtype, "header_error"] = images.loc[bad_dtype, "path"] + ": expected 16-bit (uint16) pixels, got " + images.loc[bad_dtype, "dtype"]
    bad_ndim = images["header_error"].isna() & (images["ndim"] != 2)
    images.loc[bad_ndim, "header_error"] = images.loc[bad_ndim, "path"] + ": expected a 2-D single-channel image"
    good = images["header_error"].isna()
    if good.any():
        shapes = images.loc[good, ["height", "width"]].value_counts()
        (mh, mw) = shapes.index[0]
        bad_shape = good & ((images["height"] != mh) | (images["width"] != mw))
        images.loc[bad_shape, "header_error"] = (
            images.loc[bad_shape, "path"] + f": shape differs from the plate's image shape ({mh}, {mw}): ("
            + images.loc[bad_shape, "height"].astype(str) + ", " + images.loc[bad_shape, "width"].astype(str) + ")"
        )
    return images.drop(columns=["ndim"])


def _site_table(images: pd.DataFrame, platemap: pd.DataFrame, scan: PlateScan, channel_map: ChannelMap,
                problems: list[str]) -> pd.DataFrame:
    """Images joined with the plate map, acquisition metadata and groups, and the user's QC
    overrides; appends illumination and override problems to ``problems``."""
    table = images.merge(platemap, on="Metadata_Well", how="left").reset_index(drop=True)
    table = fill_acquisition(table, scan.htd.wave_names if scan.htd else None)
    table["Metadata_AcquisitionGroup"] = assign_acquisition_groups(table)
    problems += _illumination_mismatches(table, channel_map)
    overrides, override_problems = read_overrides(scan.plate_dir)
    problems += override_problems
    return attach_overrides(table, overrides)


def _coverage_problems(scan: PlateScan, table: pd.DataFrame, platemap: pd.DataFrame, channel_map: ChannelMap,
                       problems: list[str]) -> tuple[list[tuple[str, int, int]], list[str]]:
    """Appends missing channels, mixed plate names and unacquired plate-map wells to
    ``problems``; returns (missing images, plate-map wells without any image)."""
    absent = missing_required_channels(scan, channel_map, IMAGE_CHANNELS)
    if absent:
        problems.append(
            f"channel(s) {absent} not found on the plate (wavelengths present: "
            f"{['w%d' % w for w in plate_wavelengths(scan, channel_map)]}; check SSC_CHANNEL_MAP)")
    if len(set(table["file_plate_name"])) > 1:
        problems.append(f"image files carry several plate names: {sorted(set(table['file_plate_name']))}")
    missing = missing_images(scan, platemap["Metadata_Well"].tolist(), channel_map)
    with_images = set(scan.images["Metadata_Well"])
    wells_without = sorted(set(platemap["Metadata_Well"]) - with_images)
    if wells_without:
        problems.append(f"plate-map wells without any image: {wells_without}")
    if scan.htd is not None:
        unknown = sorted(set(platemap["Metadata_Well"]) - set(scan.htd.wells))
        if unknown:
            problems.append(f"plate-map wells not acquired according to {scan.htd.path}: {unknown}")
    return missing, wells_without


# --------------------------------------------------------------------------- QC

SITE_KEY = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]


def qc_one_image(item: tuple) -> dict:
    """QC measures of one image file (:func:`~ssc_assets.core.ingest.qc.image_qc`).

    ``item`` = (path, expected (H, W) or None[, channel, pixel size um, bit depth[, background
    settings]]). Never raises for bad images: returns ``{"read_error": "<path>: ..."}`` instead.

    With background settings (a dict of :func:`~ssc_assets.core.image.illumination.image_background`
    keyword arguments, see :func:`~ssc_assets.core.image.backgrounds.background_settings`), the
    image's illumination grids are computed too, while it is in memory, and returned under
    ``"_background"`` with the file's ``"_stamp"`` (size, mtime) as QC read it; keys starting
    with ``_`` are not QC measures (the caller pops them).
    """
    path, shape, *rest = item
    channel, pixel_size, bits, bg_settings = (list(rest) + [None, None, None, None])[:4]
    stamp = None
    if bg_settings is not None:
        from ssc_assets.core.image.backgrounds import file_stamp

        stamp = file_stamp(path)  # before the read: a file rewritten meanwhile never matches
    try:
        img = read_image(path, expected_shape=shape)
    except ImageReadError as exc:
        return {"read_error": str(exc)}
    sat = float(2 ** int(bits) - 1) if bits and 8 <= int(bits) <= 16 else 65535.0
    out = image_qc(img, channel=channel, pixel_size_um=pixel_size, saturation_level=sat)
    out["read_error"] = None
    if bg_settings is not None:
        from ssc_assets.core.image.illumination import image_background

        try:  # a cache for illumination_profiles: never a reason to fail the image's QC
            out["_background"] = image_background(img, **bg_settings)
            out["_stamp"] = stamp
        except Exception:  # noqa: BLE001 - illumination_profiles then reads the image itself
            out["_background"] = None
    return out


def qc_items(raw_sites: pd.DataFrame, channels: tuple[str, ...] = IMAGE_CHANNELS) -> pd.DataFrame:
    """Rows of ``raw_sites`` that get QC: the channels used downstream (mitochondria is ignored)."""
    return raw_sites[raw_sites["channel"].isin(channels)].reset_index(drop=True)


def qc_work_items(rows: pd.DataFrame) -> list[tuple]:
    """Picklable work items for :func:`qc_one_image`, one per row of :func:`qc_items`."""
    ok = rows["header_error"].isna() if "header_error" in rows else pd.Series(True, index=rows.index)
    px = rows["Metadata_PixelSizeUm"] if "Metadata_PixelSizeUm" in rows else pd.Series(None, index=rows.index)
    bits = rows["Metadata_BitDepth"] if "Metadata_BitDepth" in rows else pd.Series(None, index=rows.index)
    return [
        (p, (int(h), int(w)) if good else None, ch, None if pd.isna(x) else float(x), None if pd.isna(b) else int(b))
        for p, h, w, good, ch, x, b in zip(rows["path"], rows["height"], rows["width"], ok, rows["channel"], px, bits)
    ]


MEASURE_COLUMNS = ("focus_score", "percent_maximal", "median", "std", "q01", "q25", "q75", "q99", "total_intensity",
                   "mean", "max", "saturated_fraction", "noise_sd", "contrast", "bright_contrast", "snr", "edge_width_um")


def assemble_site_qc(
    rows: pd.DataFrame, measures: list[dict], config: QcConfig = QcConfig(), channels: tuple[str, ...] = IMAGE_CHANNELS
) -> pd.DataFrame:
    """Join per-image measures to their ``raw_sites`` rows, apply the QC rules
    (:func:`~ssc_assets.core.ingest.qc.apply_qc_rules`) and the user's overrides.

    Images whose header was already bad keep that error as ``read_error``.
    """
    meas = pd.DataFrame(measures, index=rows.index)
    keep = metadata_columns(rows) + ["channel", "wavelength", "path"]
    keep += [c for c in ("qc_override", "qc_override_note") if c in rows]
    out = pd.concat([rows[keep], meas], axis=1)
    if "header_error" in rows:
        has = rows["header_error"].notna()
        out.loc[has, "read_error"] = rows.loc[has, "header_error"]
    for m in MEASURE_COLUMNS:
        if m not in out:
            out[m] = np.nan
    out = _add_missing_channels(out, channels)
    out["read_error"] = out["read_error"].astype(object).where(out["read_error"].notna(), None)
    return apply_overrides(apply_qc_rules(out, config))


def site_qc_in_process(raw_sites: pd.DataFrame, config: QcConfig = QcConfig()) -> pd.DataFrame:
    """:func:`assemble_site_qc` of every image channel of ``raw_sites``, measured one image
    after the other in this process (tests, benchmarks; the asset maps :func:`qc_one_image`
    over its compute resource)."""
    rows = qc_items(raw_sites)
    return assemble_site_qc(rows, [qc_one_image(i) for i in qc_work_items(rows)], config)


def _add_missing_channels(qc: pd.DataFrame, channels: tuple[str, ...]) -> pd.DataFrame:
    """Add a failing row for every (site, channel) with no image, so the site fails QC."""
    sites = qc.drop_duplicates(SITE_KEY)
    have = set(zip(*(qc[c] for c in SITE_KEY), qc["channel"]))
    extra = []
    site_cols = [c for c in qc.columns if is_metadata(c) or c in ("qc_override", "qc_override_note")]
    for _, site in sites.iterrows():
        key = tuple(site[c] for c in SITE_KEY)
        for ch in channels:
            if key + (ch,) not in have:
                row = {c: site[c] for c in site_cols}
                row.update(channel=ch, path=None, read_error=f"missing image: plate {key[0]} well {key[1]} site {key[2]} has no {ch} file")
                extra.append(row)
    if not extra:
        return qc
    return pd.concat([qc, pd.DataFrame(extra)], ignore_index=True)


def site_table(site_qc: pd.DataFrame) -> pd.DataFrame:
    """One row per site: ``passed_qc``, ``qc_reason``, ``qc_review``, ``review_reason``,
    ``qc_decision`` and the site's acquisition group."""
    agg = {"passed_qc": ("passed_qc", "first"), "qc_reason": ("qc_reason", "first")}
    for col, src in (("qc_review", "qc_review"), ("review_reason", "review_reason_site"), ("qc_decision", "qc_decision"),
                     ("Metadata_AcquisitionGroup", "Metadata_AcquisitionGroup")):
        if src in site_qc:
            agg[col] = (src, "first")
    return site_qc.groupby(SITE_KEY, as_index=False).agg(**agg)


# --------------------------------------------------------------------------- user decisions


def read_overrides(plate_dir: str | os.PathLike) -> tuple[pd.DataFrame, list[str]]:
    """The plate folder's ``qc_overrides.csv`` (well, site, decision, note), validated.

    Returns (overrides with ``Metadata_Well, Metadata_Site, qc_override, qc_override_note``,
    problems naming the file and line of every row that was ignored). Missing file: empty.
    """
    cols = ["Metadata_Well", "Metadata_Site", "qc_override", "qc_override_note"]
    path = os.path.join(str(plate_dir), OVERRIDES_FILE)
    if not os.path.isfile(path):
        return pd.DataFrame(columns=cols), []
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            lines = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return pd.DataFrame(columns=cols), [f"{path}: cannot read ({exc}); no override applied"]
    header = [c.strip().lower() for c in lines[0]] if lines else []
    if not {"well", "site", "decision"} <= set(header):
        return pd.DataFrame(columns=cols), [f"{path}: needs the header well,site,decision[,note]; found {header}"]
    pos = {name: header.index(name) for name in ("well", "site", "decision")}
    note_at = header.index("note") if "note" in header else None
    rows, problems = [], []
    for i, fields in enumerate(lines[1:], start=2):
        try:
            if len(fields) <= max(pos.values()):
                raise ValueError(f"expected {len(header)} fields, got {len(fields)}")
            well = normalize_well(fields[pos["well"]])
            site = int(str(fields[pos["site"]]).strip())
            decision = str(fields[pos["decision"]]).strip().lower()
            if decision not in ("pass", "fail"):
                raise ValueError(f"decision must be pass or fail, got {fields[pos['decision']]!r}")
        except ValueError as exc:
            problems.append(f"{path} line {i}: ignored ({exc})")
            continue
        # an unquoted comma in the last column (the note) is kept as part of the note
        note = ",".join(fields[note_at:]).strip() if note_at is not None and note_at < len(fields) else ""
        rows.append((well, site, decision, note))
    out = pd.DataFrame(rows, columns=cols).drop_duplicates(["Metadata_Well", "Metadata_Site"], keep="last")
    return out, problems


def attach_overrides(table: pd.DataFrame, overrides: pd.DataFrame) -> pd.DataFrame:
    """Add ``qc_override`` ("pass" / "fail" / None) and ``qc_override_note`` to every row."""
    t = table.drop(columns=[c for c in ("qc_override", "qc_override_note") if c in table])
    if overrides.empty:
        t["qc_override"] = None
        t["qc_override_note"] = None
        return t
    o = overrides.astype({"Metadata_Site": t["Metadata_Site"].dtype})
    return t.merge(o, on=["Metadata_Well", "Metadata_Site"], how="left")


def _illumination_mismatches(table: pd.DataFrame, channel_map: ChannelMap) -> list[str]:
    """Wavelengths whose illumination setting (XML or HTD) does not look like their channel."""
    problems = []
    for (w, ch), g in table.groupby(["wavelength", "channel"]):
        names = sorted({str(n) for n in g["Metadata_Illumination"].dropna()})
        spec = channel_map.by_wavelength().get(int(w))
        if not names or spec is None or not spec.htd_names:
            continue
        bad = [n for n in names if not any(tok in n.upper() for tok in spec.htd_names)]
        if bad:
            problems.append(f"w{w} is mapped to {ch!r} ({spec.stain}) but its images say illumination {bad}: check SSC_CHANNEL_MAP")
    return problems


# --------------------------------------------------------------------------- readiness (sensor)


@dataclass(frozen=True)
class PlateReadiness:
    """Whether a plate folder can be ingested now. ``fingerprint`` versions its content."""

    plate_key: str
    complete: bool
    settled: bool
    fingerprint: str
    n_images: int
    n_expected: int
    reason: str

    @property
    def ready(self) -> bool:
        return self.complete and self.settled


def plate_readiness(
    plate_dir: str | os.PathLike,
    channel_map: ChannelMap | None = None,
    settle_seconds: float = 60.0,
    now_ns: int | None = None,
    time_point: int = 1,
    strict_channels: bool | None = None,
) -> PlateReadiness:
    """Decide if a plate folder is complete and settled (cheap: file names and stat only).

    Complete: every expected (well, site, wavelength) has an image, where "expected" comes
    from the HTD (wells x sites x wavelengths) or else from the plate-map wells x sites
    1..(largest site seen) x the plate's channels; a usable plate map must exist, an HTD
    that is present must be usable and, when ``strict_channels`` (see
    :func:`strict_channels_for`), its wavelength names must agree with the channel map.
    Settled: no file changed for ``settle_seconds``.
    """
    channel_map = channel_map or ChannelMap()
    scan = scan_plate(plate_dir, channel_map, time_point)
    now_ns = time.time_ns() if now_ns is None else now_ns
    settled = (now_ns - scan.newest_mtime_ns) >= settle_seconds * 1e9
    wells = None
    reason = ""
    if scan.platemap_path is None:
        reason = "no platemap.csv yet"
    else:
        try:
            wells = read_platemap(scan.platemap_path)["Metadata_Well"].tolist()
        except PlateMapError as exc:
            reason = f"plate map unusable: {exc}"
            wells = None
    sites = scan.images["Metadata_Site"].unique().tolist() if len(scan.images) else []
    waves = plate_wavelengths(scan, channel_map)
    expected = expected_images(scan.htd, wells, waves, sites) if (scan.htd or wells) else set()
    missing = missing_images(scan, wells, channel_map) if expected else []
    absent = missing_required_channels(scan, channel_map, IMAGE_CHANNELS) if len(scan.images) else []
    if not reason and scan.htd_error:
        reason = f"HTD unusable (fix or remove it): {scan.htd_error}"
    if not reason and scan.channel_mismatches and strict_channels_for(channel_map, strict_channels):
        reason = channel_mismatch_message(scan, channel_map)
    complete = bool(expected) and not missing and not absent and scan.platemap_path is not None and not reason
    if not reason:
        if not len(scan.images):
            reason = "no images yet"
        elif absent:
            reason = (f"no images of channel(s) {absent} (wavelengths on the plate: {['w%d' % w for w in waves]}; "
                      f"channel map {channel_map.to_string()})")
        elif missing:
            w, site, wave = missing[0]
            name = channel_map.name_of(wave) or "?"
            reason = f"{len(missing)} of {len(expected)} expected images missing (e.g. {w} s{site} w{wave} ({name}))"
        elif not settled:
            reason = f"files changed less than {settle_seconds:.0f} s ago"
        else:
            reason = "ready"
    return PlateReadiness(
        plate_key=scan.plate_key,
        complete=complete,
        settled=settled,
        fingerprint=scan.fingerprint,
        n_images=len(scan.images),
        n_expected=len(expected),
        reason=reason,
    )
