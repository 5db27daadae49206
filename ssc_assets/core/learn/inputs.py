"""Typed inputs of the learning stage: what the image assets produced, per plate.

The Dagster layer builds these from its asset manifests (``ssc_assets/defs/manifests.py``);
the core never reads a manifest's dictionary keys.
"""

from __future__ import annotations

from dataclasses import dataclass

Site = tuple[str, int]  # (well, site)


@dataclass(frozen=True)
class PlateImages:
    """A plate's corrected images: the OME-Zarr store and its QC-passed, written sites.

    ``side``: full-resolution side (px) of the stored images (0 when unknown)."""

    plate: str
    store: str
    sites: tuple[Site, ...]
    side: int = 0


@dataclass(frozen=True)
class PlateMasks:
    """A plate's masks: the OME-Zarr store (labels per field) and the sites that have masks."""

    plate: str
    store: str
    sites: tuple[Site, ...]
