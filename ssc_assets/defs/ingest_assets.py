"""Per-plate ingestion assets: ``raw_sites`` (file index) and ``site_qc`` (quality control)."""


import dagster as dg
import pandas as pd
from pydantic import Field

from ssc_assets.core import figures
from ssc_assets.core.channels import IMAGE_CHANNELS
from ssc_assets.core.ingest import SITE_KEY, assemble_site_qc, build_raw_sites, qc_items, qc_one_image, site_table
from ssc_assets.core.qc import QcConfig
from ssc_assets.core.storage import write_text
from ssc_assets.core.tiff_io import ImageReadError, read_image
from ssc_assets.defs.partitions import plates
from ssc_assets.defs.resources import PlateSource, SiteCompute, Storage

MAX_TABLE_ROWS = 40


def md_table(df: pd.DataFrame, max_rows: int = MAX_TABLE_ROWS) -> str:
    """Markdown table of the first ``max_rows`` rows, with a note on how many were left out."""
    if df.empty:
        return "_none_"
    text = df.head(max_rows).to_markdown(index=False)
    if len(df) > max_rows:
        text += f"\n\n_{len(df) - max_rows} more rows not shown_"
    return text


@dg.asset(
    partitions_def=plates,
    io_manager_key="parquet_io_manager",
    group_name="ingest",
    kinds={"python", "parquet"},
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec(
            "plate_complete",
            asset="raw_sites",
            description="Every plate-map well has all its sites and channels, and the plate map agrees with the files.",
        )
    ],
)
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
        "fingerprint": raw.scan.fingerprint,
    }
    yield dg.Output(table, metadata=metadata, data_version=dg.DataVersion(raw.scan.fingerprint))
    missing = pd.DataFrame(raw.missing, columns=["well", "site", "wavelength"])
    passed = missing.empty and not raw.wells_without_images and not any("not acquired" in p for p in raw.problems)
    yield dg.AssetCheckResult(
        check_name="plate_complete",
        asset_key="raw_sites",
        passed=bool(passed),
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if passed else f"{len(missing)} expected images missing; " + "; ".join(raw.problems),
        metadata={
            "n_missing_images": len(missing),
            "missing_images": dg.MetadataValue.md(md_table(missing)),
            "wells_without_images": ", ".join(raw.wells_without_images) or "none",
        },
    )


class SiteQcConfig(dg.Config):
    """QC settings (editable in the launchpad)."""

    z_threshold: float = Field(5.0, description="Robust z-score (median/MAD) beyond which an image is an outlier.")
    max_failed_fraction: float = Field(0.1, description="The check warns when more sites than this fraction fail QC.")
    n_montage: int = Field(12, description="Flagged sites shown in the thumbnail montage.")


def _flagged_montage(qc: pd.DataFrame, n: int) -> str:
    flagged = qc[~qc["image_passed"] & qc["path"].notna()].head(n)
    tiles, labels = [], []
    for row in flagged.itertuples():
        try:
            img = read_image(row.path)
        except ImageReadError:
            continue
        tiles.append(figures.downsample(img, 128))
        first = row.image_reason.split(";")[0]
        labels.append(f"{row.Metadata_Well} s{row.Metadata_Site} {row.channel}\n{first.split(':')[0][:28]}")
    if not tiles:
        return "_no readable flagged images_"
    return figures.png_markdown(figures.montage(tiles, labels), "flagged sites")


@dg.asset(
    partitions_def=plates,
    io_manager_key="parquet_io_manager",
    group_name="ingest",
    kinds={"python", "parquet"},
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec(
            "qc_failure_fraction",
            asset="site_qc",
            description="The fraction of sites failing QC stays below max_failed_fraction (warning).",
        )
    ],
)
def site_qc(context: dg.AssetExecutionContext, config: SiteQcConfig, raw_sites: pd.DataFrame, compute: SiteCompute):
    """QC per site x channel: CellProfiler focus score (PowerLogLogSlope), percent maximal,
    intensity statistics, robust-z outlier flags and ``passed_qc`` per site.

    Stored as ``$SSC_STORAGE_DIR/site_qc/<plate>.parquet``. Downstream assets skip sites with
    ``passed_qc == False``.
    """
    rows = qc_items(raw_sites, IMAGE_CHANNELS)
    shape_ok = rows["header_error"].isna()
    items = [
        (p, (int(h), int(w)) if ok else None)
        for p, h, w, ok in zip(rows["path"], rows["height"], rows["width"], shape_ok)
    ]
    done = {"n": 0}

    def progress(result) -> None:
        done["n"] += 1
        if done["n"] % max(1, len(items) // 10) == 0 or done["n"] == len(items):
            context.log.info(f"QC {done['n']}/{len(items)} images")

    results = compute.map(qc_one_image, items, on_result=progress)
    measures = [
        r.value if r.error is None else {"read_error": f"{items[i][0]}: {r.error}"} for i, r in enumerate(results)
    ]
    qc = assemble_site_qc(rows, measures, QcConfig(z_threshold=config.z_threshold))
    sites = site_table(qc)
    failed = sites[~sites["passed_qc"]]
    for r in failed.itertuples():
        context.log.warning(f"site {r.Metadata_Well} s{r.Metadata_Site} failed QC: {r.qc_reason}")
    hist_measures = ["focus_score", "percent_maximal", "median", "std", "q01", "q99", "total_intensity"]
    hist = figures.qc_histograms(qc, hist_measures, title=f"{context.partition_key}: QC per channel")
    frac = len(failed) / max(len(sites), 1)
    metadata = {
        "n_sites": len(sites),
        "n_sites_failed": len(failed),
        "failed_fraction": round(frac, 4),
        "failed_sites": dg.MetadataValue.md(md_table(failed)),
        "qc_histograms": dg.MetadataValue.md(figures.png_markdown(hist, "QC histograms")),
        "flagged_montage": dg.MetadataValue.md(_flagged_montage(qc, config.n_montage)),
        "z_threshold": config.z_threshold,
    }
    yield dg.Output(qc, metadata=metadata)
    yield dg.AssetCheckResult(
        check_name="qc_failure_fraction",
        asset_key="site_qc",
        passed=bool(frac <= config.max_failed_fraction),
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(failed)}/{len(sites)} sites failed QC (threshold {config.max_failed_fraction:.0%})",
        metadata={"failed_fraction": round(frac, 4)},
    )
