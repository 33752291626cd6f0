"""Hostile folders for ``lorastyle index``: every odd entry is reported, none is fatal, good files are embedded.

Symbolic link loops, dangling links, FIFOs, unreadable files and folders, files
that vanish between the walk and the read, names that are not UTF-8, and a
large folder with a tenth of bad files. The large-folder size is
``LORASTYLE_MANY_FILES`` (default 1,000; the README's figure is the run with
10,000).
"""

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

import lorastyle.index.folder as folder_module
import lorastyle.index.records as records_module
import lorastyle.index.walk as walk_module
from lorastyle.cli import main
from lorastyle.index import LoraIndex, build_index, find_lora_files
from lorastyle.io.formats import save_lora
from tools.fuzz.fuzzing import encode

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
NAME = "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q"
KOHYA = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def good(path, seed):
    rng = np.random.default_rng(seed)
    save_lora(
        path,
        {NAME: (rng.standard_normal((2, 8)).astype(np.float32), rng.standard_normal((8, 2)).astype(np.float32))},
        alpha=2.0,
        base="tiny",
    )
    return os.fspath(path)


def run_index(*argv):
    """``lorastyle index`` in-process; stderr through a StringIO, which takes any str (surrogates too)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(["index", *map(os.fspath, argv)])
    return status, err.getvalue()


def errors(stderr):
    """{path: reason} of the ``error: PATH: reason`` lines; each path once."""
    out = {}
    for line in stderr.split("\n"):
        if line.startswith("error: "):
            path, reason = line[len("error: ") :].split(": ", 1)
            assert path not in out, f"{path} reported twice"
            out[path] = reason
    return out


def notes(stderr):
    """{path: text} of the ``note: PATH: text`` lines."""
    out = {}
    for line in stderr.split("\n"):
        if line.startswith("note: "):
            path, text = line[len("note: ") :].split(": ", 1)
            out[path] = text
    return out


def counts(stderr):
    """(indexed, files, skipped) of the last line of ``lorastyle index``."""
    match = re.search(r"^indexed (\d+) of (\d+) files? in .*?; skipped (\d+)", stderr, re.M)
    return tuple(int(g) for g in match.groups())


@contextlib.contextmanager
def time_limit(seconds):
    """Fail instead of hanging forever (a reader blocked on a FIFO would)."""

    def on_alarm(signum, frame):
        raise AssertionError(f"still running after {seconds} s: blocked?")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "loras"
    root.mkdir()
    for i in range(4):
        good(root / f"good{i}.safetensors", i)
    return root


# ---------------------------------------------------------------------------
# Links, FIFOs, unreadable entries


def test_symlink_loops_and_dangling_links(folder, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    linked_target = good(outside / "elsewhere.safetensors", 10)
    sub = folder / "sub"
    sub.mkdir()
    good(sub / "deep.safetensors", 11)
    elsewhere = tmp_path / "sdxl-drive"  # a folder of LoRAs linked in (a common ComfyUI set-up): followed
    elsewhere.mkdir()
    good(elsewhere / "linked-in.safetensors", 12)
    os.symlink(elsewhere, folder / "linked-folder")
    os.symlink("..", sub / "up")  # a folder loop: sub/up/sub/up/...
    os.symlink(".", folder / "self")  # another
    os.symlink("b.safetensors", folder / "a.safetensors")  # a file-link loop
    os.symlink("a.safetensors", folder / "b.safetensors")
    os.symlink("nowhere.safetensors", folder / "dangling.safetensors")
    os.symlink(linked_target, folder / "linked.safetensors")  # a link to a good file: followed
    out = tmp_path / "idx.safetensors"
    with time_limit(60):
        status, err = run_index(folder, "-o", out)
    assert status == 0, err
    reported = errors(err)
    assert set(reported) == {
        str(folder / "a.safetensors"),
        str(folder / "b.safetensors"),
        str(folder / "dangling.safetensors"),
    }
    # links back up the tree are not errors and not skipped files: noted, followed once
    followed_once = f"the same folder as {folder}, already walked (through a link): its files are read once, from there"
    assert notes(err) == {str(sub / "up"): followed_once, str(folder / "self"): followed_once}
    # 7 files indexed (4 good, deep, linked-in, linked) and 3 LoRA-named entries that cannot be read: 10
    assert counts(err) == (7, 10, 3)
    assert "; 2 folders reached again through a link, read once;" in err
    assert reported[str(folder / "a.safetensors")] == "cannot read file: Too many levels of symbolic links"
    assert reported[str(folder / "dangling.safetensors")] == "cannot read file: No such file or directory"
    assert sorted(LoraIndex.load(out).paths) == sorted(
        [str(folder / f"good{i}.safetensors") for i in range(4)]
        + [str(folder / "linked.safetensors"), str(sub / "deep.safetensors")]
        + [str(folder / "linked-folder" / "linked-in.safetensors")]
    )


def test_two_links_to_one_folder_list_its_files_once(folder, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    good(shared / "one.safetensors", 30)
    os.symlink(shared, folder / "first")
    os.symlink(shared, folder / "second")
    walk = find_lora_files(folder)
    assert [f for f in walk.files if f.endswith("one.safetensors")] == [str(folder / "first" / "one.safetensors")]
    assert walk.repeated == [(str(folder / "second"), str(folder / "first"))]
    assert walk.refused == walk.unlisted == []
    assert walk.n_files == 5


def test_a_second_link_to_a_folder_is_a_note_and_the_counts_add_up(folder, tmp_path):
    """The issue's case: "indexed 28 of 37 files; skipped 10" from one second link to a folder, reported as error."""
    shared = tmp_path / "shared"
    shared.mkdir()
    for i in range(3):
        good(shared / f"s{i}.safetensors", 40 + i)
    os.symlink(shared, folder / "first")
    os.symlink(shared, folder / "second")
    (folder / "broken.safetensors").write_bytes(b"not a LoRA")
    status, err = run_index(folder, "-o", tmp_path / "idx.safetensors")
    assert status == 0, err
    assert list(errors(err)) == [str(folder / "broken.safetensors")]  # the one bad file, not the link
    assert notes(err) == {
        str(folder / "second"): f"the same folder as {folder / 'first'}, already walked (through a link): its files "
        "are read once, from there"
    }
    # 4 good + 3 shared files indexed once each, the broken one skipped: 7 + 1 = 8
    assert counts(err) == (7, 8, 1)
    assert "; 1 folder reached again through a link, read once;" in err


def test_a_link_walked_before_its_own_folder_notes_the_folder(folder, tmp_path):
    """``again -> shared`` inside the folder: "again" sorts first, so the real folder is the path reached twice."""
    shared = folder / "shared"
    shared.mkdir()
    good(shared / "s.safetensors", 50)
    os.symlink("shared", folder / "again")
    status, err = run_index(folder, "-o", tmp_path / "idx.safetensors")
    assert status == 0, err
    assert errors(err) == {}
    assert list(notes(err)) == [str(shared)]
    assert counts(err) == (5, 5, 0)
    assert str(folder / "again" / "s.safetensors") in LoraIndex.load(tmp_path / "idx.safetensors").paths


def test_fifo_is_reported_not_opened(folder, tmp_path):
    os.mkfifo(folder / "pipe.safetensors")  # opening it to read would block until a writer comes
    out = tmp_path / "idx.safetensors"
    with time_limit(60):
        status, err = run_index(folder, "-o", out)
    assert status == 0
    assert errors(err) == {str(folder / "pipe.safetensors"): "not a regular file (a named pipe)"}
    assert len(LoraIndex.load(out).paths) == 4


def test_fifo_given_to_build_index_directly_is_refused(folder):
    os.mkfifo(folder / "pipe.safetensors")
    paths = [str(folder / "pipe.safetensors")] + [str(folder / f"good{i}.safetensors") for i in range(4)]
    with time_limit(60):
        index, skipped, _ = build_index(paths)
    assert skipped == [(paths[0], "not a regular file (a named pipe)")]
    assert index.paths == paths[1:]


@pytest.mark.skipif(
    IS_ROOT,
    reason="running as root: chmod 000 does not stop root from reading; "
    "test_read_error_is_reported covers the same path by simulating EACCES",
)
def test_unreadable_file_and_folder(folder, tmp_path):
    locked_file = folder / "locked.safetensors"
    good(locked_file, 20)
    locked_dir = folder / "private"
    locked_dir.mkdir()
    good(locked_dir / "hidden.safetensors", 21)
    os.chmod(locked_file, 0)
    os.chmod(locked_dir, 0)
    try:
        status, err = run_index(folder, "-o", tmp_path / "idx.safetensors")
    finally:
        os.chmod(locked_file, 0o644)
        os.chmod(locked_dir, 0o755)
    assert status == 0
    reported = errors(err)
    assert reported == {
        str(locked_file): "cannot read file: Permission denied",
        str(locked_dir): "cannot list folder: Permission denied",
    }
    assert counts(err) == (4, 5, 1)  # a folder is not a file: not counted, said apart
    assert "; 1 folder could not be listed;" in err


def test_a_folder_that_cannot_be_listed_is_reported_but_not_counted_as_a_file(folder, tmp_path, monkeypatch):
    """EACCES on listing a folder, simulated (root lists any folder): an error line, apart from the file counts."""
    locked_dir = folder / "private"
    locked_dir.mkdir()
    good(locked_dir / "hidden.safetensors", 21)
    real_scandir = os.scandir

    def denied(path="."):
        if not isinstance(path, int) and os.fspath(path) == str(locked_dir):
            raise PermissionError(13, "Permission denied", str(locked_dir))
        return real_scandir(path)

    monkeypatch.setattr(walk_module.os, "scandir", denied)
    status, err = run_index(folder, "-o", tmp_path / "idx.safetensors")
    assert status == 0, err
    assert errors(err) == {str(locked_dir): "cannot list folder: Permission denied"}
    assert counts(err) == (4, 4, 0)
    assert "; 1 folder could not be listed;" in err


def test_read_error_is_reported(folder, tmp_path, monkeypatch):
    """EACCES (or EIO) on one file, simulated where the file is opened to be read: reported, the rest indexed."""
    victim = str(folder / "good2.safetensors")

    def denied(path, *args, **kwargs):
        if os.fspath(path) == victim:
            raise PermissionError(13, "Permission denied", victim)
        return open(path, *args, **kwargs)

    monkeypatch.setattr(records_module, "open", denied, raising=False)
    out = tmp_path / "idx.safetensors"
    status, err = run_index(folder, "-o", out)
    assert status == 0
    assert errors(err) == {victim: "cannot read file: Permission denied"}
    assert victim not in LoraIndex.load(out).paths and len(LoraIndex.load(out).paths) == 3


# ---------------------------------------------------------------------------
# Files that vanish


def test_file_vanishing_between_walk_and_read(folder, tmp_path, monkeypatch):
    victim = str(folder / "good1.safetensors")
    real_find = folder_module.find_lora_files

    def find_then_delete(root, **kwargs):
        found = real_find(root, **kwargs)
        os.unlink(victim)
        return found

    monkeypatch.setattr(folder_module, "find_lora_files", find_then_delete)
    out = tmp_path / "idx.safetensors"
    status, err = run_index(folder, "-o", out)
    assert status == 0
    assert errors(err) == {victim: "cannot read file: No such file or directory"}
    assert len(LoraIndex.load(out).paths) == 3


def test_file_vanishing_while_it_is_read(folder, tmp_path, monkeypatch):
    victim = str(folder / "good3.safetensors")
    real_load = records_module.load_lora

    def delete_then_load(path, **kwargs):
        if os.fspath(path) == victim:
            os.unlink(victim)
        return real_load(path, **kwargs)

    monkeypatch.setattr(records_module, "load_lora", delete_then_load)
    status, err = run_index(folder, "-o", tmp_path / "idx.safetensors")
    assert status == 0
    assert errors(err) == {victim: "the file changed or vanished while it was being read"}


def test_file_vanishing_during_the_walk(folder, monkeypatch):
    victim = str(folder / "good0.safetensors")
    real_stat = os.stat

    def stat_after_delete(path, *args, **kwargs):
        if os.fspath(path) == victim and os.path.lexists(victim):
            os.unlink(victim)  # gone between listing the folder and looking at the entry
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(walk_module.os, "stat", stat_after_delete)
    walk = find_lora_files(folder)
    monkeypatch.undo()
    assert victim not in walk.files and len(walk.files) == 3
    assert walk.refused == [(victim, "cannot read file: No such file or directory")]
    assert walk.n_files == 4


# ---------------------------------------------------------------------------
# Names that are not UTF-8


def test_non_utf8_names(tmp_path):
    root = os.fsencode(tmp_path / "loras")
    os.mkdir(root)
    names = [b"caf\xe9.safetensors", b"\xff\xfe.safetensors", b"plain.safetensors"]  # latin-1, junk, ASCII
    for i, name in enumerate(names):
        good(os.fsdecode(os.path.join(root, name)), i)
    bad = os.path.join(root, b"bad\x80.safetensors")
    with open(bad, "wb") as fh:
        fh.write(b"junk")
    out = tmp_path / "idx.safetensors"
    status, err = run_index(os.fsdecode(root), "-o", out)
    assert status == 0, err
    assert errors(err) == {os.fsdecode(bad): "file of 4 bytes is too short for a safetensors header"}
    # the index keeps the names losslessly: os.fsencode gives back the bytes
    stored = LoraIndex.load(out).paths
    assert sorted(os.fsencode(p) for p in stored) == sorted(os.path.join(root, n) for n in names)

    # the command's output, as bytes: text shows the original bytes, JSON the surrogate escapes
    query = os.fsdecode(os.path.join(root, names[0]))
    script = (
        "import sys; from lorastyle.cli import main; "
        f"main(['similar', {str(out)!r}, {query!r}, '-k', '2']); "
        f"main(['similar', {str(out)!r}, {query!r}, '-k', '2', '--json']); "
        f"main(['inspect', {query!r}])"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, env=ENV, timeout=120)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    lines = proc.stdout.split(b"\n")
    text, raw_json, inspect_first = lines[:2], lines[2], lines[3]
    assert all(re.match(rb"^[+-]\d\.\d{4}  ", line) for line in text)
    assert {line.rsplit(b"  ", 1)[1] for line in text} == {os.path.join(root, n) for n in names[1:]}
    results = json.loads(raw_json)
    assert {os.fsencode(r["path"]) for r in results} == {os.path.join(root, n) for n in names[1:]}
    assert inspect_first == os.path.join(root, names[0])


# ---------------------------------------------------------------------------
# Many files, a tenth of them bad


def _many_files(root, n, rng):
    """n tiny LoRAs (1 module, rank 1), n // 10 of them bad in ten different ways; returns (good, bad)."""

    def lora_bytes(rank=1, base="tiny", scale=1.0):
        a = (scale * rng.standard_normal((rank, 8))).astype("<f4")
        b = (scale * rng.standard_normal((8, rank))).astype("<f4")
        return encode(
            {
                f"{KOHYA}.lora_down.weight": ("F32", [rank, 8], a.tobytes()),
                f"{KOHYA}.lora_up.weight": ("F32", [8, rank], b.tobytes()),
                f"{KOHYA}.alpha": ("F32", [], np.float32(rank).tobytes()),
            },
            {"lorastyle.base": base},
        )

    def lora_bytes_shape(out):
        a = rng.standard_normal((1, 8)).astype("<f4")
        b = rng.standard_normal((out, 1)).astype("<f4")
        return encode(
            {
                f"{KOHYA}.lora_down.weight": ("F32", [1, 8], a.tobytes()),
                f"{KOHYA}.lora_up.weight": ("F32", [out, 1], b.tobytes()),
            },
            {"lorastyle.base": "tiny"},
        )

    def nan_bytes():
        blob = bytearray(lora_bytes())
        blob[-8:-4] = np.float32(np.nan).tobytes()
        return bytes(blob)

    kinds = [
        ("truncated", lambda: lora_bytes()[:-5], "truncated tensor data"),
        ("junk", lambda: b"\x10\0\0\0\0\0\0\0{not json at all}", "header is not valid JSON"),
        ("nan", nan_bytes, "holds NaN or Inf values"),
        ("pickle", lambda: b"\x80\x04\x95" + b"\0" * 20, "refusing to unpickle"),
        ("layout", lambda: encode({"model.weight": ("F32", [2], b"\0" * 8)}), "unknown layout"),
        ("shape", lambda: lora_bytes_shape(9), "has shape (9, 8), not (8, 8)"),
        ("empty", lambda: b"", "empty file"),
        ("length", lambda: b"\xff" * 8 + b"{}", "header length"),
        ("huge", lambda: lora_bytes(scale=1e36), "weights too large to describe"),
        ("alpha", lambda: encode({f"{KOHYA}.alpha": ("F32", [], np.float32(1).tobytes())}), "unknown layout"),
    ]
    good_paths, bad = [], {}
    for i in range(n):
        sub = os.path.join(root, f"d{i % 10}")  # nested a little, like real collections
        os.makedirs(sub, exist_ok=True)
        if i % 10 == 3:
            kind, make, reason = kinds[(i // 10) % len(kinds)]
            suffix = ".ckpt" if kind == "pickle" else ".safetensors"
            path = os.path.join(sub, f"f{i:05d}_{kind}{suffix}")
            data = make()
            bad[path] = reason
        else:
            path = os.path.join(sub, f"f{i:05d}.safetensors")
            data = lora_bytes()
            good_paths.append(path)
        with open(path, "wb") as fh:  # no fsync: building the folder is not what is tested
            fh.write(data)
    return good_paths, bad


@pytest.mark.slow
def test_many_files_a_tenth_bad(tmp_path):
    n = int(os.environ.get("LORASTYLE_MANY_FILES", "1000"))
    root = tmp_path / "many"
    good_paths, bad = _many_files(str(root), n, np.random.default_rng(0))
    assert len(bad) == n // 10
    out = tmp_path / "idx.safetensors"
    # calibration's leave-one-out fits cost n_calibration * n^3: off for thousands of files
    status, err = run_index(root, "-o", out, "--no-calibration")
    assert status == 0, err[-2000:]
    reported = errors(err)
    assert set(reported) == set(bad)  # every bad file, once, and no good one
    for path, reason in bad.items():
        assert reason in reported[path], (path, reported[path])
    index = LoraIndex.load(out)
    assert sorted(index.paths) == sorted(good_paths)
    n_pickles = sum(p.endswith(".ckpt") for p in bad)  # refused by name, never read
    summary = f"indexed {len(good_paths)} of {n} files in 1 base family; skipped {len(bad)}; read {n - n_pickles},"
    assert summary in err, err.strip().split("\n")[-1]
    # a re-run reads none of them again: unchanged good files come from the index, bad ones keep their reason
    status, err = run_index(root, "-o", out, "--no-calibration")
    assert status == 0
    assert f"read {n_pickles}, {len(good_paths)} unchanged since the last run" in err
    assert set(errors(err)) == set(bad)


@pytest.mark.parametrize("reader", ["load_lora", "read_record", "describe_file"])
def test_no_reader_ever_opens_a_fifo(tmp_path, monkeypatch, reader):
    """Opening a FIFO to read blocks until a writer comes: every reader refuses it without opening it.

    Checked without timing: ``open`` in each reading module is a spy that fails the test, instead of
    blocking, if it is ever given the FIFO.
    """
    import stat as stat_module

    import lorastyle.io.metadata as metadata_module
    import lorastyle.io.safetensors as safetensors_module
    from lorastyle.index.sketches import Sketcher
    from lorastyle.io.formats import LoraFormatError, load_lora
    from lorastyle.io.metadata import describe_file

    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)

    def spy(path, *args, **kwargs):
        if stat_module.S_ISFIFO(os.stat(path).st_mode):
            raise AssertionError(f"{path}: a FIFO was opened")
        return open(path, *args, **kwargs)

    for module in (safetensors_module, records_module, metadata_module):
        monkeypatch.setattr(module, "open", spy, raising=False)
    call = {
        "load_lora": lambda: load_lora(fifo),
        "read_record": lambda: records_module.read_record(fifo, sketcher=Sketcher(dim=64, module_dim=16)),
        "describe_file": lambda: describe_file(fifo),
    }[reader]
    with pytest.raises(LoraFormatError, match="not a regular file"):
        call()


def test_reading_ahead_yields_what_reading_one_by_one_gives(tmp_path):
    """read_files parses the next file in a thread: outcomes, their order and their records are unchanged."""
    from lorastyle.index.sketches import Sketcher

    paths = []
    for i, kind in enumerate(["good", "truncated", "good", "missing", "empty", "good"]):
        p = tmp_path / f"{i}-{kind}.safetensors"
        if kind == "good":
            good(p, i)
        elif kind == "truncated":
            good(p, i)
            p.write_bytes(p.read_bytes()[:-7])
        elif kind == "empty":
            p.write_bytes(b"")
        paths.append(str(p))
    sk = Sketcher(dim=256, module_dim=64)
    ahead = list(records_module.read_files(paths, sketcher=sk, descriptor="gram"))
    assert [pos for pos, _ in ahead] == list(range(len(paths)))
    for path, (_, got) in zip(paths, ahead):
        want = records_module.read_outcome(path, sketcher=sk, descriptor="gram")
        assert (got.reason, got.lasting, got.counted) == (want.reason, want.lasting, want.counted)
        assert (got.record is None) == (want.record is None) == ("good" not in path)
        if got.record is not None:
            assert got.record.sha256 == want.record.sha256
            np.testing.assert_array_equal(got.record.sketches["unet"], want.record.sketches["unet"])
    assert list(records_module.read_files([], sketcher=sk, descriptor="gram")) == []
