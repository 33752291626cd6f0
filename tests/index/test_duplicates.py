"""``lorastyle duplicates``: same weights under any name, dtype, layout or gauge; near-duplicates apart."""

import json
import shutil

import numpy as np
import pytest

from lorastyle.cli import main
from lorastyle.index import index_folder
from lorastyle.index.duplicates import find_duplicates
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
    assert set(data) == {"same_weights", "near_duplicates", "near_threshold"} and data["near_threshold"] == 0.7
    assert "1 group of files with the same weights (5 files)" in out.err
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
