"""Per-plate image assets: ``illumination_profiles`` -> ``corrected_images`` -> ``masks``."""

import dataclasses
import io

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from ssc_assets.core.image.backgrounds import SIDECAR_SUFFIX, background_settings, load_sidecar
from ssc_assets.core.image.filters import ChannelPreprocess, PreprocessParams
from ssc_assets.core.image.illumination import profile_from_backgrounds
from ssc_assets.core.image.segmentation import DEFAULT_NUCLEUS_DIAMETER_PX, MaskParams, NucleiParams
from ssc_assets.core.image.site_tasks import CorrectSiteTask, MaskSiteTask, correct_site, illumination_background, mask_site
from ssc_assets.core.ingest.acquisition import DEFAULT_PIXEL_SIZE_UM, group_slug
from ssc_assets.core.ingest.channels import IMAGE_CHANNELS
from ssc_assets.core.ingest.site_tables import SITE_KEY
from ssc_assets.core.io.ome_zarr_store import FIELD_STATUSES, HcsPlateWriter, cleanup_stale_tmp, read_site_image, read_site_labels
from ssc_assets.core.io.storage import atomic_write_bytes
from ssc_assets.core.plots import figures
from ssc_assets.defs.automation import IO_RETRY, fail_fast
from ssc_assets.defs.core_defaults import core_field
from ssc_assets.defs.metadata import check_failure_fraction, md_table, site_failures
from ssc_assets.defs.partitions import plates
from ssc_assets.defs.resources import SiteCompute, Storage

_ILL = "ssc_assets.core.image.illumination"
_PRE = "ssc_assets.core.image.filters:PreprocessParams"
_CHAN = "ssc_assets.core.image.filters:ChannelPreprocess"
_SEG = "ssc_assets.core.image.segmentation"
IMAGE_KW = dict(partitions_def=plates, io_manager_key="manifest_io_manager", group_name="images", retry_policy=IO_RETRY)


def passed_images(raw_sites: pd.DataFrame, site_qc: pd.DataFrame) -> pd.DataFrame:
    """``raw_sites`` rows of the image channels for QC-passed sites only."""
    ok = site_qc.loc[site_qc["passed_qc"], SITE_KEY].drop_duplicates()
    rows = raw_sites[raw_sites["channel"].isin(IMAGE_CHANNELS) & raw_sites["header_error"].isna()]
    return rows.merge(ok, on=SITE_KEY, how="inner")


def _group_column(rows: pd.DataFrame) -> str | pd.Series:
    """The acquisition-group column (one group "all" for tables written before groups existed)."""
    return "Metadata_AcquisitionGroup" if "Metadata_AcquisitionGroup" in rows else pd.Series("all", index=rows.index)


def _pixel_size(rows: pd.DataFrame) -> float:
    """A site's pixel size (um) from its raw_sites rows; the documented default if unknown."""
    if "Metadata_PixelSizeUm" in rows:
        v = pd.to_numeric(rows["Metadata_PixelSizeUm"], errors="coerce").dropna()
        if len(v) and v.iloc[0] > 0:
            return float(v.iloc[0])
    return DEFAULT_PIXEL_SIZE_UM


def failed_sites(site_qc: pd.DataFrame) -> pd.DataFrame:
    return site_qc.loc[~site_qc["passed_qc"], SITE_KEY + ["qc_reason"]].drop_duplicates(SITE_KEY)


class IlluminationConfig(dg.Config):
    """Illumination-correction settings (thesis section 2.5)."""

    camera_offset: float | None = Field(
        None, description="Known camera offset (darkfield, raw counts). Unset: estimated from the plate (see docs)."
    )
    sigma_fraction: float = core_field(f"{_ILL}:profile_from_backgrounds.sigma_fraction",
                                       "Gaussian smoothing sigma as a fraction of the image side.")
    k_sd: float = core_field(f"{_ILL}:image_background.k_sd",
                             "Bright-area suppression: replace pixels above local median + k_sd x SD.")
    n_iter: int = core_field(f"{_ILL}:image_background.n_iter", "Bright-area suppression iterations.")
    min_sites_per_group: int = Field(40, description="Warn when an acquisition group has fewer QC-passed sites (profile accuracy, see docs).")


def _profile_png(flatfields: dict[str, np.ndarray]) -> bytes:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(flatfields), figsize=(2.4 * len(flatfields), 2.3), squeeze=False)
    for ax, (ch, ff) in zip(axes[0], flatfields.items()):
        im = ax.imshow(figures.downsample(ff, 128), cmap="magma")
        ax.set_title(f"{ch}: max/min {ff.max() / ff.min():.2f}", fontsize=8)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    return figures.fig_to_png(fig)


@dg.asset(kinds={"python", "numpy"}, code_version="1", **IMAGE_KW)
@fail_fast
def illumination_profiles(
    context: dg.AssetExecutionContext,
    config: IlluminationConfig,
    raw_sites: pd.DataFrame,
    site_qc: pd.DataFrame,
    compute: SiteCompute,
    storage: Storage,
) -> dict:
    """One flatfield per channel of the plate, from its QC-passed images (thesis 2.5).

    Files: ``$SSC_STORAGE_DIR/illumination_profiles/<plate>/<channel>.npy`` (float32 (H, W),
    mean 1). Corrected = (raw - darkfield) x (1 / flatfield). The manifest holds the paths,
    the darkfield (raw counts) and the profile's min/max ratio.

    The per-image background grids come from ``site_qc``'s sidecar
    (``site_qc/<plate>.backgrounds.npz``, computed while QC had the image in memory) when it
    was computed with this config's ``n_iter`` / ``k_sd`` and the image is unchanged; other
    images (or all, without a usable sidecar) are read again (see
    :mod:`ssc_assets.core.image.backgrounds`). Either way the grids, so the profiles, are the same.
    """
    plate = context.partition_key
    rows = passed_images(raw_sites, site_qc)
    if rows.empty:
        raise dg.Failure(description=f"plate {plate}: no QC-passed site, cannot estimate illumination profiles",
                         allow_retries=False)
    shape = (int(rows["height"].iloc[0]), int(rows["width"].iloc[0]))
    manifest: dict = {"plate": plate, "shape": list(shape), "groups": {}}
    cache, why = load_sidecar(storage.path("site_qc", f"{plate}{SIDECAR_SUFFIX}"),
                              background_settings(config.n_iter, config.k_sd))
    if cache is None:
        context.log.info(f"background grids: reading the raw images ({why})")
    n_cached = n_read = 0
    flatfields, summary_rows = {}, []
    for group, grows in rows.groupby(_group_column(rows), sort=False):
        slug = group_slug(str(group))
        n_sites = grows[SITE_KEY].drop_duplicates().shape[0]
        entry = {"slug": slug, "n_sites": n_sites, "channels": {}}
        if n_sites < config.min_sites_per_group:
            context.log.warning(f"acquisition group {group!r}: only {n_sites} QC-passed sites for its illumination "
                                f"profile (recommended >= {config.min_sites_per_group}); the profile is noisier")
        for ch in IMAGE_CHANNELS:
            paths = grows.loc[grows["channel"] == ch, "path"].tolist()
            cached = {p: g for p in paths if cache is not None and (g := cache.get(p, shape)) is not None}
            todo = [p for p in paths if p not in cached]
            results = compute.map(illumination_background, [(p, shape, config.n_iter, config.k_sd) for p in todo]) if todo else []
            computed = dict(zip(todo, results))
            for p, r in computed.items():
                if not r.ok:
                    context.log.warning(f"illumination: skipped {p}: {r.error}")
            # in the order of ``paths`` whichever way a grid was obtained: the same profile
            grids = [cached[p] if p in cached else computed[p].value for p in paths if p in cached or computed[p].ok]
            n_cached, n_read = n_cached + len(cached), n_read + len(todo)
            if not grids:
                continue
            profile = profile_from_backgrounds(
                grids, shape, darkfield=config.camera_offset if config.camera_offset is not None else "auto",
                sigma_fraction=config.sigma_fraction,
            )
            path = storage.path("illumination_profiles", plate, slug, f"{ch}.npy")
            buf = io.BytesIO()
            np.save(buf, profile.flatfield.astype(np.float32))
            atomic_write_bytes(path, buf.getvalue())
            flatfields[f"{ch} | {group}" if len(set(rows[_group_column(rows)])) > 1 else ch] = profile.flatfield
            entry["channels"][ch] = {"flatfield": path, **profile.summary()}
            context.log.info(f"{group} / {ch}: {len(grids)} images, darkfield {profile.darkfield:.1f} ({profile.darkfield_method}), "
                             f"flatfield min/max {profile.min_ratio:.3f}/{profile.max_ratio:.3f}")
            summary_rows.append({"acquisition group": group, "channel": ch, "n_images": len(grids),
                                 "darkfield": round(profile.darkfield, 1), "darkfield_method": profile.darkfield_method,
                                 "min": round(profile.min_ratio, 3), "max": round(profile.max_ratio, 3),
                                 "min/max ratio": round(profile.min_ratio / profile.max_ratio, 3)})
        manifest["groups"][str(group)] = entry
    summary = pd.DataFrame(summary_rows)
    context.add_output_metadata(
        {
            "profiles": dg.MetadataValue.md(figures.png_markdown(_profile_png(flatfields), "flatfields")),
            "summary": dg.MetadataValue.md(md_table(summary)),
            "n_acquisition_groups": len(manifest["groups"]),
            "min_max_ratio": dg.MetadataValue.json({f"{r['acquisition group']} / {r['channel']}": r["min/max ratio"] for r in summary_rows}),
            "folder": dg.MetadataValue.path(storage.path("illumination_profiles", plate)),
            "n_grids_from_site_qc": n_cached,
            "n_images_read": n_read,
        }
    )
    return manifest


class PreprocessConfig(dg.Config):
    """Thesis section 5.1 preprocessing, per channel (radii in px, thresholds in raw counts);
    defaults from :class:`~ssc_assets.core.image.filters.PreprocessParams`. 0 disables a step."""

    nuclei_outlier_radius: float = core_field(f"{_PRE}.nuclei.outlier_radius", "Remove Outliers radius on nuclei (px).")
    nuclei_outlier_threshold: float = core_field(f"{_PRE}.nuclei.outlier_threshold", "Remove Outliers threshold on nuclei (counts).")
    borders_outlier_radius: float = core_field(f"{_PRE}.borders.outlier_radius", "Remove Outliers radius on borders (px).")
    borders_outlier_threshold: float = core_field(f"{_PRE}.borders.outlier_threshold", "Remove Outliers threshold on borders (counts).")
    rolling_ball_radius: float = core_field(f"{_CHAN}.rolling_ball_radius", "Rolling-ball radius (px), ImageJ semantics; 0 disables.")
    rolling_ball_presmooth: bool = core_field(f"{_CHAN}.presmooth", "ImageJ's 3x3 mean pre-smoothing of the background.")
    median_radius: float = core_field(f"{_CHAN}.median_radius", "Median filter radius (px, ImageJ circular kernel); 0 disables.")
    tv_weight: float = core_field(f"{_CHAN}.tv_weight", "TV-denoise weight on the robust [0,1] scale; 0 disables. See docs.")
    crop_fraction: float = core_field(f"{_CHAN}.crop_fraction", "Centre crop as a fraction of the side (1536 on 2048).")
    crop_size: int | None = core_field(f"{_CHAN}.crop_size", "Absolute centre-crop side (px); overrides crop_fraction.")
    reference_pixel_size_um: float = core_field(
        "ssc_assets.core.ingest.acquisition:DEFAULT_PIXEL_SIZE_UM",
        "Radii above are px at this pixel size (um); each site's radii scale with its own pixel size.")
    max_failed_fraction: float = Field(0.05, description="The asset fails if more sites than this fraction raise.")
    n_preview: int = Field(4, description="Sites in the before/after montage.")

    def to_core(self) -> PreprocessParams:
        """The core chain parameters, by keyword (0 here is ``None``, i.e. disabled, in the core)."""
        common = dict(
            rolling_ball_radius=self.rolling_ball_radius or None, presmooth=self.rolling_ball_presmooth,
            median_radius=self.median_radius or None, tv_weight=self.tv_weight or None,
            crop_fraction=self.crop_fraction, crop_size=self.crop_size,
        )
        return PreprocessParams(
            nuclei=ChannelPreprocess(outlier_radius=self.nuclei_outlier_radius, outlier_threshold=self.nuclei_outlier_threshold, **common),
            borders=ChannelPreprocess(outlier_radius=self.borders_outlier_radius, outlier_threshold=self.borders_outlier_threshold, **common),
            actin=ChannelPreprocess(**common),
        )


def qc_failed_plan(raw_sites: pd.DataFrame, site_qc: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """QC-failed sites, split into those whose image channels can all be read (they are
    corrected and written, flagged ``qc_failed``, for review) and those that cannot
    (placeholders flagged ``unreadable``).

    Returns ``(readable_rows, unreadable)``: ``raw_sites`` rows of the image channels of the
    readable QC-failed sites (with ``qc_reason``), and ``Metadata_Well, Metadata_Site,
    qc_reason`` of the unreadable ones. A site is unreadable when an image-channel file has a
    header or read error, or is missing."""
    failed = failed_sites(site_qc)
    if "read_error" in site_qc:
        bad = site_qc.loc[site_qc["channel"].isin(IMAGE_CHANNELS) & site_qc["read_error"].notna(), SITE_KEY].drop_duplicates()
    else:
        bad = pd.DataFrame(columns=SITE_KEY)
    rows = raw_sites[raw_sites["channel"].isin(IMAGE_CHANNELS) & raw_sites["header_error"].isna()]
    rows = rows.merge(failed, on=SITE_KEY, how="inner")
    n_ch = rows.groupby(SITE_KEY)["channel"].transform("nunique")
    rows = rows[n_ch == len(IMAGE_CHANNELS)]
    rows = rows.merge(bad.assign(_bad=True), on=SITE_KEY, how="left")
    rows = rows[rows["_bad"].isna()].drop(columns="_bad")
    readable = rows[SITE_KEY].drop_duplicates()
    unreadable = failed.merge(readable.assign(_ok=True), on=SITE_KEY, how="left")
    unreadable = unreadable[unreadable["_ok"].isna()][["Metadata_Well", "Metadata_Site", "qc_reason"]]
    return rows, unreadable.sort_values(["Metadata_Well", "Metadata_Site"]).reset_index(drop=True)


def _crop_shape(shape: tuple[int, int], params: PreprocessParams) -> tuple[int, int]:
    """(H, W) of a corrected image from a raw ``shape`` (placeholder size when no site is written)."""
    p = params.nuclei
    if p.crop_size:
        return (int(p.crop_size), int(p.crop_size))
    return (int(round(shape[0] * p.crop_fraction)), int(round(shape[1] * p.crop_fraction)))


def _reason(qc_reason) -> str:
    return str(qc_reason) if isinstance(qc_reason, str) and qc_reason else "failed QC"


def _field_records(flags: dict) -> list[dict]:
    """Manifest ``fields``: one record per field of a store (every well x site, flagged)."""
    keep = ("status", "placeholder", "passed_qc", "reason", "qc_reason", "error", "pixel_size_um")
    return [{"well": w, "site": int(s), **{k: f[k] for k in keep if k in f}} for (w, s), f in sorted(flags.items())]


@dg.asset(kinds={"python", "zarr"}, code_version="2", **IMAGE_KW)
@fail_fast
def corrected_images(
    context: dg.AssetExecutionContext,
    config: PreprocessConfig,
    raw_sites: pd.DataFrame,
    site_qc: pd.DataFrame,
    illumination_profiles: dict,
    compute: SiteCompute,
    storage: Storage,
) -> dict:
    """Illumination-corrected, preprocessed sites (thesis 5.1) as an OME-Zarr HCS plate.

    Chain per channel: (raw - darkfield) / flatfield -> Remove Outliers (nuclei, borders) ->
    rolling ball -> median -> TV denoise -> centre crop. File:
    ``$SSC_STORAGE_DIR/corrected_images/<plate>.ome.zarr`` (channels nuclei, borders, actin;
    float32). Every well holds the same fields, so every NGFF reader opens the plate:
    QC-failed sites are corrected and written too, for review, flagged ``qc_failed`` in the
    field's ``attrs["ssc"]``; a site that raises or cannot be read gets a NaN placeholder
    flagged ``error`` / ``unreadable``. The manifest's ``sites`` (what downstream assets use)
    lists QC-passed, written sites only; ``fields`` lists every field with its flags. A
    QC-passed site that raises is listed with its files and error, and the asset fails only
    above ``max_failed_fraction``.
    """
    plate = context.partition_key
    rows = passed_images(raw_sites, site_qc)
    failed_rows, unreadable = qc_failed_plan(raw_sites, site_qc)
    shape = tuple(illumination_profiles["shape"])
    profiles = {g: tuple((ch, v["flatfield"], float(v["darkfield"])) for ch, v in e["channels"].items())
                for g, e in illumination_profiles["groups"].items()}
    params = config.to_core()
    tasks, site_px, info, no_profile = _correction_plan(rows, failed_rows, profiles, shape, params, config)
    store = storage.path("corrected_images", f"{plate}.ome.zarr")
    cleanup_stale_tmp(storage.path("corrected_images"))
    with HcsPlateWriter(store, plate, list(IMAGE_CHANNELS), uniform_fields=True,
                        placeholder_shape=_crop_shape(shape, params)) as writer:
        if writer.workers_can_write(compute.backend):  # each worker writes its own site's arrays
            tasks = [dataclasses.replace(t, out=writer.prepare_site(t.well, t.site), channel_names=tuple(IMAGE_CHANNELS))
                     for t in tasks]
        sink = _CorrectedSink(context, writer, plate, tasks, info)
        for w, s_, px, qc_reason, group in no_profile:
            writer.write_placeholder(w, s_, "error", f"no illumination profile for acquisition group {group!r}",
                                     {"plate": plate, "passed_qc": False, "qc_reason": qc_reason, "pixel_size_um": px})
        for r in unreadable.itertuples(index=False):
            writer.write_placeholder(r.Metadata_Well, int(r.Metadata_Site), "unreadable", _reason(r.qc_reason),
                                     {"plate": plate, "passed_qc": False, "qc_reason": _reason(r.qc_reason)})
        results = compute.map(correct_site, tasks, on_result=sink)
        passed_idx = [k for k, i in enumerate(info) if i["passed"]]
        failures = site_failures([results[k] for k in passed_idx], [tasks[k] for k in passed_idx], context, "correction")
        check_failure_fraction(failures, len(passed_idx), config.max_failed_fraction, "corrected_images")
    skipped = failed_sites(site_qc)
    out_shape, previews = sink.out_shape, sink.previews
    written = [(t.well, t.site) for t, r, i in zip(tasks, results, info) if r.ok and i["passed"]]
    flags = writer.flags
    field_status = pd.Series([f["status"] for f in flags.values()]).value_counts().to_dict() if flags else {}
    qc_table = _qc_failed_table(skipped, flags)
    seconds = [r.seconds for r, i in zip(results, info) if r.ok and i["passed"]]
    metadata = {
        "store": dg.MetadataValue.path(store),
        "n_sites": int(len(written)),
        "n_fields": int(len(flags)),
        "fields_per_well": int(max((len(v) for v in writer.fields.values()), default=0)),
        "field_status": dg.MetadataValue.json({str(k): int(v) for k, v in field_status.items()}),
        "n_qc_failed": int(len(skipped)),
        "qc_failed_sites": dg.MetadataValue.md(md_table(qc_table)),
        "n_failed": int(len(failures)),
        "failed_sites": dg.MetadataValue.md(md_table(failures)),
        "image_shape": "x".join(map(str, out_shape or ())),
        "pixel_size_um": ", ".join(f"{p:g}" for p in sorted({round(p, 4) for _, _, p in site_px})),
        "seconds_per_site": round(float(np.mean(seconds)), 2) if seconds else 0.0,
        "params": dg.MetadataValue.json(config.model_dump()),
    }
    if previews:
        metadata["before_after"] = dg.MetadataValue.md(_before_after_markdown(previews))
    context.add_output_metadata(metadata)
    px_of = {(w, s_): p for w, s_, p in site_px}
    return {"plate": plate, "store": store, "channels": list(IMAGE_CHANNELS), "sites": written,
            "pixel_size_um": [[w, s_, px_of[(w, s_)]] for w, s_ in written],
            "side": int(min(out_shape[-2:])) if out_shape else 0,
            "failed": failures.to_dict("records"), "skipped_qc": skipped[["Metadata_Well", "Metadata_Site"]].values.tolist(),
            "fields": _field_records(flags)}


class _CorrectedSink:
    """``on_result`` of the correction map: records each site its worker wrote to the store
    (or writes the returned image), a failed one as an ``error`` placeholder; keeps the
    previews and the output shape, logs progress."""

    def __init__(self, context: dg.AssetExecutionContext, writer: HcsPlateWriter, plate: str, tasks: list, info: list[dict]):
        self.context, self.writer, self.plate, self.tasks, self.info = context, writer, plate, tasks, info
        self.n_passed = sum(i["passed"] for i in info)
        self.done, self.out_shape, self.previews = 0, None, []

    def __call__(self, r) -> None:
        self.done += 1
        t, i = self.tasks[r.key], self.info[r.key]
        md = {"plate": self.plate, "passed_qc": i["passed"], "pixel_size_um": i["pixel_size_um"],
              **({} if i["passed"] else {"qc_reason": i["qc_reason"]})}
        if r.ok:
            status = "ok" if i["passed"] else "qc_failed"
            if "written" in r.value:  # the worker wrote the pixels into the prepared field
                self.writer.record_site(t.well, t.site, r.value["written"], metadata=md, status=status, reason=i["qc_reason"])
                shape = tuple(r.value["written"]["shape"])
            else:
                self.writer.write_site(t.well, t.site, r.value["image"], metadata=md, status=status, reason=i["qc_reason"])
                shape = r.value["image"].shape
            if i["passed"]:
                self.out_shape = shape
            if "raw_preview" in r.value:
                self.previews.append((t, r.value["raw_preview"], r.value["corrected_preview"]))
        else:
            if not i["passed"]:  # e.g. a blank or saturated image the chain cannot handle
                self.context.log.warning(f"correction failed for QC-failed site {t.well} s{t.site}: {r.error}")
            self.writer.write_placeholder(t.well, t.site, "error", f"correction raised: {r.error}", {**md, "error": r.error})
        n = len(self.tasks)
        if self.done % max(1, n // 10) == 0 or self.done == n:
            self.context.log.info(f"corrected {self.done}/{n} sites ({self.n_passed} QC-passed)")


def _correction_plan(rows: pd.DataFrame, failed_rows: pd.DataFrame, profiles: dict, shape: tuple, params, config):
    """``(tasks, [[well, site, pixel size]], per-task info, no_profile)``: one correction task per
    QC-passed site, then per QC-failed site whose acquisition group has a profile; ``no_profile``
    holds the QC-failed sites of a group without one (no QC-passed site in it)."""
    tasks, site_px, info, no_profile = [], [], [], []
    for passed, site_rows in ((True, rows), (False, failed_rows)):
        group_col = _group_column(site_rows)
        for (well, site), grp in site_rows.groupby(["Metadata_Well", "Metadata_Site"], sort=True):
            paths = dict(zip(grp["channel"], grp["path"]))
            px = _pixel_size(grp)
            group = str(grp[group_col].iloc[0])
            qc_reason = None if passed else _reason(grp["qc_reason"].iloc[0])
            if not passed and group not in profiles:
                no_profile.append((well, int(site), px, qc_reason, group))
                continue
            site_px.append([well, int(site), px])
            info.append({"passed": passed, "qc_reason": qc_reason, "pixel_size_um": px})
            tasks.append(CorrectSiteTask(well, int(site), tuple((ch, paths[ch]) for ch in IMAGE_CHANNELS if ch in paths),
                                         profiles[group], shape, params.scaled(config.reference_pixel_size_um / px),
                                         preview=passed and len(tasks) < config.n_preview))
    return tasks, site_px, info, no_profile


def _qc_failed_table(skipped: pd.DataFrame, flags: dict) -> pd.DataFrame:
    """The QC-failed sites and what the store holds for each (corrected and flagged, or a placeholder)."""
    qc_table = skipped[["Metadata_Well", "Metadata_Site", "qc_reason"]].copy()
    qc_table["in store"] = [
        "corrected (flagged qc_failed)" if not flags.get((w, int(s_)), {}).get("placeholder", True)
        else f"placeholder: {flags.get((w, int(s_)), {}).get('reason', '?')}"
        for w, s_ in zip(qc_table["Metadata_Well"], qc_table["Metadata_Site"])
    ]
    return qc_table


def _before_after_markdown(previews: list[tuple]) -> str:
    """Montage of raw / corrected previews, per site and channel."""
    tiles, labels = [], []
    for t, raw, cor in sorted(previews, key=lambda p: (p[0].well, p[0].site)):
        for i, ch in enumerate(IMAGE_CHANNELS):
            tiles += [raw[i], cor[i]]
            labels += [f"{t.well} s{t.site} {ch} raw", f"{t.well} s{t.site} {ch} corrected"]
    return figures.png_markdown(figures.montage(tiles, labels, ncols=6), "before/after")


class MasksConfig(dg.Config):
    """Mask settings; sizes in px of the corrected images. Defaults from
    :class:`~ssc_assets.core.image.segmentation.MaskParams`."""

    nucleus_diameter_um: float = core_field(
        f"{_SEG}:DEFAULT_NUCLEUS_DIAMETER_UM",
        "Expected nucleus equivalent diameter (um); in px it follows each site's pixel size, "
        "and the watershed parameters derive from it.")
    regularization: float = core_field(f"{_SEG}:MaskParams.regularization", "Propagation regularization (CellProfiler default 0.05).")
    propagate_scale: int = core_field(f"{_SEG}:MaskParams.propagate_scale", "Propagate on a grid downsampled by this factor (1 = full resolution).")
    border_width_px: int = core_field(f"{_SEG}:MaskParams.border_width_px", "Width of the borders mask.")
    w0: float = core_field(f"{_SEG}:MaskParams.w0", "U-Net weight map border weight.")
    sigma: float = core_field(f"{_SEG}:MaskParams.sigma", "U-Net weight map border decay (px).")
    max_failed_fraction: float = Field(0.05, description="The asset fails if more sites than this fraction raise.")
    n_overlays: int = Field(4, description="Sites shown as overlays in the metadata.")

    def to_core(self, pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM) -> MaskParams:
        """Mask parameters for a site of ``pixel_size_um``, by keyword: the nucleus diameter in
        px, and propagation at full resolution once objects are small (binned images)."""
        diameter_px = self.nucleus_diameter_um / pixel_size_um
        scale = self.propagate_scale if diameter_px >= 2 * DEFAULT_NUCLEUS_DIAMETER_PX / 3 else 1
        return MaskParams(nuclei=NucleiParams(expected_diameter_px=diameter_px), regularization=self.regularization,
                          propagate_scale=scale, border_width_px=self.border_width_px, w0=self.w0, sigma=self.sigma)


def _overlay_png(store: str, sites: list, masks_store: str) -> bytes:
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    fig, axes = plt.subplots(1, len(sites), figsize=(3 * len(sites), 3.1), squeeze=False)
    for ax, (well, site) in zip(axes[0], sites):
        img = read_site_image(store, well, site)
        rgb = np.repeat(figures.to_display(img[1])[..., None], 3, axis=-1) * 0.8  # borders channel, grey
        cells = read_site_labels(masks_store, well, site, "cells")
        nuc = read_site_labels(masks_store, well, site, "nuclei")
        rgb[find_boundaries(cells)] = (1, 1, 0)
        rgb[find_boundaries(nuc)] = (0, 1, 1)
        ax.imshow(rgb)
        ax.set_title(f"{well} s{site}: cells (yellow), nuclei (cyan)", fontsize=7)
        ax.axis("off")
    return figures.fig_to_png(fig)


#: Label images of the masks store and their dtypes (placeholders use them when no site is written).
MASK_LABELS = {"nuclei": "int32", "cells": "int32", "borders": "uint8", "actin": "uint8", "actin_inside_cells": "uint8"}


def per_site_counts(summaries: list[dict], pixel_size_um: dict, rounded: bool = True) -> pd.DataFrame:
    """The masks' per-site counts, sorted by well and site, with areas in px and in um^2 (from
    each site's pixel size). ``rounded``: counts as integers, areas with 1 decimal, fractions
    with 3 (the metadata table); otherwise full precision (for plate means)."""
    if not summaries:
        return pd.DataFrame()
    df = pd.DataFrame(summaries).sort_values(["Metadata_Well", "Metadata_Site"]).reset_index(drop=True)
    df["Metadata_Site"] = df["Metadata_Site"].astype(int)
    df["pixel_size_um"] = [float(pixel_size_um.get((w, s_), DEFAULT_PIXEL_SIZE_UM))
                           for w, s_ in zip(df["Metadata_Well"], df["Metadata_Site"])]
    for what in ("cell", "nucleus"):
        col = f"mean_{what}_area_px"
        if col in df:
            df.insert(df.columns.get_loc(col) + 1, f"mean_{what}_area_um2", df[col].astype(float) * df["pixel_size_um"] ** 2)
    if not rounded:
        return df
    decimals = {c: 1 for c in df.columns if "_area_" in c}
    decimals.update({c: 3 for c in df.columns if c.endswith("_fraction")}, pixel_size_um=4)
    out = df.round(decimals)
    for c in ("n_nuclei", "n_cells"):
        if c in out:
            out[c] = out[c].round().astype(int)
    return out


@dg.asset(kinds={"python", "zarr"}, code_version="2", **IMAGE_KW)
@fail_fast
def masks(
    context: dg.AssetExecutionContext, config: MasksConfig, corrected_images: dict, compute: SiteCompute, storage: Storage
) -> dict:
    """Nuclei, cells (Voronoi propagation), borders, actin, actin-inside-cells and the U-Net
    weight map per site, as NGFF labels in ``$SSC_STORAGE_DIR/masks/<plate>.ome.zarr``.

    Each field's image is the weight map (float32); its ``labels/`` hold nuclei and cells
    (int32 instances) and borders, actin, actin_inside_cells (uint8 0/1). Masks are computed
    for the corrected store's QC-passed sites; every other field of that store (QC-failed,
    placeholder) gets a placeholder here too (NaN weight map, empty labels) with the same
    flag, and a site whose masks raise one flagged ``error``, so every well has the same fields.
    """
    plate = context.partition_key
    store = corrected_images["store"]
    px = {(w, int(s_)): float(p) for w, s_, p in corrected_images.get("pixel_size_um", [])}
    tasks = [MaskSiteTask(store, w, int(s), tuple(corrected_images["channels"]), config.to_core(px.get((w, int(s)), DEFAULT_PIXEL_SIZE_UM)))
             for w, s in corrected_images["sites"]]
    ok_sites = {(w, int(s)) for w, s in corrected_images["sites"]}
    others = [f for f in corrected_images.get("fields", []) if (f["well"], int(f["site"])) not in ok_sites]
    masks_store = storage.path("masks", f"{plate}.ome.zarr")
    cleanup_stale_tmp(storage.path("masks"))
    side = int(corrected_images.get("side") or 0)
    summaries = []
    with HcsPlateWriter(masks_store, plate, ["weight_map"], uniform_fields=True,
                        placeholder_shape=(side, side) if side else None, placeholder_labels=MASK_LABELS) as writer:
        if writer.workers_can_write(compute.backend):  # each worker writes its own site's masks
            tasks = [dataclasses.replace(t, out=writer.prepare_site(t.well, t.site)) for t in tasks]

        def write(r) -> None:
            t = tasks[r.key]
            p = px.get((t.well, t.site), DEFAULT_PIXEL_SIZE_UM)
            md = {"plate": plate, "passed_qc": True, "pixel_size_um": p}
            if r.ok:
                if "written" in r.value:
                    writer.record_site(t.well, t.site, r.value["written"], metadata=md)
                else:
                    m = r.value["masks"]
                    writer.write_site(t.well, t.site, m["weight_map"][None],
                                      labels={k: v for k, v in m.items() if k != "weight_map"}, metadata=md)
                summaries.append({"Metadata_Well": t.well, "Metadata_Site": t.site, **r.value["summary"]})
            else:
                writer.write_placeholder(t.well, t.site, "error", f"masks raised: {r.error}", {**md, "error": r.error})

        _mirror_flagged_fields(writer, plate, others)
        results = compute.map(mask_site, tasks, on_result=write)
        failures = site_failures(results, tasks, context, "masks")
        check_failure_fraction(failures, len(tasks), config.max_failed_fraction, "masks")
    per_site = per_site_counts(summaries, px, rounded=False)
    flags = writer.flags
    field_status = pd.Series([f["status"] for f in flags.values()]).value_counts().to_dict() if flags else {}
    seconds = [r.seconds for r in results if r.ok]
    metadata = {
        "store": dg.MetadataValue.path(masks_store),
        "n_sites": int(len(per_site)),
        "n_fields": int(len(flags)),
        "field_status": dg.MetadataValue.json({str(k): int(v) for k, v in field_status.items()}),
        "n_failed": int(len(failures)),
        "failed_sites": dg.MetadataValue.md(md_table(failures)),
        "seconds_per_site": round(float(np.mean(seconds)), 2) if seconds else 0.0,
        "params": dg.MetadataValue.json(config.model_dump()),
    }
    if len(per_site):
        metadata.update(_mask_count_metadata(per_site, summaries, px, store, masks_store, config.n_overlays))
    context.add_output_metadata(metadata)
    return {"plate": plate, "store": masks_store, "image_store": store,
            "labels": list(MASK_LABELS), "image": "weight_map",
            "sites": [[r["Metadata_Well"], int(r["Metadata_Site"])] for r in summaries],
            "failed": failures.to_dict("records"), "fields": _field_records(flags)}


def _mirror_flagged_fields(writer: HcsPlateWriter, plate: str, fields: list[dict]) -> None:
    """A placeholder for each of the corrected store's flagged fields: same flag, no masks."""
    for f in fields:
        status = f.get("status") if f.get("status") in FIELD_STATUSES and f.get("status") != "ok" else "error"
        reason = f.get("reason") or f.get("qc_reason") or status
        writer.write_placeholder(f["well"], int(f["site"]), status, f"no masks: {reason}",
                                 {"plate": plate, **{k: f[k] for k in ("passed_qc", "qc_reason", "error", "pixel_size_um") if k in f}})


def _mask_count_metadata(per_site: pd.DataFrame, summaries: list[dict], px: dict, store: str, masks_store: str,
                         n_overlays: int) -> dict:
    """Nuclei and cell counts and areas over the plate's sites, the per-site table and overlays."""
    sites = [tuple(x) for x in per_site[["Metadata_Well", "Metadata_Site"]].values[:n_overlays]]
    return {
        "nuclei_per_site_mean": round(float(per_site["n_nuclei"].mean()), 1),
        "nuclei_per_site_min": int(per_site["n_nuclei"].min()),
        "cells_per_site_mean": round(float(per_site["n_cells"].mean()), 1),
        "mean_cell_area_px": round(float(per_site["mean_cell_area_px"].mean()), 1),
        "mean_cell_area_um2": round(float(per_site["mean_cell_area_um2"].mean()), 1),
        "mean_nucleus_area_um2": round(float(per_site["mean_nucleus_area_um2"].mean()), 1),
        "per_site_counts": dg.MetadataValue.md(md_table(per_site_counts(summaries, px))),
        "overlays": dg.MetadataValue.md(figures.png_markdown(_overlay_png(store, sites, masks_store), "overlays")),
    }
