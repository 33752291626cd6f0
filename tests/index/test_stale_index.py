"""An index that knows it is stale: every command that reads an index checks its files (size, mtime).

On a temporary folder: index it, delete one file (a duplicate) and touch another; then ``similar``,
``duplicates`` and ``map`` given the index say which are gone and which changed, never list the
deleted file, and mark the changed one; given the folder with ``--index``, they refresh the index.
"""

import json
import os
import shutil

import numpy as np
import pytest

from lorastyle.cli import main
from lorastyle.index import LoraIndex
from lorastyle.index.freshness import check_files, without_files
from lorastyle.io.formats import save_lora
from lorastyle.io.safetensors import read_safetensors, write_safetensors

P = "unet.down_blocks.0.attentions.0.transformer_blocks.0."
SHAPES = {P + "attn1.to_q": (32, 32), P + "attn2.to_k": (32, 24), P + "ff.net.2": (32, 64)}


def factors(rng, rank=4):
    return {
        n: (
            (0.3 * rng.standard_normal((rank, i))).astype(np.float32),
            (0.3 * rng.standard_normal((o, rank))).astype(np.float32),
        )
        for n, (o, i) in SHAPES.items()
    }


@pytest.fixture
def stale(tmp_path):
    """A folder indexed, then one file deleted (a byte copy of another) and one touched."""
    root = tmp_path / "loras"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c", "d"):
        save_lora(root / f"{name}.safetensors", factors(rng), alpha=4.0, base="tiny")
    shutil.copy(root / "a.safetensors", root / "a copy.safetensors")
    index = tmp_path / "loras.index"
    assert main(["index", str(root), "-o", str(index)]) == 0
    gone, changed = str(root / "a copy.safetensors"), str(root / "b.safetensors")
    os.remove(gone)
    st = os.stat(changed)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched: same size, later mtime
    live = sorted(str(root / f"{n}.safetensors") for n in "abcd")
    return {"root": root, "index": index, "gone": gone, "changed": changed, "live": live}


def _says_so(err: str, stale: dict, checked: str = "its 5 files") -> None:
    """One warning line naming the counts, then the gone and the changed path; no traceback."""
    lines = err.splitlines()
    (warning,) = [line for line in lines if line.startswith("warning: ")]
    assert warning.startswith(f"warning: {stale['index']}: of {checked}, 1 is gone") and "1 changed" in warning
    assert f"  gone: {stale['gone']}" in lines and f"  changed: {stale['changed']}" in lines
    assert "Traceback" not in err


def test_check_files_finds_the_deleted_and_the_touched_file(stale):
    index = LoraIndex.load(stale["index"])
    fresh = check_files(index)
    assert (fresh.gone, fresh.changed, fresh.n_files) == ([stale["gone"]], [stale["changed"]], 5)
    pruned = without_files(index, fresh.gone)
    assert sorted(pruned.paths) == stale["live"] and len(index.paths) == 5  # the loaded index is untouched
    assert len(pruned.groups["tiny"].matrix) == 4


def test_similar_leaves_the_gone_file_out_and_marks_the_changed_one(stale, capsys):
    query = str(stale["root"] / "a.safetensors")
    assert main(["similar", str(stale["index"]), query, "--json", "-k", "10", "--rerank", "10"]) == 0
    out = capsys.readouterr()
    results = json.loads(out.out)
    assert sorted(r["path"] for r in results) == [p for p in stale["live"] if p != query]
    assert {r["path"] for r in results if r.get("stale")} == {stale["changed"]}
    _says_so(out.err, stale, "the 4 files ranked for this query")  # each other file, the query's own path not
    assert "cannot be read" not in out.err  # the gone file is not read again by --rerank either
    assert main(["similar", str(stale["index"]), query]) == 0
    text = capsys.readouterr().out
    assert f"{stale['changed']}  (changed since indexed)" in text and stale["gone"] not in text


def test_duplicates_of_the_index_never_lists_the_deleted_copy(stale, capsys):
    assert main(["duplicates", str(stale["index"]), "--json"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["same_weights"] == []  # a and its deleted copy were the only group
    assert stale["gone"] not in out.out
    _says_so(out.err, stale)
    assert "4 files compared" in out.err


def test_map_of_the_index_leaves_the_gone_file_out(stale, capsys, tmp_path):
    assert main(["map", str(stale["index"]), "-o", str(tmp_path / "map.html"), "--json"]) == 0
    out = capsys.readouterr()
    members = [m for g in json.loads(out.out)["groups"] for c in g["clusters"] for m in c["members"]]
    assert sorted(m["path"] for m in members) == stale["live"]
    assert [m["path"] for m in members if m.get("stale")] == [stale["changed"]]
    _says_so(out.err, stale)
    assert stale["gone"] not in (tmp_path / "map.html").read_text()


@pytest.mark.parametrize("command", ["duplicates", "map"])
def test_given_the_folder_the_index_is_refreshed(stale, capsys, tmp_path, command):
    extra = ["-o", str(tmp_path / "map.html")] if command == "map" else []
    assert main([command, str(stale["root"]), "--index", str(stale["index"]), *extra]) == 0
    err = capsys.readouterr().err
    assert f"note: {stale['index']}: refreshed from {stale['root']}: 0 new, 1 changed (read again), 1 gone" in err
    assert f"  gone: {stale['gone']}" in err.splitlines() and f"  changed: {stale['changed']}" in err.splitlines()
    assert "warning:" not in err
    index = LoraIndex.load(stale["index"])
    assert sorted(index.paths) == stale["live"]
    st = os.stat(stale["changed"])
    (record,) = [r for r in index.records if r.path == stale["changed"]]
    assert (record.identity[2], record.identity[3]) == (st.st_size, st.st_mtime_ns)
    assert not check_files(index).stale
    assert main([command, str(stale["index"]), *extra]) == 0  # now the index is fresh: nothing to say
    assert "warning:" not in capsys.readouterr().err


def test_an_index_of_the_previous_format_is_refused_with_the_fix(stale, capsys, tmp_path):
    tensors, meta = read_safetensors(stale["index"])
    old = tmp_path / "old.index"
    write_safetensors(old, tensors, {**meta, "format": "lorastyle-index-1"})
    for argv in (["duplicates", str(old)], ["similar", str(old), str(stale["root"] / "c.safetensors")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {old}: ") and "rebuild it with `lorastyle index`" in err
        assert len(err.splitlines()) == 1
