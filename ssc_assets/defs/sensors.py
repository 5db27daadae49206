"""The plate sensor: new or changed COMPLETE plate folders become partitions and runs."""


import json
import time

import dagster as dg

from ssc_assets.core.ingest.site_tables import plate_readiness
from ssc_assets.defs.jobs import process_plate
from ssc_assets.defs.partitions import plates
from ssc_assets.defs.resources import PlateSource


def evaluate_plates(plate_source: PlateSource, cursor: dict[str, str], existing: set[str], now_ns: int | None = None, log=None,
                    waiting: dict[str, str] | None = None):
    """One sensor tick, as a plain function (also used by ``ssc-assets demo``).

    Returns (new partition keys, run requests, new cursor). The cursor maps plate key ->
    fingerprint of the last requested version; entries of vanished folders are dropped, so
    it is bounded by the number of plate folders present. Plates that are not ingested get
    their reason in ``waiting`` (plate key -> reason); an error on one plate folder is
    reported for that plate and the others proceed. Folders whose names give the same
    partition key are all left out, with a reason naming every one of them.
    """
    new_keys, requests, new_cursor = [], [], {}
    waiting = {} if waiting is None else waiting
    found = plate_source.find_plate_folders()
    for key, reason in sorted(found.errors.items()):  # e.g. two folders, one partition key: neither
        waiting[key] = reason
        if log:
            log.error(f"plate {key}: {reason}")
        if key in cursor:
            new_cursor[key] = cursor[key]
    channels, strict = plate_source.channels(), plate_source.strict_channels()
    for key, folder in found.folders.items():
        try:
            state = plate_readiness(folder, channels, plate_source.settle_seconds, now_ns, plate_source.time_point,
                                    strict_channels=strict)
        except Exception as exc:  # noqa: BLE001 - one bad folder must not stop the others
            waiting[key] = f"cannot scan {folder}: {type(exc).__name__}: {exc}"
            if log:
                log.error(f"plate {key}: {waiting[key]}")
            if key in cursor:
                new_cursor[key] = cursor[key]
            continue
        if not state.ready:
            waiting[key] = state.reason
            if log:
                log.info(f"plate {key}: not ingested yet ({state.reason})")
            if key in cursor:
                new_cursor[key] = cursor[key]
            continue
        new_cursor[key] = state.fingerprint
        if cursor.get(key) == state.fingerprint and key in existing:
            continue
        if key not in existing:
            new_keys.append(key)
        requests.append(
            dg.RunRequest(
                partition_key=key,
                run_key=f"{key}@{state.fingerprint}",
                tags={"ssc/plate": key, "ssc/fingerprint": state.fingerprint},
            )
        )
        if log:
            log.info(f"plate {key}: requesting a run for version {state.fingerprint} ({state.n_images} images)")
    return new_keys, requests, new_cursor


def ingested_versions(instance: dg.DagsterInstance, keys: list[str]) -> dict[str, str]:
    """Plate key -> data version (folder fingerprint) of its latest raw_sites materialization."""
    out = {}
    for key in keys:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_sites"), asset_partitions=[key]), limit=1).records
        if records:
            version = records[0].asset_materialization.tags.get("dagster/data_version")
            if version:
                out[key] = version
    return out


@dg.sensor(
    job=process_plate,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches SSC_PLATES_DIR; adds a plate partition and requests a run when a plate is complete and settled.",
)
def plate_sensor(context: dg.SensorEvaluationContext, plate_source: PlateSource):
    cursor = json.loads(context.cursor) if context.cursor else {}
    existing = set(context.instance.get_dynamic_partitions(plates.name))
    # plates ingested outside this sensor (ssc-assets demo, the UI): their raw_sites data version
    # is the folder fingerprint, so an unchanged plate is not processed again
    cursor = {**ingested_versions(context.instance, sorted(existing - set(cursor))), **cursor}
    waiting: dict[str, str] = {}
    new_keys, requests, new_cursor = evaluate_plates(plate_source, cursor, existing, time.time_ns(), context.log, waiting)
    skip = None
    if not requests:
        skip = ("; ".join(f"{k}: {v}" for k, v in sorted(waiting.items()))[:1500] if waiting
                else f"no new or changed complete plate under {plate_source.plates_dir}")
    return dg.SensorResult(
        skip_reason=skip,
        run_requests=requests,
        dynamic_partitions_requests=[plates.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps(new_cursor, sort_keys=True),
    )
