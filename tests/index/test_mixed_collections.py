"""Mixed collections: base families, ranks, alphas, dtypes and module sets in one folder.

Nothing incomparable is compared silently: a file that cannot share the
descriptor space of the majority is skipped with a reason that names what
differs and a file of the majority; ``concat``'s blindness to alpha is a
warning. What can be compared is: ``delta`` and ``gram`` compare LoRAs of
different ranks, alphas and dtypes, and two files with the same delta-W (rank 4
and rank 8, different alphas) have kernel similarity 1.
"""

import warnings

import numpy as np
import pytest

from lorastyle.descriptors import IncomparableLorasError, check_comparable, descriptor_kernel
from lorastyle.errors import LoraFormatError
from lorastyle.index import build_index, read_record
from lorastyle.io.formats import load_lora, save_lora
from tools.fuzz.fuzzing import _t, encode

P = "unet.down_blocks.0.attentions.0.transformer_blocks.0."
SHAPES = {P + "attn1.to_q": (16, 16), P + "attn2.to_k": (16, 12), P + "ff.net.0.proj": (32, 16)}


def factors(rng, rank, shapes=SHAPES):
    return {
        n: (
            (0.3 * rng.standard_normal((rank, i))).astype(np.float32),
            (0.3 * rng.standard_normal((o, rank))).astype(np.float32),
        )
        for n, (o, i) in shapes.items()
    }


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Six rank-4 files and one of each kind of difference; returns {label: path}."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    files = {}

    def save(label, fac, alpha, base="tiny", dtype=np.float32):
        files[label] = str(root / f"{label}.safetensors")
        save_lora(files[label], fac, alpha=alpha, base=base, dtype=dtype)
        return fac

    base_factors = [save(f"r4_{i}", factors(rng, 4), alpha=4.0) for i in range(6)]  # scale 1
    # rank 8, alpha 16 (scale 2), with r4_0's delta-W: B8 A8 = 0.25 (B A + B A), times 2 = B A
    save(
        "twin_r8",
        {n: (np.vstack([A, A]), 0.25 * np.hstack([B, B])) for n, (A, B) in base_factors[0].items()},
        alpha=16.0,
    )
    save(
        "f16_of_r4_1",
        {n: (A.astype(np.float16), B.astype(np.float16)) for n, (A, B) in base_factors[1].items()},
        alpha=4.0,
        dtype=np.float16,
    )
    files["bf16_of_r4_2"] = str(root / "bf16_of_r4_2.safetensors")
    with open(files["bf16_of_r4_2"], "wb") as fh:  # written by hand: numpy has no bfloat16
        fh.write(
            encode(
                {
                    f"{n}.{r}.weight": _t(x, "BF16")
                    for n, (A, B) in base_factors[2].items()
                    for r, x in (("lora_A", A), ("lora_B", B))
                },
                {"lorastyle.base": "tiny", "lora_adapter_metadata": '{"unet.lora_alpha": 4, "unet.r": 4}'},
            )
        )
    save("alpha2", factors(rng, 4), alpha=2.0)  # scale 0.5
    save("sd1", factors(rng, 4), alpha=4.0, base="sd1")
    save("sdxl", factors(rng, 4), alpha=4.0, base="sdxl")
    save("odd_shape", factors(rng, 4, {**SHAPES, P + "ff.net.0.proj": (32, 24)}), alpha=4.0)
    save("lonely", factors(rng, 4, {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj": (12, 12)}), alpha=4.0)
    return files


def _build(mixed, descriptor):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index, skipped, _ = build_index(sorted(mixed.values()), descriptor=descriptor, n_components=3)
    return index, dict(skipped), [str(w.message) for w in caught]


def _normalised(K):
    d = np.sqrt(np.diag(K))
    return K / np.outer(d, d)


def _groups(index):
    return {key: sorted(r.path for r in g.records) for key, g in index.groups.items()}


def test_concat_groups_files_by_layout_and_says_what_it_leaves_out(mixed):
    index, skipped, caught = _build(mixed, "concat")
    assert skipped == {}  # nothing is dropped: each layout is its own group, compared with itself only
    groups = _groups(index)
    same = sorted(
        mixed[k] for k in ("r4_0", "r4_1", "r4_2", "r4_3", "r4_4", "r4_5", "f16_of_r4_1", "bf16_of_r4_2", "alpha2")
    )
    assert same in groups.values()  # dtypes do not matter; rank, modules and family do
    for k in ("twin_r8", "odd_shape", "lonely", "sd1", "sdxl"):
        assert [mixed[k]] in groups.values(), k
    assert sorted(key.split("/")[0] for key in groups) == ["sd1", "sdxl"] + ["tiny"] * 4
    # concat leaves alpha out: said, with the file whose scale differs
    (warning,) = [w for w in caught if w.startswith("concat compares the stored factors and leaves alpha out")]
    assert f"1 with 0.5 (such as {mixed['alpha2']})" in warning
    # a query of a rank no indexed file has: concat cannot answer for it, and says so
    rank6 = mixed["r4_0"].replace("r4_0", "rank6-query")
    save_lora(rank6, factors(np.random.default_rng(9), 6), alpha=6.0, base="tiny")
    query = read_record(rank6, sketcher=index.sketcher, descriptor="concat")
    with pytest.raises(IncomparableLorasError, match="the index has no file of its layout"):
        index.similar(query)


def _record(index, copy, source):
    import shutil

    shutil.copy(source, copy)
    return read_record(copy, sketcher=index.sketcher, descriptor=index.descriptor)


@pytest.mark.parametrize("descriptor", ["delta", "gram"])
def test_kernels_compare_across_ranks_alphas_and_dtypes(mixed, descriptor):
    index, skipped, caught = _build(mixed, descriptor)
    assert set(skipped) == {mixed["odd_shape"]}
    assert skipped[mixed["odd_shape"]] == (
        f"module {P}ff.net.0.proj has shape (32, 24), not (32, 16) as in {mixed['alpha2']}"
    )
    assert not [w for w in caught if "alpha" in w]  # kernels include the scale: nothing to warn about
    groups = _groups(index)
    assert groups["sd1"] == [mixed["sd1"]] and groups["sdxl"] == [mixed["sdxl"]]
    assert {mixed["twin_r8"], mixed["f16_of_r4_1"], mixed["bf16_of_r4_2"], mixed["alpha2"], mixed["lonely"]} <= set(
        groups["tiny"]
    )
    # the rank-8 twin is the rank-4 file's nearest neighbour, at similarity 1 (sketches of one delta-W)
    top = index.similar(_record(index, mixed["twin_r8"] + ".q", mixed["twin_r8"]), k=2)
    assert {r["path"] for r in top} == {mixed["twin_r8"], mixed["r4_0"]}  # its original, and r4_0
    assert all(r["score"] == pytest.approx(1.0, abs=1e-4) for r in top), top  # float16 sketches: 1e-5
    # the text-encoder-only file shares no part with the others: it scores 0 against each of them
    lonely = index.similar(_record(index, mixed["lonely"] + ".q", mixed["lonely"]), k=20)
    assert lonely[0]["path"] == mixed["lonely"] and all(r["score"] == 0.0 for r in lonely[1:])


@pytest.mark.parametrize("descriptor", ["delta", "gram"])
def test_same_delta_at_rank_4_and_8_has_kernel_similarity_1(mixed, descriptor):
    loras = [load_lora(mixed[k]) for k in ("r4_0", "twin_r8", "r4_1", "f16_of_r4_1", "r4_2", "bf16_of_r4_2")]
    assert [lora.ranks for lora in loras[:2]] == [[4], [8]]
    assert [m.scale for m in loras[1].modules.values()] == [2.0] * 3
    S = _normalised(descriptor_kernel(descriptor, loras))
    assert S[0, 1] == pytest.approx(1.0, abs=1e-12)
    assert S[0, 2] < 0.9  # and an unrelated file is not
    # float16 and bfloat16 copies: 1 up to their rounding
    assert S[2, 3] == pytest.approx(1.0, abs=1e-5)
    assert S[4, 5] == pytest.approx(1.0, abs=1e-3)


def test_descriptor_api_refuses_incomparable_pairs_naming_both_files(mixed):
    r4, twin, sd1, odd = (load_lora(mixed[k]) for k in ("r4_0", "twin_r8", "sd1", "odd_shape"))
    with pytest.raises(IncomparableLorasError) as excinfo:
        check_comparable([r4, twin], descriptor="concat")
    assert mixed["r4_0"] in str(excinfo.value) and mixed["twin_r8"] in str(excinfo.value)
    for other, what in ((sd1, "base family sd1"), (odd, r"has shape \(32, 24\)")):
        for descriptor in ("delta", "gram"):
            with pytest.raises(IncomparableLorasError, match=what) as excinfo:
                descriptor_kernel(descriptor, [r4, other])
            assert other.path in str(excinfo.value)


def test_weights_too_large_to_describe_are_skipped_not_overflowed(tmp_path):
    """Finite weights of 1e18 overflow float32 sketches (their fourth powers in gram, squares in concat)."""
    rng = np.random.default_rng(1)
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"l{i}.safetensors"))
        save_lora(paths[-1], factors(rng, 4), alpha=4.0, base="tiny")
    fac = factors(rng, 4)
    # squared descriptor norms beyond 1e60: concat squares the factors, delta their products, gram those squared
    for descriptor, size in (("concat", 1e33), ("delta", 1e18), ("gram", 1e9)):
        huge = str(tmp_path / f"huge-{descriptor}.safetensors")
        save_lora(huge, {n: (A * size, B * size) for n, (A, B) in fac.items()}, alpha=4.0, base="tiny")
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no overflow warning either
            index, skipped, _ = build_index([*paths, huge], descriptor=descriptor, n_components=2)
        assert [p for p, _ in skipped] == [huge]
        assert skipped[0][1].startswith(
            f"weights too large to describe: the squared norm of its {descriptor} descriptor"
        )
        (group,) = index.groups.values()
        assert np.all(np.isfinite(group.embedding.embedding_))
        # and as a query, it is refused the same way, not answered with nan scores
        with pytest.raises(LoraFormatError, match="weights too large to describe") as excinfo:
            read_record(huge, sketcher=index.sketcher, descriptor=descriptor)
        assert excinfo.value.path == huge


def test_all_pairs_scores_equal_the_query_scores(mixed):
    """SketchMatrix.cosine_matrix (maps, duplicates) is the one-query score applied to every pair."""
    index, _, _ = _build(mixed, "gram")
    for group in index.groups.values():
        rows = np.array([group.matrix.cosines(r.sketches, r.norms) for r in group.records])
        np.testing.assert_allclose(group.matrix.cosine_matrix(), rows, atol=1e-6)


def test_every_family_s_results_carry_a_p_value_from_the_family_s_pairs_and_a_verdict(mixed, tmp_path):
    """p = (1 + pairs of the family's files scoring at least as high) / (1 + pairs), counted here by brute force."""
    from lorastyle.index.verdicts import VERDICTS

    index, _, _ = _build(mixed, "gram")
    for key, query in (("tiny", mixed["r4_1"]), ("sd1", mixed["sd1"])):
        group = index.groups[key]
        n = len(group.records)
        C = group.matrix.cosine_matrix()
        pairs = C[np.triu_indices(n, 1)]
        results = index.similar(_record(index, str(tmp_path / f"q-{key}.safetensors"), query), k=3)
        assert results
        for r in results:  # ties within float32 rounding (a copy of an indexed file scores as its original)
            low = (1 + np.sum(pairs >= r["score"] + 1e-6)) / (1 + len(pairs))
            high = (1 + np.sum(pairs >= r["score"] - 1e-6)) / (1 + len(pairs))
            assert low - 1e-12 <= r["p_value"] <= high + 1e-12
            assert r["verdict"] in VERDICTS
        assert [r["p_value"] for r in results] == sorted(r["p_value"] for r in results)  # higher scores, smaller p


def test_a_pairs_score_does_not_depend_on_what_else_is_indexed(mixed, tmp_path):
    """The score is a cosine of the two files' descriptors: adding or removing unrelated files changes nothing."""
    a, b = mixed["r4_0"], mixed["r4_1"]
    rng = np.random.default_rng(5)
    extra = []
    for i in range(12):  # unrelated files, some of them of high norm (one took over the old PCA's first axis)
        path = str(tmp_path / f"extra{i}.safetensors")
        save_lora(
            path,
            {n: (A * (30.0 if i == 0 else 1.0), B) for n, (A, B) in factors(rng, 4).items()},
            alpha=4.0,
            base="tiny",
        )
        extra.append(path)
    scores = []
    for paths in ([a, b], [a, b, *extra[:3]], [a, b, *extra]):
        index, _, _ = build_index(paths, descriptor="gram")
        query = read_record(a, sketcher=index.sketcher)
        (hit,) = [r for r in index.similar(query, k=20) if r["path"] == b]
        scores.append(hit["score"])
    assert scores[0] == scores[1] == scores[2]
    # the paper's PCA scorer, by contrast, does depend on the folder (why it is not the default)
    pca = []
    for paths in ([a, b, *extra[:3]], [a, b, *extra]):
        index, _, _ = build_index(paths, descriptor="gram")
        (hit,) = [
            r for r in index.similar(read_record(a, sketcher=index.sketcher), k=20, scorer="pca") if r["path"] == b
        ]
        pca.append(hit["score"])
    assert abs(pca[0] - pca[1]) > 1e-3


@pytest.mark.parametrize("k", [0, 2.5, "3", True])
def test_similar_checks_k(mixed, tmp_path, k):
    index, _, _ = _build(mixed, "gram")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.similar(_record(index, str(tmp_path / "q.safetensors"), mixed["r4_1"]), k=k)


def test_concat_compares_each_modules_own_scale(tmp_path):
    """Two files of one layout whose alphas and ranks are the same sets but paired otherwise per module:
    (alpha 1, rank 1) and (alpha 0.5, rank 2) against (0.5, 1) and (1, 2): scales {1, 0.25} against {0.5}."""
    from lorastyle.io.safetensors import read_safetensors, write_safetensors

    shapes = {P + "attn1.to_q": (16, 16), P + "attn2.to_k": (16, 12)}
    paths = []
    for name, alphas in (("a", (1.0, 0.5)), ("b", (0.5, 1.0)), ("c", (1.0, 0.5))):
        rng = np.random.default_rng(len(paths))
        fs = {}
        for (module, (o, i)), rank in zip(shapes.items(), (1, 2)):
            fs[module] = (
                rng.standard_normal((rank, i)).astype(np.float32),
                rng.standard_normal((o, rank)).astype(np.float32),
            )
        path = tmp_path / f"{name}.safetensors"
        save_lora(path, fs, alpha=1.0, layout="kohya", base="tiny")
        tensors, meta = read_safetensors(path)
        alpha_keys = sorted(k for k in tensors if k.endswith(".alpha"))
        assert len(alpha_keys) == 2 and "attn1" in alpha_keys[0]
        for key, alpha in zip(alpha_keys, alphas):
            tensors[key] = np.asarray(alpha, dtype=tensors[key].dtype)
        write_safetensors(path, tensors, meta)
        paths.append(str(path))
    assert load_lora(paths[0]).alphas == load_lora(paths[1]).alphas == [0.5, 1.0]  # the same sets
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index, _, _ = build_index(paths, descriptor="concat", n_components=1)
    assert len(index.groups) == 1
    (warning,) = [str(w.message) for w in caught if "leaves alpha out" in str(w.message)]
    assert f"1 with 0.5 (such as {paths[1]})" in warning and "2 with 0.25, 1" in warning
    assert index.records[1].scales == [0.5] and index.records[0].scales == [0.25, 1.0]
