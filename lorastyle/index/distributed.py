"""Reading a collection on a Dask cluster: one task per batch of files, the records sent back.

Only the reads run on the workers. Each task reads a few files and returns their records (at
most ``4 * 32`` kB each, whatever the file's size); the client keeps the cache, groups the
records and fits, exactly as one process does, so an index built on a cluster holds the records
of a run in one process. Workers need lorastyle (this version) installed and the files at the
same paths as the client (shared storage).

Faults: a worker that dies takes its running tasks with it, and the scheduler runs them again
on another worker (up to ``distributed.scheduler.allowed-failures`` times). The client takes
each batch's result once, by its position, so no file is lost or counted twice. A batch that
killed its workers that many times is read again one file per task, and a file that still kills
its worker (out of memory, a crash in a library) is reported as skipped with that reason; the
other files are kept.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from .. import __version__
from ..descriptors import ModuleSelection
from ..errors import ClusterError
from .records import ReadOutcome, read_outcome
from .sketches import Sketcher

__all__ = ["read_files_on_cluster", "cluster_client", "FILES_PER_TASK"]

# Files per task at most: enough to amortise the scheduler's few milliseconds per task, few
# enough that a dead worker costs little work and that the tasks spread over the workers.
FILES_PER_TASK = 8


@lru_cache(maxsize=4)
def _worker_sketcher(settings: str) -> Sketcher:
    """One Sketcher per worker process and settings: its hash matrices are made once, not per task.

    One thread each: the cluster's processes are the parallelism.
    """
    return Sketcher(**json.loads(settings), workers=1)


def _read_batch(paths: list, settings: str, descriptor: str, select: ModuleSelection | None) -> list[ReadOutcome]:
    """The task run on a worker: read each file of the batch (bad files become reasons, not errors)."""
    sketcher = _worker_sketcher(settings)
    return [read_outcome(p, sketcher=sketcher, descriptor=descriptor, select=select) for p in paths]


def _worker_version() -> str:
    import lorastyle

    return lorastyle.__version__


def read_files_on_cluster(
    paths: list,
    *,
    client,
    sketcher: Sketcher,
    descriptor: str,
    select: ModuleSelection | None = None,
    progress=None,
    files_per_task: int | None = None,
) -> Iterator[tuple[int, ReadOutcome]]:
    """Read files on a Dask cluster's workers, as :func:`lorastyle.index.records.read_files` does here.

    Parameters
    ----------
    paths : list of str
        Files, at paths every worker sees.
    client : distributed.Client
    sketcher : Sketcher
        Its settings are sent to the workers (each makes its own hash matrices once).
    descriptor : str
    select : ModuleSelection, optional
    progress : callable, optional
        ``progress(iterable, desc=..., total=...)``: advances by one per file as batches finish.
    files_per_task : int, optional
        Default: :data:`FILES_PER_TASK`, fewer when there are few files per worker.

    Yields
    ------
    position : int
        The file's position in ``paths``: outcomes come as batches finish, in any order, each once.
    outcome : ReadOutcome

    Raises
    ------
    ClusterError
        If the cluster has no worker.
    """
    from distributed import KilledWorker, as_completed

    if not paths:
        return
    n_workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
    if n_workers == 0:
        raise ClusterError(str(client.scheduler.address), "the Dask scheduler has no worker")
    per_task = files_per_task or max(1, min(FILES_PER_TASK, math.ceil(len(paths) / (4 * n_workers))))
    settings = json.dumps(sketcher.settings, sort_keys=True)

    def submit(first: int, batch: list):
        return client.submit(_read_batch, batch, settings, descriptor, select, pure=False), (first, batch)

    pending = dict(submit(i, paths[i : i + per_task]) for i in range(0, len(paths), per_task))

    def outcomes() -> Iterator[tuple[int, ReadOutcome]]:
        finished = as_completed(list(pending), with_results=True, raise_errors=False)
        for future, result in finished:
            first, batch = pending.pop(future)
            if future.status == "error":
                error = future.exception()
                if not isinstance(error, KilledWorker):
                    raise error  # a defect, not a bad file: as in one process
                if len(batch) > 1:  # find the file that kills its worker: one task per file
                    for j, path in enumerate(batch):
                        again, where = submit(first + j, [path])
                        pending[again] = where
                        finished.add(again)
                    continue
                result = [
                    ReadOutcome(
                        None,
                        "the Dask worker reading it died each time it was tried (out of memory, or a crash); "
                        "the other files were read",
                    )
                ]
            future.release()  # the records are here now: free the worker's copy
            for j, outcome in enumerate(result):
                yield first + j, outcome

    items = outcomes()
    if progress is not None:
        items = progress(items, desc=f"reading files on {n_workers} Dask workers", total=len(paths))
    yield from items


@contextmanager
def cluster_client(scheduler: str | None = None, workers: int | None = None):
    """A Dask client: of the scheduler at ``scheduler``, or of ``workers`` local worker processes.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``dask scheduler`` prints it), such as ``tcp://host:8786``.
    workers : int, optional
        Start a local cluster of this many worker processes, one thread each (the reads hold the
        GIL while they parse, so processes, not threads, read in parallel).

    Yields
    ------
    distributed.Client

    Raises
    ------
    ClusterError
        If no scheduler answers at the address, or a worker cannot import this lorastyle.
    """
    if (scheduler is None) == (workers is None):
        raise ValueError("give a scheduler address or a number of local workers, not both or neither")
    from distributed import Client, LocalCluster

    if workers is not None:
        with (
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    try:
        client = Client(scheduler, timeout=10)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(scheduler, f"no Dask scheduler answers at this address ({exc})") from None
    with client:
        try:
            versions = client.run(_worker_version)
        except Exception as exc:  # noqa: BLE001 - a worker without lorastyle: say which, in words
            raise ClusterError(scheduler, f"a worker cannot import lorastyle ({type(exc).__name__}: {exc})") from None
        other = {w: v for w, v in versions.items() if v != __version__}
        if other:
            raise ClusterError(
                scheduler,
                f"workers run another lorastyle than this {__version__}: "
                + ", ".join(f"{w} has {v}" for w, v in sorted(other.items())),
            )
        yield client
