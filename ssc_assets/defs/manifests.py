"""The image assets' JSON manifests (what ``manifest_io_manager`` stores) as the core's typed
inputs (:mod:`ssc_assets.core.learn.inputs`): the only place that reads their keys downstream."""

from __future__ import annotations

from collections.abc import Mapping

from ssc_assets.core.learn.inputs import PlateImages, PlateMasks


def _sites(manifest: Mapping) -> tuple[tuple[str, int], ...]:
    return tuple((str(w), int(s)) for w, s in manifest["sites"])


def plate_images(plate: str, manifest: Mapping) -> PlateImages:
    """A ``corrected_images`` manifest (``store``, ``sites`` [[well, site]], ``side``)."""
    return PlateImages(plate=plate, store=manifest["store"], sites=_sites(manifest), side=int(manifest.get("side") or 0))


def plate_masks(plate: str, manifest: Mapping) -> PlateMasks:
    """A ``masks`` manifest (``store``, ``sites`` [[well, site]])."""
    return PlateMasks(plate=plate, store=manifest["store"], sites=_sites(manifest))


def all_plate_images(manifests: Mapping[str, Mapping]) -> list[PlateImages]:
    """plate -> ``corrected_images`` manifest (an all-partitions input) as typed inputs."""
    return [plate_images(p, m) for p, m in sorted(manifests.items())]


def all_plate_masks(manifests: Mapping[str, Mapping] | None) -> list[PlateMasks]:
    return [plate_masks(p, m) for p, m in sorted((manifests or {}).items())]
