"""B6: indexing on a Dask cluster, search at a million records, and what a million real files would take.

(a) The reads of N SDXL-size files (the key layout of B3, rank 8, 57 MB each, sparse) on a local
    Dask cluster of 2 worker processes (one thread each) against the same reads in one process:
    wall time, files per second, peak memory of each worker and of the client, and the scheduler's
    overhead per file: ``(workers * wall - sum of the tasks' compute times) / N``, from Dask's task
    stream. Each run is a fresh child process; the records of both runs are compared (sha256 and
    sketches equal).
(b) 10^6 simulated records (unit vectors of a record's sketch at ``--dim``, with a hierarchy of
    genres, artists and files), since 10^6 real files cannot exist here: the ANN index's fit time
    (projection, lists, tuning), its memory, one query's latency p50 / p95 (candidates and exact
    re-rank), and recall@10 against exact search on 1,000 queries the index never saw.
(c) From (a)'s measured per-file cost, the time and machine count for 10^6 real files, with the
    assumptions stated.

Each part's numbers are written to ``results/b6.partial.json`` as soon as they are measured, so a
run that is interrupted resumes with the parts not yet measured (``--fresh`` starts again); the
partial file is removed once ``b6.json`` and ``b6.md`` are written.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as c
import numpy as np

sys.path.insert(0, str(c.ROOT))

SDXL = "invokeai_stripped__sdxl_kohya__Alien_Style"
RANK = 8
P50_GOAL_MS = 5.0
RECALL_GOAL = 0.95


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _digest(outcomes) -> list:
    return [
        (o.record.sha256, {p: o.record.sketches[p].tobytes().hex()[:64] for p in o.record.parts})
        if o.record is not None
        else o.reason
        for o in outcomes
    ]


def _in_order(pairs) -> list:
    return [o for _, o in sorted(pairs, key=lambda pair: pair[0])]


def child(mode: str, folder: str) -> None:
    """One measured run (a child process): print its numbers as JSON."""
    from lorastyle.index.distributed import read_files_on_cluster
    from lorastyle.index.records import read_files
    from lorastyle.index.sketches import Sketcher

    paths = sorted(str(Path(folder) / n) for n in os.listdir(folder))
    if mode == "single":
        t = time.perf_counter()
        outcomes = _in_order(read_files(paths, sketcher=Sketcher(), descriptor="gram"))
        wall = time.perf_counter() - t
        print(json.dumps({"wall_s": wall, "peak_mb": _peak_mb(), "digest": _digest(outcomes)}))
        return
    from distributed import Client, LocalCluster, get_task_stream

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.run(lambda: __import__("lorastyle.index"))  # imports are not the reads' cost
        t = time.perf_counter()
        with get_task_stream(client=client) as ts:
            outcomes = _in_order(read_files_on_cluster(paths, client=client, sketcher=Sketcher(), descriptor="gram"))
        wall = time.perf_counter() - t
        compute = sum(
            sum(s["stop"] - s["start"] for s in task["startstops"] if s["action"] == "compute") for task in ts.data
        )
        workers = client.run(_peak_mb)
        print(
            json.dumps(
                {
                    "wall_s": wall,
                    "compute_s": compute,
                    "tasks": len(ts.data),
                    "client_peak_mb": _peak_mb(),
                    "worker_peak_mb": sorted(workers.values()),
                    "digest": _digest(outcomes),
                }
            )
        )


def part_a(n: int, tmp: Path) -> dict:
    from tools.layouts import layout_shapes, write_layout_file

    shapes = layout_shapes(SDXL)
    folder = tmp / "files"
    folder.mkdir(exist_ok=True)
    size = 0
    for i in range(n):
        size = write_layout_file(folder / f"l{i:05d}.safetensors", shapes, rank=RANK, seed=i, sparse=True)
    env = {**os.environ, "TQDM_DISABLE": "1"}
    runs = {}
    for mode in ("single", "cluster"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, str(folder)], capture_output=True, text=True, env=env
        )
        if out.returncode != 0:
            raise RuntimeError(f"{mode} run failed: {out.stderr[-3000:]}")
        runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    single, cluster = runs["single"], runs["cluster"]
    same = single.pop("digest") == cluster.pop("digest")
    overhead = (2 * cluster["wall_s"] - cluster["compute_s"]) / n
    return {
        "n_files": n,
        "file_mb": size / 1e6,
        "single": single,
        "cluster": cluster,
        "same_records": same,
        "speedup": single["wall_s"] / cluster["wall_s"],
        "cpu_s_per_file": cluster["compute_s"] / n,
        "overhead_s_per_file": overhead,
    }


def simulated(rng, n: int, dim: int, genres: int = 50, artists: int = 20_000) -> np.ndarray:
    """Unit vectors with a hierarchy: genre centre + artist offset + file noise (float16, made in chunks)."""
    G = rng.standard_normal((genres, dim)).astype(np.float32)
    A = G[rng.integers(0, genres, artists)] + 0.8 * rng.standard_normal((artists, dim)).astype(np.float32)
    X = np.empty((n, dim), np.float16)
    for s in range(0, n, 50_000):
        m = min(50_000, n - s)
        V = A[rng.integers(0, artists, m)] + 1.0 * rng.standard_normal((m, dim)).astype(np.float32)
        X[s : s + m] = V / np.linalg.norm(V, axis=1, keepdims=True)
    return X


def part_b(n: int, dim: int, reduce_dim: int, n_queries: int) -> dict:
    import psutil

    from lorastyle.index.ann import AnnIndex

    rng = np.random.default_rng(0)
    data = simulated(rng, n + n_queries, dim)
    X, Q = data[:n], data[n:].astype(np.float32)
    rss0 = psutil.Process().memory_info().rss
    t = time.perf_counter()
    ann = AnnIndex(reduce_dim=reduce_dim, target_recall=RECALL_GOAL).fit(X)
    fit_s = time.perf_counter() - t
    ann_mb = (psutil.Process().memory_info().rss - rss0) / 1e6
    lat = []
    found = []
    for q in Q:
        t = time.perf_counter()
        found.append(ann.search(q[None, :], 10, X=X)[0])
        lat.append(time.perf_counter() - t)
    truth = []
    for s in range(0, len(Q), 100):  # exact search on the full vectors, in blocks
        block = Q[s : s + 100]
        scores = np.concatenate([block @ np.asarray(X[r : r + 100_000], np.float32).T for r in range(0, n, 100_000)], 1)
        truth.append(np.argsort(-scores, axis=1)[:, :10])
    truth = np.concatenate(truth)
    recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))
    lat_ms = 1000 * np.asarray(lat)
    return {
        "n": n,
        "dim": dim,
        "reduce_dim": reduce_dim,
        "n_lists": int(ann.centroids_.shape[0]),
        "n_probe": int(ann.n_probe_),
        "fit_s": fit_s,
        "ann_memory_mb": ann_mb,
        "vectors_mb": X.nbytes / 1e6,
        "query_p50_ms": float(np.percentile(lat_ms, 50)),
        "query_p95_ms": float(np.percentile(lat_ms, 95)),
        "recall_at_10": recall,
        "tuning_recall": ann.recall_,
        "n_queries": len(Q),
    }


def part_c(a: dict) -> dict:
    """10^6 files of 100 MB, from (a)'s CPU seconds per file (scaled by size) and stated assumptions."""
    files, mb = 10**6, 100.0
    cpu_s = a["cpu_s_per_file"] * mb / a["file_mb"]  # reads, hashing and sketching scale with the bytes
    cores, storage_gbs, hours = 16, 1.0, 24.0  # per machine: cores, read bandwidth (GB/s); target wall time
    core_hours = files * cpu_s / 3600
    io_hours_per_machine = files * mb / 1e3 / storage_gbs / 3600
    machines_cpu = core_hours / (cores * hours)
    machines_io = io_hours_per_machine / hours
    return {
        "files": files,
        "file_mb": mb,
        "cpu_s_per_file": cpu_s,
        "core_hours": core_hours,
        "machine_cores": cores,
        "storage_gb_per_s_per_machine": storage_gbs,
        "target_hours": hours,
        "machines": int(np.ceil(max(machines_cpu, machines_io))),
        "bound": "CPU" if machines_cpu >= machines_io else "storage",
        "scheduler_hours": files * a["overhead_s_per_file"] / 3600,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    p = c.parser(__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=None, help="files of part (a) (default 2000)")
    p.add_argument("--records", type=int, default=None, help="simulated records of part (b) (default 10^6)")
    p.add_argument("--dim", type=int, default=1024, help="length of a simulated record's vector (default 1024)")
    p.add_argument("--fresh", action="store_true", help="measure every part again")
    args = p.parse_args()
    files = args.files or (2 if args.quick else 2000)
    records = args.records or (3000 if args.quick else 10**6)
    dim = 64 if args.quick else args.dim
    partial = args.out / ("b6.partial.quick.json" if args.quick else "b6.partial.json")
    done = {} if args.fresh or not partial.exists() else json.loads(partial.read_text())
    tmp = Path(tempfile.mkdtemp(prefix="lorastyle-b6-", dir=args.tmp))
    args.out.mkdir(parents=True, exist_ok=True)

    def keep(name, value):
        done[name] = value
        partial.write_text(json.dumps(done, indent=2))

    try:
        if done.get("a", {}).get("n_files") != files:
            keep("a", part_a(files, tmp))
        if done.get("b", {}).get("n") != records or done["b"].get("dim") != dim:
            keep("b", part_b(records, dim, min(256, dim // 2), 100 if args.quick else 1000))
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    a, b = done["a"], done["b"]
    proj = part_c(a)
    s, cl = a["single"], a["cluster"]
    body = "**(a) Reading SDXL-size files on 2 local Dask workers against one process**\n\n" + c.table(
        ["run", "files", "wall s", "files/s", "peak MB", "records equal"],
        [
            [
                "one process",
                a["n_files"],
                c.fmt(s["wall_s"]),
                c.fmt(a["n_files"] / s["wall_s"]),
                c.fmt(s["peak_mb"]),
                "",
            ],
            [
                "2 workers",
                a["n_files"],
                c.fmt(cl["wall_s"]),
                c.fmt(a["n_files"] / cl["wall_s"]),
                f"{', '.join(c.fmt(x) for x in cl['worker_peak_mb'])} per worker; client {c.fmt(cl['client_peak_mb'])}",
                "yes" if a["same_records"] else "**no**",
            ],
        ],
    )
    body += (
        f"\n\nSpeed-up {a['speedup']:.2f}x on {c.machine()['cores']} cores; {cl['tasks']} tasks; the tasks' compute "
        f"time is {c.fmt(a['cpu_s_per_file'])} s per file ({a['file_mb']:.0f} MB) and the scheduler's overhead "
        f"{c.fmt(1000 * a['overhead_s_per_file'])} ms per file (2 x wall - compute, over files). The one-process "
        "and client peaks hold every record as read, each with its own copy of the file's layout (about 0.6 MB "
        "here); `build_index` shares one layout per group, which B3 measures.\n\n"
    )
    body += f"**(b) Search over {b['n']:,} simulated records of {b['dim']} numbers**\n\n" + c.table(
        [
            "lists",
            "probes",
            "fit s",
            "RSS growth over the fit MB",
            "query p50 ms",
            "p95 ms",
            "recall@10",
            f"p50 < {P50_GOAL_MS:g} ms and recall >= {RECALL_GOAL}",
        ],
        [
            [
                b["n_lists"],
                b["n_probe"],
                c.fmt(b["fit_s"]),
                c.fmt(b["ann_memory_mb"]),
                c.fmt(b["query_p50_ms"]),
                c.fmt(b["query_p95_ms"]),
                f"{b['recall_at_10']:.3f}",
                c.verdict(b["query_p50_ms"] < P50_GOAL_MS and b["recall_at_10"] >= RECALL_GOAL),
            ]
        ],
    )
    kept_mb = b["n"] * (b["reduce_dim"] * (2 + 4) + 8 + 8) / 1e6  # float16 + float32 numbers, list and id
    body += (
        f"\n\nRecall against exact search on the full vectors for {b['n_queries']:,} queries the index never saw; "
        f"a query is projected ({b['reduce_dim']} numbers), its lists probed, 100 candidates re-ranked exactly. "
        f"The RSS growth holds the fit's temporaries too; what the ANN index keeps is its float16 projections "
        f"and faiss's float32 copy of them in the lists, with their ids: {c.fmt(kept_mb)} MB by their sizes. "
        f"The vectors themselves take {c.fmt(b['vectors_mb'])} MB (float16), outside the ANN "
        "index.\n\n"
    )
    body += (
        f"**(c) Projection for {proj['files']:,} real files of {proj['file_mb']:.0f} MB (100 TB)**: at "
        f"{c.fmt(proj['cpu_s_per_file'])} CPU s per file (part (a)'s compute, scaled by size) they take "
        f"{c.fmt(proj['core_hours'])} core-hours; with machines of {proj['machine_cores']} cores reading shared "
        f"storage "
        f"at {proj['storage_gb_per_s_per_machine']:g} GB/s each, {proj['machines']} machines finish in "
        f"{proj['target_hours']:g} h ({proj['bound']}-bound). The scheduler's measured overhead adds "
        f"{c.fmt(proj['scheduler_hours'])} worker-hours in all. Assumptions: the cost per byte of (a) holds for dense "
        "files (sparse files are read from the page cache here, so real storage is the assumed bandwidth), files are "
        "spread evenly, and the records come back to one client: at this sketch size (3 parts of 16,384 float16 "
        "numbers, 96 kB per file) that is 96 GB, so a run of this size needs `Sketcher(dim=1024)` (6 GB) or records "
        "kept on the workers, which lorastyle does not do yet."
    )
    c.write_results(
        "b6",
        "Indexing on a Dask cluster and search at a million records",
        {"a": a, "b": b, "c": proj},
        body,
        args.out,
        args.quick,
    )
    partial.unlink()


if __name__ == "__main__":
    main()
