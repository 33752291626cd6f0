"""Interrupted and concurrent ``lorastyle index`` runs: the index is never lost or mixed, work is not redone.

* A run is killed with SIGKILL at exact points (after the k-th record is cached, just before the
  index file is renamed into place, just after): a forked child stops itself there (SIGSTOP) and
  the test kills it, so where each kill lands is asserted, not left to timing. After each kill
  the index is the previous complete one or the new complete one and ``similar`` works on it; the
  re-run reads exactly the files that neither the previous index nor the cache holds.
* Two runs on one output never interleave: the second is refused with exit 2.
* A damaged or unwritable cache never stops a run; a damaged index is a format error.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import lorastyle.index.cache as cache_module
import lorastyle.index.records as records_module
from lorastyle.cli import main
from lorastyle.errors import IndexBusyError, LoraFormatError
from lorastyle.index import LoraIndex, index_folder, index_lock
from lorastyle.index.cache import CACHE_SUFFIX
from lorastyle.index.records import read_record
from lorastyle.io import atomic
from lorastyle.io.formats import save_lora
from lorastyle.io.safetensors import read_safetensors, write_safetensors
from support import index_of_format

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
MODULES = [f"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn{a}.to_{p}" for a in (1, 2) for p in "qkv"]


def write_lora(path, seed, *, rank=4, width=16, dtype=np.float32):
    rng = np.random.default_rng(seed)
    factors = {
        n: (
            (0.1 * rng.standard_normal((rank, width))).astype(np.float32),
            (0.1 * rng.standard_normal((width, rank))).astype(np.float32),
        )
        for n in MODULES
    }
    save_lora(path, factors, alpha=float(rank), base="tiny", dtype=dtype)
    return str(path)


def cache_entries(cache_dir):
    return sorted(p.name for p in Path(cache_dir).glob(f"*{CACHE_SUFFIX}")) if os.path.isdir(cache_dir) else []


def summary(stderr):
    """(read, unchanged, from cache) of the last summary line."""
    line = [x for x in stderr.split("\n") if x.startswith("indexed ")][-1]
    read, unchanged, cached = (
        int(x)
        for x in __import__("re")
        .search(r"read (\d+), (\d+) unchanged since the last run, (\d+) from the cache", line)
        .groups()
    )
    return read, unchanged, cached


def run_cli(folder, out, *extra):
    proc = subprocess.run(
        [sys.executable, "-m", "lorastyle", "index", str(folder), "-o", str(out), *extra],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    return proc.returncode, proc.stderr


@pytest.fixture
def small_folder(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    for i in range(5):
        write_lora(folder / f"l{i}.safetensors", seed=i)
    return folder


# ---------------------------------------------------------------------------
# SIGKILL at exact points


def _killed_run(folder, out, stop_at):
    """Fork a child that indexes ``folder`` and stops itself at ``stop_at``; SIGKILL it there.

    ``stop_at`` is ("record", k): after the k-th record is written to the cache; ("rename", None):
    with the new index written to its temporary file, before the rename; ("renamed", None): right after.
    Returns the point where the child stopped ("finished" if it never reached it).
    """
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            kind, k = stop_at
            if kind == "record":
                put, count = cache_module.RecordCache.put, [0]

                def put_then_stop(self, record):
                    put(self, record)
                    count[0] += 1
                    if count[0] == k:
                        os.kill(os.getpid(), signal.SIGSTOP)

                cache_module.RecordCache.put = put_then_stop
            else:
                replace = atomic.os.replace

                def stop_around_rename(src, dst):
                    if kind == "rename" and str(dst) == str(out):
                        os.kill(os.getpid(), signal.SIGSTOP)
                    replace(src, dst)
                    if kind == "renamed" and str(dst) == str(out):
                        os.kill(os.getpid(), signal.SIGSTOP)

                atomic.os.replace = stop_around_rename
            index_folder(folder, out)
        except BaseException:
            import traceback

            traceback.print_exc()
            os._exit(1)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return stop_at[0]
    assert os.WEXITSTATUS(status) == 0, "the indexing child failed (its traceback is above)"
    return "finished"


def test_sigkill_at_exact_points_never_loses_the_index_and_resume_does_not_redo(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    out = tmp_path / "idx.safetensors"
    cache_dir = f"{out}.cache"
    n = 0
    for _ in range(6):
        write_lora(folder / f"l{n:03d}.safetensors", seed=n)
        n += 1
    plan = [("record", 3), ("rename", None), ("record", 2), ("renamed", None), ("record", 1)]
    previous = None
    for stop_at in plan:
        for _ in range(2):  # new files each round, so that the new index differs from the previous one
            write_lora(folder / f"l{n:03d}.safetensors", seed=n)
            n += 1
        landed = _killed_run(folder, out, stop_at)
        assert landed == stop_at[0]  # where the kill landed, asserted: not left to timing
        if out.exists():
            index = LoraIndex.load(out)  # whole: the previous complete index or the new complete one
            assert len(index.paths) in ({previous} if stop_at[0] != "renamed" else {n}) - {None} or previous is None
            query = records_module.read_record(folder / "l000.safetensors", sketcher=index.sketcher)
            assert index.similar(query, k=2)
            previous = len(index.paths)
        else:
            assert previous is None  # no index before the first complete run
        for name in cache_entries(cache_dir):  # every cache entry is whole
            read_safetensors(Path(cache_dir) / name)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.")] or stop_at[0] == "rename"
    # the resumed run reads exactly what neither the last index nor the cache holds
    held = set(LoraIndex.load(out).paths) if out.exists() else set()
    cached = {json.loads(read_safetensors(Path(cache_dir) / e)[1]["record"])["path"] for e in cache_entries(cache_dir)}
    assert cached - held  # the last kill left records the index lacks: the resume must use them
    status, err = run_cli(folder, out)
    assert status == 0, err
    read, unchanged, from_cache = summary(err)
    assert (read, unchanged, from_cache) == (n - len(held | cached), len(held), len(cached - held))
    assert not os.path.exists(cache_dir) and not os.path.exists(f"{out}.lock")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.")]  # no temporary left
    # and it equals an index built from scratch
    fresh = tmp_path / "fresh.safetensors"
    index_folder(folder, fresh, use_cache=False)
    a, b = LoraIndex.load(out), LoraIndex.load(fresh)
    assert a.paths == b.paths and [r.sha256 for r in a.records] == [r.sha256 for r in b.records]
    for ra, rb in zip(a.records, b.records):
        np.testing.assert_array_equal(ra.sketches["unet"], rb.sketches["unet"])


# ---------------------------------------------------------------------------
# Concurrent runs, the lock


def test_second_run_is_refused_while_another_process_writes(small_folder, tmp_path):
    """A real second process (the command) against a lock this process holds: refused, index untouched."""
    out = tmp_path / "idx.safetensors"
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    before = out.read_bytes()
    with index_lock(out):
        status, err = run_cli(small_folder, out)
    assert status == 2
    assert err.strip().split("\n") == [f"error: {out}: another lorastyle index is writing it"]
    assert out.read_bytes() == before
    assert not os.path.exists(f"{out}.lock")  # the holder removed it when it was done


def test_run_is_refused_while_another_process_holds_the_lock(small_folder, tmp_path, capsys):
    out = tmp_path / "idx.safetensors"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys
        from lorastyle.index import index_lock
        with index_lock({str(out)!r}):
            print("locked", flush=True)
            sys.stdin.readline()
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(IndexBusyError):
            index_folder(small_folder, out)
        assert main(["index", str(small_folder), "-o", str(out)]) == 2
        assert capsys.readouterr().err == f"error: {out}: another lorastyle index is writing it\n"
        assert not out.exists()
    finally:
        holder.communicate("done\n", timeout=30)
    assert main(["index", str(small_folder), "-o", str(out)]) == 0  # released when the holder is done


def test_a_run_that_locks_a_removed_lock_file_locks_the_new_one(small_folder, tmp_path):
    """The holder removes its lock file when done; a run that opened the old file relocks the new one."""
    out = tmp_path / "idx.safetensors"
    lock = f"{out}.lock"
    stale = os.open(lock, os.O_RDWR | os.O_CREAT)  # opened, then the file is removed under it
    os.unlink(lock)
    with index_lock(out):
        assert os.path.exists(lock)
        assert os.fstat(stale).st_ino != os.stat(lock).st_ino
    os.close(stale)


# ---------------------------------------------------------------------------
# Re-runs


def test_rerun_reads_only_new_renamed_or_changed_files(small_folder, tmp_path, capsys):
    out = tmp_path / "idx.safetensors"
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    assert summary(capsys.readouterr().err) == (5, 0, 0)
    write_lora(small_folder / "new.safetensors", seed=50)
    os.rename(small_folder / "l0.safetensors", small_folder / "renamed.safetensors")
    write_lora(small_folder / "l1.safetensors", seed=51)  # changed in place
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    assert summary(capsys.readouterr().err) == (3, 3, 0)
    assert sorted(Path(p).name for p in LoraIndex.load(out).paths) == sorted(
        [
            "new.safetensors",
            "renamed.safetensors",
            "l1.safetensors",
            "l2.safetensors",
            "l3.safetensors",
            "l4.safetensors",
        ]
    )


def test_bad_files_are_remembered_with_their_reason_and_not_read_again(small_folder, tmp_path, capsys):
    out = tmp_path / "idx.safetensors"
    bad = small_folder / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{nojson}")
    for expected in ((6, 0, 0), (0, 5, 0)):
        assert main(["index", str(small_folder), "-o", str(out)]) == 0
        err = capsys.readouterr().err
        assert f"error: {bad}: header is not valid JSON" in err
        assert summary(err) == expected


def test_damaged_or_foreign_cache_entries_are_read_again(small_folder, tmp_path):
    out = tmp_path / "idx.safetensors"
    settings = {"descriptor": "gram"}
    cache = cache_module.RecordCache(f"{out}.cache", settings)
    sketcher = __import__("lorastyle.index.sketches", fromlist=["Sketcher"]).Sketcher()
    record = records_module.read_record(small_folder / "l0.safetensors", sketcher=sketcher)
    cache.put(record)
    (entry,) = Path(f"{out}.cache").iterdir()
    assert cache_module.RecordCache(f"{out}.cache", settings).get(record.path, record.identity) is not None
    assert cache_module.RecordCache(f"{out}.cache", {"descriptor": "delta"}).get(record.path, record.identity) is None
    entry.write_bytes(entry.read_bytes()[:100])  # damaged
    assert cache_module.RecordCache(f"{out}.cache", settings).get(record.path, record.identity) is None


def test_unwritable_cache_is_a_warning_not_a_failure(small_folder, tmp_path, capsys):
    out = tmp_path / "idx.safetensors"
    Path(f"{out}.cache").write_text("a file where the cache folder would go")
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    warnings_ = [line for line in err.split("\n") if line.startswith("warning: ")]
    assert len(warnings_) == 1 and "cannot write the cache" in warnings_[0] and "going on without it" in warnings_[0]
    assert len(LoraIndex.load(out).paths) == 5


def test_no_cache_option_reads_everything_and_writes_no_cache(small_folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "idx.safetensors"
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    puts = []
    monkeypatch.setattr(cache_module.RecordCache, "put", lambda self, r: puts.append(r))
    assert main(["index", str(small_folder), "-o", str(out), "--no-cache"]) == 0
    assert summary(capsys.readouterr().err)[:2] == (5, 0)
    assert puts == [] and not Path(f"{out}.cache").exists()


def test_file_changing_while_read_is_skipped_and_not_remembered(small_folder, tmp_path, monkeypatch, capsys):
    victim = str(small_folder / "l2.safetensors")
    real_load = records_module.load_lora

    def load_then_change(path, **kwargs):
        lora = real_load(path, **kwargs)
        if os.fspath(path) == victim:
            with open(victim, "ab") as fh:
                fh.write(b"\0")  # a download still being written, say
        return lora

    monkeypatch.setattr(records_module, "load_lora", load_then_change)
    out = tmp_path / "idx.safetensors"
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"error: {victim}: the file changed or vanished while it was being read" in err
    assert victim not in LoraIndex.load(out).paths
    assert all(victim != p for p, _, _ in LoraIndex.load(out).skipped)  # not remembered: tried again next time


# ---------------------------------------------------------------------------
# Atomic writes and leftovers


def test_failed_index_write_keeps_the_previous_index(small_folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "idx.safetensors"
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    write_lora(small_folder / "l9.safetensors", seed=9)
    real_fsync = os.fsync

    def disk_full_on_the_index(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{out.name}."):
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", disk_full_on_the_index)
    assert main(["index", str(small_folder), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip().split("\n")[-1].endswith("cannot write: No space left on device")
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []
    assert not os.path.exists(f"{out}.lock")  # a failed run leaves no lock file behind


def test_leftover_temporary_files_are_removed(small_folder, tmp_path):
    out = tmp_path / "idx.safetensors"
    stale = [
        tmp_path / ".idx.safetensors.k2j4_a9z.tmp",
        Path(f"{out}.cache") / f".{'a' * 64}{CACHE_SUFFIX}.x7q1ee0p.tmp",
    ]
    stale[1].parent.mkdir()
    for p in stale:
        p.write_bytes(b"half a file")
    keep = tmp_path / ".other.safetensors.ab12cd34.tmp"  # not ours: left alone
    keep.write_bytes(b"x")
    index_folder(small_folder, out)
    assert not any(p.exists() for p in stale)
    assert keep.exists()


def test_missing_output_folder_names_the_folder_and_leaves_nothing(small_folder, tmp_path, capsys):
    out = tmp_path / "no" / "such" / "idx.safetensors"
    assert main(["index", str(small_folder), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().split("\n")
    assert err == [f"error: {tmp_path / 'no' / 'such'}: the folder of the index file does not exist"]
    assert not (tmp_path / "no").exists()


def test_index_file_and_cache_are_left_out_of_the_walk(small_folder, capsys):
    out = small_folder / "idx.safetensors"
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "error: " not in err
    assert summary(err) == (0, 5, 0)


def test_written_files_have_the_usual_permissions(small_folder, tmp_path):
    """Atomic writes go through a temporary file: the result still gets the umask's mode, not 0600."""
    out = tmp_path / "idx.safetensors"
    index_folder(small_folder, out)
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o666 & ~umask
    assert ((small_folder / "l0.safetensors").stat().st_mode & 0o777) == 0o666 & ~umask


# ---------------------------------------------------------------------------
# A damaged index file


def test_damaged_index_is_a_format_error(small_folder, tmp_path):
    out = tmp_path / "idx.safetensors"
    index_folder(small_folder, out, descriptor="delta")
    tensors, meta = read_safetensors(out)
    offsets = tensors["g0/record_offsets"]
    cases = {
        "sketch shape": ({**tensors, "g0/unet/unit": tensors["g0/unet/unit"][:2]}, meta),
        "nan norms": ({**tensors, "g0/unet/norm": tensors["g0/unet/norm"] * np.nan}, meta),
        "pca": ({**tensors, "g0/pca/embedding_": tensors["g0/pca/embedding_"][:2]}, meta),
        "groups": (tensors, {**meta, "groups": json.dumps({"a": 1})}),
        "record offsets": ({**tensors, "g0/record_offsets": offsets[::-1].copy()}, meta),
        "descriptor": (tensors, {**meta, "descriptor": "pixels"}),
        "sketch": (tensors, {**meta, "sketch": json.dumps({"dim": 3})}),
        "layouts": (tensors, {**meta, "layouts": json.dumps({})}),
        "format 3 sha256": index_of_format(tensors, meta, "lorastyle-index-3"),
    }
    rows = json.loads(cases["format 3 sha256"][1]["groups"])
    rows[0]["records"][1]["sha256"] = "x"
    cases["format 3 sha256"] = (
        cases["format 3 sha256"][0],
        {**cases["format 3 sha256"][1], "groups": json.dumps(rows)},
    )
    for what, (t, m) in cases.items():
        bad = tmp_path / f"bad_{what.replace(' ', '_')}.safetensors"
        write_safetensors(bad, t, m)
        with pytest.raises(LoraFormatError, match="damaged lorastyle index") as excinfo:
            LoraIndex.load(bad).records  # noqa: B018 (the records are decoded when used)
        assert excinfo.value.path == str(bad), what
    old = tmp_path / "old.safetensors"
    write_safetensors(old, {"x": np.zeros(1, np.float32)}, {"format": "lorastyle-index-1"})
    with pytest.raises(LoraFormatError, match="rebuild it with `lorastyle index`"):
        LoraIndex.load(old)


def test_a_damaged_part_of_an_index_is_found_where_it_is_read(small_folder, tmp_path):
    """An index is mapped, not read whole: a damaged record or sketch is an error when it is used."""
    out = tmp_path / "idx.safetensors"
    index_folder(small_folder, out, descriptor="delta")
    tensors, meta = read_safetensors(out)
    query = read_record(small_folder / "l0.safetensors", sketcher=LoraIndex.load(out).sketcher, descriptor="delta")
    blob, offsets = tensors["g0/records"].tobytes(), tensors["g0/record_offsets"]
    row = json.loads(blob[offsets[2] : offsets[3]])
    damaged_row = json.dumps({**row, "sha256": "x" * len(row["sha256"])}).encode()
    new_blob = blob[: offsets[2]] + damaged_row + blob[offsets[3] :]
    new_offsets = offsets.copy()
    new_offsets[3:] += len(damaged_row) - (offsets[3] - offsets[2])
    unit = np.array(tensors["g0/unet/unit"])
    unit[2, 5] = np.inf
    for what, t in {
        "record": {**tensors, "g0/records": np.frombuffer(new_blob, np.uint8), "g0/record_offsets": new_offsets},
        "sketch": {**tensors, "g0/unet/unit": unit},
    }.items():
        bad = tmp_path / f"bad_{what}.safetensors"
        write_safetensors(bad, t, meta)
        index = LoraIndex.load(bad)  # nothing of record 2 is read yet
        (group,) = index.groups.values()
        assert len(group.records) == len(offsets) - 1
        with pytest.raises(LoraFormatError, match="damaged lorastyle index") as excinfo:
            if what == "record":
                group.records[2]
            else:
                index.similar(query, k=2)
        assert excinfo.value.path == str(bad)
        assert ("record 2" in str(excinfo.value)) == (what == "record")


def test_copy_renamed_to_a_pickle_suffix_is_refused(small_folder, tmp_path, capsys):
    out = tmp_path / "idx.safetensors"
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    copy = small_folder / "copy.bin"
    copy.write_bytes((small_folder / "l0.safetensors").read_bytes())
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    lines = [line for line in capsys.readouterr().err.split("\n") if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {copy}: pickle-based checkpoint: refusing to unpickle")
    assert str(copy) not in LoraIndex.load(out).paths
