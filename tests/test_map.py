"""``lorastyle map``: one offline HTML page of a LoRA folder (lorastyle.lora_map).

A synthetic folder: three sources in the tiny family with three near-copies each (the same
factors plus 2% noise), two unrelated tiny files, two SD1-shaped near-copies and one other SD1
file, a damaged file, and preview images next to some files (``NAME.preview.png``,
``NAME.jpg``, a broken ``NAME.preview.png``) and a ``NAME.civitai.info``. The JSON must put
each source's copies in one cluster and every file in exactly one; the page is opened in
headless Chromium (Debian's chromium and chromium-driver) with the network off.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lorastyle.cli import main
from lorastyle.index import LoraIndex
from lorastyle.io.formats import save_lora
from lorastyle.lora_map import (
    DEFAULT_THRESHOLD,
    clusters,
    find_preview,
    layout_fidelity,
    map_json,
    map_layout,
    map_page,
)
from support import CHROMEDRIVER, CHROMIUM, chromium_driver

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)

TINY = {
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (16, 16),
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (16, 12),
    "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj": (32, 16),
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": (12, 12),
}
SD1 = {  # SD 1.x shapes: 320-wide first stage, 768-wide CLIP text encoder (cross-attention keys)
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (320, 320),
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (320, 768),
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": (768, 768),
}
RANK = 4


def _factors(shapes, seed, noise_seed=None, noise=0.02):
    rng = np.random.default_rng(seed)
    out = {}
    for name, (o, i) in shapes.items():
        A, B = 0.1 * rng.standard_normal((RANK, i)), 0.1 * rng.standard_normal((o, RANK))
        out[name] = (A, B)
    if noise_seed is not None:
        nrng = np.random.default_rng(noise_seed)
        out = {
            n: (A + noise * 0.1 * nrng.standard_normal(A.shape), B + noise * 0.1 * nrng.standard_normal(B.shape))
            for n, (A, B) in out.items()
        }
    return {n: (A.astype(np.float32), B.astype(np.float32)) for n, (A, B) in out.items()}


def _write(path: Path, shapes, seed, noise_seed=None, *, base, title=None, trigger=None):
    meta = {}
    if title:
        meta["modelspec.title"] = title
    if trigger:
        meta["modelspec.trigger_phrase"] = trigger
    save_lora(path, _factors(shapes, seed, noise_seed), alpha=4.0, base=base, metadata=meta)
    return str(path.resolve())


def _image(path: Path, size, colour):
    Image.new("RGB", size, colour).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The synthetic folder: (root, expected clusters as sets of paths per group, previews by path)."""
    root = tmp_path_factory.mktemp("loras")
    (root / "sub").mkdir()
    tiny, sd1, previews = [], [], {}
    for s in range(3):
        copies = []
        for c in range(3):
            where = root / "sub" if c == 2 else root
            copies.append(
                _write(
                    where / f"style{s}_v{c}.safetensors",
                    TINY,
                    seed=100 + s,
                    noise_seed=1000 + 10 * s + c,
                    base="tiny",
                    title=f"Style {s} version {c}",
                    trigger=f"style{s}",
                )
            )
        tiny.append(set(copies))
    for k in range(2):
        tiny.append({_write(root / f"lonely{k}.safetensors", TINY, seed=200 + k, base="tiny", title=f"Lonely {k}")})
    pair = {_write(root / f"sd1_ink_{c}.safetensors", SD1, 300, 3000 + c, base="sd1", title="Ink") for c in range(2)}
    sd1 = [pair, {_write(root / "sd1_other.safetensors", SD1, 301, base="sd1")}]
    (root / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    # previews: A1111/Forge/Civitai Helper's NAME.preview.png, A1111's NAME.jpg, a large one, a broken one
    _image(root / "style0_v0.preview.png", (64, 48), "red")
    previews[str((root / "style0_v0.safetensors").resolve())] = (64, 48)
    _image(root / "style1_v0.jpg", (80, 80), "blue")
    previews[str((root / "style1_v0.safetensors").resolve())] = (80, 80)
    _image(root / "sub" / "style2_v2.preview.png", (1024, 512), "green")
    previews[str((root / "sub" / "style2_v2.safetensors").resolve())] = (256, 128)
    _image(root / "sd1_ink_0.webp", (300, 600), "purple")
    previews[str((root / "sd1_ink_0.safetensors").resolve())] = (128, 256)
    (root / "lonely1.preview.png").write_bytes(b"not an image")
    (root / "sd1_ink_1.preview.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")  # a video: linked, not embedded
    # Civitai Helper's info file (the Civitai API's model-version JSON): its model name stands in for the missing title
    info = {
        "name": "v2.0",
        "model": {"name": "Civitai Other"},
        "trainedWords": ["other_style"],
        "baseModel": "Pony",
        "images": [],
    }
    (root / "sd1_other.civitai.info").write_text(json.dumps(info, indent=4))
    # ComfyUI-Lora-Manager's NAME.metadata.json (py/utils/models.py LoraMetadata): its name comes before the header's
    manager = {"file_name": "lonely0", "model_name": "Lonely Manager", "base_model": "Illustrious", "tags": ["x"],
               "civitai": {"trainedWords": ["lonely_word"]}, "usage_tips": "{}", "notes": "", "sha256": ""}  # fmt: skip
    (root / "lonely0.metadata.json").write_text(json.dumps(manager, indent=2))
    return root, {"tiny": tiny, "sd1": sd1}, previews


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def mapped(folder, tmp_path_factory):
    """``lorastyle map DIR -o map.html --json --index INDEX``, run once: (page, JSON, stderr, index path)."""
    root, _, _ = folder
    out = tmp_path_factory.mktemp("map")
    page, index = out / "map.html", out / "loras.index"
    with pytest.MonkeyPatch.context() as mp:
        stdout, stderr = io.StringIO(), io.StringIO()
        mp.setattr(sys, "stdout", stdout)
        mp.setattr(sys, "stderr", stderr)
        rc = main(["map", str(root), "-o", str(page), "--json", "--index", str(index)])
    assert rc == 0, stderr.getvalue()
    return page, json.loads(stdout.getvalue()), stderr.getvalue(), index


# ---------------------------------------------------------------- clusters (JSON)


def test_the_clusters_group_the_near_copies_and_list_every_file_once(folder, mapped):
    _, expected, _ = folder
    _, result, _, _ = mapped
    groups = {g["key"]: g for g in result["groups"]}
    assert set(groups) == {"tiny", "sd1"}
    for key, want in expected.items():
        got = [{m["path"] for m in c["members"]} for c in groups[key]["clusters"]]
        assert sorted(map(sorted, got)) == sorted(map(sorted, want)), key
    paths = [m["path"] for g in result["groups"] for c in g["clusters"] for m in c["members"]]
    assert len(paths) == len(set(paths)) == result["n_files"] == 14
    assert all(p.endswith(".safetensors") and "broken" not in p for p in paths)


def test_the_json_gives_titles_scores_and_the_calibrated_threshold(mapped):
    _, result, _, _ = mapped
    assert result["descriptor"] == "gram" and result["threshold"] is None  # none given: each family's own
    tiny, sd1 = (next(g for g in result["groups"] if g["key"] == k) for k in ("tiny", "sd1"))
    assert "same source likely" in tiny["threshold_source"]  # the tiny family is calibrated
    assert "too few files for a null of their own (3 pairs)" in sd1["threshold_source"]
    for g in result["groups"]:
        assert [c["id"] for c in g["clusters"]] == list(range(len(g["clusters"])))
        assert [c["size"] for c in g["clusters"]] == sorted((c["size"] for c in g["clusters"]), reverse=True)
    clusters_ = [c for g in result["groups"] for c in g["clusters"]]
    for c in clusters_:
        first = c["members"][0]
        assert first["score"] == 1.0
        for m in c["members"][1:]:
            assert 0.4 <= m["score"] <= 1.0  # near-copies score near 1
        if c["size"] == 1:
            assert first["best_score"] is None and first["best_match"] is None
        else:
            assert all(m["best_match"] in {x["path"] for x in c["members"]} - {m["path"]} for m in c["members"])
    titles = {Path(m["path"]).name: m["title"] for c in clusters_ for m in c["members"]}
    assert titles["style1_v2.safetensors"] == "Style 1 version 2"
    assert titles["sd1_other.safetensors"] == "Civitai Other (v2.0)"  # from NAME.civitai.info
    assert titles["lonely0.safetensors"] == "Lonely Manager"  # NAME.metadata.json before the header's "Lonely 0"
    assert titles["lonely1.safetensors"] == "Lonely 1"  # the header's, with no sidecar
    base_models = {Path(m["path"]).name: m["base_model"] for c in clusters_ for m in c["members"]}
    assert base_models["sd1_other.safetensors"] == "Pony" and base_models["lonely0.safetensors"] == "Illustrious"
    assert base_models["style0_v0.safetensors"] is None
    assert result["base_models"] is None  # no filter


def test_the_map_keeps_the_base_models_asked_for(mapped, folder, capsys, tmp_path):
    root, _, _ = folder
    _, _, _, index = mapped
    rc, out, err = _run(capsys, "map", index, "-o", tmp_path / "m.html", "--json", "--base-model", "illustrious")
    assert rc == 0, err
    result = json.loads(out)
    paths = [m["path"] for g in result["groups"] for c in g["clusters"] for m in c["members"]]
    assert paths == [str((root / "lonely0.safetensors").resolve())] and result["n_files"] == 1
    assert result["base_models"] == ["illustrious"]
    assert "mapped 1 file in 1 base family" in err
    assert "Only files whose base model contains illustrious." in (tmp_path / "m.html").read_text()
    # several names: either one; each family keeps its own files
    rc, out, err = _run(capsys, "map", index, "-o", tmp_path / "m2.html", "--json", "--base-model", "PONY",
                        "--base-model", "Illustrious")  # fmt: skip
    assert rc == 0, err
    result = json.loads(out)
    got = {g["key"]: [Path(m["path"]).name for c in g["clusters"] for m in c["members"]] for g in result["groups"]}
    assert got == {"tiny": ["lonely0.safetensors"], "sd1": ["sd1_other.safetensors"]}
    # none: an error that lists the base models there are, and no page
    rc, out, err = _run(capsys, "map", index, "-o", tmp_path / "m3.html", "--base-model", "NoobAI")
    assert rc == 2 and out == ""
    assert err.strip() == (
        "error: --base-model: no file's base model contains 'NoobAI' (base models of these files: Illustrious, Pony)"
    )
    assert not (tmp_path / "m3.html").exists()


def test_bad_files_are_reported_and_the_rest_mapped(mapped, folder):
    root, _, _ = folder
    page, _, stderr, _ = mapped
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {root / 'broken.safetensors'}: ")
    assert f"warning: {root / 'lonely1.preview.png'}: preview image not shown" in stderr
    assert "mapped 14 files in 2 base families: 4 clusters of 2 or more files" in stderr
    assert page.stat().st_size < 6 * 2**20


def test_an_index_file_gives_the_same_clusters_as_its_folder(mapped, capsys, tmp_path):
    _, result, _, index = mapped
    rc, out, err = _run(capsys, "map", index, "-o", tmp_path / "again.html", "--json")
    assert rc == 0, err
    assert json.loads(out) == result
    assert map_json(LoraIndex.load(index)) == result


def test_a_threshold_above_every_score_leaves_every_file_alone(mapped, capsys, tmp_path):
    _, _, _, index = mapped
    rc, out, err = _run(capsys, "map", index, "-o", tmp_path / "m.html", "--json", "--threshold", "1")
    assert rc == 0, err
    result = json.loads(out)
    assert result["threshold"] == 1.0
    assert {(g["threshold"], g["threshold_source"]) for g in result["groups"]} == {(1.0, "given with --threshold")}
    assert all(c["size"] == 1 for g in result["groups"] for c in g["clusters"])


# ---------------------------------------------------------------- positions, clusters, previews


def _blocks(sizes, within=0.95, seed=0):
    """A similarity matrix of blocks of near-copies (``within``) among unrelated files (about 0)."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        centre = rng.standard_normal(64)
        for _ in range(n):
            rows.append(centre + np.sqrt(1 / within - 1) * np.linalg.norm(centre) / 8 * rng.standard_normal(64))
    X = np.array(rows)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return np.clip(X @ X.T, -1, 1)


def test_clusters_join_files_whose_average_score_is_above_the_threshold():
    S = _blocks([3, 2, 1, 1])
    labels = clusters(S, DEFAULT_THRESHOLD)
    assert labels.tolist() == [0, 0, 0, 1, 1, 2, 3]
    assert clusters(S, 1.0).tolist() == list(range(7))
    assert clusters(S, -1.0).tolist() == [0] * 7
    assert clusters(np.ones((1, 1))).tolist() == [0]
    with pytest.raises(ValueError, match="threshold"):
        clusters(S, 1.5)


def test_map_layout_is_deterministic_and_keeps_near_copies_together():
    S = _blocks([4, 4, 3])
    a, b = map_layout(S, random_state=0), map_layout(S, random_state=0)
    assert a.shape == (11, 2) and np.array_equal(a, b)
    d = np.linalg.norm(a[:, None] - a[None], axis=-1)
    assert d[:4, :4].max() < d[:4, 4:].min()  # a block's files are closer to each other than to others
    assert map_layout(np.ones((1, 1))).tolist() == [[0.0, 0.0]]
    two = map_layout(np.array([[1.0, 0.2], [0.2, 1.0]]))
    assert np.isclose(np.linalg.norm(two[0] - two[1]), 0.8)
    with pytest.raises(ValueError, match="square"):
        map_layout(np.ones((2, 3)))


@pytest.mark.slow
def test_map_layout_places_files_whose_distances_are_no_metric():
    """1 - cosine breaks the triangle inequality here (1.0101 > 0.0008 + 1.0091): classical MDS would take a
    negative root; the layout still puts the two near copies together and the third file away."""
    S = np.array([[1.0, 0.9992, -0.0091], [0.9992, 1.0, -0.0101], [-0.0091, -0.0101, 1.0]])
    D = 1 - S
    assert D[1, 2] > D[0, 1] + D[0, 2]
    xy = map_layout(S)
    assert np.all(np.isfinite(xy))
    near, far = np.linalg.norm(xy[0] - xy[1]), min(np.linalg.norm(xy[0] - xy[2]), np.linalg.norm(xy[1] - xy[2]))
    assert near < 0.1 * far and far > 0.5


def test_map_layout_uses_umap_for_large_groups_deterministically():
    """UMAP's first call compiles it (numba): about 30 s on 2 cores."""
    S = _blocks([10, 10, 5] + [1] * 10)
    a, b = map_layout(S, random_state=3, method="umap"), map_layout(S, random_state=3, method="umap")
    assert a.shape == (35, 2) and np.array_equal(a, b)
    d = np.linalg.norm(a[:, None] - a[None], axis=-1)
    assert np.median(d[:10, :10]) < np.median(d[:10, 10:])


def test_find_preview_takes_the_first_convention_that_exists(tmp_path):
    lora = tmp_path / "a.safetensors"
    lora.write_bytes(b"")
    assert find_preview(lora) is None
    for name in ("a.webp", "a.jpg", "a.preview.jpg", "a.png", "a.preview.png"):
        (tmp_path / name).write_bytes(b"x")
        assert find_preview(lora) == str(tmp_path / name)


def test_map_page_refuses_an_unknown_mark(mapped):
    _, _, _, index = mapped
    with pytest.raises(ValueError, match="mark"):
        map_page(LoraIndex.load(index), mark="colour")


def test_the_core_does_not_import_plotly_or_scikit_learn():
    code = (
        "import json, sys\nimport lorastyle.index, lorastyle.cli, lorastyle.lora_map\n"
        "print(json.dumps([m for m in ('plotly', 'sklearn', 'pandas', 'matplotlib', 'umap', 'PIL') "
        "if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


# ---------------------------------------------------------------- errors


def _one_error(err: str, path, reason: str):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}: ") and reason in lines[0], lines[0]


def test_a_missing_source_is_one_error(capsys, tmp_path):
    rc, out, err = _run(capsys, "map", tmp_path / "nowhere", "-o", tmp_path / "m.html")
    assert rc == 2 and out == ""
    _one_error(err, tmp_path / "nowhere", "no such file or folder")


@pytest.mark.parametrize("where", ["missing folder", "a folder", "read-only folder", "/proc"])
def test_an_unwritable_output_is_one_error(folder, capsys, tmp_path, where):
    root, _, _ = folder
    if where == "missing folder":
        target, reason = tmp_path / "no" / "m.html", "cannot write: its folder does not exist"
    elif where == "a folder":
        target, reason = tmp_path, "cannot write: it is a folder"
    elif where == "/proc":  # no file can be created there, not even by root (found when writing)
        if not Path("/proc/self").exists():
            pytest.skip("no /proc")
        target, reason = Path("/proc/lorastyle-map.html"), "cannot write"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target, reason = ro / "m.html", "cannot write: permission denied"
        try:
            (ro / "probe").write_bytes(b"")
            pytest.skip("running as a user who can write in a read-only folder (root)")
        except PermissionError:
            pass
    rc, out, err = _run(capsys, "map", root, "-o", target)
    assert rc == 2 and out == ""
    errors = [line for line in err.splitlines() if line.startswith("error:") and "broken.safetensors" not in line]
    _one_error("\n".join(errors), target, reason)


def test_a_folder_without_lora_files_is_one_error(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no LoRA here")
    rc, out, err = _run(capsys, "map", tmp_path / "empty", "-o", tmp_path / "m.html")
    assert rc == 2 and out == ""
    _one_error(err, tmp_path / "empty", "no LoRA files")
    assert not (tmp_path / "m.html").exists()


def test_a_file_that_is_not_an_index_is_one_error(folder, capsys, tmp_path):
    root, _, _ = folder
    lora = root / "lonely0.safetensors"
    rc, out, err = _run(capsys, "map", lora, "-o", tmp_path / "m.html")
    assert rc == 2
    _one_error(err, lora, "not a lorastyle index")


@pytest.mark.parametrize("value", ["2", "nan", "high"])
def test_a_bad_threshold_is_refused_when_parsed(capsys, tmp_path, value):
    rc, out, err = _run(capsys, "map", tmp_path, "-o", tmp_path / "m.html", "--threshold", value)
    assert rc == 2
    _one_error(err, "--threshold", "")


# ---------------------------------------------------------------- the page in a browser


@pytest.fixture(scope="module")
def browser():
    driver = chromium_driver()
    # the network off: every request other than file:// fails; script errors are collected
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0},
    )
    driver.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {
            "source": "window.__errors = [];"
            " window.addEventListener('error', e => window.__errors.push(String(e.message)));"
        },
    )
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(mapped, browser):
    path, _, _, _ = mapped
    browser.get(path.as_uri())
    return browser


@needs_chromium
def test_the_page_loads_offline_and_fetches_nothing(page):
    resources = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    assert [r for r in resources if r.startswith(("http:", "https:"))] == []
    assert page.execute_script("return window.__errors;") == []
    assert page.execute_script("return document.querySelectorAll('.plotly-graph-div .main-svg').length;") > 0


@needs_chromium
def test_the_plot_has_one_point_per_file_with_its_name_and_title(page, mapped):
    _, result, _, _ = mapped
    traces = page.execute_script(
        "const gd = document.querySelector('.plotly-graph-div');"
        "return gd.data.map(t => ({name: t.name, n: t.x.length, text: Array.from(t.text),"
        " ids: Array.from(t.customdata), symbols: Array.from(t.marker.symbol)}));"
    )
    assert [t["name"] for t in traces] == ["tiny (11 files)", "sd1 (3 files)"]
    assert sum(t["n"] for t in traces) == 14
    assert sorted(i for t in traces for i in t["ids"]) == list(range(14))
    assert {s for s in traces[0]["symbols"]} != {s for s in traces[1]["symbols"]}  # symbol by base family
    hover = "\n".join(x for t in traces for x in t["text"])
    for g in result["groups"]:
        for c in g["clusters"]:
            for m in c["members"]:
                assert Path(m["path"]).name in hover
                if m["title"]:
                    assert m["title"] in hover
    assert "trigger words: style1" in hover and "kind: LoRA" in hover and "base: sd1" in hover


@needs_chromium
def test_the_preview_images_decode_at_most_256_pixels(page, folder):
    _, _, previews = folder
    images = page.execute_script(
        "return Array.from(document.querySelectorAll('img[id^=preview-]')).map(i => ({"
        "ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth, h: i.naturalHeight, src: i.src,"
        " path: i.closest('tr').title}));"
    )
    assert sorted(i["path"] for i in images) == sorted(previews)
    for img in images:
        assert img["ok"] and (img["w"], img["h"]) == previews[img["path"]]
        assert img["src"].startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1]))) as decoded:
            assert decoded.size == previews[img["path"]]


def _panel(page) -> dict:
    return page.execute_script(
        "const img = document.querySelector('#panel img');"
        "return {text: document.getElementById('panel').innerText,"
        " img: img ? img.src : null, width: img && img.complete ? img.naturalWidth : 0};"
    )


@needs_chromium
def test_hovering_a_point_shows_the_file_in_the_panel(page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    i = page.execute_script(
        "return document.querySelector('.plotly-graph-div').data[0].text"
        ".findIndex(t => t.includes('lonely0.safetensors'));"
    )
    page.execute_script("window.scrollTo(0, 0);")
    point = page.find_elements(By.CSS_SELECTOR, ".scatterlayer .trace:first-child path.point")[i]
    ActionChains(page).move_to_element(point).perform()
    panel = _panel(page)
    assert "lonely0.safetensors" in panel["text"] and "Lonely Manager" in panel["text"]  # its NAME.metadata.json title
    assert "no preview image" in panel["text"] and panel["img"] is None


@needs_chromium
def test_clicking_a_row_shows_the_file_and_its_preview_in_the_panel(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    row = next(
        r
        for r in page.find_elements(By.CSS_SELECTOR, "tr[data-file]")
        if r.get_attribute("title").endswith("style0_v0.safetensors")
    )
    page.execute_script("arguments[0].scrollIntoView({block: 'center'});", row)
    row.find_elements(By.TAG_NAME, "td")[1].click()
    WebDriverWait(page, 10).until(lambda d: _panel(d)["width"] > 0)
    panel = _panel(page)
    assert "style0_v0.safetensors" in panel["text"] and "Style 0 version 0" in panel["text"]
    assert "trigger words: style0" in panel["text"] and "cluster: 0 (3 files)" in panel["text"]
    assert panel["img"].startswith("data:image/jpeg;base64,") and panel["width"] == 64


@needs_chromium
def test_the_cluster_list_is_plain_html_with_every_file_once(page):
    rows = page.execute_script("return Array.from(document.querySelectorAll('tr[data-file]')).map(r => r.title);")
    assert len(rows) == len(set(rows)) == 14
    heads = page.execute_script("return Array.from(document.querySelectorAll('#clusters h3')).map(h => h.innerText);")
    assert heads == [
        "tiny: 11 files, 3 clusters of 2 or more, 2 files in no cluster",
        "sd1: 3 files, 1 cluster of 2 or more, 1 file in no cluster",
    ]


# ---------------------------------------------------------------- finding files on the page


def _page_json(html_text: str, element_id: str):
    start = html_text.index(f'id="{element_id}">') + len(f'id="{element_id}">')
    return json.loads(html_text[start : html_text.index("</script>", start)])


@pytest.mark.parametrize("width", [1000, 1400, 1920])
@needs_chromium
def test_the_panel_never_covers_the_plot(mapped, browser, width):
    path, _, _, _ = mapped
    browser.set_window_size(width, 1000)
    browser.get(path.as_uri())
    rects = browser.execute_script(
        "const r = e => { const b = document.querySelector(e).getBoundingClientRect();"
        " return {left: b.left, right: b.right, top: b.top, bottom: b.bottom, width: b.width}; };"
        "return {plot: r('.plotly-graph-div'), panel: r('#panel'), page: document.documentElement.clientWidth};"
    )
    plot, panel = rects["plot"], rects["panel"]
    apart = plot["right"] <= panel["left"] or panel["top"] >= plot["bottom"]
    assert apart, rects
    assert plot["width"] >= 0.55 * rects["page"] and panel["right"] <= rects["page"], rects
    from selenium.webdriver.support.ui import WebDriverWait

    def svg_width(driver):
        return driver.execute_script(
            "return document.querySelector('.plotly-graph-div .main-svg').getBoundingClientRect().width;"
        )

    # the drawing fits its box (nothing runs under the panel), once plotly has followed the box's size
    WebDriverWait(browser, 10).until(lambda d: svg_width(d) <= plot["width"] + 1)


def _type(page, words: str) -> dict:
    page.execute_script(
        "const s = document.getElementById('search'); s.value = arguments[0]; s.dispatchEvent(new Event('input'));",
        words,
    )
    return _shown(page)


def _choose(page, element_id: str, value: str) -> dict:
    page.execute_script(
        "const s = document.getElementById(arguments[0]); s.value = arguments[1];"
        " s.dispatchEvent(new Event('change'));",
        element_id,
        value,
    )
    return _shown(page)


def _shown(page) -> dict:
    return page.execute_script(
        "const gd = document.querySelector('.plotly-graph-div');"
        "const lit = gd.data.map(t => (t.marker.opacity || []).filter(o => o === 1).length);"
        "const rows = Array.from(document.querySelectorAll('tr[data-file]')).filter(r => r.style.display !== 'none')"
        ".map(r => r.title.split('/').pop());"
        "return {lit: lit.reduce((a, b) => a + b, 0), rows: rows.sort(),"
        " text: document.getElementById('matches').innerText};"
    )


@needs_chromium
def test_search_finds_files_by_name_trigger_word_and_folder_and_filters_narrow_them(mapped, browser):
    path, _, _, _ = mapped
    browser.set_window_size(1400, 1000)
    browser.get(path.as_uri())
    shown = _type(browser, "style1")  # names and trigger words
    assert shown["rows"] == ["style1_v0.safetensors", "style1_v1.safetensors", "style1_v2.safetensors"]
    assert shown["lit"] == 3 and shown["text"] == "3 of 14 files match"
    assert _type(browser, "lonely_word")["rows"] == ["lonely0.safetensors"]  # a trigger word from its sidecar
    assert _type(browser, "/sub")["rows"] == ["style0_v2.safetensors", "style1_v2.safetensors", "style2_v2.safetensors"]
    assert _type(browser, "style0 /sub")["rows"] == ["style0_v2.safetensors"]  # every word must match
    assert _type(browser, "")["text"] == "14 files"
    assert _choose(browser, "filter-family", "sd1")["rows"] == [
        "sd1_ink_0.safetensors",
        "sd1_ink_1.safetensors",
        "sd1_other.safetensors",
    ]
    assert _choose(browser, "filter-base-model", "Pony")["rows"] == ["sd1_other.safetensors"]  # from its .civitai.info
    assert _choose(browser, "filter-family", "tiny")["lit"] == 0  # no tiny file names Pony
    assert _choose(browser, "filter-base-model", "Illustrious")["rows"] == ["lonely0.safetensors"]


def test_the_files_not_on_the_map_are_listed_with_their_reasons(mapped):
    path, _, _, _ = mapped
    text = path.read_text()
    section = text[text.index("<section id='skipped'>") :]
    assert "broken.safetensors" in section and "not on the map" in text
    assert text.index("<section id='skipped'>") > text.index("<section id='clusters'>")


def test_files_of_the_same_weights_are_one_point_that_names_every_copy(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    first = _write(folder / "a.safetensors", TINY, seed=1, base="tiny")
    (folder / "a_copy.safetensors").write_bytes(Path(first).read_bytes())
    (folder / "renamed.safetensors").write_bytes(Path(first).read_bytes())
    for k in range(3):
        _write(folder / f"other{k}.safetensors", TINY, seed=10 + k, base="tiny")
    page = tmp_path / "map.html"
    assert main(["map", str(folder), "-o", str(page)]) == 0
    text = page.read_text()
    files, points = _page_json(text, "lorastyle-map-files"), _page_json(text, "lorastyle-map-points")
    (trace,) = points
    assert len(trace) == 4 and sorted(len(p) for p in trace) == [1, 1, 1, 3]
    (copies,) = [p for p in trace if len(p) == 3]
    assert sorted(Path(files[i]["path"]).name for i in copies) == [
        "a.safetensors",
        "a_copy.safetensors",
        "renamed.safetensors",
    ]
    assert sorted(Path(c).name for c in files[copies[0]]["copies"]) == ["a_copy.safetensors", "renamed.safetensors"]
    assert "tiny (6 files, 4 distinct)" in text and "and 2 identical files" in text
    section = text.split("<section id='duplicates'>", 1)[1]
    assert section.count("<b>same weights</b>") == 1 and "keep a.safetensors" in section


def test_layout_fidelity_is_high_for_clusters_and_low_without_structure():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 500))
    X = centres[np.repeat(np.arange(4), 15)] + 0.5 * rng.standard_normal((60, 500))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    S = X @ X.T
    assert layout_fidelity(map_layout(S), S) > 0.8
    Y = rng.standard_normal((60, 500))
    Y /= np.linalg.norm(Y, axis=1, keepdims=True)
    assert layout_fidelity(map_layout(Y @ Y.T), Y @ Y.T) < 0.5
    # against scipy by hand on a small case: the distances' ranks against 1 - score's
    from scipy.stats import spearmanr

    P = rng.standard_normal((5, 2))
    iu = np.triu_indices(5, 1)
    d = np.linalg.norm(P[:, None] - P[None], axis=-1)[iu]
    assert layout_fidelity(P, S[:5, :5]) == pytest.approx(spearmanr(d, 1 - S[:5, :5][iu]).statistic)
    assert np.isnan(layout_fidelity(P[:2], S[:2, :2]))


def test_a_family_without_structure_leads_with_its_lists(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    for k in range(8):  # unrelated files: no cluster, scores near 0
        _write(folder / f"u{k}.safetensors", TINY, seed=50 + k, base="tiny")
    page = tmp_path / "map.html"
    assert main(["map", str(folder), "-o", str(page)]) == 0
    text = page.read_text()
    assert "Read the lists first" in text
    assert text.index("<section id='clusters'>") < text.index("class='plot'")


def test_a_family_with_clusters_and_a_faithful_map_leads_with_the_map(mapped):
    path, _, _, _ = mapped
    text = path.read_text()
    assert "Read the lists first" not in text
    assert text.index("class='plot'") < text.index("<section id='clusters'>")
    assert "Its map's distances follow the scores" in text


@needs_chromium
def test_a_preview_video_is_linked_and_played_in_the_panel(mapped, browser, folder):
    from selenium.webdriver.common.by import By

    root, _, _ = folder
    page = browser
    page.get(mapped[0].as_uri())  # afresh: the search tests leave filters set
    row = next(
        r
        for r in page.find_elements(By.CSS_SELECTOR, "tr[data-file]")
        if r.get_attribute("title").endswith("sd1_ink_1.safetensors")
    )
    page.execute_script("arguments[0].scrollIntoView({block: 'center'});", row)
    want = (root / "sd1_ink_1.preview.mp4").resolve().as_uri()
    assert row.find_element(By.TAG_NAME, "a").get_attribute("href") == want
    row.find_elements(By.TAG_NAME, "td")[1].click()
    video = page.execute_script("const v = document.querySelector('#panel video'); return v ? v.src : null;")
    assert video == want and "no preview image" not in _panel(page)["text"]


def test_a_family_too_large_for_the_memory_is_one_error_before_any_work(mapped, capsys, tmp_path, monkeypatch):
    import lorastyle._memory as memory

    _, _, _, index = mapped
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    rc, out, err = _run(capsys, "map", index, "-o", tmp_path / "m.html")
    assert rc == 2 and out == "" and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: tiny: mapping 11 files of family tiny needs about ") and "--base-model" in line
    assert not (tmp_path / "m.html").exists()


def test_running_out_of_memory_anyway_is_one_line(mapped, capsys, tmp_path, monkeypatch):
    import lorastyle.lora_map as lora_map

    _, _, _, index = mapped

    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 3.00 GiB for an array with shape (20000, 20000)")

    monkeypatch.setattr(lora_map, "map_data", exhausted)
    rc, out, err = _run(capsys, "map", index, "-o", tmp_path / "m.html")
    assert rc == 2 and "Traceback" not in err
    assert (
        err.strip()
        == "error: lorastyle map ran out of memory (Unable to allocate 3.00 GiB for an array with shape (20000, 20000))"
    )


def test_the_page_lists_what_lorastyle_duplicates_lists(mapped, capsys):
    path, _, _, index = mapped
    rc, out, err = _run(capsys, "duplicates", index, "--json")
    assert rc == 0, err
    report = json.loads(out)
    section = path.read_text().split("<section id='duplicates'>", 1)[1].split("</section>", 1)[0]
    pairs = report["near_duplicates"]
    assert len(pairs) >= 3  # the near-copies of each style
    for pair in pairs:
        names = [Path(p).name for p in pair["paths"]]
        assert f"score {pair['score']:.3f}" in section and f"{names[0]} and {names[1]}" in section
    assert section.count("<b>near-duplicates</b>") == len(pairs)
    assert section.count("<b>same weights</b>") == len(report["same_weights"])


def test_a_family_larger_than_the_map_holds_is_placed_from_a_seeded_sample(mapped, capsys, tmp_path, monkeypatch):
    """Above MAP_MAX_FILES a family's map is a sample: said on the page and in the JSON, scores exact."""
    import lorastyle.lora_map as lora_map

    _, _, _, index_path = mapped
    monkeypatch.setattr(lora_map, "MAP_MAX_FILES", 5)
    index = LoraIndex.load(index_path)
    data = lora_map.map_data(index, layout=False, previews=False)
    tiny = next(gm for gm in data.groups if gm.key == "tiny")
    group = index.groups["tiny"]
    assert tiny.sampled and tiny.n_files == len(group.records) == 11 and len(tiny.records) == 5
    paths = [r.path for r in group.records]
    rows = [paths.index(r.path) for r in tiny.records]
    assert rows == sorted(rows)  # in index order
    np.testing.assert_allclose(tiny.similarity, group.matrix.cosine_matrix()[np.ix_(rows, rows)], atol=1e-12)
    again = lora_map.map_data(index, layout=False, previews=False)  # seeded: the same sample
    assert [r.path for r in next(gm for gm in again.groups if gm.key == "tiny").records] == [
        r.path for r in tiny.records
    ]
    rc, out, err = _run(capsys, "map", index_path, "-o", tmp_path / "m.html", "--json")
    assert rc == 0, err
    result = json.loads(out)
    (entry,) = [g for g in result["groups"] if g["key"] == "tiny"]
    assert (entry["n_files"], entry["n_placed"]) == (11, 5)
    assert sum(c["size"] for c in entry["clusters"]) == 5
    page = (tmp_path / "m.html").read_text()
    assert "This family has 11 files: the map places a random sample of 5 of them" in page
