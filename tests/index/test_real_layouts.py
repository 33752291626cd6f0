"""index, similar, duplicates and map on a folder as people have them: full-size SDXL and Flux files of the real
key layouts (``../shared/real-loras/key-layouts``), with metadata and preview images, beside the real files."""

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from lorastyle.cli import main
from support import KEY_LAYOUTS, REAL_LORAS
from tools.layouts import layout_shapes, write_layout_file

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not KEY_LAYOUTS.is_dir(), reason="no key layouts")]
SDXL = "invokeai_stripped__sdxl_kohya__Alien_Style"
FLUX_BFL = "invokeai__flux_lora_kohya_format"
FLUX_DIFFUSERS = "invokeai__flux_lora_diffusers_format"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    (root / "sdxl").mkdir()
    (root / "flux").mkdir()
    meta = {
        "ss_output_name": "alien style",
        "ss_base_model_version": "sdxl_base_v1-0",
        "modelspec.trigger_phrase": "alien style",
    }
    for i in range(3):
        write_layout_file(root / "sdxl" / f"alien-{i}.safetensors", layout_shapes(SDXL), rank=4, seed=i, metadata=meta)
    shutil.copy(root / "sdxl" / "alien-0.safetensors", root / "sdxl" / "alien-0 (copy).safetensors")
    Image.new("RGB", (300, 200), (200, 40, 40)).save(root / "sdxl" / "alien-0.preview.png")
    # Flux files saying sd_1.5 in their metadata, as real ai-toolkit files do
    for name, layout in (("bfl", FLUX_BFL), ("diffusers", FLUX_DIFFUSERS)):
        write_layout_file(
            root / "flux" / f"{name}.safetensors",
            layout_shapes(layout),
            rank=2,
            seed=7,
            metadata={"ss_base_model_version": "sd_1.5"},
        )
    if REAL_LORAS.is_dir():
        (root / "sd1").symlink_to(REAL_LORAS)  # a linked folder, as ComfyUI set-ups have
    (root / "broken.safetensors").write_bytes(b"\x10" + b"\0" * 20)
    return root


def test_every_family_is_indexed_and_searchable(folder, tmp_path, capsys):
    out = tmp_path / "all.index"
    assert main(["index", str(folder), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"error: {folder / 'broken.safetensors'}: " in err
    families = {line.split(":")[0] for line in err.split("\n") if " files (gram;" in line}
    assert families >= {"sdxl", "flux"} | ({"sd1"} if REAL_LORAS.is_dir() else set())
    assert main(["similar", str(out), str(folder / "sdxl" / "alien-1.safetensors"), "-k", "10", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert {r["path"].rsplit("/", 1)[1] for r in results} == {
        "alien-0.safetensors",
        "alien-0 (copy).safetensors",
        "alien-2.safetensors",
    }
    # a p-value from the SDXL family's pairs, and a verdict: the byte copy of alien-0 is never hidden
    assert all(
        0 < r["p_value"] <= 1 and r["verdict"] in ("same weights", "same run", "related", "nothing close")
        for r in results
    )
    # the two Flux namings of the same key layout's shapes compare through one canonical naming
    assert main(["similar", str(out), str(folder / "flux" / "bfl.safetensors"), "--json"]) == 0
    (other,) = json.loads(capsys.readouterr().out)
    assert other["path"].endswith("diffusers.safetensors") and -1 <= other["score"] <= 1


def test_inspect_flags_the_contradicting_base(folder, capsys):
    assert main(["inspect", str(folder / "flux" / "bfl.safetensors"), "--json", "--no-hashes"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["base"] == "flux" and info["base_mismatch"]


def test_duplicates_and_map(folder, tmp_path, capsys):
    assert main(["duplicates", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    same = [sorted(p.rsplit("/", 1)[1] for p in g["paths"]) for g in report["same_weights"]]
    assert ["alien-0 (copy).safetensors", "alien-0.safetensors"] in same
    page = tmp_path / "map.html"
    assert main(["map", str(folder), "-o", str(page), "--json"]) == 0
    clusters = json.loads(capsys.readouterr().out)
    assert clusters["n_files"] >= 7
    html = page.read_text()
    assert "alien style" in html and "data:image/jpeg;base64," in html
    outside_scripts = re.sub(r"<script\b.*?</script>", "", html, flags=re.S)  # plotly.js is inline
    assert not re.search(r"""(?:src|href)\s*=\s*["']https?://""", outside_scripts)  # nothing to fetch
    assert np.isfinite([m["score"] for g in clusters["groups"] for c in g["clusters"] for m in c["members"]]).all()
