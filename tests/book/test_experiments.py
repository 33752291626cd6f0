"""Book helpers of lorastyle.book.experiments against independent references (scipy, brute force)."""

import csv

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from lorastyle.book.experiments import (
    _nearest_distances,
    colour_statistics,
    downsampled_pixels,
    feature_matrix,
    load_collection,
    memorisation_table,
    nearest_neighbour_chance,
    real_lora_similarity,
    restricted_top1,
    wilson_interval,
)
from lorastyle.io.formats import save_lora


@pytest.mark.parametrize("k,n", [(0, 10), (7, 10), (10, 10), (93, 108), (1, 3)])
def test_wilson_interval_matches_scipy(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    np.testing.assert_allclose(wilson_interval(k / n, n), (ci.low, ci.high), atol=1e-6)


def test_nearest_neighbour_chance_is_the_mean_over_queries_of_same_class_neighbours():
    y = np.array(list("aaabbbbcdd"))
    brute = np.mean([np.mean([y[j] == y[i] for j in range(len(y)) if j != i]) for i in range(len(y))])
    assert nearest_neighbour_chance(y) == pytest.approx(brute)


def test_nearest_distances_brute_force():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (4, 5, 5, 3)), rng.integers(0, 256, (6, 5, 5, 3))
    brute = [min(np.sqrt(np.mean((x.astype(float) - z) ** 2)) for z in b) for x in a]
    np.testing.assert_allclose(_nearest_distances(a, b), brute, rtol=1e-9)


def _fake_collection(root, train, gen, collection="memorisation", sources=None):
    sources = sources or {}
    rows = [
        {
            "file": f"{i}.safetensors",
            "id": i,
            "artist": f"artist {i}",
            "genre": "baroque",
            "collection": collection,
            "n_images": str(len(train[i])),
            "training_images": sources.get(i, f"src-{i}"),
        }
        for i in train
    ]
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    np.savez(
        root / "images.npz", **{f"train/{i}": v for i, v in train.items()}, **{f"gen/{i}": v for i, v in gen.items()}
    )
    return load_collection(root)


def test_memorisation_table_sees_a_copying_lora(tmp_path):
    rng = np.random.default_rng(1)
    train = {i: rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8) for i in ("a", "b", "c")}
    gen = {
        "a": train["a"][[0, 1, 2, 0]],  # a copies its training images exactly
        "b": rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8),
        "c": rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8),
    }
    table = _fake_collection(tmp_path, train, gen)
    mem = memorisation_table(table, collections=("memorisation",)).set_index("id")
    assert mem.loc["a", "d_own"] == 0 and mem.loc["a", "ratio"] == 0
    assert mem.loc["b", "ratio"] > 0.5 and mem.loc["c", "ratio"] > 0.5  # noise is as far from its own as from others


def test_memorisation_table_keeps_loras_with_shared_training_images_out_of_the_others(tmp_path):
    rng = np.random.default_rng(3)
    train = {i: rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8) for i in ("a", "b", "c")}
    train["b"][:2] = train["a"][:2]  # b saw two of a's images
    gen = {i: train["a"][[0, 1]] for i in train}  # everyone generates a's first two images
    sources = {"a": "x@0;y@1;z@2", "b": "x@0;y@1;w@5", "c": "u@0;v@1;t@2"}
    mem = memorisation_table(
        _fake_collection(tmp_path, train, gen, sources=sources), collections=("memorisation",)
    ).set_index("id")
    assert mem.loc["a", "d_own"] == 0 and mem.loc["a", "d_others"] > 0  # b is not among a's others
    assert mem.loc["c", "d_all_others"] == 0  # for c, a and b are others and hold the copied images


def test_memorisation_reference_sets_have_the_size_of_the_own_set(tmp_path):
    # Pure noise everywhere: no LoRA copies. Against all 9 other images the nearest is nearer than
    # against the own 3, which would read as "farther from its own images"; against 3 others drawn
    # at random the two sides are alike.
    rng = np.random.default_rng(7)
    train = {i: rng.integers(0, 256, (3, 6, 6, 3), dtype=np.uint8) for i in "abcd"}
    gen = {i: rng.integers(0, 256, (8, 6, 6, 3), dtype=np.uint8) for i in "abcd"}
    mem = memorisation_table(_fake_collection(tmp_path, train, gen), collections=("memorisation",), n_draws=200)
    assert (mem.d_all_others < mem.d_others).all()
    assert mem.ratio.mean() == pytest.approx(1.0, abs=0.02)
    brute = [
        np.mean(
            [
                min(np.sqrt(np.mean((g.astype(float) - t) ** 2)) for j in "abcd" if j != i for t in train[j])
                for g in gen[i]
            ]
        )
        for i in "abcd"
    ]
    np.testing.assert_allclose(mem.d_all_others, brute, rtol=1e-9)


def test_real_lora_similarity_sees_through_the_gauge_and_across_ranks(tmp_path):
    rng = np.random.default_rng(2)
    names = [
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    ]
    shapes = {names[0]: (16, 16), names[1]: (16, 24)}
    base = {m: (rng.standard_normal((2, n)), rng.standard_normal((o, 2))) for m, (o, n) in shapes.items()}
    G = rng.standard_normal((2, 2)) + 3 * np.eye(2)
    gauge = {m: (G @ A, B @ np.linalg.inv(G)) for m, (A, B) in base.items()}
    # the same update written at rank 4 (zero-padded factors): identical delta-W
    padded = {
        m: (np.vstack([A, np.zeros((2, A.shape[1]))]), np.hstack([B, np.zeros((B.shape[0], 2))]))
        for m, (A, B) in base.items()
    }
    other = {m: (rng.standard_normal((2, n)), rng.standard_normal((o, 2))) for m, (o, n) in shapes.items()}
    # an extra module only one file adapts: dropped, since not every file has it
    other["unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v"] = (
        rng.standard_normal((2, 8)),
        rng.standard_normal((8, 2)),
    )
    for name, f, alpha in (
        ("a", base, 2.0),
        ("b_gauge", gauge, 2.0),
        ("c_rank4", padded, 4.0),
        ("d_other", other, 2.0),
    ):
        save_lora(tmp_path / f"{name}.safetensors", f, alpha=alpha, base="sd1")
    files, summary, cos = real_lora_similarity(tmp_path)
    assert files == ["a", "b_gauge", "c_rank4", "d_other"]
    assert list(summary["modules"]) == [2, 2, 2, 2]
    assert cos["delta"].loc["a", "b_gauge"] == pytest.approx(1) and cos["delta"].loc["a", "c_rank4"] == pytest.approx(1)
    assert cos["gram"].loc["a", "c_rank4"] == pytest.approx(1)
    assert cos["concat"].loc["a", "b_gauge"] < 0.99  # the gauge moves the paper's descriptor
    assert np.isnan(cos["concat"].loc["a", "c_rank4"])  # and it cannot compare ranks
    assert abs(cos["delta"].loc["a", "d_other"]) < 0.9
    # reference: delta cosine from materialised delta-W on the shared modules
    dw = lambda f: np.concatenate([(B @ A).ravel() for m, (A, B) in sorted(f.items()) if m in shapes])
    x, y = dw(base), dw(other)
    assert cos["delta"].loc["a", "d_other"] == pytest.approx(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def test_isometric_coordinates_keep_every_inner_product_and_the_pca():
    from sklearn.decomposition import PCA

    from lorastyle.collection.build import isometric_coordinates

    rng = np.random.default_rng(4)
    raw = {f"train/{i}": rng.standard_normal(500).astype(np.float32) for i in range(30)}
    compact = isometric_coordinates(raw)
    assert set(compact) == set(raw) and compact["train/0"].shape == (30,)
    keys = sorted(raw)
    X = np.stack([raw[k] for k in keys]).astype(np.float64)
    C = np.stack([compact[k] for k in keys]).astype(np.float64)
    np.testing.assert_allclose(C @ C.T, X @ X.T, rtol=1e-5, atol=1e-3)
    zx, zc = PCA(5).fit_transform(X), PCA(5).fit_transform(C)
    np.testing.assert_allclose(np.abs(zc), np.abs(zx), rtol=1e-4, atol=1e-4)  # equal up to sign
    short = {"a": np.ones(3), "b": np.zeros(3), "c": np.arange(3.0), "d": np.ones(3)}
    assert isometric_coordinates(short) is short  # nothing to gain: returned as given


def test_restricted_top1_brute_force():
    rng = np.random.default_rng(3)
    Z = rng.normal(size=(12, 4))
    y = np.array(list("aaabbbccccdd"))
    allowed = rng.random((12, 12)) < 0.6
    queried, hit, chance, nearest = restricted_top1(Z, y, allowed)
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    for i in range(12):
        cands = [j for j in range(12) if j != i and allowed[i, j]]
        assert queried[i] == any(y[j] == y[i] for j in cands)
        if queried[i]:
            best = max(cands, key=lambda j: cos(Z[i], Z[j]))
            assert hit[i] == (y[best] == y[i]) and nearest[i] == best
            assert chance[i] == pytest.approx(np.mean([y[j] == y[i] for j in cands]))
        else:
            assert not hit[i] and chance[i] == 0


def test_style_reference_table_separates_same_painting_from_other_paintings(tmp_path, monkeypatch):
    # Four LoRAs of artist x: two styled by painting p1 (identical features), two by p2; artist z by q.
    # Every nearest neighbour shares its painting; across paintings x is found only if p1 and p2 look alike.
    sources = {
        "x1": "c1@0,0,1,1~p1",
        "x2": "c2@0,0,1,1~p1",
        "x3": "c3@0,0,1,1~p2",
        "x4": "c4@0,0,1,1~p2",
        "z1": "c5@0,0,1,1~q",
        "z2": "c6@0,0,1,1~q2",
    }
    train = {i: np.zeros((1, 2, 2, 3), np.uint8) for i in sources}
    coll = _fake_collection(tmp_path, train, train, collection="main", sources=sources)
    for r in coll.rows:
        r["artist"] = r["id"][0]
    assert coll.source_paintings("x1") == {"p1"}
    feats = {
        "x1": [1, 0, 0],
        "x2": [1, 0.01, 0],
        "x3": [0, 1, 0],
        "x4": [0.01, 1, 0],
        "z1": [0.7, 0.05, 0.7],
        "z2": [0.72, 0, 0.7],
    }
    import lorastyle.book.experiments as ex

    monkeypatch.setattr(ex, "feature_embedding", lambda c, ids, e, n_components: np.array([feats[i] for i in ids]))
    row = ex.style_reference_table(coll, descriptors=(), encoders=("toy",)).iloc[0]
    assert row.top1 == 1.0 and row.same_painting == pytest.approx(4 / 6)
    # x1, x2 (p1) may only retrieve x3, x4, z1, z2: nearest is z1/z2 (cosine ~0.7 against 0.0): misses;
    # x3, x4 likewise reach z (0.7 * 0.05 ...) or x1/x2 (~0.01): z wins; z1 and z2 find each other.
    assert row.cross_n == 6 and row.cross_top1 == pytest.approx(2 / 6)
    assert row.cross_low < row.cross_top1 < row.cross_high


def test_source_paintings_are_styles_or_else_the_cropped_painting(tmp_path):
    # as lorastyle.collection.build writes them: content@box~style, the style empty for real-pixel crops
    sources = {"stylized": "photo-cat@0,0,9,9~met-1;met-7@1,1,5,5~met-2", "real": "met-3@0,0,9,9~;met-3@2,2,8,8~"}
    train = {i: np.zeros((1, 2, 2, 3), np.uint8) for i in sources}
    coll = _fake_collection(tmp_path, train, train, collection="main", sources=sources)
    assert coll.source_paintings("stylized") == {"met-1", "met-2"}
    assert coll.source_paintings("real") == {"met-3"}


def test_colour_statistics_by_hand():
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    stats = colour_statistics(images, bins=4)
    assert stats.shape == (6 + 12,)
    for c in range(3):
        values = [images[n, i, j, c] / 255 for n in range(3) for i in range(4) for j in range(4)]
        mean = sum(values) / len(values)
        assert stats[c] == pytest.approx(mean)
        assert stats[3 + c] == pytest.approx((sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5)
        counts = [sum(1 for v in values if b / 4 <= v < (b + 1) / 4 or (b == 3 and v == 1.0)) for b in range(4)]
        np.testing.assert_allclose(stats[6 + 4 * c : 10 + 4 * c], np.array(counts) / len(values))


def test_downsampled_pixels_by_hand():
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (2, 4, 6, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="blocks"):
        downsampled_pixels(images, size=4)
    small = downsampled_pixels(images, size=2).reshape(2, 2, 3)
    for bi in range(2):
        for bj in range(2):
            block = images[:, 2 * bi : 2 * bi + 2, 3 * bj : 3 * bj + 3, :] / 255
            np.testing.assert_allclose(small[bi, bj], block.reshape(-1, 3).mean(axis=0))


def test_paired_top1_table_counts_the_discordant_queries(tmp_path, monkeypatch):
    # Three artists of four LoRAs, each pair of them styled by one painting. "good" finds every artist;
    # "bad" puts x3 among artist z and y1 among artist x, so it misses those two queries.
    ids = [f"{a}{k}" for a in "xyz" for k in range(1, 5)]
    sources = {i: f"c{i}@0,0,1,1~{i[0]}{(int(i[1]) + 1) // 2}" for i in ids}
    train = {i: np.zeros((1, 2, 2, 3), np.uint8) for i in ids}
    coll = _fake_collection(tmp_path, train, train, collection="main", sources=sources)
    for r in coll.rows:
        r["artist"] = r["id"][0]
    base = {"x": [1, 0, 0], "y": [0, 1, 0], "z": [0, 0, 1]}
    rng = np.random.default_rng(0)
    good = {i: np.array(base[i[0]]) + 0.05 * rng.random(3) for i in ids}
    bad = dict(good) | {"x3": np.array([0.1, 0, 1]), "y1": np.array([1, 0.1, 0])}
    import lorastyle.book.experiments as ex

    feats = {"good": good, "bad": bad}
    monkeypatch.setattr(ex, "feature_embedding", lambda c, ids, e, n_components: np.array([feats[e][i] for i in ids]))
    monkeypatch.setitem(ex.ENCODER_NAMES, "good", "good")
    monkeypatch.setitem(ex.ENCODER_NAMES, "bad", "bad")
    table = ex.paired_top1_table(coll, reference="good", descriptors=(), encoders=("good", "bad"), n_resamples=500)
    good_row, bad_row = table.set_index("representation").loc[["good", "bad"]].itertuples()
    assert good_row.n == bad_row.n == 12 and good_row.top1 == 1.0
    _, bad_hits, _, _ = restricted_top1(np.array([bad[i] for i in ids]), coll.labels(ids, "artist"), np.ones((12, 12)))
    assert bad_row.top1 == pytest.approx(bad_hits.mean()) and bad_row.only_this == 0
    assert bad_row.only_reference == int((~bad_hits).sum()) == 2
    assert bad_row.p_mcnemar == pytest.approx(binomtest(0, bad_row.only_reference, 0.5).pvalue)
    assert bad_row.diff == pytest.approx(bad_hits.mean() - 1) and bad_row.diff_low <= bad_row.diff <= bad_row.diff_high
    assert np.isnan(good_row.p_mcnemar)
    # across paintings: the LoRA of one's own painting is no candidate, the three others of the artist stay
    across = ex.paired_top1_table(coll, reference="good", descriptors=(), encoders=("good",), across_paintings=True)
    assert across.iloc[0].n == 12 and across.iloc[0].chance == pytest.approx(2 / 10)
    with pytest.raises(ValueError, match="reference"):
        ex.paired_top1_table(coll, reference="LoRA concat", descriptors=(), encoders=("good",))


def test_heldout_paired_table_scores_unseen_queries_as_query_scores_does(tmp_path, monkeypatch):
    # Six main LoRAs of three artists and six held-out queries; features "a" and "b" place the queries near
    # their artist's main LoRAs, "b" with two queries moved to another artist.
    import lorastyle.book.experiments as ex
    from lorastyle.metrics import query_scores

    main = [f"{a}{k}" for a in "xyz" for k in range(2)]
    held = [f"h{a}{k}" for a in "xyz" for k in range(2)]
    train = {i: np.zeros((1, 2, 2, 3), np.uint8) for i in main + held}
    coll = _fake_collection(tmp_path, train, train, collection="main")
    for r in coll.rows:
        r["artist"] = r["id"][-2]
        r["collection"] = "heldout" if r["id"].startswith("h") else "main"
    rng = np.random.default_rng(2)
    base = {"x": [1, 0, 0], "y": [0, 1, 0], "z": [0, 0, 1]}
    a = {i: np.array(base[i[-2]]) + 0.1 * rng.random(3) for i in main + held}
    b = dict(a) | {"hx0": np.array([0, 1, 0.1]), "hy1": np.array([0.1, 0, 1])}
    feats = {"a": a, "b": b}
    monkeypatch.setattr(ex, "feature_matrix", lambda c, ids, e, *args: np.array([feats[e][i] for i in ids]))
    monkeypatch.setitem(ex.ENCODER_NAMES, "a", "a")
    monkeypatch.setitem(ex.ENCODER_NAMES, "b", "b")
    table = ex.heldout_paired_table(coll, descriptors=(), encoders=("a", "b"), reference="a", n_resamples=300)
    table = table.set_index("representation")
    y_main, y_held = coll.labels(coll.ids("main"), "artist"), coll.labels(coll.ids("heldout"), "artist")
    for e in ("a", "b"):
        X_main = np.array([feats[e][i] for i in coll.ids("main")])
        X_held = np.array([feats[e][i] for i in coll.ids("heldout")])
        assert table.loc[e, "top1"] == pytest.approx(query_scores(X_main, y_main, X_held, y_held, k=(1,))["top1"])
    assert (table.scenario == "S3").all() and (table.n == 6).all()
    assert table.loc["a", "top1"] == 1.0 and table.loc["b", "top1"] == pytest.approx(4 / 6)
    assert table.loc["b", "only_reference"] == 2 and table.loc["b", "only_this"] == 0
    assert table.loc["b", "p_mcnemar"] == pytest.approx(binomtest(0, 2, 0.5).pvalue)
    assert table.loc["a", "chance"] == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="reference"):
        ex.heldout_paired_table(coll, descriptors=(), encoders=("a",))


def test_representation_kind_names_weights_encoders_and_baselines():
    from lorastyle.book.experiments import ENCODER_NAMES, representation_kind

    assert representation_kind("LoRA gram") == "weights"
    assert representation_kind(ENCODER_NAMES["colour"]) == representation_kind(ENCODER_NAMES["pixels"]) == "baseline"
    assert representation_kind(ENCODER_NAMES["vgg_gram"]) == "image encoder"
    assert representation_kind(ENCODER_NAMES["base_gradient"]) == "baseline"


def test_model_baselines_are_baselines_not_encoders(tmp_path):
    rng = np.random.default_rng(0)
    train = {i: rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8) for i in "ab"}
    coll = _fake_collection(tmp_path, train, train)
    (tmp_path / "features").mkdir()
    assert coll.encoders == [] and coll.baselines == ["colour", "pixels"]
    for name in ("magenta", "base_gradient"):
        np.savez(tmp_path / "features" / f"{name}.npz", **{f"train/{i}": rng.standard_normal(4) for i in "ab"})
    assert coll.encoders == ["magenta"] and coll.baselines == ["colour", "pixels", "base_gradient"]
    with np.load(tmp_path / "features" / "base_gradient.npz") as f:
        np.testing.assert_array_equal(
            feature_matrix(coll, ["b", "a"], "base_gradient"), np.stack([f["train/b"], f["train/a"]])
        )


def test_structure_references_null_keeps_each_artist(tmp_path, monkeypatch):
    # Image features equal within an artist: a permutation inside artists leaves them as they are,
    # so the within-artist null scores exactly what the unpermuted pair scores.
    from lorastyle.metrics import linear_cka

    ids = [f"{a}{k}" for a in "xyzw" for k in range(3)]
    train = {i: np.zeros((1, 2, 2, 3), np.uint8) for i in ids}
    coll = _fake_collection(tmp_path, train, train, collection="main")
    for r in coll.rows:
        r["artist"] = r["id"][0]
    rng = np.random.default_rng(1)
    per_artist = {a: rng.normal(size=4) for a in "xyzw"}
    lora = {i: rng.normal(size=4) for i in ids}
    import lorastyle.book.experiments as ex

    def features(c, ids, e, n_components):
        if e == "colour":
            return np.array([lora[i] + 0.1 * rng.normal(size=4) for i in ids])
        return np.array([per_artist[i[0]] + (0.5 if e == "b" else 0.0) * lora[i] for i in ids])

    monkeypatch.setattr(ex, "feature_embedding", features)
    monkeypatch.setattr(ex, "lora_embedding", lambda c, ids, d, n_components: np.array([lora[i] for i in ids]))
    table = ex.structure_references(coll, encoders=("a", "b"), n_permutations=9)
    assert list(table.kind) == ["image vs image", "within-artist null", "within-artist null", "baseline"]
    Z = np.array([lora[i] for i in ids])
    F = features(coll, ids, "a", 16)
    null_a = table[(table.kind == "within-artist null") & (table.b == "a")].iloc[0]
    assert null_a.cka == pytest.approx(linear_cka(Z, F))
    assert table.iloc[0].cka == pytest.approx(linear_cka(F, features(coll, ids, "b", 16)))


def _lora_collection(root, factors_by_id):
    """A main collection of LoRA files, the artist being each id's first letter."""
    rows = []
    for i, factors in factors_by_id.items():
        save_lora(root / f"{i}.safetensors", factors, alpha=2.0, layout="kohya", base="sd15")
        rows.append({"id": i, "file": f"{i}.safetensors", "artist": i[0], "genre": "g", "collection": "main"})
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return load_collection(root)


def test_random_module_control_draws_the_first_sets_that_reach_the_size(tmp_path):
    import lorastyle.book.experiments as ex
    from lorastyle.descriptors import concat_vectors

    rng = np.random.default_rng(4)
    block = "unet.down_blocks.0.attentions.0.transformer_blocks.0"
    shapes = {
        f"{block}.ff.net.0.proj": (16, 8),
        f"{block}.ff.net.2": (8, 16),
        f"{block}.attn1.to_q": (8, 8),
        f"{block}.attn1.to_k": (8, 8),
        f"{block}.attn2.to_v": (8, 12),
        f"{block}.attn2.to_out.0": (8, 8),
    }
    ids = [f"{a}{k}" for a in "xyz" for k in range(2)]
    factors = {
        i: {m: (rng.standard_normal((2, n)), rng.standard_normal((o, 2))) for m, (o, n) in shapes.items()} for i in ids
    }
    coll = _lora_collection(tmp_path, factors)
    table = ex.random_module_control(coll, dimensions=2, n_draws=5)
    target = concat_vectors([coll.lora("x0")], select=ex.SUBNETWORKS["feed-forward"]).shape[1]
    size = {m: 2 * (o + n) for m, (o, n) in shapes.items()}  # rank 2: A is 2 x n, B is o x 2
    smallest = min(size.values())
    assert len(table) == 5
    assert (table.n_features >= target).all()
    # a set stops at the first module that reaches the size: it overshoots by less than its largest module
    assert (table.n_features < target + max(size.values())).all() and (table.n_features >= smallest).all()
    assert table.top1.between(0, 1).all()


def test_subnetwork_paired_table_compares_each_subnetwork_with_all_modules_on_the_same_queries(tmp_path):
    # Feed-forward factors carry the artist (one large direction per artist), attention factors are small noise:
    # feed-forward and all modules find every artist, self-attention misses some, and those misses are the
    # discordant queries of its McNemar test against all modules.
    import lorastyle.book.experiments as ex

    rng = np.random.default_rng(6)
    block = "unet.down_blocks.0.attentions.0.transformer_blocks.0"
    shapes = {f"{block}.ff.net.2": (8, 16), f"{block}.attn1.to_q": (8, 8), f"{block}.attn1.to_k": (8, 8)}
    ids = [f"{a}{k}" for a in "xyz" for k in range(3)]
    style = {a: (rng.standard_normal((2, 16)), rng.standard_normal((8, 2))) for a in "xyz"}
    factors = {}
    for i in ids:
        A, B = style[i[0]]
        factors[i] = {
            f"{block}.ff.net.2": (
                10 * A + 0.1 * rng.standard_normal(A.shape),
                10 * B + 0.1 * rng.standard_normal(B.shape),
            ),
            **{
                m: (rng.standard_normal((2, n)), rng.standard_normal((o, 2)))
                for m, (o, n) in shapes.items()
                if "attn" in m
            },
        }
    coll = _lora_collection(tmp_path, factors)
    subnetworks = {k: ex.SUBNETWORKS[k] for k in ("all modules", "self-attention", "feed-forward")}
    table = ex.subnetwork_paired_table(coll, dimensions=3, subnetworks=subnetworks, n_resamples=200)
    table = table.set_index("subnetwork")
    assert (table.n == 9).all()
    assert table.loc["all modules", "top1"] == table.loc["feed-forward", "top1"] == 1.0
    assert np.isnan(table.loc["all modules", "p_mcnemar"]) and table.loc["feed-forward", "p_mcnemar"] == 1.0
    attn = table.loc["self-attention"]
    misses = round(9 * (1 - attn.top1))
    assert misses >= 1 and attn.only_reference == misses and attn.only_this == 0
    assert attn.p_mcnemar == pytest.approx(binomtest(0, misses, 0.5).pvalue)
    assert attn["diff"] == pytest.approx(attn.top1 - 1.0) and attn.diff_low <= attn["diff"] <= attn.diff_high
    with pytest.raises(ValueError, match="reference"):
        ex.subnetwork_paired_table(coll, reference="nothing", subnetworks=subnetworks)


def test_map_neighbour_table_by_hand():
    from lorastyle.book.experiments import map_neighbour_table

    points = np.array([[0, 0], [0, 1], [5, 5], [5, 6], [0, 2], [9, 9]], dtype=float)
    artists = np.array(list("aabbcc"))
    genres = np.array(list("xxyyxy"))
    row = map_neighbour_table({"toy": (points, artists, genres)}).iloc[0]
    # nearest others: 0->1 (a), 1->0 (a), 2->3 (b), 3->2 (b), 4->1 (a, not c), 5->3 (b, not c)
    assert row.same_artist == pytest.approx(4 / 6)
    assert row.same_genre == pytest.approx(1.0)  # genres x x y y x y: every nearest other shares its genre
    assert row.low < row.same_artist < row.high and row.chance == pytest.approx(1 / 5)


def test_factor_split_finds_the_style_in_the_factor_that_carries_it(tmp_path):
    # A carries the artist (a shared direction plus a little noise), B is pure noise.
    import lorastyle.book.experiments as ex

    rng = np.random.default_rng(8)
    block = "unet.down_blocks.0.attentions.0.transformer_blocks.0"
    names = [f"{block}.attn1.to_q", f"{block}.attn2.to_k"]
    style = {a: rng.standard_normal((2, 64)) for a in "wxyz"}
    factors = {
        f"{a}{k}": {m: (style[a] + 0.1 * rng.standard_normal((2, 64)), rng.standard_normal((64, 2))) for m in names}
        for a in "wxyz"
        for k in range(3)
    }
    table = ex.factor_split_table(_lora_collection(tmp_path, factors), n_components=4).set_index("split")
    assert table.loc["A only", "top1"] == 1.0 and table.loc["B only", "top1"] < 0.6
    assert table.loc["A only", "n_features"] == 2 * 2 * 64 and table.loc["A and B", "n_features"] == 4 * 2 * 64
    # the split the style is in answers every query concat answers
    assert table.loc["A only", "only_concat"] == 0 and np.isnan(table.loc["A and B", "p_mcnemar"])


def test_real_lora_similarity_needs_two_files(tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        real_lora_similarity(tmp_path)


def test_memorisation_table_says_when_there_is_nothing_to_compare_with(tmp_path):
    rng = np.random.default_rng(2)
    train = {"a": rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)}
    with pytest.raises(ValueError, match="fewer than 3 training images of other LoRAs"):
        memorisation_table(_fake_collection(tmp_path, train, train), collections=("memorisation",))


def test_clustering_interval_counts_only_queries_that_can_succeed(tmp_path, monkeypatch):
    # artist z has one LoRA: it cannot be answered, and retrieval_scores leaves it out of top-1
    import lorastyle.book.experiments as ex

    ids = ["x1", "x2", "y1", "y2", "z1"]
    train = {i: np.zeros((1, 2, 2, 3), np.uint8) for i in ids}
    coll = _fake_collection(tmp_path, train, train, collection="main")
    for r in coll.rows:
        r["artist"] = r["id"][0]
    rng = np.random.default_rng(0)
    feats = {i: rng.normal(size=3) for i in ids}
    monkeypatch.setattr(ex, "feature_embedding", lambda c, ids, e, n_components: np.array([feats[i] for i in ids]))
    row = ex.clustering_table(coll, descriptors=(), encoders=("toy",), levels=("artist",), seeds=(0,)).iloc[0]
    assert row.n_queries == 4
    assert (row.top1_low, row.top1_high) == pytest.approx(wilson_interval(row.top1, 4))


def test_memorisation_summary_matches_scipy():
    from scipy import stats

    from lorastyle.book.experiments import memorisation_summary

    rng = np.random.default_rng(0)
    few, many = rng.normal(1.3, 0.2, 9), rng.normal(1.45, 0.3, 40)
    mem = pd.DataFrame(
        {
            "collection": ["memorisation"] * 9 + ["main"] * 40,
            "ratio": np.r_[few, many],
            "d_own": rng.random(49),
            "d_others": rng.random(49),
        }
    )
    summary = memorisation_summary(mem).set_index("collection")
    for name, r in (("memorisation", few), ("main", many)):
        low, high = stats.t.interval(0.95, len(r) - 1, loc=r.mean(), scale=stats.sem(r))
        assert summary.loc[name, "ratio_low"] == pytest.approx(low)
        assert summary.loc[name, "ratio_high"] == pytest.approx(high)
        assert summary.loc[name, "n"] == len(r)
    assert summary.loc["memorisation", "p_vs_reference"] == pytest.approx(stats.mannwhitneyu(few, many).pvalue)
    assert np.isnan(summary.loc["main", "p_vs_reference"])


def test_heldout_paired_table_takes_other_queries_and_generated_images(tmp_path, monkeypatch):
    # Strangers' queries (another collection) and S4 rows, whose generated-image features all point at artist x.
    import lorastyle.book.experiments as ex

    main = [f"{a}{k}" for a in "xyz" for k in range(2)]
    held = [f"s{a}" for a in "xyz"]
    train = {i: np.zeros((1, 2, 2, 3), np.uint8) for i in main + held}
    coll = _fake_collection(tmp_path, train, train, collection="main")
    for r in coll.rows:
        r["artist"] = r["id"][-2] if r["id"] in main else r["id"][-1]
        r["collection"] = "heldout_stranger" if r["id"] in held else "main"
    base = {"x": [1.0, 0, 0], "y": [0, 1.0, 0], "z": [0, 0, 1.0]}

    def features(c, ids, e, source="train"):
        artist = lambda i: i[-2] if i in main else i[-1]  # noqa: E731
        if source == "train":
            return np.array([base[artist(i)] for i in ids])
        return np.array([base["x"] if i in held else base[artist(i)] for i in ids])

    monkeypatch.setattr(ex, "feature_matrix", features)
    monkeypatch.setattr(ex, "_default_setting", lambda c, e: "T25-w3-k6")
    monkeypatch.setitem(ex.ENCODER_NAMES, "a", "a")
    table = ex.heldout_paired_table(
        coll, descriptors=(), encoders=("a",), reference="a", queries="heldout_stranger", generated=True
    ).set_index("representation")
    assert list(table.scenario) == ["S3", "S4"] and (table.n == 3).all()
    assert table.loc["a", "top1"] == 1.0
    assert table.loc["a, generated", "top1"] == pytest.approx(1 / 3)  # only the query of artist x
    assert table.loc["a, generated", "only_reference"] == 2
    with pytest.raises(ValueError, match="no 'heldout' LoRAs"):
        ex.heldout_paired_table(coll, descriptors=(), encoders=("a",), reference="a")


def test_pendants_and_panels_of_one_work_count_as_one_painting(tmp_path):
    """Real-pixel LoRAs on Jacometto's two pendant portraits share a painting; on two unrelated paintings not."""
    from lorastyle.book.experiments import _share_a_painting

    train = {i: np.zeros((2, 4, 4, 3), np.uint8) for i in ("a", "b", "c")}
    sources = {"a": "met-459027@0,0,4,4~", "b": "met-459028@0,0,4,4~", "c": "met-436535@0,0,4,4~"}
    coll = _fake_collection(tmp_path, train, {}, collection="real", sources=sources)
    assert coll.source_paintings("a") == coll.source_paintings("b") == frozenset({"met-459027"})
    assert coll.source_paintings("c") == frozenset({"met-436535"})
    shares = _share_a_painting(coll, ["a", "b", "c"])
    assert shares[0, 1] and shares[1, 0] and not shares[0, 2] and not shares[1, 2]


def test_procrustes_aligned_undoes_a_rotation_and_scale():
    """A map rotated by 30 degrees, scaled by 3 and shifted aligns back onto the original (disparity 0)."""
    from scipy.spatial import procrustes

    from lorastyle.book.experiments import procrustes_aligned

    rng = np.random.default_rng(0)
    a = rng.standard_normal((20, 2))
    t = np.pi / 6
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    ref, aligned, disparity = procrustes_aligned(a, 3 * a @ rot + 5)
    np.testing.assert_allclose(aligned, ref, atol=1e-10)
    assert disparity == pytest.approx(0, abs=1e-12)
    noisy = a + 0.3 * rng.standard_normal(a.shape)
    assert procrustes_aligned(a, noisy)[2] == pytest.approx(procrustes(a, noisy)[2])
    with pytest.raises(ValueError, match="same items"):
        procrustes_aligned(a, a[:5])
