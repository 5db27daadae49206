"""A real PostgreSQL server on loopback (throwaway cluster in a temp dir) backing the Dagster
instance with deploy/dagster.postgres.yaml: materialize a plate, read its events back.

`.ci/run` installs Debian's postgresql so that this runs in CI; elsewhere it skips with the reason.
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import dagster as dg
import pytest

from ssc_assets.core.simulate import simulate_demo
from ssc_assets.defs.partitions import plates
from ssc_assets_tests.conftest import make_definitions

REPO = Path(__file__).resolve().parents[1]


def _pg_bin() -> Path | None:
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin"):
        for d in sorted(glob.glob(pattern), reverse=True):
            if Path(d, "initdb").exists() and Path(d, "pg_ctl").exists():
                return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql (.ci/run does)")
    # not under pytest's tmp dir: that is private to the current user, and the server may run as 'postgres'
    root = Path(tempfile.mkdtemp(prefix="ssc-pg-"))
    data, port = root / "data", _free_port()
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root: use the package's system user
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    def run(*cmd):
        out = subprocess.run(prefix + [str(c) for c in cmd], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"{cmd[0]} failed ({out.returncode}): {out.stdout}\n{out.stderr}")
        return out
    run(bindir / "initdb", "-D", data, "-A", "trust", "-U", "ssc", "--no-sync")
    run(bindir / "pg_ctl", "-D", data, "-l", root / "server.log", "-w", "-t", "60",
        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        import psycopg2

        for _ in range(50):
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=port, user="ssc", dbname="postgres")
                break
            except psycopg2.OperationalError:
                time.sleep(0.2)
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE dagster")
        conn.close()
        yield {"host": "127.0.0.1", "port": port, "user": "ssc", "db": "dagster"}
    finally:
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_plate_materializes_on_postgres_instance(postgres, tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")  # the shipped config, unchanged
    monkeypatch.setenv("DAGSTER_PG_USERNAME", postgres["user"])
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "unused-with-trust-auth")
    monkeypatch.setenv("DAGSTER_PG_HOST", postgres["host"])
    monkeypatch.setenv("DAGSTER_PG_DB", postgres["db"])
    text = (home / "dagster.yaml").read_text().replace("port: 5432", f"port: {postgres['port']}")
    (home / "dagster.yaml").write_text(text)

    plates_dir, storage = tmp_path / "plates", tmp_path / "storage"
    simulate_demo(plates_dir, tmp_path / "truth", n_plates=1, seed=2, image_size=128, n_wells=4)
    key = next(p for p in plates_dir.iterdir() if p.is_dir()).name
    defs = make_definitions(plates_dir, storage)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        instance.add_dynamic_partitions(plates.name, [key])
        job = defs.resolve_job_def("process_plate").get_subset(asset_selection={dg.AssetKey("raw_sites"), dg.AssetKey("site_qc")})
        result = job.execute_in_process(instance=instance, partition_key=key)
        assert result.success
    # a fresh instance object reads everything back from the server
    with dg.DagsterInstance.from_config(str(home)) as again:
        assert key in again.get_dynamic_partitions(plates.name)
        run = again.get_run_by_id(result.run_id)
        assert run is not None and run.is_success
        ev = again.get_latest_materialization_event(dg.AssetKey("site_qc"))
        assert ev is not None and ev.run_id == result.run_id
        assert ev.asset_materialization.partition == key
        assert "qc_histograms" in ev.asset_materialization.metadata
