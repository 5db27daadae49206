"""Per-plate image assets: ``illumination_profiles`` -> ``corrected_images`` -> ``masks``."""

import io

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from ssc_assets.core import figures
from ssc_assets.core.channels import IMAGE_CHANNELS
from ssc_assets.core.filters import TV_WEIGHT, ChannelPreprocess, PreprocessParams
from ssc_assets.core.illumination import profile_from_backgrounds
from ssc_assets.core.ingest import SITE_KEY
from ssc_assets.core.site_pipeline import CorrectSiteTask, correct_site, illumination_background
from ssc_assets.core.storage import atomic_write_bytes, join
from ssc_assets.defs.ingest_assets import md_table
from ssc_assets.defs.partitions import plates
from ssc_assets.defs.resources import SiteCompute, storage_root


def passed_images(raw_sites: pd.DataFrame, site_qc: pd.DataFrame) -> pd.DataFrame:
    """``raw_sites`` rows of the image channels for QC-passed sites only."""
    ok = site_qc.loc[site_qc["passed_qc"], SITE_KEY].drop_duplicates()
    rows = raw_sites[raw_sites["channel"].isin(IMAGE_CHANNELS) & raw_sites["header_error"].isna()]
    return rows.merge(ok, on=SITE_KEY, how="inner")


def failed_sites(site_qc: pd.DataFrame) -> pd.DataFrame:
    return site_qc.loc[~site_qc["passed_qc"], SITE_KEY + ["qc_reason"]].drop_duplicates(SITE_KEY)


class IlluminationConfig(dg.Config):
    """Illumination-correction settings (thesis section 2.5)."""

    camera_offset: float | None = Field(
        None, description="Known camera offset (darkfield, raw counts). Unset: estimated from the plate (see docs)."
    )
    sigma_fraction: float = Field(1 / 32, description="Gaussian smoothing sigma as a fraction of the image side.")
    k_sd: float = Field(3.0, description="Bright-area suppression: replace pixels above local median + k_sd x SD.")
    n_iter: int = Field(5, description="Bright-area suppression iterations.")


def _profile_png(flatfields: dict[str, np.ndarray]) -> bytes:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(flatfields), figsize=(2.4 * len(flatfields), 2.3), squeeze=False)
    for ax, (ch, ff) in zip(axes[0], flatfields.items()):
        im = ax.imshow(figures.downsample(ff, 128), cmap="magma")
        ax.set_title(f"{ch}: max/min {ff.max() / ff.min():.2f}", fontsize=8)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    return figures.fig_to_png(fig)


@dg.asset(
    partitions_def=plates,
    io_manager_key="manifest_io_manager",
    group_name="images",
    kinds={"python", "numpy"},
    code_version="1",
)
def illumination_profiles(
    context: dg.AssetExecutionContext,
    config: IlluminationConfig,
    raw_sites: pd.DataFrame,
    site_qc: pd.DataFrame,
    compute: SiteCompute,
) -> dict:
    """One flatfield per channel of the plate, from its QC-passed images (thesis 2.5).

    Files: ``$SSC_STORAGE_DIR/illumination_profiles/<plate>/<channel>.npy`` (float32 (H, W),
    mean 1). Corrected = (raw - darkfield) x (1 / flatfield). The manifest holds the paths,
    the darkfield (raw counts) and the profile's min/max ratio.
    """
    plate = context.partition_key
    rows = passed_images(raw_sites, site_qc)
    if rows.empty:
        raise ValueError(f"plate {plate}: no QC-passed site, cannot estimate illumination profiles")
    shape = (int(rows["height"].iloc[0]), int(rows["width"].iloc[0]))
    manifest: dict = {"plate": plate, "shape": list(shape), "channels": {}}
    flatfields = {}
    for ch in IMAGE_CHANNELS:
        paths = rows.loc[rows["channel"] == ch, "path"].tolist()
        results = compute.map(illumination_background, [(p, shape) for p in paths])
        grids = [r.value for r in results if r.ok]
        for p, r in zip(paths, results):
            if not r.ok:
                context.log.warning(f"illumination: skipped {p}: {r.error}")
        profile = profile_from_backgrounds(
            grids, shape, darkfield=config.camera_offset if config.camera_offset is not None else "auto",
            sigma_fraction=config.sigma_fraction,
        )
        path = join(storage_root(), "illumination_profiles", plate, f"{ch}.npy")
        buf = io.BytesIO()
        np.save(buf, profile.flatfield.astype(np.float32))
        atomic_write_bytes(path, buf.getvalue())
        flatfields[ch] = profile.flatfield
        manifest["channels"][ch] = {"flatfield": path, **profile.summary()}
        context.log.info(f"{ch}: {len(grids)} images, darkfield {profile.darkfield:.1f} ({profile.darkfield_method}), "
                         f"flatfield min/max {profile.min_ratio:.3f}/{profile.max_ratio:.3f}")
    summary = pd.DataFrame(
        [{"channel": ch, "n_images": v["n_images"], "darkfield": round(v["darkfield"], 1), "darkfield_method": v["darkfield_method"],
          "min": round(v["flatfield_min"], 3), "max": round(v["flatfield_max"], 3), "min/max ratio": round(v["flatfield_min"] / v["flatfield_max"], 3)}
         for ch, v in manifest["channels"].items()]
    )
    context.add_output_metadata(
        {
            "profiles": dg.MetadataValue.md(figures.png_markdown(_profile_png(flatfields), "flatfields")),
            "summary": dg.MetadataValue.md(md_table(summary)),
            "min_max_ratio": dg.MetadataValue.json({r.channel: r["min/max ratio"] for _, r in summary.iterrows()}),
            "folder": dg.MetadataValue.path(join(storage_root(), "illumination_profiles", plate)),
        }
    )
    return manifest


class PreprocessConfig(dg.Config):
    """Thesis section 5.1 preprocessing, per channel (radii in px, thresholds in raw counts)."""

    nuclei_outlier_radius: float = Field(10.0, description="Remove Outliers radius on nuclei (px).")
    nuclei_outlier_threshold: float = Field(50.0, description="Remove Outliers threshold on nuclei (counts).")
    borders_outlier_radius: float = Field(50.0, description="Remove Outliers radius on borders (px).")
    borders_outlier_threshold: float = Field(2000.0, description="Remove Outliers threshold on borders (counts).")
    rolling_ball_radius: float = Field(50.0, description="Rolling-ball radius (px), ImageJ semantics; 0 disables.")
    rolling_ball_presmooth: bool = Field(True, description="ImageJ's 3x3 mean pre-smoothing of the background.")
    median_radius: float = Field(2.0, description="Median filter radius (px, ImageJ circular kernel); 0 disables.")
    tv_weight: float = Field(TV_WEIGHT, description="TV-denoise weight on the robust [0,1] scale; 0 disables. See docs.")
    crop_fraction: float = Field(0.75, description="Centre crop as a fraction of the side (1536 on 2048).")
    crop_size: int | None = Field(None, description="Absolute centre-crop side (px); overrides crop_fraction.")
    max_failed_fraction: float = Field(0.05, description="The asset fails if more sites than this fraction raise.")
    n_preview: int = Field(4, description="Sites in the before/after montage.")

    def params(self) -> PreprocessParams:
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
