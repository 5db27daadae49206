"""The storage abstraction on local paths and fsspec URLs; atomic writes."""

import pandas as pd
import pytest

from ssc_assets.core import storage


@pytest.mark.parametrize("kind", ["local", "file", "memory"])
def test_parquet_round_trip(tmp_path, kind):
    base = {"local": str(tmp_path), "file": f"file://{tmp_path}", "memory": "memory://ssc-test"}[kind]
    path = storage.join(base, "raw_sites", "P1.parquet")
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    storage.write_parquet(df, path)
    pd.testing.assert_frame_equal(storage.read_parquet(path), df)
    fs, inner = storage.filesystem(path)
    assert [p for p in fs.ls(inner.rsplit("/", 1)[0]) if ".tmp-" in p] == []


def test_failed_write_leaves_previous_version(tmp_path, monkeypatch):
    path = str(tmp_path / "x.parquet")
    storage.write_parquet(pd.DataFrame({"a": [1]}), path)

    class Boom(Exception):
        pass

    def bad_to_parquet(self, buf, index=False):
        raise Boom()

    monkeypatch.setattr(pd.DataFrame, "to_parquet", bad_to_parquet)
    with pytest.raises(Boom):
        storage.write_parquet(pd.DataFrame({"a": [2]}), path)
    monkeypatch.undo()
    assert storage.read_parquet(path)["a"].tolist() == [1]
    assert not list(tmp_path.glob("*.tmp-*"))


def test_crash_during_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "t.txt"
    storage.write_text(str(path), "old")
    import fsspec.implementations.local as local

    real_open = local.LocalFileSystem._open

    def exploding_open(self, p, mode="rb", **kw):
        fh = real_open(self, p, mode, **kw)
        if "w" in mode:
            fh.write(b"partial")
            raise OSError("disk full")
        return fh

    monkeypatch.setattr(local.LocalFileSystem, "_open", exploding_open)
    with pytest.raises(OSError):
        storage.write_text(str(path), "new content")
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert not list(tmp_path.glob("*.tmp-*"))
