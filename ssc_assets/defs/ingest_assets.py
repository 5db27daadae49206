"""Per-plate ingestion assets: ``raw_sites`` (file index) and ``site_qc`` (quality control)."""


import dataclasses

import dagster as dg
import pandas as pd
from pydantic import Field

from ssc_assets.core.image.backgrounds import SIDECAR_SUFFIX, background_settings, write_sidecar
from ssc_assets.core.ingest.acquisition import acquisition_summary, channel_exposures
from ssc_assets.core.ingest.channels import IMAGE_CHANNELS
from ssc_assets.core.ingest.qc import CHANNEL_SEP, QC_HISTOGRAM_MEASURES, QcConfig, failure_counts, qc_thresholds
from ssc_assets.core.ingest.site_tables import (
    SITE_KEY,
    assemble_site_qc,
    build_raw_sites,
    qc_items,
    qc_one_image,
    qc_work_items,
    site_table,
)
from ssc_assets.core.io.storage import write_text
from ssc_assets.core.io.tiff import ImageReadError, read_image
from ssc_assets.core.plots import figures
from ssc_assets.defs.core_defaults import core_field
from ssc_assets.defs.metadata import md_table
from ssc_assets.defs.partitions import plates
from ssc_assets.defs.resources import PlateSource, SiteCompute, Storage

INGEST_KW = dict(partitions_def=plates, io_manager_key="parquet_io_manager", group_name="ingest",
                 kinds={"python", "parquet"}, code_version="2")


@dg.asset(check_specs=[dg.AssetCheckSpec("plate_complete", asset="raw_sites", description=(
    "Every plate-map well has all its sites and channels, and the plate map agrees with the files."))], **INGEST_KW)
def raw_sites(context: dg.AssetExecutionContext, plate_source: PlateSource, storage: Storage):
    """Index of one plate: one row per site x channel image (never modifies the plate folder).

    Stored as ``$SSC_STORAGE_DIR/raw_sites/<plate>.parquet``; ignored files and the reason are
    in ``raw_sites/<plate>.excluded.csv`` and in the metadata.
    """
    plate = context.partition_key
    plate_dir = plate_source.plate_dir(plate)
    raw = build_raw_sites(plate_dir, plate_source.channels(), plate_source.time_point)
    table = raw.table
    excluded_path = storage.path("raw_sites", f"{plate}.excluded.csv")
    write_text(excluded_path, raw.excluded.to_csv(index=False))
    bad = table[table["header_error"].notna()]
    for err in bad["header_error"]:
        context.log.warning(err)
    for p in raw.problems:
        context.log.warning(p)
    shapes = table.loc[table["header_error"].isna(), ["height", "width"]].drop_duplicates()
    metadata = {
        "plate_folder": dg.MetadataValue.path(str(plate_dir)),
        "n_wells": table["Metadata_Well"].nunique(),
        "n_sites": table[SITE_KEY].drop_duplicates().shape[0],
        "n_channels": table["channel"].nunique(),
        "channels": ", ".join(sorted(table["channel"].unique())),
        "n_images": len(table),
        "image_shape": ", ".join(f"{h}x{w}" for h, w in shapes.itertuples(index=False)),
        "time_points_available": ", ".join(map(str, raw.scan.timepoints)),
        "time_point_used": plate_source.time_point,
        "htd": dg.MetadataValue.path(raw.scan.htd.path) if raw.scan.htd else "none",
        "n_excluded_files": len(raw.excluded),
        "excluded_files": dg.MetadataValue.md(md_table(raw.excluded)),
        "excluded_csv": dg.MetadataValue.path(excluded_path),
        "n_bad_images": len(bad),
        "bad_images": dg.MetadataValue.md(md_table(bad[["path", "header_error"]])),
        "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in raw.problems) or "_none_"),
        "acquisition": dg.MetadataValue.md(md_table(acquisition_summary(table))),
        "exposures_ms": dg.MetadataValue.md(md_table(channel_exposures(table))),
        "n_acquisition_groups": int(table["Metadata_AcquisitionGroup"].nunique()),
        "objectives": ", ".join(sorted(table["Metadata_Objective"].astype(str).unique())),
        "pixel_size_um": ", ".join(f"{v:.4g}" for v in sorted(table["Metadata_PixelSizeUm"].unique())),
        "metadata_source": ", ".join(sorted(table["Metadata_AcquisitionSource"].astype(str).unique())),
        "n_user_overrides": int(table.drop_duplicates(SITE_KEY)["qc_override"].notna().sum()),
        "fingerprint": raw.scan.fingerprint,
    }
    yield dg.Output(table, metadata=metadata, data_version=dg.DataVersion(raw.scan.fingerprint))
    missing = pd.DataFrame(raw.missing, columns=["well", "site", "wavelength"])
    names = plate_source.channels().by_wavelength()
    missing["channel"] = [names[w].name if w in names else "?" for w in missing["wavelength"]]
    passed = missing.empty and not raw.wells_without_images and not any(
        ("not acquired" in p or "not found on the plate" in p) for p in raw.problems)
    yield dg.AssetCheckResult(
        check_name="plate_complete",
        asset_key="raw_sites",
        passed=bool(passed),
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"plate {plate}: complete" if passed else "; ".join(
            [f"plate {plate}: {len(missing)} expected images missing"] * bool(len(missing)) + raw.problems
            + [f"plate-map wells without images: {', '.join(raw.wells_without_images)}"] * bool(raw.wells_without_images)),
        metadata={
            "plate": plate,
            "n_missing_images": len(missing),
            "missing_images": dg.MetadataValue.md(md_table(missing)),
            "wells_without_images": ", ".join(raw.wells_without_images) or "none",
        },
    )


_QC = "ssc_assets.core.ingest.qc:QcConfig"


def _qc(field: str, description: str):
    """A launchpad field with the default of ``QcConfig.<field>``."""
    return core_field(f"{_QC}.{field}", description)


class SiteQcConfig(dg.Config):
    """QC settings (editable in the launchpad; defaults from :class:`~ssc_assets.core.ingest.qc.QcConfig`)."""

    max_saturated_fraction: float = _qc("max_saturated_fraction", "Fail an image with more than this fraction of pixels at the camera maximum.")
    min_nuclei_snr: float = _qc("min_nuclei_snr", "Fail a nuclei image whose q99 - median is below this many noise SDs (empty field, no stain).")
    min_nuclei_contrast_ratio: float = _qc(
        "min_nuclei_contrast_ratio", "Fail a nuclei image with less than this fraction of its well's nuclei contrast (cell-free field).")
    max_edge_width_um: float = _qc("max_edge_width_um", "Fail nuclei whose edge blur sigma exceeds this many um (out of focus).")
    max_edge_width_px: float = _qc("max_edge_width_px", "... or this many pixels, whichever is larger.")
    z_focus: float = _qc("z_focus", "Fail a site this many robust SDs less sharp than its well / acquisition group.")
    debris_ratio: float = _qc("debris_ratio", "Fail a site whose q99 - q01 is this many times its well's, in nuclei and another channel (debris).")
    z_review: float = _qc("z_review", "Intensity robust z (within the acquisition group) beyond which a site is flagged for review, never failed.")
    max_failed_fraction: float = Field(0.1, description="The check warns when more sites than this fraction fail QC.")
    n_gallery: int = Field(24, description="Failed and review-flagged sites shown in the review gallery.")

    def to_core(self) -> QcConfig:
        """The core QC rules, by keyword (fields QcConfig has and this Config sets; the others keep their default)."""
        return QcConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(QcConfig) if f.name in type(self).model_fields})


def _overridden(qc: pd.DataFrame) -> pd.DataFrame:
    """Sites with a user decision: well, site, decision, note and the automatic reason."""
    if "qc_decision" not in qc:
        return pd.DataFrame()
    rows = qc[qc["qc_decision"] != "auto"].drop_duplicates(SITE_KEY)
    return pd.DataFrame({"Metadata_Well": rows["Metadata_Well"], "Metadata_Site": rows["Metadata_Site"],
                         "decision": rows["qc_decision"], "note": rows.get("qc_override_note"),
                         "reason": rows["qc_reason"]})


def _trigger_channel(reason: str, default: str = "nuclei") -> str:
    """The first channel named in a site-level reason ("borders: ..."), else ``default``."""
    for part in str(reason).split(CHANNEL_SEP):
        ch = part.split(":", 1)[0].strip()
        if ch in IMAGE_CHANNELS:
            return ch
    return default


def _gallery(qc: pd.DataFrame, sites: pd.DataFrame, n: int) -> str:
    """Thumbnails of failed and review-flagged sites, each showing the channel its reason
    names, on the plate's typical grey range for that channel (so an empty field looks
    empty), captioned with the full reason. Up to ``n`` tiles, a third kept for review sites."""
    failed = sites[~sites["passed_qc"]].assign(status="failed", why=lambda d: d["qc_reason"])
    review = sites[sites["passed_qc"] & sites["qc_review"]].assign(status="review", why=lambda d: d["review_reason"])
    n_review = min(len(review), max(n // 3, n - len(failed)))
    chosen = pd.concat([failed.head(n - n_review), review.head(n_review)])
    if chosen.empty:
        return "_no failed or review-flagged site_"
    ok = qc[qc["passed_qc"] & qc["read_error"].isna()] if qc["passed_qc"].any() else qc[qc["read_error"].isna()]
    typical = ok.groupby("channel").agg(lo=("q01", "median"), hi=("q99", "median"))
    tiles, ranges = [], []
    for r in chosen.itertuples():
        ch = _trigger_channel(r.why)
        img_rows = qc[(qc["Metadata_Well"] == r.Metadata_Well) & (qc["Metadata_Site"] == r.Metadata_Site)
                      & qc["path"].notna() & qc["read_error"].isna()]
        img_rows = img_rows.sort_values("channel", key=lambda c: c != ch)
        tile, shown = None, ch
        for row in img_rows.itertuples():
            try:
                tile, shown = figures.downsample(read_image(row.path), 200), row.channel
                break
            except ImageReadError:
                continue
        rng = typical.loc[shown] if shown in typical.index else None
        ranges.append((float(rng.lo), float(rng.hi)) if rng is not None and rng.hi > rng.lo else None)
        tiles.append((tile, f"{r.Metadata_Well} s{r.Metadata_Site} ({shown})", r.why, r.status))
    left = (len(failed) + len(review)) - len(chosen)
    footer = f"{left} more failed or review-flagged sites not shown (see the tables)" if left else ""
    return figures.png_markdown(figures.review_gallery(tiles, display_range=ranges, footer=footer), "QC review gallery")


@dg.asset(check_specs=[dg.AssetCheckSpec("qc_failure_fraction", asset="site_qc", description=(
    "The fraction of sites failing QC stays below max_failed_fraction (warning)."))], **INGEST_KW)
def site_qc(context: dg.AssetExecutionContext, config: SiteQcConfig, raw_sites: pd.DataFrame, compute: SiteCompute,
            storage: Storage):
    """QC per site x channel: artifacts fail a site, intensity outliers only flag it for review.

    Measures: CellProfiler focus score (PowerLogLogSlope), pixels at the camera maximum,
    nuclei signal-to-noise, nuclei edge blur (um), intensity statistics. Rules: absolute
    (saturation, empty field, focus) and relative to the site's well and acquisition group,
    never to plate-wide intensity levels (see docs/ingest-qc.md). User decisions in the plate
    folder's ``qc_overrides.csv`` are applied last.

    Stored as ``$SSC_STORAGE_DIR/site_qc/<plate>.parquet``. Downstream assets skip sites with
    ``passed_qc == False``. While each image is in memory, its worker also computes the
    illumination background grids (default ``IlluminationConfig`` settings), written to
    ``site_qc/<plate>.backgrounds.npz`` for ``illumination_profiles``, which then reads no raw
    image again (see :mod:`ssc_assets.core.image.backgrounds`).
    """
    rows = qc_items(raw_sites, IMAGE_CHANNELS)
    bg_settings = background_settings()
    items = [(*it, bg_settings) for it in qc_work_items(rows)]
    done = {"n": 0}

    def progress(result) -> None:
        done["n"] += 1
        if done["n"] % max(1, len(items) // 10) == 0 or done["n"] == len(items):
            context.log.info(f"QC {done['n']}/{len(items)} images")

    results = compute.map(qc_one_image, items, on_result=progress)
    measures = [
        {k: v for k, v in r.value.items() if not k.startswith("_")} if r.error is None
        else {"read_error": f"{items[i][0]}: {r.error}"} for i, r in enumerate(results)
    ]
    grids = {it[0]: (r.value["_background"], it[1], r.value.get("_stamp")) for it, r in zip(items, results)
             if r.error is None and r.value.get("_background") is not None}
    try:  # only a cache: illumination_profiles reads the images when it is missing
        sidecar = write_sidecar(storage.path("site_qc", f"{context.partition_key}{SIDECAR_SUFFIX}"), grids, bg_settings)
    except OSError as exc:
        context.log.warning(f"background grids not saved ({exc}); illumination_profiles will read the images")
        sidecar = None
    qc_config = config.to_core()
    qc = assemble_site_qc(rows, measures, qc_config)
    sites = site_table(qc)
    failed = sites[~sites["passed_qc"]]
    review = sites[sites["passed_qc"] & sites["qc_review"]]
    for r in failed.itertuples():
        context.log.warning(f"site {r.Metadata_Well} s{r.Metadata_Site} failed QC: {r.qc_reason}")
    hist = figures.qc_histograms(qc, QC_HISTOGRAM_MEASURES, title=f"{context.partition_key}: QC per channel",
                                 thresholds=qc_thresholds(qc_config, qc))
    frac = len(failed) / max(len(sites), 1)
    by_group = sites.groupby("Metadata_AcquisitionGroup").agg(
        n_sites=("passed_qc", "size"), failed=("passed_qc", lambda s: int((~s).sum())),
        review=("qc_review", "sum")).reset_index().rename(columns={"Metadata_AcquisitionGroup": "acquisition group"})
    by_reason = failure_counts(failed["qc_reason"])
    metadata = {
        "n_sites": len(sites),
        "n_sites_failed": len(failed),
        "n_sites_review": len(review),
        "failed_fraction": round(frac, 4),
        "failed_by_reason": dg.MetadataValue.md(md_table(by_reason)),
        "by_acquisition_group": dg.MetadataValue.md(md_table(by_group)),
        "failed_by_reason_note": "a site with several reasons counts once under each",
        "failed_sites": dg.MetadataValue.md(md_table(failed[["Metadata_Well", "Metadata_Site", "qc_reason", "qc_decision"]])),
        "review_sites": dg.MetadataValue.md(md_table(review[["Metadata_Well", "Metadata_Site", "review_reason"]])),
        "overridden_sites": dg.MetadataValue.md(md_table(_overridden(qc))),
        "review_gallery": dg.MetadataValue.md(_gallery(qc, sites, config.n_gallery)),
        "qc_histograms": dg.MetadataValue.md(figures.png_markdown(hist, "QC histograms")),
        "user_overrides": int((sites["qc_decision"] != "auto").sum()),
        "qc_rules": dg.MetadataValue.json(dataclasses.asdict(qc_config)),
        "background_grids": dg.MetadataValue.path(sidecar) if sidecar else "not saved (see the run log)",
        "n_background_grids": len(grids),
    }
    yield dg.Output(qc, metadata=metadata)
    yield dg.AssetCheckResult(
        check_name="qc_failure_fraction",
        asset_key="site_qc",
        passed=bool(frac <= config.max_failed_fraction),
        severity=dg.AssetCheckSeverity.WARN,
        description=f"plate {context.partition_key}: {len(failed)}/{len(sites)} sites failed QC "
                    f"({frac:.0%}; warning above {config.max_failed_fraction:.0%})",
        metadata={"failed_fraction": round(frac, 4), "plate": context.partition_key},
    )
