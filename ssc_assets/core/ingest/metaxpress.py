"""Read MetaXpress "classic" plate exports (ImageXpress Micro Confocal) without touching them.

Layout handled (everything below the plate folder is optional)::

    <plate folder>/
        platemap.csv
        <YYYY-MM-DD>/<acquisition id>/
            <plate>.HTD
            TimePoint_<t>/
                <plate>_<well>_s<site>_w<n><GUID>.tif      max projection
                <plate>_<well>_s<site>_w<n>_thumb<GUID>.tif preview (ignored)
                ZStep_<z>/<plate>_<well>_s<site>_w<n><GUID>.tif   z-planes

Files are only listed and stat-ed here; pixel data is read by :mod:`ssc_assets.core.io.tiff`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ssc_assets.core.ingest.channels import ChannelMap

#: The classic MetaXpress filename (checked on real exports). Channel is one digit: the GUID follows it.
FILENAME_RE = re.compile(
    r"^(?P<plate>.*)_(?P<well>[A-P]\d{2})(?:_s(?P<site>\d+))?(?:_w(?P<channel>[1-9]))?"
    r"(?P<thumb>_thumb)?"
    r"(?P<guid>[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12})?\.tiff?$",
    re.IGNORECASE,
)
TIMEPOINT_RE = re.compile(r"^TimePoint_(\d+)$", re.IGNORECASE)
ZSTEP_RE = re.compile(r"^ZStep_(\d+)$", re.IGNORECASE)
TIFF_SUFFIXES = (".tif", ".tiff")
ROWS = "ABCDEFGHIJKLMNOP"
#: Largest plate described by an HTD: 16 rows (A-P) x 24 columns (384 wells).
MAX_COLUMNS = 24
#: Largest site number accepted (HTD site grid and ``_s<site>`` in file names).
MAX_SITES = 1000
#: Deepest folder level below a plate folder that is listed.
MAX_WALK_DEPTH = 16


@dataclass(frozen=True)
class ImageName:
    """Parsed MetaXpress image file name. ``site`` and ``wavelength`` are 1-based."""

    plate: str
    well: str
    site: int
    wavelength: int
    thumb: bool
    guid: str | None


def parse_image_name(name: str) -> ImageName | None:
    """Parse a MetaXpress file name; ``None`` if it does not follow the convention.

    A missing ``_s`` token means a single-site plate (site 1); a missing ``_w`` token a
    single-channel plate (wavelength 1).
    """
    m = FILENAME_RE.match(name)
    if not m:
        return None
    return ImageName(
        plate=m["plate"],
        well=normalize_well(m["well"]),
        site=int(m["site"]) if m["site"] else 1,
        wavelength=int(m["channel"]) if m["channel"] else 1,
        thumb=bool(m["thumb"]),
        guid=m["guid"].upper() if m["guid"] else None,
    )


def normalize_well(well: str) -> str:
    """``"b3"`` / ``"B3"`` / ``"B003"`` -> ``"B03"``. Raises ``ValueError`` on anything else."""
    m = re.fullmatch(r"\s*([A-Pa-p])0*(\d{1,2})\s*", str(well))
    if not m or not 1 <= int(m[2]) <= 48:
        raise ValueError(f"not a plate well name: {well!r}")
    return f"{m[1].upper()}{int(m[2]):02d}"


def well_row_col(well: str) -> tuple[str, int]:
    """``"B03"`` -> ``("B", 3)``."""
    return well[0], int(well[1:])


def sanitize_plate_name(name: str) -> str:
    """Partition key for a plate folder: letters, digits, ``-`` and ``_``; others become ``_``."""
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", name.strip()).strip("_")
    if not key:
        raise ValueError(f"plate folder name {name!r} gives an empty partition key")
    return key


@dataclass
class PlateFolders:
    """Plate folders found under the plates directory.

    ``folders``: partition key -> folder, only for keys that exactly one folder claims.
    ``errors``: partition key (or the folder name when it gives no key) -> why it is not
    used, e.g. two folders whose names sanitize to the same key: neither is ingested.
    """

    folders: dict[str, Path]
    errors: dict[str, str] = field(default_factory=dict)


def discover_plate_folders(root: str | os.PathLike) -> PlateFolders:
    """Every visible sub-folder of ``root`` as a plate, never raising for one bad entry.

    Names that sanitize to the same partition key (``SSC-DEMO 01`` and ``SSC-DEMO_01``) are
    reported under that key with both folders and left out of ``folders``.
    """
    root = Path(root)
    claims: dict[str, list[Path]] = {}
    errors: dict[str, str] = {}
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return PlateFolders({})
    except OSError as exc:
        return PlateFolders({}, {str(root): f"cannot list the plates folder {root}: {exc}"})
    for e in entries:
        if e.name.startswith("."):
            continue
        try:
            if not e.is_dir(follow_symlinks=True):
                continue
        except OSError as exc:
            errors[e.name] = f"cannot read plate folder {e.path}: {exc}"
            continue
        try:
            key = sanitize_plate_name(e.name)
        except ValueError as exc:
            errors[e.name] = f"{e.path}: {exc}"
            continue
        claims.setdefault(key, []).append(Path(e.path))
    folders = {}
    for key, paths in claims.items():
        if len(paths) == 1:
            folders[key] = paths[0]
        else:
            errors[key] = (
                f"plate folders {', '.join(repr(str(p)) for p in paths)} all give partition key {key!r}: "
                "none of them is ingested until all but one are renamed or moved"
            )
    return PlateFolders(folders, errors)


# --------------------------------------------------------------------------- HTD


@dataclass(frozen=True)
class HtdInfo:
    """Content of a MetaXpress ``.HTD`` ("HTSInfoFile") plate description."""

    path: str
    x_wells: int
    y_wells: int
    x_sites: int
    y_sites: int
    n_wavelengths: int
    wave_names: dict[int, str]
    wells: tuple[str, ...]  # selected wells (all wells if no WellsSelection rows)
    sites: tuple[int, ...]  # selected 1-based site numbers (row-major over the site grid)
    timepoints: int = 1
    z_series: bool = False

    @property
    def n_sites(self) -> int:
        return len(self.sites)


class HtdError(ValueError):
    """A malformed HTD file (the message names the file)."""


def _htd_values(line: str) -> tuple[str, list[str]]:
    parts = [p.strip().strip('"') for p in line.split(",")]
    return parts[0], parts[1:]


def _truthy(v: str) -> bool:
    return v.strip().upper() == "TRUE"


def _read_htd_values(path: Path) -> dict[str, list[str]]:
    """``{lower-case key: values}`` of an HTD file; raises :class:`HtdError` if it is not one."""
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise HtdError(f"{path}: cannot read HTD file ({exc})") from exc
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip():
            key, vals = _htd_values(line)
            values[key.lower()] = vals
    if "htsinfofile" not in values:
        raise HtdError(f"{path}: not an HTSInfoFile (first line should be '\"HTSInfoFile\", Version 1.0')")
    return values


def _htd_int(values: dict[str, list[str]], path: Path, key: str, default: int | None = None) -> int:
    vals = values.get(key.lower())
    if not vals:
        if default is None:
            raise HtdError(f"{path}: missing '{key}'")
        return default
    try:
        return int(vals[0])
    except ValueError as exc:
        raise HtdError(f"{path}: '{key}' is not an integer: {vals[0]!r}") from exc


def _grid_selection(values: dict[str, list[str]], prefix: str, nx: int, ny: int) -> list[tuple[int, int]]:
    """Selected ``(row, column)`` cells of an ``nx`` x ``ny`` grid, row-major, from the
    ``<prefix><row>`` lines (all cells of a row without such a line)."""
    cells = []
    for r in range(ny):
        row = values.get(f"{prefix}{r + 1}")
        for c in range(nx):
            if row is None or (c < len(row) and _truthy(row[c])):
                cells.append((r, c))
    return cells


def parse_htd(path: str | os.PathLike) -> HtdInfo:
    """Parse a MetaXpress HTD file. Raises :class:`HtdError` naming the file when it is unusable."""
    path = Path(path)
    values = _read_htd_values(path)
    x_wells, y_wells = _htd_int(values, path, "XWells"), _htd_int(values, path, "YWells")
    if not 1 <= y_wells <= len(ROWS):
        raise HtdError(f"{path}: 'YWells' is {y_wells}; rows must be 1..{len(ROWS)} (A-{ROWS[-1]}), "
                       "larger plates are not supported")
    if not 1 <= x_wells <= MAX_COLUMNS:
        raise HtdError(f"{path}: 'XWells' is {x_wells}; columns must be 1..{MAX_COLUMNS}, larger plates are not supported")
    wells = [f"{ROWS[r]}{c + 1:02d}" for r, c in _grid_selection(values, "wellsselection", x_wells, y_wells)]
    x_sites, y_sites = _htd_int(values, path, "XSites", 1), _htd_int(values, path, "YSites", 1)
    if x_sites < 1 or y_sites < 1 or x_sites * y_sites > MAX_SITES:
        raise HtdError(f"{path}: site grid 'XSites' {x_sites} x 'YSites' {y_sites} must be at least 1 x 1 "
                       f"and at most {MAX_SITES} sites")
    # site numbers are 1-based, row-major over the site grid
    sites = [r * x_sites + c + 1 for r, c in _grid_selection(values, "siteselection", x_sites, y_sites)]
    site_sel = _truthy(values.get("siteselection", ["FALSE"])[0]) if "siteselection" in values else False
    if not site_sel and x_sites * y_sites == 1:
        sites = [1]
    n_wave = _htd_int(values, path, "NWavelengths", 1)
    if not 1 <= n_wave <= 9:
        raise HtdError(f"{path}: 'NWavelengths' is {n_wave}; must be 1..9 (file names carry one digit, _w1.._w9)")
    wave_names = {
        w: values[f"wavename{w}"][0] for w in range(1, n_wave + 1) if f"wavename{w}" in values
    }
    return HtdInfo(
        path=str(path),
        x_wells=x_wells,
        y_wells=y_wells,
        x_sites=x_sites,
        y_sites=y_sites,
        n_wavelengths=n_wave,
        wave_names=wave_names,
        wells=tuple(wells),
        sites=tuple(sites),
        timepoints=_htd_int(values, path, "TimePoints", 1),
        z_series=_truthy(values.get("zseries", ["FALSE"])[0]),
    )


# --------------------------------------------------------------------------- scanning


@dataclass(frozen=True)
class FileEntry:
    path: str
    rel: str
    size: int
    mtime_ns: int


def walk_plate_files(plate_dir: str | os.PathLike, max_depth: int = MAX_WALK_DEPTH) -> tuple[list[FileEntry], list[str]]:
    """All regular files under ``plate_dir`` (sorted by relative path, stat-ed once), and the
    folders that were skipped, with the reason. Never raises for what is inside the folder.

    The walk is bounded: hidden entries are skipped; a directory reached again through a
    symlink (a loop, or a link to the plate folder or one of its parents) is visited once,
    tracked by ``(st_dev, st_ino)``; unreadable entries and folders deeper than ``max_depth``
    are skipped and reported.
    """
    plate_dir = Path(plate_dir)
    out: list[FileEntry] = []
    problems: list[str] = []
    visited: set[tuple[int, int]] = set()
    try:
        real = Path(os.path.realpath(plate_dir))
        for anc in (real, *real.parents):  # a link back to the plate or a parent is a loop
            st = os.stat(anc)
            visited.add((st.st_dev, st.st_ino))
    except OSError as exc:
        return [], [f"{plate_dir}: cannot read the plate folder ({exc})"]
    stack: list[tuple[str, int]] = [(str(plate_dir), 0)]
    while stack:
        d, depth = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError as exc:
            problems.append(f"{d}: folder skipped, cannot list it ({exc.strerror or exc})")
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir(follow_symlinks=True):
                    st = e.stat(follow_symlinks=True)
                    ident = (st.st_dev, st.st_ino)
                    if ident in visited:
                        if e.is_symlink():
                            problems.append(f"{e.path}: symlink to a folder already listed (a loop?), not followed")
                        continue
                    if depth + 1 > max_depth:
                        problems.append(f"{e.path}: folder skipped, deeper than {max_depth} levels below the plate folder")
                        continue
                    visited.add(ident)
                    stack.append((e.path, depth + 1))
                elif e.is_file(follow_symlinks=True):
                    st = e.stat(follow_symlinks=True)
                    out.append(FileEntry(e.path, os.path.relpath(e.path, plate_dir), st.st_size, st.st_mtime_ns))
            except OSError as exc:  # symlink loop (ELOOP), vanished or unreadable entry
                problems.append(f"{e.path}: skipped ({exc.strerror or exc})")
    out.sort(key=lambda f: f.rel)
    return out, sorted(problems)


def list_plate_files(plate_dir: str | os.PathLike) -> list[FileEntry]:
    """All regular files under ``plate_dir`` (see :func:`walk_plate_files`)."""
    return walk_plate_files(plate_dir)[0]


def fingerprint(files: list[FileEntry]) -> str:
    """Stable content-version of a plate folder: sha1 over (relative path, size, mtime) of every file."""
    h = hashlib.sha1()
    for f in files:
        h.update(f"{f.rel}\0{f.size}\0{f.mtime_ns}\n".encode())
    return h.hexdigest()[:16]


@dataclass
class PlateScan:
    """Result of indexing one plate folder.

    ``images`` has one row per usable image (site x channel) of the selected time point;
    ``excluded`` one row per file that was ignored, with the reason.
    """

    plate_dir: str
    plate_key: str
    images: pd.DataFrame
    excluded: pd.DataFrame
    htd: HtdInfo | None
    platemap_path: str | None
    timepoints: list[int]
    fingerprint: str
    newest_mtime_ns: int
    problems: list[str] = field(default_factory=list)
    #: the HTD exists but cannot be used (the :class:`HtdError` message, naming the file)
    htd_error: str | None = None
    #: HTD ``WaveName<n>`` entries that disagree with the channel map (also in ``problems``,
    #: there prefixed with the HTD path)
    channel_mismatches: list[str] = field(default_factory=list)


EXCLUDED_COLUMNS = ["path", "reason"]


def find_htd(files: list[FileEntry]) -> str | None:
    """Newest HTD file of the plate (the last acquisition wins when there are several)."""
    htds = [f for f in files if f.rel.lower().endswith(".htd")]
    return max(htds, key=lambda f: (f.rel.count(os.sep), f.rel)).path if htds else None


def scan_plate(
    plate_dir: str | os.PathLike,
    channel_map: ChannelMap | None = None,
    time_point: int = 1,
    files: list[FileEntry] | None = None,
) -> PlateScan:
    """Index a plate folder: classify every file as a usable image or excluded (with a reason).

    Rules: ``_thumb`` previews are ignored; z-planes (``ZStep_<z>``) are ignored when the
    time-point root holds the projection of the same site and channel; only ``time_point``
    is kept (other time points are listed in ``timepoints``); for a duplicate site/channel
    (e.g. a plate imaged twice) the last acquisition folder wins and the others are excluded;
    wavelengths that the channel map does not know are excluded.
    """
    channel_map = channel_map or ChannelMap()
    plate_dir = Path(plate_dir)
    walk_problems: list[str] = []
    if files is None:
        files, walk_problems = walk_plate_files(plate_dir)
    plate_key = sanitize_plate_name(plate_dir.name)
    excluded: list[tuple[str, str]] = []
    htd_path = find_htd(files)
    platemap = plate_dir / "platemap.csv"
    candidates, timepoints = _image_candidates(files, excluded)
    chosen = _select_images(candidates, channel_map, time_point, excluded)
    problems = list(walk_problems)
    htd, htd_error, mismatches = _read_plate_htd(htd_path, channel_map, problems)
    return PlateScan(
        plate_dir=str(plate_dir),
        plate_key=plate_key,
        images=_image_table(chosen, channel_map, plate_key),
        excluded=pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS),
        htd=htd,
        platemap_path=str(platemap) if platemap.is_file() else None,
        timepoints=sorted(timepoints),
        fingerprint=fingerprint(files),
        newest_mtime_ns=max((f.mtime_ns for f in files), default=0),
        problems=problems,
        htd_error=htd_error,
        channel_mismatches=mismatches,
    )


def _image_candidates(files: list[FileEntry], excluded: list[tuple[str, str]]) -> tuple[list[tuple], set[int]]:
    """``(file, parsed name, time point, z-step or None, acquisition folder)`` of every TIFF
    whose name parses, and the time points seen; unusable names go to ``excluded``."""
    candidates = []
    timepoints: set[int] = set()
    for f in files:
        name = os.path.basename(f.rel)
        lower = name.lower()
        if not lower.endswith(TIFF_SUFFIXES):
            continue
        parsed = parse_image_name(name)
        if parsed is None:
            excluded.append((f.path, "file name does not follow <plate>_<well>[_s<site>][_w<n>][GUID].tif"))
            continue
        if parsed.thumb:
            continue  # previews are expected: not reported
        if not 1 <= parsed.site <= MAX_SITES:
            excluded.append((f.path, f"site number s{parsed.site} outside 1..{MAX_SITES}"))
            continue
        parts = Path(f.rel).parts[:-1]
        tp, z = 1, None
        acquisition = os.sep.join(p for p in parts if not TIMEPOINT_RE.match(p) and not ZSTEP_RE.match(p))
        for p in parts:
            if m := TIMEPOINT_RE.match(p):
                tp = int(m[1])
            elif m := ZSTEP_RE.match(p):
                z = int(m[1])
        timepoints.add(tp)
        candidates.append((f, parsed, tp, z, acquisition))
    return candidates, timepoints


def _select_images(
    candidates: list[tuple], channel_map: ChannelMap, time_point: int, excluded: list[tuple[str, str]]
) -> dict[tuple, tuple]:
    """``{(well, site, wavelength, time point): (file, parsed name, acquisition)}``: the
    selected time point, projections over z-planes, known wavelengths, the later of duplicates.
    Everything else goes to ``excluded`` with the reason (expected z-planes silently)."""
    projections = {(c[1].well, c[1].site, c[1].wavelength, c[2]) for c in candidates if c[3] is None}
    by_key: dict[tuple, tuple] = {}
    for f, parsed, tp, z, acq in candidates:
        key = (parsed.well, parsed.site, parsed.wavelength, tp)
        if tp != time_point:
            excluded.append((f.path, f"time point {tp} (selected time point is {time_point})"))
            continue
        if z is not None:
            if key in projections:
                continue  # projection present: z-planes are expected and not reported
            excluded.append((f.path, f"z-plane ZStep_{z} without a projection at the time-point root"))
            continue
        if channel_map.name_of(parsed.wavelength) is None:
            excluded.append((f.path, f"unknown wavelength w{parsed.wavelength} (not in the channel map)"))
            continue
        if key in by_key:
            prev = by_key[key]
            keep, drop = (prev, (f, parsed, acq)) if prev[2] >= acq else ((f, parsed, acq), prev)
            by_key[key] = keep
            excluded.append((drop[0].path, f"duplicate of {keep[0].path} (same well/site/channel); kept the later acquisition"))
            continue
        by_key[key] = (f, parsed, acq)
    return by_key


def _image_table(chosen: dict[tuple, tuple], channel_map: ChannelMap, plate_key: str) -> pd.DataFrame:
    """One row per selected image, sorted by well, site, wavelength and time point."""
    rows = []
    for (well, site, w, tp), (f, parsed, acq) in sorted(chosen.items()):
        spec = channel_map.by_wavelength()[w]
        row, col = well_row_col(well)
        rows.append(
            {
                "Metadata_Plate": plate_key,
                "Metadata_Well": well,
                "Metadata_Row": row,
                "Metadata_Column": col,
                "Metadata_Site": site,
                "Metadata_TimePoint": tp,
                "channel": spec.name,
                "wavelength": w,
                "acquisition": acq,
                "path": f.path,
                "file_size": f.size,
                "mtime_ns": f.mtime_ns,
                "file_plate_name": parsed.plate,
            }
        )
    return pd.DataFrame(rows)


def _read_plate_htd(
    htd_path: str | None, channel_map: ChannelMap, problems: list[str]
) -> tuple[HtdInfo | None, str | None, list[str]]:
    """``(HTD, HTD error, channel-name mismatches)`` of the plate's HTD file, if any; its
    problems are appended to ``problems``."""
    htd = None
    htd_error = None
    mismatches: list[str] = []
    if htd_path:
        try:
            htd = parse_htd(htd_path)
            problems += [f"{htd_path}: {p}" for p in channel_map.check_against_htd(htd.wave_names)]
            mismatches = channel_map.htd_name_mismatches(htd.wave_names)
        except HtdError as exc:
            htd_error = str(exc)
            problems.append(htd_error)
    return htd, htd_error, mismatches


def plate_wavelengths(scan: "PlateScan", channel_map: ChannelMap) -> list[int]:
    """The plate's channels: the HTD's wavelengths when there is an HTD, else the wavelengths
    present among its images; only those the channel map names. A three-wavelength export
    therefore expects three channels, whatever the channel map also lists."""
    known = {c.wavelength for c in channel_map.channels}
    if scan.htd is not None:
        waves = range(1, scan.htd.n_wavelengths + 1)
    else:
        waves = scan.images["wavelength"].unique().tolist() if len(scan.images) else []
    return sorted(int(w) for w in waves if w in known)


def expected_images(
    htd: HtdInfo | None,
    platemap_wells: list[str] | None,
    wavelengths: list[int],
    observed_sites: list[int] | None = None,
) -> set[tuple[str, int, int]]:
    """Expected (well, site, wavelength) triples of a plate.

    Wells and sites from the HTD (selected wells x sites) when present, restricted to the
    plate-map wells; otherwise every plate-map well x sites 1..(the largest site seen on
    the plate): without an HTD a partial copy is only recognised by comparing wells, so a
    site number absent everywhere, or a well with fewer sites, is missing. ``wavelengths``
    are the plate's channels (:func:`plate_wavelengths`).
    """
    if htd is not None:
        wells = list(htd.wells)
        if platemap_wells:
            wells = [w for w in wells if w in set(platemap_wells)]
        sites = list(htd.sites)
    else:
        wells = list(platemap_wells or [])
        sites = list(range(1, max((int(s) for s in observed_sites or []), default=1) + 1))
    return {(w, s, k) for w in wells for s in sites for k in wavelengths}


def missing_images(scan: PlateScan, platemap_wells: list[str] | None, channel_map: ChannelMap) -> list[tuple[str, int, int]]:
    """Expected (well, site, wavelength) triples that have no usable image, sorted."""
    observed = set()
    sites = []
    if len(scan.images):
        observed = set(zip(scan.images.Metadata_Well, scan.images.Metadata_Site, scan.images.wavelength))
        sites = scan.images.Metadata_Site.unique().tolist()
    expected = expected_images(scan.htd, platemap_wells, plate_wavelengths(scan, channel_map), sites)
    return sorted(expected - observed)


def missing_required_channels(scan: PlateScan, channel_map: ChannelMap, required: tuple[str, ...]) -> list[str]:
    """Required channel names (e.g. nuclei, borders, actin) with no wavelength on the plate."""
    present = {channel_map.name_of(w) for w in plate_wavelengths(scan, channel_map)}
    return [c for c in required if c not in present]
