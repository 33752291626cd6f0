"""``lorastyle duplicates``: same weights under any name, dtype, layout or gauge; near-duplicates apart."""

import json
import os
import re
import shutil

import numpy as np
import pytest

from lorastyle.cli import main
from lorastyle.index import index_folder
from lorastyle.index.calibration import load_calibration
from lorastyle.index.duplicates import find_duplicates, near_thresholds, strength_of
from lorastyle.io.formats import save_lora

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


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("dups")
    rng = np.random.default_rng(0)
    a = factors(rng)
    save_lora(root / "a.safetensors", a, alpha=4.0, layout="kohya", base="tiny")
    shutil.copy(root / "a.safetensors", root / "a-copy.safetensors")  # byte-identical
    # the same delta-W: another layout and dtype (float16 rounding), another gauge and rank
    save_lora(root / "a-peft-f16.safetensors", a, alpha=4.0, layout="diffusers-peft", base="tiny", dtype=np.float16)
    gauge = {}
    for n, (A, B) in a.items():
        G = rng.standard_normal((4, 4)) + 4 * np.eye(4)
        gauge[n] = ((G @ A).astype(np.float32), (B @ np.linalg.inv(G)).astype(np.float32))
    save_lora(root / "a-gauge.safetensors", gauge, alpha=4.0, base="tiny")
    twin = {n: (np.vstack([A, A]), 0.25 * np.hstack([B, B])) for n, (A, B) in a.items()}  # rank 8, alpha 16
    save_lora(root / "a-rank8.safetensors", twin, alpha=16.0, base="tiny")
    # a different scale is not the same weights (the descriptor's cosine is blind to it, the norms are not)
    save_lora(root / "a-alpha2.safetensors", a, alpha=8.0, base="tiny")
    # another model, and a fine-tune of it: near-duplicates, not the same weights
    b = factors(rng)
    save_lora(root / "b.safetensors", b, alpha=4.0, base="tiny")
    tuned = {
        n: (
            A + 0.05 * rng.standard_normal(A.shape).astype(np.float32),
            B + 0.05 * rng.standard_normal(B.shape).astype(np.float32),
        )
        for n, (A, B) in b.items()
    }
    save_lora(root / "b-tuned.safetensors", tuned, alpha=4.0, base="tiny")
    for i in range(3):
        save_lora(root / f"unrelated{i}.safetensors", factors(rng), alpha=4.0, base="tiny")
    return root


def test_same_weights_and_near_duplicates_are_told_apart(folder, tmp_path):
    run = index_folder(folder, tmp_path / "idx.safetensors")
    report = find_duplicates(run.index, near_threshold=0.7)
    names = [sorted(p.rsplit("/", 1)[1] for p in g["paths"]) for g in report.same_weights]
    assert names == [
        ["a-copy.safetensors", "a-gauge.safetensors", "a-peft-f16.safetensors", "a-rank8.safetensors", "a.safetensors"]
    ]
    assert not report.same_weights[0]["identical_bytes"]  # one group, of byte copies and conversions
    near = [(sorted(p.rsplit("/", 1)[1] for p in x["paths"]), x["score"]) for x in report.near]
    pairs = [n for n, _ in near]
    assert ["b-tuned.safetensors", "b.safetensors"] in pairs
    # alpha x2: the same directions, other weights: near (score 1), never "same weights"
    assert ["a-alpha2.safetensors", "a-copy.safetensors"] in pairs or ["a-alpha2.safetensors", "a.safetensors"] in pairs
    assert all("unrelated" not in " ".join(n) for n in pairs)
    # a same-weights group enters near pairs once, through one file
    assert sum("a-alpha2.safetensors" in n for n in pairs) == 1


def test_near_duplicate_titles_come_from_the_sidecars_then_the_header(tmp_path):
    rng = np.random.default_rng(3)
    b = factors(rng)
    save_lora(tmp_path / "b.safetensors", b, alpha=4.0, base="tiny", metadata={"modelspec.title": "header b"})
    tuned = {n: (A + 0.05 * rng.standard_normal(A.shape), B) for n, (A, B) in b.items()}
    save_lora(tmp_path / "b-tuned.safetensors", tuned, alpha=4.0, base="tiny", metadata={"modelspec.title": "old"})
    # Civitai Helper's NAME.civitai.info (the API's model-version JSON): its model name comes before the header's
    info = {"id": 7, "modelId": 3, "name": "v2", "model": {"name": "B style"}, "baseModel": "SDXL 1.0"}
    (tmp_path / "b-tuned.civitai.info").write_text(json.dumps(info, indent=4))
    run = index_folder(tmp_path, tmp_path / "idx.safetensors", use_cache=False)
    (pair,) = find_duplicates(run.index, near_threshold=0.7).near
    titles = dict(zip(pair["paths"], pair["titles"]))
    assert titles == {
        str(tmp_path / "b-tuned.safetensors"): "B style (v2)",
        str(tmp_path / "b.safetensors"): "header b",
    }


def test_byte_identical_copies_say_so(tmp_path):
    rng = np.random.default_rng(1)
    save_lora(tmp_path / "x.safetensors", factors(rng), alpha=4.0, base="tiny")
    shutil.copy(tmp_path / "x.safetensors", tmp_path / "y.safetensors")
    save_lora(tmp_path / "z.safetensors", factors(rng), alpha=4.0, base="tiny")
    run = index_folder(tmp_path, tmp_path.parent / f"{tmp_path.name}.idx")
    (group,) = find_duplicates(run.index).same_weights
    assert group["identical_bytes"] and [p.rsplit("/", 1)[1] for p in group["paths"]] == [
        "x.safetensors",
        "y.safetensors",
    ]


def test_command_json_and_text(folder, tmp_path, capsys):
    assert main(["duplicates", str(folder), "--json", "--threshold", "0.7"]) == 0
    out = capsys.readouterr()
    data = json.loads(out.out)
    assert set(data) == {"same_weights", "near_duplicates", "near_threshold", "thresholds"}
    assert data["near_threshold"] == 0.7
    assert data["thresholds"] == {"tiny": {"threshold": 0.7, "why": "given with --threshold"}}
    assert "1 group of files with the same weights (5 files, 4 extra copies)" in out.err
    assert "near-duplicate threshold: tiny 0.700 (given with --threshold)" in out.err
    assert main(["duplicates", str(folder), "--threshold", "0.7"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("same weights (score ") and "near-duplicates, score " in text
    # with --index the index is kept, and an index file is a source too
    kept = tmp_path / "kept.safetensors"
    assert main(["duplicates", str(folder), "--index", str(kept), "--json"]) == 0
    capsys.readouterr()
    assert main(["duplicates", str(kept), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["same_weights"] == data["same_weights"]


def test_command_errors(tmp_path, capsys):
    assert main(["duplicates", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nothing'}: no such file or folder\n"
    assert main(["duplicates", str(tmp_path), "--threshold", "2"]) == 2
    assert "error: --threshold: " in capsys.readouterr().err
    assert main(["duplicates", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().endswith("no LoRA files (.safetensors) found")


# ---- which copy to keep (lorastyle.index.keep.choose_copy) --------------------------------------


def _keep(folder, tmp_path):
    (group,) = find_duplicates(index_folder(folder, tmp_path / "keep.idx", use_cache=False).index).same_weights
    return os.path.relpath(group["keep"], folder), group["keep_reason"], group


def _copies(folder, names, *, mtimes=None, dtypes=None):
    """Files of one update under ``names`` (byte copies unless a dtype is given), with these mtimes (s)."""
    a = factors(np.random.default_rng(5))
    for k, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        dtype = (dtypes or {}).get(name, np.float32)
        save_lora(folder / name, a, alpha=4.0, base="tiny", dtype=dtype)
        t = (mtimes or {}).get(name, 1_700_000_000 + k)
        os.utime(folder / name, (t, t))
    rng = np.random.default_rng(6)
    save_lora(folder / "other.safetensors", factors(rng), alpha=4.0, base="tiny")


def test_keep_the_copy_with_the_most_metadata_even_deeper_and_newer(tmp_path):
    folder = tmp_path / "f"
    _copies(folder, ["x.safetensors", "old/backup/x.safetensors"], mtimes={"x.safetensors": 1_000_000_000})
    (folder / "old/backup/x.preview.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # one preview: one more than x's 0
    keep, reason, _ = _keep(folder, tmp_path)
    assert keep == "old/backup/x.safetensors"
    assert reason == "most metadata: 1 against 0, counting facts of its sidecars and header and a preview"


def test_keep_the_most_precise_dtype_before_the_folder(tmp_path):
    folder = tmp_path / "f"
    names = ["x-fp16.safetensors", "sub/x-fp32.safetensors"]
    _copies(folder, names, dtypes={"x-fp16.safetensors": np.float16})
    keep, reason, group = _keep(folder, tmp_path)
    assert not group["identical_bytes"]
    assert (keep, reason) == ("sub/x-fp32.safetensors", "most precise dtype: float32, the next copy float16")


def test_keep_the_shallowest_folder_before_the_oldest(tmp_path):
    folder = tmp_path / "f"
    _copies(folder, ["z.safetensors", "a/a.safetensors"], mtimes={"a/a.safetensors": 1_000_000_000})
    assert _keep(folder, tmp_path)[:2] == ("z.safetensors", "shallowest folder")


def test_keep_the_oldest_then_the_first_path(tmp_path):
    folder = tmp_path / "f"
    _copies(folder, ["a.safetensors", "b.safetensors"], mtimes={"b.safetensors": 1_000_000_000})
    keep, reason, _ = _keep(folder, tmp_path)
    assert keep == "b.safetensors" and reason.startswith("oldest: modified 20")
    same = tmp_path / "g"
    _copies(same, ["b.safetensors", "a.safetensors"], mtimes={"a.safetensors": 1, "b.safetensors": 1})
    assert _keep(same, tmp_path)[:2] == ("a.safetensors", "first by path: the copies are alike otherwise")


def test_the_text_lists_the_kept_copy_first_with_its_reason(tmp_path, capsys):
    folder = tmp_path / "f"
    _copies(folder, ["z.safetensors", "a/a.safetensors"])
    assert main(["duplicates", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        "identical files, tiny; keep the first (shallowest folder):",
        f"  {folder / 'z.safetensors'}",
        f"  {folder / 'a/a.safetensors'}",
    ]


# ---- the same update at another strength ---------------------------------------------------------


def test_a_near_duplicate_of_another_strength_says_its_factor(folder, tmp_path, capsys):
    report = find_duplicates(index_folder(folder, tmp_path / "idx.safetensors").index, near_threshold=0.7)
    (pair,) = [p for p in report.near if any(x.endswith("a-alpha2.safetensors") for x in p["paths"])]
    # brute force from the factors written: a-alpha2 is a's B A at alpha 8 / rank 4 instead of 4 / 4
    a = factors(np.random.default_rng(0))
    expected = [np.linalg.norm(2.0 * B @ A) / np.linalg.norm(1.0 * B @ A) for A, B in a.values()]
    factor = expected[0] if pair["paths"][1].endswith("a-alpha2.safetensors") else 1 / expected[0]
    assert pair["strength"]["relation"] == "same direction"
    assert pair["strength"]["factor"] == pytest.approx(factor, rel=1e-3)
    (tuned,) = [p for p in report.near if any(x.endswith("b-tuned.safetensors") for x in p["paths"])]
    assert tuned["strength"] is None  # another update, not another strength
    assert main(["duplicates", str(folder), "--threshold", "0.7"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\(same direction: a[-a-z0-9]*\.safetensors is a-alpha2\.safetensors at strength x0\.5\):", out)


def test_a_copy_scaled_by_module_says_the_range(tmp_path):
    rng = np.random.default_rng(7)
    a = factors(rng)
    save_lora(tmp_path / "a.safetensors", a, alpha=4.0, base="tiny")
    scales = dict(zip(a, (0.5, 1.0, 0.8)))
    save_lora(tmp_path / "b.safetensors", {n: (A, scales[n] * B) for n, (A, B) in a.items()}, alpha=4.0, base="tiny")
    for i in range(2):
        save_lora(tmp_path / f"u{i}.safetensors", factors(rng), alpha=4.0, base="tiny")
    report = find_duplicates(index_folder(tmp_path, tmp_path.parent / "m.idx", use_cache=False).index)
    (pair,) = report.near
    assert pair["score"] > 0.999 and pair["strength"]["relation"] == "same directions per module"
    assert pair["strength"]["factor_range"] == pytest.approx([0.5, 1.0], rel=1e-3)


def test_strength_of_needs_one_factor_for_every_module():
    norms = np.array([1.0, 2.0, 0.0, 4.0])
    assert strength_of(norms, 0.25 * norms) == {"relation": "same direction", "factor": pytest.approx(0.25)}
    assert strength_of(norms, norms[:3]) is None
    assert strength_of(np.zeros(3), np.zeros(3)) is None


# ---- the near-duplicate threshold of each family, and why ---------------------------------------


def test_each_family_says_its_threshold_and_why(tmp_path):
    rng = np.random.default_rng(8)
    for base in ("tiny", "sd1"):
        for i in range(2):
            save_lora(tmp_path / f"{base}{i}.safetensors", factors(rng), alpha=4.0, base=base)
    index = index_folder(tmp_path, tmp_path.parent / "t.idx", use_cache=False).index
    calibration = load_calibration(index.descriptor, index.sketcher.settings)
    thresholds = near_thresholds(index)
    assert set(thresholds) == {"tiny", "sd1"}
    assert thresholds["tiny"]["threshold"] == thresholds["sd1"]["threshold"] == calibration.near_duplicate
    assert thresholds["tiny"]["why"].startswith(f"calibrated on {calibration.calibrated_on}")
    assert thresholds["sd1"]["why"].startswith("no calibration of its own")
    assert near_thresholds(index, 0.9) == {
        b: {"threshold": 0.9, "why": "given with --threshold"} for b in ("sd1", "tiny")
    }


def test_duplicates_never_form_the_n_by_n_matrix_and_find_what_it_found(folder, tmp_path, monkeypatch):
    """Pairs come a block at a time; the report equals the one from every pair's score (brute force here)."""
    from lorastyle.index.search import SketchMatrix
    from lorastyle.index.thresholds import near_threshold

    run = index_folder(folder, tmp_path / "idx.safetensors")
    (group,) = run.index.groups.values()
    C = group.matrix.cosine_matrix()  # the reference, before it is forbidden
    monkeypatch.setattr(SketchMatrix, "cosine_matrix", lambda self: pytest.fail("n x n matrix formed"))
    report = find_duplicates(run.index)
    cut, _ = near_threshold(run.index, group.base)
    names = [os.path.basename(r.path) for r in group.records]
    n = len(names)
    groups = [{os.path.basename(p) for p in g["paths"]} for g in report.same_weights]
    first = {name: min(g, key=names.index) for g in groups for name in g}  # a group's first file stands for it
    rep = [first.get(name, name) for name in names]
    near_ref = {
        frozenset((rep[i], rep[j])) for i in range(n) for j in range(i + 1, n) if C[i, j] >= cut and rep[i] != rep[j]
    }
    near_found = {frozenset(os.path.basename(p) for p in pair["paths"]) for pair in report.near}
    assert near_found == near_ref and len(near_ref) >= 2
    assert len(report.same_weights) == 1 and len(report.same_weights[0]["paths"]) == 5


def test_byte_identical_empty_updates_are_the_same_weights(tmp_path):
    """All-zero updates score 0 with each other: byte-identical files are grouped by their sha256 anyway."""
    zero = {n: (np.zeros((4, i), np.float32), np.zeros((o, 4), np.float32)) for n, (o, i) in SHAPES.items()}
    save_lora(tmp_path / "z0.safetensors", zero, alpha=4.0, base="tiny")
    shutil.copy(tmp_path / "z0.safetensors", tmp_path / "z1.safetensors")
    save_lora(tmp_path / "other.safetensors", factors(np.random.default_rng(3)), alpha=4.0, base="tiny")
    run = index_folder(tmp_path, tmp_path.parent / f"{tmp_path.name}.idx")
    groups = find_duplicates(run.index).same_weights
    assert [sorted(os.path.basename(p) for p in g["paths"]) for g in groups] == [["z0.safetensors", "z1.safetensors"]]
