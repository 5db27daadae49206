"""map_sites: same answers on every backend; one failing item never kills the others."""

import pytest

from ssc_assets.core.parallel import map_sites


def square_or_fail(x):
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x * x


@pytest.mark.parametrize("backend", ["serial", "process"])
def test_results_in_order_with_failures(backend):
    seen = []
    res = map_sites(square_or_fail, list(range(8)), backend=backend, max_workers=2, on_result=seen.append)
    assert [r.value for r in res] == [0, 1, 4, None, 16, 25, 36, 49]
    assert res[3].error == "ValueError: bad item 3" and "square_or_fail" in res[3].traceback
    assert sorted(r.key for r in seen) == list(range(8))


def test_dask_local_cluster_matches_serial():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        res = map_sites(square_or_fail, list(range(6)), backend="dask", dask_address=cluster.scheduler_address)
    assert [r.value for r in res] == [0, 1, 4, None, 16, 25]
    assert "bad item 3" in res[3].error


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        map_sites(square_or_fail, [1], backend="spark")
