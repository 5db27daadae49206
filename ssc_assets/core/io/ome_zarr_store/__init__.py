"""Per-plate OME-Zarr HCS stores (NGFF plate / row / column / field), written atomically.

Two stores per plate (NGFF 0.5 on zarr v3, readable by ``ome_zarr.reader`` and so napari)::

    corrected_images/<plate>.ome.zarr/    plate metadata: rows, columns, wells present
        B/3/                              well metadata: its fields
            0/                            field (site 1): image (c, y, x) float32, channels
                s0, s1, s2                  nuclei/borders/actin; pyramid 1, 1/2, 1/4
    masks/<plate>.ome.zarr/               same plate/well/field layout
        B/3/0/                            image (c=1: weight_map, float32) and
            labels/                       NGFF labels: nuclei, cells (int32 instances),
                                          borders, actin, actin_inside_cells (uint8 0/1)

Field index = site - 1; chunks (1, 512, 512); channel names in the ``omero`` metadata.

Uniform fields and flags. NGFF plate readers (``ome_zarr.reader``, so napari-ome-zarr) take
the field paths and image shapes of the *first* well for every well, so a well without that
field logs ``Failed to load <row>/<col>/<field>/s0``. With ``uniform_fields=True`` (what the
assets use) every well gets the same field paths: sites whose data is not analysis data are
still written, and their ``status`` is recorded under the ``ssc`` key of the attributes:

* field group ``attrs["ssc"]``: ``status``, ``placeholder`` (True: no real pixels), ``passed_qc``,
  ``qc_reason``, ``error`` and whatever the asset adds (plate, well, site, pixel size);
* well group ``attrs["ssc"]["fields"]``: field path -> ``{site, status, placeholder, reason}``;
* plate root ``attrs["ssc"]``: ``field_status`` (count per status) and ``flagged_fields``.

Statuses (:data:`FIELD_STATUSES`): ``ok`` (QC-passed, processed: the only analysis data),
``qc_failed`` (QC-failed site, data written for review), ``error`` (processing raised),
``unreadable`` (raw images unreadable or missing), ``missing`` (no images for that site; added
by the writer). Placeholders hold a NaN image of the plate's image shape and empty (0) labels.
:func:`list_sites` returns ``ok`` fields only; :func:`field_flags` returns every field's flags.
The ``omero`` display window is computed from ``ok`` fields only (saturated QC failures would
otherwise stretch it). Masks
live in their own store beside the images (NGFF labels must hang under an image; the weight
map, a float, is that image) so that each asset is written atomically and re-materialized on
its own. In napari, open both stores to overlay the labels on the corrected images.

Atomicity and crashes. A store is *complete* when its root ``zarr.json`` holds the plate
metadata, which :class:`HcsPlateWriter` writes last. The writer builds the whole store in
``<store>.tmp-<host>-<pid>-<uuid>`` (the owner is in the name, see ``storage.owner_tag``) and
puts it in place only when every site is written:

* local paths: one atomic ``renameat2(RENAME_EXCHANGE)`` swaps the new store and the old one
  (Linux; the old one then sits under the temp name and is deleted), so ``<store>`` is always
  the old or the new version. Where the exchange is unsupported (not Linux, NFS), the old
  store is renamed to ``<store>.old-<owner>-<uuid>``, the new one renamed into place, the
  backup deleted; a crash between the two renames leaves a complete backup, which readers
  fall back to and the next writer or :func:`cleanup_stale_tmp` renames back.
* fsspec URLs (``s3://``, ``memory://``...), which have no directory rename: the store is
  built in a local temp directory; on commit the current store is first copied to
  ``<store>.old-<owner>-<uuid>`` (root ``zarr.json`` last), then its root ``zarr.json`` is
  deleted, the new files uploaded and the new root ``zarr.json`` put last, then the backup
  deleted. A crash or failed upload leaves a prefix without root metadata (no reader opens
  it) and the complete backup, which the next writer of that store, or
  :func:`cleanup_stale_tmp` on its folder, copies back.

Who writes. The job process creates the temp store and, before dispatching the sites, every
field group (:meth:`HcsPlateWriter.prepare_site`); each site worker writes its own field's
image and label arrays into the temp store (:func:`write_field`) and returns a small summary
(shape, display ranges, label dtypes); the job writes the field's ``ssc`` flags, the
placeholders, the well and plate metadata, and commits. Zarr v3 keeps every array's metadata
and chunks in its own files, so fields of different workers never share a file, and no two
processes write the same group's ``zarr.json``. Workers open the field group with ``mode="r+"``,
so a late worker never re-creates a temp store its (dead) job's recovery already removed; the
store is still committed only by the job, so a crash anywhere leaves the previous version
(workers' files sit in a temp store nobody commits and recovery removes). A store bound for
an fsspec URL is built in a local directory of the job's host: with a ``dask`` backend its
workers return arrays and the job writes them (:meth:`HcsPlateWriter.workers_can_write`).

Temp stores and backups are removed only once their owner is gone (PID dead on this host, or
no write for ``storage.STALE_AFTER_SECONDS`` from another host), so runs of different plates,
or of the same plate, never delete each other's work in progress.
"""

from ssc_assets.core.io.ome_zarr_store.common import (
    CHUNK,
    FIELD_OK,
    FIELD_STATUSES,
    HEARTBEAT_SECONDS,
    LOCAL_BUILD_PREFIX,
    OLD_MARK,
    PLACEHOLDER_SHAPE,
    SCALE_FACTORS,
    TMP_MARK,
)
from ssc_assets.core.io.ome_zarr_store.reader import (
    field_flags,
    list_sites,
    open_reader,
    read_site_image,
    read_site_labels,
    site_group_path,
)
from ssc_assets.core.io.ome_zarr_store.recovery import cleanup_stale_tmp, recover_store
from ssc_assets.core.io.ome_zarr_store.writer import HcsPlateWriter, site_ranges, write_field

__all__ = [
    "CHUNK", "FIELD_OK", "FIELD_STATUSES", "HEARTBEAT_SECONDS", "LOCAL_BUILD_PREFIX", "OLD_MARK", "PLACEHOLDER_SHAPE",
    "SCALE_FACTORS", "TMP_MARK", "HcsPlateWriter", "cleanup_stale_tmp", "field_flags", "list_sites", "open_reader",
    "read_site_image", "read_site_labels", "recover_store", "site_group_path", "site_ranges", "write_field",
]
