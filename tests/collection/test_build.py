"""The whole pipeline on the smoke profile: real paintings, real encoders, a few steps."""

import csv
import json

import numpy as np
import pytest

from lorastyle.book.experiments import clustering_table, load_collection
from lorastyle.collection.build import build_collection, load_base, save_base
from lorastyle.collection.diffusion import tiny_model
from lorastyle.collection.profiles import get_profile
from lorastyle.io.formats import load_lora
from lorastyle.io.hashes import file_sha256


@pytest.mark.slow
def test_manifest_describes_every_lora(smoke):
    out, log = smoke
    plan = json.loads((out / "plan.json").read_text())["loras"]
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == [p["id"] for p in plan]
    assert log["n_loras"] == len(rows) == log["trained_now"]
    for row, spec in zip(rows, plan):
        path = out / row["file"]
        assert file_sha256(path) == row["sha256"]
        lora = load_lora(path)
        assert lora.base == "tiny" and lora.format == "diffusers-peft"
        assert lora.ranks == [spec["rank"]]
        assert lora.metadata["artist"] == row["artist"] and lora.metadata["collection"] == row["collection"]
        recorded = json.loads(lora.metadata["training_images"])
        assert [r[0] for r in recorded] == [im["content"] for im in spec["images"]]
        assert len(row["training_images"].split(";")) == len(spec["images"])
        # the third level of truth: the one painting every training image takes its style (or pixels) from
        assert {im["style"] or im["content"] for im in spec["images"]} == {row["painting"]}
    assert {r["collection"] for r in rows} >= {"main", "retrained", "heldout", "heldout_stranger", "real"}


@pytest.mark.slow
def test_resume_trains_nothing_twice(smoke):
    out, _ = smoke
    before = {p: p.stat().st_mtime_ns for p in (out / "loras").rglob("*.safetensors")}
    log = build_collection(get_profile("smoke"), out, progress=False)
    assert log["trained_now"] == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "loras").rglob("*.safetensors")} == before


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_rebuild_reproduces_the_collection(smoke, tmp_path, jobs):
    """make data's promise: the same manifest entries and, on the same machine, the same weights.

    jobs=2 trains in two spawned processes on one thread each, where the first build used two
    threads: sums run in another order. Adam's first steps are about lr * sign(gradient), so
    rounding can move a near-zero gradient's step: there the weights agree within 1% of lr.
    """
    import shutil

    out, _ = smoke
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "loras")
    (copy / "manifest.csv").unlink()
    log = build_collection(get_profile("smoke"), copy, progress=False, jobs=jobs)
    assert log["trained_now"] == log["n_loras"]
    read = lambda d: list(csv.DictReader(open(d / "manifest.csv", newline="")))  # noqa: E731
    a, b = read(out), read(copy)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "sha256"} for r in rows]  # noqa: E731
    assert drop(a) == drop(b)
    # LoRAs are written in the plan's order, whichever process trained them
    assert list(json.loads((copy / "losses.json").read_text())) == list(json.loads((out / "losses.json").read_text()))
    tol = dict(rtol=1e-5, atol=1e-7) if jobs == 1 else dict(rtol=0, atol=0.01 * get_profile("smoke").lora_lr)
    for row in a:
        x, y = load_lora(out / row["file"]), load_lora(copy / row["file"])
        assert x.metadata == y.metadata and set(x.modules) == set(y.modules)
        for name, m in x.modules.items():
            np.testing.assert_allclose(m.up, y.modules[name].up, **tol)
            np.testing.assert_allclose(m.down, y.modules[name].down, **tol)


def test_bad_jobs_are_refused(tmp_path):
    profile = get_profile("smoke")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="jobs must be a positive integer"):
            build_collection(profile, tmp_path, jobs=bad, progress=False)
    with pytest.raises(ValueError, match="jobs > 1 trains the tiny model on CPU processes"):
        build_collection(profile, tmp_path, jobs=2, device="cuda", progress=False)


def test_a_changed_spec_or_base_changes_the_reuse_key():
    from lorastyle.collection.build import _spec_hash
    from lorastyle.collection.plan import LoraSpec, TrainingImage

    spec = LoraSpec("main-x-0", "main", "x", "baroque", (TrainingImage("c", (0, 0, 8, 8), "s"),), 4, 0, 0)
    p = get_profile("smoke")
    key = _spec_hash(spec, p, "base-a")
    assert key == _spec_hash(spec, p, "base-a")
    assert key != _spec_hash(spec, get_profile("smoke", lora_steps=3), "base-a")
    assert key != _spec_hash(spec, p, "base-b")
    assert key != _spec_hash(LoraSpec(**{**spec.__dict__, "init_seed": 1}), p, "base-a")


@pytest.mark.slow
def test_features_cover_every_lora_and_setting(smoke):
    out, _ = smoke
    profile = get_profile("smoke")
    ids = [p["id"] for p in json.loads((out / "plan.json").read_text())["loras"]]
    for name, dim in (("efficientnet", 1280), ("magenta", 100)):
        with np.load(out / "features" / f"{name}.npz", allow_pickle=False) as f:
            assert {f"train/{i}" for i in ids} <= set(f.files)
            default = f"gen/T{profile.sample_steps}-w{profile.sample_guidance:g}-k{profile.samples_per_lora}"
            assert any(k.startswith(default) for k in f.files)
            # features longer than their number are stored in a basis of their span (isometric_coordinates)
            assert all(f[k].shape == (min(dim, len(f.files)),) and np.all(np.isfinite(f[k])) for k in f.files)
    # the zero-training baseline: one gradient per LoRA, in the basis of their span
    with np.load(out / "features" / "base_gradient.npz", allow_pickle=False) as f:
        assert set(f.files) == {f"train/{i}" for i in ids}
        assert all(f[k].shape == (len(ids),) and np.all(np.isfinite(f[k])) and np.any(f[k]) for k in f.files)
        # a retrained copy saw its main LoRA's images, so it has its gradient; another LoRA has another
        twins = [i for i in ids if i.startswith("retrain-")]
        assert twins
        for twin in twins:
            main = "main-" + twin.removeprefix("retrain-").rsplit("-", 1)[0]
            # the same vector, written in the span basis: equal up to the QR's rounding
            a, b = f[f"train/{twin}"], f[f"train/{main}"]
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.linalg.norm(b))
            other = f[f"train/{ids[0] if ids[0] != main else ids[1]}"]
            assert np.linalg.norm(a - other) > 1e-2 * np.linalg.norm(b)


@pytest.mark.slow
def test_figures_are_drawn_from_the_built_collection(smoke):
    from lorastyle.book.figures import write_figures

    out, _ = smoke
    written = write_figures(out)
    assert set(written) == {*(out / "figures" / "samples").glob("*.png"), out / "figures" / "loss_curves.png"}
    with np.load(out / "images.npz") as data:
        assert data["base"].shape == (get_profile("smoke").samples_per_lora, 32, 32, 3)
    grids = sorted((out / "figures" / "samples").glob("*.png"))
    assert len(grids) == get_profile("smoke").n_artists
    assert all(p.stat().st_size > 5000 for p in grids)
    assert (out / "figures" / "loss_curves.png").stat().st_size > 5000


def test_base_round_trips(tmp_path):
    import torch

    model = tiny_model(seed=3)
    save_base(model, tmp_path / "base.safetensors")
    again = load_base(tmp_path / "base.safetensors")
    a, b = model.unet.state_dict(), again.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(model.label_encoder.table.weight, again.label_encoder.table.weight)


@pytest.mark.slow
def test_experiments_run_on_the_smoke_collection(smoke):
    out, _ = smoke
    coll = load_collection(out)
    table = clustering_table(
        coll, collection=["main", "heldout"], encoders=("efficientnet",), n_components=2, seeds=(0, 1)
    )
    assert set(table["representation"]) == {"LoRA concat", "LoRA delta", "LoRA gram", "EfficientNet-Lite0 (ImageNet)"}
    assert table["ari"].between(-1, 1).all() and table["top1"].between(0, 1).all()


@pytest.mark.slow
def test_book_tables_run_on_the_smoke_collection(smoke):
    from lorastyle.book.experiments import invariance_table, retrieval_table, structure_comparison, subnetwork_curves

    out, _ = smoke
    coll = load_collection(out)
    ret = retrieval_table(coll, encoders=("efficientnet", "magenta"), n_components=2, k=(1,))
    assert set(ret["scenario"]) == {"S1", "S2", "S3", "S4"}
    assert ret["top1"].between(0, 1).all() and ret["map"].between(0, 1).all()
    s2 = ret[ret["scenario"] == "S2"]
    assert set(s2["setting"]) == {"calibrated", "uncalibrated"} and (s2["drift"] > 0).all()
    s4 = ret[ret["scenario"] == "S4"]
    smoke_profile = get_profile("smoke")
    # the sweep of T and w, plus the default setting every LoRA is sampled at, for each of 2 encoders
    assert len(s4) == 2 * (len(smoke_profile.sweep_guidance) * len(smoke_profile.sweep_steps) + 1)
    st = structure_comparison(
        coll, descriptors=("delta",), encoders=("efficientnet",), n_components=2, k=1, n_permutations=9
    )
    assert list(st["null"]) == [False, True] and st["cka"].between(0, 1 + 1e-9).all()
    sub = subnetwork_curves(coll, dimensions=(1, 2))
    assert set(sub["subnetwork"]) >= {"self-attention", "cross-attention", "feed-forward"}
    # feature counts add up: the three layer types partition the tiny model's adapted modules
    n = sub.drop_duplicates("subnetwork").set_index("subnetwork")["n_features"]
    assert n["self-attention"] + n["cross-attention"] + n["feed-forward"] == n["all modules"]
    assert n["down blocks"] + n["mid block"] + n["up blocks"] == n["all modules"]
    inv = invariance_table(coll)
    assert set(inv["collection"]) == {"seed_variant", "rank_variant"}
    # a retrained copy's original is the main LoRA of the same training images (and the same id stem)
    twins = invariance_table(coll, collections=("retrained",))
    assert len(twins) == len(coll.ids("retrained")) * 3
    for row in twins.itertuples():
        assert coll.by_id[row.original]["training_images"] == coll.by_id[row.variant]["training_images"]
        assert row.original == "main-" + row.variant.removeprefix("retrain-").rsplit("-", 1)[0]
    assert not ((inv["descriptor"] == "concat") & (inv["collection"] == "rank_variant")).any()
    assert inv["cos_to_original"].between(-1 - 1e-9, 1 + 1e-9).all()
    # cosines against a brute-force one on the flattened factors (concat's feature space)
    import pandas as pd

    from lorastyle.descriptors import concat_vectors

    for row in pd.concat([inv, twins]).query("descriptor == 'concat'").itertuples():
        v, o = concat_vectors([coll.lora(row.variant), coll.lora(row.original)]).astype(np.float64)
        assert row.cos_to_original == pytest.approx(v @ o / (np.linalg.norm(v) * np.linalg.norm(o)), abs=1e-6)
    n_main = len(coll.ids("main"))
    assert inv["rank_of_original"].between(1, n_main).all() and inv["rank_of_original_pca"].between(1, n_main).all()
    # when the original is the nearest main LoRA, the nearest is of the variant's artist
    first = inv["rank_of_original"] == 1
    assert inv.loc[first, "nearest_same_artist"].all()


def fake_artbench(root, artists_by_style, per_artist, size=40):
    """An ArtBench-10-shaped folder of small random JPEGs: root/train/<style>/<artist>_<title>.jpg."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for style, artists in artists_by_style.items():
        folder = root / "train" / style
        folder.mkdir(parents=True, exist_ok=True)
        for artist in artists:
            base = rng.integers(0, 256, 3)
            for i in range(per_artist):
                img = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{artist}_work-{i}.jpg")


def test_artbench_reader(tmp_path):
    from lorastyle.collection.datasets import artbench_paintings

    fake_artbench(tmp_path, {"baroque": ["rembrandt", "vermeer"], "ukiyo_e": ["hokusai"]}, 3)
    images = artbench_paintings(tmp_path)
    assert len(images) == 9
    assert {(im.artist, im.style) for im in images} == {
        ("rembrandt", "baroque"),
        ("vermeer", "baroque"),
        ("hokusai", "ukiyo_e"),
    }
    (tmp_path / "ArtBench-10.csv").write_text("name,artist\nrembrandt_work-0.jpg,Rembrandt van Rijn\n")
    assert {im.artist for im in artbench_paintings(tmp_path)} >= {"Rembrandt van Rijn", "rembrandt"}
    with pytest.raises(FileNotFoundError, match="Download the 256x256 ImageFolder release"):
        artbench_paintings(tmp_path / "nowhere")


def test_paper_profile_runs_through_the_same_code(tmp_path):
    """ArtBench layout, an SD-1.5-shaped model (tiny random components), CLIP features: the paper's path."""
    from lorastyle.collection.diffusion import stable_diffusion_model
    from lorastyle.collection.features import OpenClipEncoder
    from support import tiny_sd_components

    fake_artbench(tmp_path / "artbench", {"baroque": ["rembrandt", "vermeer"], "ukiyo_e": ["hokusai", "hiroshige"]}, 6)
    profile = get_profile(
        "paper",
        n_artists=3,
        min_works=6,
        genres=None,
        loras_per_artist=2,
        images_per_lora=2,
        variant_artists=1,
        variant_init_seeds=(1,),
        variant_ranks=(2,),
        memorisation_artists=0,
        resolution=32,
        lora_steps=1,
        lora_batch=2,
        samples_per_lora=1,
        sample_steps=1,
        sweep_steps=(1,),
        sweep_guidance=(1.0,),
        sweep_samples=1,
        extra={"dataset": "artbench", "artbench_root": str(tmp_path / "artbench")},
    )
    model = stable_diffusion_model(components=tiny_sd_components(tmp_path))
    log = build_collection(
        profile, tmp_path / "out", model=model, encoders={"clip": OpenClipEncoder.tiny_random()}, progress=False
    )
    with open(tmp_path / "out" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # 3 artists: 2 main + 1 held-out LoRA, each trained twice (retrained, stranger), and 2 variants
    assert log["trained_now"] == len(rows) == 3 * (2 + 1) * 2 + 2
    assert {r["genre"] for r in rows} == {"baroque", "ukiyo_e"}
    main = [r for r in rows if r["collection"] == "main"]
    # each LoRA of an artist on its own paintings, never shared
    for artist in {r["artist"] for r in main}:
        sources = [
            set(s.split("@")[0] for s in r["training_images"].split(";"))
            for r in rows
            if r["artist"] == artist and r["collection"] in ("main", "heldout")
        ]
        assert sum(map(len, sources)) == len(set().union(*sources))
    lora = load_lora(tmp_path / "out" / main[0]["file"])
    assert lora.base == "sd1" and lora.ranks == [profile.rank]


@pytest.mark.slow
def test_chapter_helpers_run_on_the_smoke_collection(smoke):
    from lorastyle.book.experiments import (
        artist_table,
        collection_summary,
        loss_curves,
        map_panels,
        memorisation_table,
        sample_rows,
    )

    out, _ = smoke
    coll = load_collection(out)
    assert coll.encoders == [e for e in ("efficientnet", "vgg_gram", "magenta") if e in get_profile("smoke").encoders]
    summary = collection_summary(coll).set_index("collection")
    assert summary["loras"].sum() == len(coll.rows)
    assert summary.loc["main", "artists"] == get_profile("smoke").n_artists
    artists = artist_table(coll)
    assert len(artists) == len({r["artist"] for r in coll.rows})
    assert (artists["main"] == get_profile("smoke").loras_per_artist).all()
    assert (artists["paintings"] >= 2).all()
    panels = map_panels(coll, descriptors=("concat", "gram"), encoders=("efficientnet",))
    assert len(panels) == 3 and all(p.shape == (len(coll.ids("main")), 2) for p, _, _ in panels.values())
    artist = coll.rows[0]["artist"]
    rows = sample_rows(coll, artist, n=3)
    first = next(i for i in coll.ids("main") if coll.by_id[i]["artist"] == artist)
    # the grid shows the first main LoRA's own training images, as rendered by the build
    np.testing.assert_array_equal(
        rows["stylized LoRA: training images"], np.load(out / "cache" / "train" / f"{first}.npy")[:3]
    )
    assert all(v.dtype == np.uint8 and v.ndim == 4 for v in rows.values())
    curves = loss_curves(coll)
    assert len(curves["base"]["base model"]) == get_profile("smoke").base_steps
    assert set(curves["loras"]) == set(summary.index)
    # the reference level: every LoRA's first loss (B = 0 there), averaged, straight from losses.json
    losses = json.loads((out / "losses.json").read_text())
    firsts = [losses[r["id"]][0] for r in coll.rows if r["id"] in losses]
    ((label, level),) = curves["reference"].items()
    assert level == pytest.approx(np.mean(firsts)) and f"{len(firsts)} LoRAs" in label
    mem = memorisation_table(coll)
    assert set(mem["collection"]) == {"memorisation", "main"}
    assert (mem["d_own"] >= 0).all() and np.allclose(mem["ratio"], mem["d_own"] / mem["d_others"])


def test_images_file_stores_a_shared_training_set_once(tmp_path):
    from lorastyle.collection.build import read_images, write_images

    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8) for _ in range(2))
    train = {"main-x-0": a, "retrain-x-0-1": a.copy(), "main-y-0": b, "stranger-y": b.copy(), "other": a[:2]}
    gen = {"main-x-0": b[:2], "main-y-0": a[:2]}
    write_images(tmp_path / "images.npz", train, gen, a[:1])
    with np.load(tmp_path / "images.npz") as f:
        stored = {k for k in f.files if k.startswith("train/")}
    assert stored == {"train/main-x-0", "train/main-y-0", "train/other"}  # first id of each distinct set
    back = read_images(tmp_path / "images.npz")
    assert set(back) == set(train) and all(np.array_equal(back[k], v) for k, v in train.items())
    assert set(read_images(tmp_path / "images.npz", "gen")) == set(gen)
    assert np.array_equal(read_images(tmp_path / "images.npz", ids=["stranger-y"])["stranger-y"], b)
    with pytest.raises(KeyError, match="no gen images for stranger-y"):
        read_images(tmp_path / "images.npz", "gen", ids=["stranger-y"])


@pytest.mark.slow
def test_gradients_in_two_processes_equal_one(smoke, tmp_path):
    """The zero-training control computed in two worker processes equals the one-process result."""
    import shutil

    from lorastyle.collection.build import write_gradient_features

    out, _ = smoke
    copy = tmp_path / "copy"
    (copy / "features").mkdir(parents=True)
    for name in ("base.safetensors", "images.npz"):
        shutil.copy(out / name, copy / name)
    one = np.load(write_gradient_features(copy, draws=6, jobs=1, progress=False))
    one = {k: one[k] for k in one.files}
    two = np.load(write_gradient_features(copy, draws=6, jobs=2, progress=False))
    assert set(two.files) == set(one)
    # each vector in the basis of the span: compare the Gram matrices (basis-free)
    keys = sorted(one)
    g1 = np.array([[one[a] @ one[b] for b in keys] for a in keys])
    g2 = np.array([[two[a] @ two[b] for b in keys] for a in keys])
    np.testing.assert_allclose(g2, g1, rtol=1e-4, atol=1e-6 * np.abs(g1).max())
