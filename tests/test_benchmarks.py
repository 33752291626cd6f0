"""The benchmark scripts in quick mode: each writes a well-formed JSON and markdown table.

Nothing here asserts a timing (a slow machine must not fail CI); the numbers are checked
for being numbers, and the tables for saying whether each goal was met.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from support import ROOT

BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402

SCRIPTS = {
    "b1": "b1_throughput.py",
    "b2": "b2_weights_vs_images.py",
    "b3": "b3_memory.py",
    "b4": "b4_retrieval.py",
    "b5": "b5_lowrank.py",
    "b6": "b6_cluster.py",
    "b7": "b7_rerank.py",
    "b8": "b8_family_fit.py",
    "b9": "b9_library.py",
    "b10": "b10_large_index.py",
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def finite_numbers(obj):
    """Every number in a JSON value."""
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [obj]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in finite_numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in finite_numbers(v)]
    return []


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_writes_json_and_markdown_in_quick_mode(name, tmp_path):
    if name == "b2" and len(list((ROOT / "data" / "loras" / "main").glob("*.safetensors"))) < 5:
        pytest.skip("B2 needs the embedded collection (make data)")
    if name == "b10" and not (ROOT.parent / "shared" / "real-loras" / "key-layouts").is_dir():
        pytest.skip("B10's query is made from a real SDXL key layout (../shared/real-loras/key-layouts)")
    proc = subprocess.run(
        [sys.executable, str(BENCH / SCRIPTS[name]), "--quick", "--out", str(tmp_path), "--tmp", str(tmp_path)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=BENCH,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / f"{name}.json").read_text())
    assert data["benchmark"] == name and data["quick"] is True
    machine = data["machine"]
    assert machine["cores"] >= 1 and machine["ram_gib"] > 0 and machine["cpu"]
    assert {"python", "numpy", "torch"} <= set(machine["versions"])
    numbers = finite_numbers({k: v for k, v in data.items() if k != "machine"})
    assert numbers and all(math.isfinite(x) for x in numbers)
    md = (tmp_path / f"{name}.md").read_text()
    assert md.startswith(f"### {name.upper()}: ") and "(quick mode" in md
    tables = [block.split("\n") for block in md.split("\n\n") if block.startswith("|")]
    assert tables
    for rows in tables:
        assert len(rows) >= 3 and set(rows[1].strip("|").split("|")) == {"---"}
        width = rows[0].count("|")
        assert all(row.startswith("|") and row.count("|") == width for row in rows)  # a rectangular table
    assert "**met**" in md or "**missed**" in md
    assert "Machine: " in md and "cores" in md and "GiB RAM" in md
    # temporary files are removed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("lorastyle-")]


def test_sd15_rules_give_the_real_key_layout():
    """The naming-rule fallback builds exactly the modules and shapes of the real SD 1.5 file."""
    if not _common.KEY_LAYOUT.exists():
        pytest.skip("the real key layouts (../shared/real-loras) are absent")
    real, source = _common.sd15_modules()
    assert source.startswith("key layout") and len(real) == 264
    assert _common._sd15_rule_modules() == real


def test_written_sd15_file_loads_as_sd1_kohya(tmp_path):
    from lorastyle.io.formats import load_lora

    modules = _common._sd15_rule_modules()
    _common.write_sd15_lora(tmp_path / "x.safetensors", modules, rank=4, seed=0)
    lora = load_lora(tmp_path / "x.safetensors")
    assert lora.summary() == {
        "format": "kohya",
        "base": "sd1",
        "parts": ["text_encoder", "unet"],
        "n_modules": 264,
        "ranks": [4],
        "alphas": [4.0],
        "dtype": "float16",
    }
    ff = lora.modules["unet.down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj"]
    assert ff.shape == (2560, 320)


def test_generator_study_scores_on_worked_examples():
    """The recipe study's two measures, on sets whose answers are known."""
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("lora_recipe", BENCH / "generator" / "lora_recipe.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    flat = lambda v: np.full((2, 4, 4, 3), v, dtype=np.uint8)  # noqa: E731
    train = {"a": flat(20), "b": flat(120), "c": flat(220)}
    mean = lambda images: images.reshape(-1, 3).mean(0)  # noqa: E731
    # a's samples near a's colour: found; b's (200) are nearer c's set (220): missed
    hits, ratio = study._scores({"a": flat(22), "b": flat(200)}, train, mean)
    assert hits == 1 and 0 < ratio < 1
    # distances sqrt(3) * (1, 201, 101) to c, a, b: the ratio of its own to the mean of the others, 1 / 151
    hits, ratio = study._scores({"c": flat(221)}, train, mean)
    assert hits == 1 and ratio == pytest.approx(1 / 151)
    base = {"a": flat(120)}
    assert study._effect({"a": flat(120)}, base, train) == (0.0, 0.0)  # no change from the base samples
    rms, closed = study._effect({"a": flat(20)}, base, train)
    assert rms == 100.0 and closed == 1.0  # all the way to the training images' mean colour
    assert study._effect({"a": flat(70)}, base, train)[1] == 0.5
