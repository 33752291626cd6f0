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
from lorastyle.index import build_index
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
        index, skipped = build_index(sorted(mixed.values()), descriptor=descriptor, n_components=3)
    return index, dict(skipped), [str(w.message) for w in caught]


def _normalised(K):
    d = np.sqrt(np.diag(K))
    return K / np.outer(d, d)


def test_concat_skips_what_it_cannot_compare_and_says_why(mixed):
    index, skipped, caught = _build(mixed, "concat")
    assert set(skipped) == {mixed[k] for k in ("twin_r8", "sd1", "sdxl", "odd_shape", "lonely")}
    majority = "such as " + mixed["alpha2"]  # the first file of the majority, in sorted order
    assert skipped[mixed["twin_r8"]].startswith("concat needs the same modules, ranks and factor shapes")
    assert "its rank is 8 where theirs is 4" in skipped[mixed["twin_r8"]]
    assert "--descriptor delta or gram compare LoRAs of different ranks" in skipped[mixed["twin_r8"]]
    assert skipped[mixed["sd1"]].startswith("base family sd1 differs from tiny, the family of 12 of 14 files")
    assert skipped[mixed["sdxl"]].startswith("base family sdxl differs from tiny")
    assert (
        f"module {P}ff.net.0.proj factor lora_down has shape (4, 24) where theirs has (4, 16)"
        in skipped[mixed["odd_shape"]]
    )
    assert "it lacks module" in skipped[mixed["lonely"]]
    assert all(majority in reason for path, reason in skipped.items() if path not in (mixed["sd1"], mixed["sdxl"]))
    # dtypes do not matter: float16 and bfloat16 files are embedded with the float32 ones
    assert {mixed["f16_of_r4_1"], mixed["bf16_of_r4_2"]} <= set(index.paths)
    # concat leaves alpha out: said, with the file whose scale differs
    (warning,) = [w for w in caught if w.startswith("concat compares the stored factors and leaves alpha out")]
    assert f"1 with 0.5 (such as {mixed['alpha2']})" in warning


@pytest.mark.parametrize("descriptor", ["delta", "gram"])
def test_kernels_compare_across_ranks_alphas_and_dtypes(mixed, descriptor):
    index, skipped, caught = _build(mixed, descriptor)
    assert set(skipped) == {mixed[k] for k in ("sd1", "sdxl", "odd_shape", "lonely")}
    assert skipped[mixed["odd_shape"]] == (
        f"module {P}ff.net.0.proj has shape (32, 24), where 10 other files have (32, 16) (such as {mixed['alpha2']})"
    )
    assert skipped[mixed["lonely"]].startswith("shares no module with the other files")
    assert not [w for w in caught if "alpha" in w]  # kernels include the scale: nothing to warn about
    assert {mixed["twin_r8"], mixed["f16_of_r4_1"], mixed["bf16_of_r4_2"], mixed["alpha2"]} <= set(index.paths)
    # the rank-8 twin is the rank-4 file's nearest neighbour, at similarity 1
    top = index.similar(load_lora(mixed["twin_r8"]), k=1)[0]
    assert top["path"] == mixed["r4_0"]
    assert top["score"] == pytest.approx(1.0, abs=1e-9)


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


def test_weights_too_large_to_embed_are_skipped_not_overflowed(tmp_path):
    """Finite weights of 1e18 would overflow float32 PCA (concat) and the fourth powers in gram."""
    rng = np.random.default_rng(1)
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"l{i}.safetensors"))
        save_lora(paths[-1], factors(rng, 4), alpha=4.0, base="tiny")
    huge = str(tmp_path / "huge.safetensors")
    save_lora(huge, {n: (A * 1e18, B * 1e18) for n, (A, B) in factors(rng, 4).items()}, alpha=4.0, base="tiny")
    for descriptor in ("concat", "delta", "gram"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no overflow warning either: the file never reaches the fit
            index, skipped = build_index([*paths, huge], descriptor=descriptor, n_components=2)
        assert [p for p, _ in skipped] == [huge]
        assert skipped[0][1].startswith(f"weights too large to embed: the squared norm of its {descriptor} descriptor")
        assert np.all(np.isfinite(index.embedding.embedding_))
        # and as a query, it is refused the same way, not answered with nan scores
        with pytest.raises(Exception, match="weights too large to embed") as excinfo:
            index.project(load_lora(huge))
        assert excinfo.value.path == huge
