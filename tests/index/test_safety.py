"""Interrupted and concurrent ``lorastyle index`` runs: the index is never lost or mixed, work is not redone.

* ``lorastyle index`` is killed with SIGKILL at seeded random points (while
  files are read, while the index file is being written, at random delays);
  after each kill the index is the previous complete one or the new complete
  one, ``similar`` works on it, and every cache entry is whole.
* A re-run reads only the files it had not read: the count it reports is
  checked against the cache, and the cache entries it had are not rewritten.
* Two runs on one output never interleave: the second is refused with exit 2.
* The per-file cache (:class:`lorastyle.index.LoraCache`) gives back exactly
  what ``load_lora`` gives, survives renames, notices changes, and a damaged or
  unwritable cache never stops a run.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lorastyle.cli import main
from lorastyle.index import CACHE_SUFFIX, IndexBusyError, LoraCache, LoraIndex, file_sha256, index_folder, index_lock
from lorastyle.io import atomic
from lorastyle.io import safetensors as safetensors_io
from lorastyle.io.formats import load_lora, save_lora
from lorastyle.io.safetensors import read_safetensors, write_safetensors

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
MODULES = [f"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn{a}.to_{p}" for a in (1, 2) for p in "qkv"]


def write_lora(path, seed, *, rank=8, width=320, dtype=np.float32):
    """A LoRA of 6 modules (about 120 kB): big enough that reading 30 of them takes a moment."""
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
    """{digest: (inode, mtime_ns)} of the cache's entries."""
    if not os.path.isdir(cache_dir):
        return {}
    out = {}
    for name in os.listdir(cache_dir):
        if name.endswith(CACHE_SUFFIX):
            st = os.stat(os.path.join(cache_dir, name))
            out[name[: -len(CACHE_SUFFIX)]] = (st.st_ino, st.st_mtime_ns)
    return out


def run_cli(folder, out, *extra):
    proc = subprocess.run(
        [sys.executable, "-m", "lorastyle.cli", "index", str(folder), "-o", str(out), *extra],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    return proc.returncode, proc.stderr


def from_cache(stderr):
    """(from cache, files) from the last summary line ``...; K of N files from the cache; ...``."""
    found = re.findall(r"(\d+) of (\d+) files from the cache", stderr)
    assert found, stderr
    return int(found[-1][0]), int(found[-1][1])


def lock_is_free(out):
    import fcntl

    fd = os.open(f"{out}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# SIGKILL at random points


def _kill_at(proc, trigger, out, cache_dir, entries_before):
    """Poll until the trigger fires, then SIGKILL; return where the kill landed (or 'finished')."""
    folder = os.path.dirname(out)
    tmp_prefix = f".{os.path.basename(out)}."
    start = time.monotonic()
    while proc.poll() is None:
        if trigger[0] == "delay":
            fired = time.monotonic() - start >= trigger[1]
        elif trigger[0] == "entries":
            fired = len(cache_entries(cache_dir)) >= entries_before + trigger[1]
        else:  # "writing": the index's temporary file exists
            fired = any(name.startswith(tmp_prefix) for name in os.listdir(folder))
        if fired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return trigger[0]
        if time.monotonic() - start > 120:
            proc.kill()
            raise AssertionError("lorastyle index did not finish in 120 s")
        time.sleep(0.0005)
    return "finished"


def _check_after_kill(out, cache_dir, complete, query):
    """The index is absent or one of the complete states; similar works; every cache entry is whole."""
    assert lock_is_free(out)  # the kernel released the killed run's lock
    if not os.path.exists(out):
        assert complete == []  # only possible before the first complete run
        return None
    index = LoraIndex.load(out)
    state = (tuple(index.paths), tuple(index.sha256))
    assert state in complete, "the index is neither the previous nor the new complete one"
    results = index.similar(load_lora(query), k=3)
    assert len(results) == 3 and all(np.isfinite(r["score"]) for r in results)
    cache = LoraCache(cache_dir)
    for digest in cache_entries(cache_dir):
        assert cache.get("any.safetensors", digest) is not None, f"damaged cache entry {digest}"
    return state


def _complete_state(folder):
    paths = sorted(str(p) for p in Path(folder).glob("*.safetensors"))
    return tuple(paths), tuple(file_sha256(p) for p in paths)


def test_sigkill_at_random_points_never_loses_the_index_and_resume_does_not_redo(tmp_path):
    rng = random.Random(20240611)
    folder = tmp_path / "loras"
    folder.mkdir()
    for i in range(24):
        write_lora(folder / f"l{i:03d}.safetensors", seed=i)
    out = str(tmp_path / "idx.safetensors")
    cache_dir = out + ".cache"

    # a complete first run: the "previous" index of the first kill
    status, err = run_cli(folder, out, "--descriptor", "delta")
    assert status == 0, err
    complete = [_complete_state(folder)]
    assert _check_after_kill(out, cache_dir, complete, folder / "l000.safetensors") == complete[0]

    landed = []
    n = 24
    for _iteration in range(9):
        for _ in range(3):  # new files, so that the new index differs from the previous one
            write_lora(folder / f"l{n:03d}.safetensors", seed=n)
            n += 1
        new_state = _complete_state(folder)
        trigger = rng.choice([("delay", rng.uniform(0.3, 2.5)), ("entries", rng.randint(1, 3)), ("writing",)])
        proc = subprocess.Popen(
            [sys.executable, "-m", "lorastyle.cli", "index", str(folder), "-o", out, "--descriptor", "delta"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=ENV,
        )
        landed.append(_kill_at(proc, trigger, out, cache_dir, len(cache_entries(cache_dir))))
        state = _check_after_kill(out, cache_dir, [*complete[-1:], new_state], folder / "l001.safetensors")
        if state == new_state:
            complete.append(new_state)
    # the kills landed in every phase: at random moments, while reading files, while writing the index
    assert landed.count("finished") <= 3, landed
    assert {"delay", "entries", "writing"} <= set(landed), landed

    # the re-run reads only the files the cache lacks, and rewrites no entry it had
    before = cache_entries(cache_dir)
    digests = [file_sha256(p) for p in sorted(folder.glob("*.safetensors"))]
    cached = sum(d in before for d in digests)
    assert cached >= 24  # the first complete run cached at least its 24 files
    status, err = run_cli(folder, out, "--descriptor", "delta")
    assert status == 0, err
    assert from_cache(err) == (cached, n)
    after = cache_entries(cache_dir)
    assert all(after[d] == before[d] for d in before if d in digests), "a cached file was read again"
    assert set(after) == set(digests)
    leftovers = [p for p in [*tmp_path.iterdir(), *Path(cache_dir).iterdir()] if ".tmp" in p.name]
    assert leftovers == []  # temporary files of killed runs are cleaned up

    # the resumed index is the index a run from scratch makes
    resumed = LoraIndex.load(out)
    fresh = index_folder(folder, tmp_path / "fresh.safetensors", descriptor="delta", use_cache=False).index
    assert resumed.paths == fresh.paths and resumed.sha256 == fresh.sha256
    np.testing.assert_allclose(resumed.embedding.embedding_, fresh.embedding.embedding_, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# Concurrent runs


@pytest.fixture
def small_folder(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    for i in range(5):
        write_lora(folder / f"l{i}.safetensors", seed=i, width=16)
    return folder


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


def test_run_is_refused_while_another_process_holds_the_lock(small_folder, tmp_path, capsys):
    """The other direction: a separate process holds the lock; this process's run is refused."""
    out = tmp_path / "idx.safetensors"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
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
    assert out.exists()


# ---------------------------------------------------------------------------
# The cache


def test_cached_lora_is_what_load_lora_gives(tmp_path):
    path = write_lora(tmp_path / "a.safetensors", seed=1, dtype=np.float16)
    fresh = load_lora(path)
    cache = LoraCache(tmp_path / "cache")
    digest = file_sha256(path)
    assert cache.get(path, digest) is None
    cache.put(digest, fresh)
    back = cache.get(path, digest)
    assert (cache.hits, cache.misses) == (1, 1)
    assert (back.path, back.format, back.base, back.dtype) == (fresh.path, fresh.format, fresh.base, fresh.dtype)
    assert list(back.modules) == list(fresh.modules)
    for name, m in fresh.modules.items():
        b = back.modules[name]
        assert (b.kind, b.rank, b.alpha, b.scale, b.part) == (m.kind, m.rank, m.alpha, m.scale, m.part)
        np.testing.assert_array_equal(b.up, m.up)
        np.testing.assert_array_equal(b.down, m.down)
        assert sorted(b.factors) == sorted(m.factors)
        for role, arr in m.factors.items():
            assert b.factors[role].dtype == np.float32
            np.testing.assert_array_equal(b.factors[role], arr)
    # float16 factors are stored as float16 (exact), so the entry is about the file's size, not twice it
    tensors, _ = read_safetensors(cache.entry_path(digest))
    assert {arr.dtype for key, arr in tensors.items() if not key.endswith("/alpha")} == {np.dtype(np.float16)}


def test_cache_of_lokr_and_loha_round_trips(tmp_path):
    k = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    rng = np.random.default_rng(0)
    g = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    files = {
        "lokr": {
            f"{k}.lokr_w1": g(2, 2),
            f"{k}.lokr_w2_a": g(8, 2),
            f"{k}.lokr_w2_b": g(2, 8),
            f"{k}.alpha": np.asarray(0.3, np.float64),
        },
        "loha": {
            f"{k}.hada_w1_a": g(16, 2),
            f"{k}.hada_w1_b": g(2, 16),
            f"{k}.hada_w2_a": g(16, 2),
            f"{k}.hada_w2_b": g(2, 16),
        },
    }
    cache = LoraCache(tmp_path / "cache")
    for name, tensors in files.items():
        path = str(tmp_path / f"{name}.safetensors")
        write_safetensors(path, tensors)
        fresh = load_lora(path)
        cache.put(file_sha256(path), fresh)
        back = cache.get(path, file_sha256(path))
        for mod, m in fresh.modules.items():
            np.testing.assert_array_equal(back.modules[mod].delta(), m.delta())
            assert back.modules[mod].scale == m.scale  # a float64 alpha comes back exactly


def test_rerun_reads_only_new_renamed_away_or_changed_files(tmp_path, capsys):
    folder = tmp_path / "loras"
    folder.mkdir()
    for i in range(6):
        write_lora(folder / f"l{i}.safetensors", seed=i, width=16)
    out = tmp_path / "idx.safetensors"
    assert main(["index", str(folder), "-o", str(out)]) == 0
    assert from_cache(capsys.readouterr().err) == (0, 6)

    os.rename(folder / "l0.safetensors", folder / "renamed.safetensors")  # same content: from the cache
    write_lora(folder / "l1.safetensors", seed=101, width=16)  # changed content: read again
    write_lora(folder / "new.safetensors", seed=102, width=16)  # new: read
    (folder / "l5.safetensors").unlink()  # gone: its entry is pruned
    entries = cache_entries(f"{out}.cache")
    assert main(["index", str(folder), "-o", str(out)]) == 0
    assert from_cache(capsys.readouterr().err) == (4, 6)  # renamed, l2, l3, l4
    after = cache_entries(f"{out}.cache")
    assert set(after) == {file_sha256(p) for p in folder.glob("*.safetensors")}
    assert len(set(entries) - set(after)) == 2  # the old l1 and the l5 entries
    assert "renamed.safetensors" in "".join(LoraIndex.load(out).paths)


def test_bad_files_are_cached_with_their_reason(tmp_path, capsys):
    folder = tmp_path / "loras"
    folder.mkdir()
    for i in range(3):
        write_lora(folder / f"l{i}.safetensors", seed=i, width=16)
    (folder / "junk.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{not json at all}")
    out = tmp_path / "idx.safetensors"
    assert main(["index", str(folder), "-o", str(out)]) == 0
    first = capsys.readouterr().err
    assert main(["index", str(folder), "-o", str(out)]) == 0
    second = capsys.readouterr().err
    assert from_cache(second) == (4, 4)
    reason = [line for line in first.split("\n") if "junk" in line]
    assert reason == [line for line in second.split("\n") if "junk" in line]
    assert len(reason) == 1 and "header is not valid JSON" in reason[0]


def test_damaged_or_foreign_cache_entries_are_read_again(small_folder, tmp_path, capsys):
    out = tmp_path / "idx.safetensors"
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    reference = LoraIndex.load(out).embedding.embedding_
    capsys.readouterr()
    entries = sorted(Path(f"{out}.cache").iterdir())
    entries[0].write_bytes(b"garbage")  # damaged
    tensors, meta = read_safetensors(entries[1])
    write_safetensors(entries[1], tensors, {**meta, "version": "0.0.0-other"})  # another lorastyle version
    tensors, meta = read_safetensors(entries[2])
    write_safetensors(
        entries[2], {k: np.zeros_like(v) for k, v in tensors.items()}, {**meta, "sha256": "0" * 64}
    )  # written for another file
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    assert from_cache(capsys.readouterr().err) == (2, 5)
    np.testing.assert_allclose(LoraIndex.load(out).embedding.embedding_, reference)
    assert all(LoraCache(f"{out}.cache").get("x", e.name[: -len(CACHE_SUFFIX)]) for e in entries)


def test_unwritable_cache_is_a_warning_not_a_failure(small_folder, tmp_path, capsys):
    out = tmp_path / "idx.safetensors"
    Path(f"{out}.cache").write_text("a file where the cache folder would go")
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    warnings_ = [line for line in err.split("\n") if line.startswith("warning: ")]
    assert len(warnings_) == 1 and "cannot write the cache" in warnings_[0] and "going on without it" in warnings_[0]
    assert len(LoraIndex.load(out).paths) == 5


def test_no_cache_option(small_folder, tmp_path, capsys):
    out = tmp_path / "idx.safetensors"
    assert main(["index", str(small_folder), "-o", str(out), "--no-cache"]) == 0
    assert "no cache" in capsys.readouterr().err
    assert not Path(f"{out}.cache").exists()


def test_file_changing_while_read_is_skipped_and_not_cached(small_folder, tmp_path, monkeypatch, capsys):
    import lorastyle.index._old as index_module

    victim = str(small_folder / "l2.safetensors")
    real_load = index_module.load_lora

    def load_then_change(path):
        lora = real_load(path)
        if os.fspath(path) == victim:
            write_lora(victim, seed=99, width=16)  # rewritten after its digest was taken
        return lora

    monkeypatch.setattr(index_module, "load_lora", load_then_change)
    out = tmp_path / "idx.safetensors"
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    lines = [line for line in capsys.readouterr().err.split("\n") if line.startswith("error: ")]
    assert lines == [f"error: {victim}: the file changed or vanished while it was being read"]
    assert len(cache_entries(f"{out}.cache")) == 4
    assert victim not in LoraIndex.load(out).paths


# ---------------------------------------------------------------------------
# Atomic writes and leftovers


def test_failed_index_write_keeps_the_previous_index(small_folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "idx.safetensors"
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    write_lora(small_folder / "l9.safetensors", seed=9, width=16)
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


def test_missing_output_folder_is_an_error_line(small_folder, tmp_path, capsys):
    out = tmp_path / "no" / "such" / "idx.safetensors"
    assert main(["index", str(small_folder), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().split("\n")
    assert len(err) == 1 and err[0].startswith("error: ") and "cannot write: No such file or directory" in err[0]


def test_index_file_and_cache_are_left_out_of_the_walk(small_folder, capsys):
    """An index written inside the folder it indexes does not index itself or its cache on the next run."""
    out = small_folder / "idx.safetensors"
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "error: " not in err
    assert from_cache(err) == (5, 5)


# ---------------------------------------------------------------------------
# A damaged index file


def test_damaged_index_is_a_format_error(small_folder, tmp_path):
    out = tmp_path / "idx.safetensors"
    index_folder(small_folder, out, descriptor="delta")
    tensors, meta = read_safetensors(out)
    cases = {
        "embedding shape": ({**tensors, "embedding": tensors["embedding"][:2]}, meta),
        "nan": ({**tensors, "calibration": tensors["calibration"] * np.nan}, meta),
        "paths": (tensors, {**meta, "paths": json.dumps({"a": 1})}),
        "sha256": (tensors, {**meta, "sha256": json.dumps(["x"] * 5)}),
        "solver": (tensors, {**meta, "solver": "full"}),
        "components": (tensors, {**meta, "n_components": "0"}),
        "factors": ({k: (v[:1] if k.endswith("lora_down") else v) for k, v in tensors.items()}, meta),
    }
    for what, (t, m) in cases.items():
        bad = tmp_path / f"bad_{what.replace(' ', '_')}.safetensors"
        write_safetensors(bad, t, m)
        with pytest.raises(safetensors_io.LoraFormatError, match="damaged lorastyle index") as excinfo:
            LoraIndex.load(bad)
        assert excinfo.value.path == str(bad), what


def test_copy_renamed_to_a_pickle_suffix_is_refused_despite_the_cache(small_folder, tmp_path, capsys):
    """The cache is keyed by content, but a pickle suffix is refused by name: a cached good file's copy too."""
    out = tmp_path / "idx.safetensors"
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    copy = small_folder / "copy.bin"
    copy.write_bytes((small_folder / "l0.safetensors").read_bytes())
    assert main(["index", str(small_folder), "-o", str(out)]) == 0
    lines = [line for line in capsys.readouterr().err.split("\n") if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {copy}: pickle-based checkpoint: refusing to unpickle")
    assert str(copy) not in LoraIndex.load(out).paths
