"""Indexing on a Dask cluster: the same index as one process, through faults.

The files are the wild benchmark's (kohya and PEFT layouts, fp32, fp16 and bf16) with bad files
among them. The reference is the same build in one process; a worker killed in the middle and a
file that kills every worker that reads it must not lose, double or misplace any other file.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from distributed import Client, KilledWorker, LocalCluster

from lorastyle.cli import main
from lorastyle.index import LoraIndex, build_index
from lorastyle.index import distributed as dist
from lorastyle.index.sketches import Sketcher
from support import ROOT

WILD = ROOT / "data" / "wild" / "loras"
pytestmark = pytest.mark.skipif(not WILD.is_dir(), reason="needs data/wild (benchmarks/wild/generate.py)")
SKETCHER = dict(dim=1024, module_dim=256)  # small sketches: the reads, not the sketches, are under test


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """40 wild LoRAs, a truncated copy of one, a pickle and a safetensors file that is no LoRA."""
    root = tmp_path_factory.mktemp("cluster-folder")
    names = sorted(os.listdir(WILD))[:40]
    for name in names:
        shutil.copy(WILD / name, root / name)
    data = (WILD / names[0]).read_bytes()
    (root / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (root / "model.ckpt").write_bytes(b"not read")
    (root / "empty.safetensors").write_bytes(b"")
    return root


def paths_of(folder):
    return sorted(str(folder / n) for n in os.listdir(folder))


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as c,
    ):
        yield c


def assert_same_index(a, b, sa, sb):
    assert sa == sb
    assert list(a.groups) == list(b.groups)
    assert len(a.records) == len(b.records)
    for x, y in zip(a.records, b.records, strict=True):
        for field in ("path", "sha256", "identity", "format", "base", "dtype", "parts", "ranks", "alphas", "info"):
            assert getattr(x, field) == getattr(y, field), field
        assert x.layout.key == y.layout.key
        for p in x.parts:
            np.testing.assert_array_equal(x.sketches[p], y.sketches[p])
            assert x.norms[p] == pytest.approx(y.norms[p], rel=1e-12)
        np.testing.assert_array_equal(x.module_norms, y.module_norms)
    for query in a.records[:5]:  # scores within float tolerance, for both scorers
        for scorer in ("cosine", "pca"):
            ra, rb = a.similar(query, k=10, scorer=scorer), b.similar(query, k=10, scorer=scorer)
            assert [r["path"] for r in ra] == [r["path"] for r in rb]
            np.testing.assert_allclose([r["score"] for r in ra], [r["score"] for r in rb], atol=1e-9)


def test_cluster_gives_the_index_of_one_process(folder, client):
    paths = paths_of(folder)
    local, skipped_local, stats_local = build_index(paths, sketcher=Sketcher(**SKETCHER))
    seen = []

    def progress(items, desc, total):
        if "fitting" in desc:
            yield from items
            return
        assert total == len(paths) and "Dask workers" in desc
        for item in items:
            seen.append(item[0])
            yield item

    remote, skipped_remote, stats_remote = build_index(
        paths, sketcher=Sketcher(**SKETCHER), client=client, progress=progress
    )
    assert_same_index(local, remote, skipped_local, skipped_remote)
    for index in (local, remote):  # records of one layout share one Layout object (each is ~0.6 MB for SDXL)
        assert len({id(r.layout) for r in index.records}) == len({r.layout.key for r in index.records})
    assert stats_local == stats_remote and stats_remote.read == len(paths) - 1  # the pickle is refused unread
    assert sorted(seen) == list(range(len(paths)))  # each file reported once
    reasons = dict(skipped_remote)
    assert {os.path.basename(p) for p in reasons} == {"truncated.safetensors", "model.ckpt", "empty.safetensors"}
    assert len(local.records) == 40


def test_a_killed_worker_loses_and_doubles_no_file(folder):
    paths = paths_of(folder)
    local, skipped_local, stats_local = build_index(paths, sketcher=Sketcher(**SKETCHER))
    killed = []
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as c,
    ):
        victim = sorted(c.scheduler_info()["workers"])[0]
        pid = c.run(os.getpid, workers=[victim])[victim]

        def progress(items, desc, total):
            if killed or "fitting" in desc:
                yield from items
                return
            # Before the first result: wait until the victim has tasks, then kill its process.
            deadline = time.monotonic() + 60
            while not c.processing(workers=[victim]).get(victim):
                assert time.monotonic() < deadline, "the victim never got a task"
                time.sleep(0.005)
            killed.append(list(c.processing(workers=[victim])[victim]))
            os.kill(pid, signal.SIGKILL)
            yield from items

        remote, skipped_remote, stats_remote = dist_build(paths, c, progress)
        assert victim not in c.scheduler_info()["workers"]  # it died (its nanny starts another)
    assert killed and killed[0]  # tasks were on the killed worker
    assert_same_index(local, remote, skipped_local, skipped_remote)
    assert stats_remote == stats_local


def dist_build(paths, client, progress):
    return build_index(paths, sketcher=Sketcher(**SKETCHER), client=client, progress=progress)


def test_a_file_that_kills_its_workers_is_reported_and_the_rest_kept(folder, monkeypatch):
    """A batch that ends in KilledWorker is read again one file per task; only the killer is lost."""
    paths = paths_of(folder)
    killer = paths[3]
    real = dist.read_outcome
    attempts = []

    def read_outcome(path, **kw):
        attempts.append(path)
        if path == killer:
            raise KilledWorker(task="read", last_worker=SimpleNamespace(address="tcp://gone:1"), allowed_failures=3)
        return real(path, **kw)

    monkeypatch.setattr(dist, "read_outcome", read_outcome)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as c,
    ):
        pairs = list(
            dist.read_files_on_cluster(
                paths, client=c, sketcher=Sketcher(**SKETCHER), descriptor="gram", files_per_task=4
            )
        )
    assert sorted(j for j, _ in pairs) == list(range(len(paths)))  # each file answered once
    outcomes = [o for _, o in sorted(pairs, key=lambda pair: pair[0])]
    assert outcomes[3].record is None and "died" in outcomes[3].reason and not outcomes[3].lasting
    for path, outcome in zip(paths, outcomes, strict=True):
        if path != killer:
            assert outcome.record is not None or outcome.reason, path
            if outcome.record is not None:
                assert outcome.record.path == path  # in its place
    # the killer's batch (files 0-3, the killer last) was tried as a batch, then file by file; nobody else twice
    assert [attempts.count(p) for p in paths[:4]] == [2, 2, 2, 2]
    assert all(attempts.count(p) == 1 for p in paths[4:])


def test_cluster_client_checks_its_arguments_and_the_address():
    with pytest.raises(ValueError, match="not both or neither"):
        with dist.cluster_client():
            pass
    with pytest.raises(dist.ClusterError, match="no Dask scheduler answers"):
        with dist.cluster_client(scheduler="nonsense-without-port"):
            pass


@pytest.mark.slow
def test_readme_commands_on_two_local_workers(folder, tmp_path):
    """The README's "Beyond one machine" commands: `dask scheduler`, `dask worker`, `lorastyle index --scheduler`."""
    bin_dir = os.path.dirname(sys.executable)
    scheduler = subprocess.Popen(
        [os.path.join(bin_dir, "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"],
        stderr=subprocess.PIPE,
        text=True,
    )
    worker = None
    try:
        address = None
        for line in scheduler.stderr:
            if "Scheduler at:" in line:
                address = line.split("Scheduler at:")[1].strip()
                break
        assert address and address.startswith("tcp://")
        worker = subprocess.Popen(
            [os.path.join(bin_dir, "dask"), "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
            stderr=subprocess.DEVNULL,
        )
        with Client(address) as c:
            c.wait_for_workers(2, timeout=120)
        out = tmp_path / "index.safetensors"
        assert main(["index", str(folder), "-o", str(out), "--scheduler", address, "--no-calibration"]) == 0
        alone = tmp_path / "alone.safetensors"
        assert main(["index", str(folder), "-o", str(alone), "--no-calibration"]) == 0
        a, b = LoraIndex.load(alone), LoraIndex.load(out)
        assert a.paths == b.paths and len(a.paths) == 40
        assert [r.sha256 for r in a.records] == [r.sha256 for r in b.records]
        for g in a.groups:
            for p in a.groups[g].matrix.parts:
                np.testing.assert_array_equal(a.groups[g].matrix.unit[p], b.groups[g].matrix.unit[p])
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=60)
