"""Shared fixtures: a tiny, fast MetaXpress plate writer for layout and bad-input tests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

HTD_TEMPLATE = """"HTSInfoFile", Version 1.0
"Description", "test plate"
"TimePoints", {timepoints}
"ZSeries", FALSE
"SiteSelection", TRUE
"Waves", TRUE
"XWells", 12
"YWells", 8
{wells_rows}
"XSites", {x_sites}
"YSites", 1
"SiteSelection1", {site_row}
"NWavelengths", {n_wave}
{wave_names}
"UniquePlateIdentifier", "0000"
"EndFile"
"""
WAVE_NAMES = ["DAPI", "FITC", "TRITC", "Cy5"]
GUID = "0123ABCD-4567-89AB-CDEF-0123456789AB"


def write_htd(path: Path, wells: list[str], n_sites: int, n_wave: int, timepoints: int = 1) -> None:
    rows = []
    for r, letter in enumerate("ABCDEFGH"):
        flags = ["TRUE" if f"{letter}{c:02d}" in wells else "FALSE" for c in range(1, 13)]
        rows.append(f'"WellsSelection{r + 1}", ' + ", ".join(flags))
    path.write_text(
        HTD_TEMPLATE.format(
            timepoints=timepoints,
            wells_rows="\n".join(rows),
            x_sites=n_sites,
            site_row=", ".join(["TRUE"] * n_sites),
            n_wave=n_wave,
            wave_names="\n".join(f'"WaveName{i + 1}", "{WAVE_NAMES[i]}"' for i in range(n_wave)),
        )
    )


def make_plate(
    root: Path,
    name: str = "TESTPLATE",
    wells: tuple[str, ...] = ("B02", "B03", "C02", "C03"),
    n_sites: int = 2,
    n_wave: int = 4,
    size: int = 64,
    seed: int = 0,
    guid: bool = True,
    thumbs: bool = True,
    htd: bool = True,
    platemap: bool = True,
) -> Path:
    """Write a small MetaXpress-layout plate: <root>/<name>/2024-01-31/1234/TimePoint_1/..."""
    rng = np.random.default_rng(seed)
    plate = root / name
    acq = plate / "2024-01-31" / "1234"
    tp = acq / "TimePoint_1"
    tp.mkdir(parents=True)
    for well in wells:
        for s in range(1, n_sites + 1):
            for w in range(1, n_wave + 1):
                img = (rng.poisson(200 + 50 * w, (size, size)) + 100).astype(np.uint16)
                img[size // 4 : size // 2, size // 4 : size // 2] += np.uint16(1000 * w)
                tifffile.imwrite(tp / f"{name}_{well}_s{s}_w{w}{GUID if guid else ''}.tif", img)
                if thumbs and s == 1:
                    tifffile.imwrite(tp / f"{name}_{well}_s{s}_w{w}_thumb{GUID}.tif", img[::8, ::8].astype(np.uint8))
    if htd:
        write_htd(acq / f"{name}.HTD", list(wells), n_sites, n_wave)
    if platemap:
        lines = ["well,donor_id,condition,group,plasma_batch"] + [
            f"{w},D{i},{('HC', 'SSc', 'SSc')[i % 3]},{('HC', 'SSC', 'SSCHL')[i % 3]},b{i % 2}" for i, w in enumerate(wells)
        ]
        (plate / "platemap.csv").write_text("\n".join(lines) + "\n")
    return plate


def tree_digest(path: Path) -> str:
    """Hash of every file's relative path, size, mtime and content under ``path``."""
    h = hashlib.sha1()
    for dirpath, _, files in sorted(os.walk(path)):
        for f in sorted(files):
            p = Path(dirpath) / f
            st = p.stat()
            h.update(f"{p.relative_to(path)}{st.st_size}{st.st_mtime_ns}".encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def plate_factory(tmp_path):
    root = tmp_path / "plates"
    root.mkdir()

    def factory(**kwargs) -> Path:
        return make_plate(root, **kwargs)

    factory.root = root
    return factory


def make_definitions(plates_dir, storage_dir, compute: str = "serial", **overrides):
    """``build_definitions`` wired to a temp plates folder and storage (path or fsspec URL)."""
    from ssc_assets.definitions import build_definitions
    from ssc_assets.defs.io_managers import ManifestIOManager, ParquetIOManager
    from ssc_assets.defs.resources import PlateSource, SiteCompute, Storage

    base = str(storage_dir)
    return build_definitions(
        plate_source=PlateSource(plates_dir=str(plates_dir), settle_seconds=0),
        compute=SiteCompute(backend=compute, max_workers=2),
        parquet_io_manager=ParquetIOManager(base_dir=base),
        manifest_io_manager=ManifestIOManager(base_dir=base),
        storage=Storage(base_dir=base),
        **overrides,
    )


