"""Descriptors against brute-force references: materialised delta-W on small shapes."""

import numpy as np
import pytest

from lorastyle.descriptors import (
    IncomparableLorasError,
    ModuleSelection,
    concat_vectors,
    delta_inner_products,
    descriptor_kernel,
    gram_inner_products,
)
from lorastyle.io.formats import LoRA, LoraModule

MODULES = {
    # name: (out, in)
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (7, 5),
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (7, 3),
    "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj": (12, 6),
    "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0": (6, 6),
    "unet.up_blocks.1.resnets.0.conv1": (4, 9),
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": (8, 8),
}


def make_lora(rng, rank=2, scale=0.5, skip=(), base="tiny", path="x", factors=None):
    mods = {}
    for i, (name, (m, n)) in enumerate(MODULES.items()):
        if i in skip:
            continue
        r = rank if np.isscalar(rank) else rank[i]
        A, B = factors[name] if factors else (rng.standard_normal((r, n)), rng.standard_normal((m, r)))
        A, B = A.astype(np.float32), B.astype(np.float32)
        mods[name] = LoraModule(
            name=name,
            part=name.split(".")[0],
            kind="lora",
            rank=r,
            alpha=None,
            scale=scale,
            factors={"lora_down": A, "lora_up": B},
            out_features=m,
            in_features=n,
        )
    return LoRA(path=path, format="test", base=base, modules=dict(sorted(mods.items())), dtype="float32")


def dense(lora, select=None):
    select = select or ModuleSelection()
    return {
        n: m.scale * (m.up.astype(np.float64) @ m.down.astype(np.float64))
        for n, m in lora.modules.items()
        if select.accepts(n)
    }


def brute_delta(X, Y, select=None):
    return np.array(
        [
            [sum((a[n] * b[n]).sum() for n in a if n in b) for b in (dense(y, select) for y in Y)]
            for a in (dense(x, select) for x in X)
        ]
    )


def brute_gram(X, Y, select=None):
    def grams(lora):
        return {n: d @ d.T for n, d in dense(lora, select).items()}

    return np.array([[sum((a[n] * b[n]).sum() for n in a if n in b) for b in map(grams, Y)] for a in map(grams, X)])


@pytest.fixture
def loras():
    rng = np.random.default_rng(0)
    return [
        make_lora(rng, rank=2),
        make_lora(rng, rank=[1, 3, 2, 4, 1, 2], scale=0.25),
        make_lora(rng, rank=1, skip=(1, 4)),
        make_lora(rng, rank=3, scale=2.0),
        make_lora(rng, rank=2),
    ]


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_delta_matches_materialised(loras, batch_size):
    K = delta_inner_products(loras, batch_size=batch_size)
    ref = brute_delta(loras, loras)
    np.testing.assert_allclose(K, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    np.testing.assert_allclose(K, K.T)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_gram_matches_materialised(loras, batch_size):
    K = gram_inner_products(loras, batch_size=batch_size)
    ref = brute_gram(loras, loras)
    np.testing.assert_allclose(K, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def test_cross_kernels_rectangular(loras):
    np.testing.assert_allclose(delta_inner_products(loras[:2], loras[1:]), brute_delta(loras[:2], loras[1:]), rtol=1e-5)
    np.testing.assert_allclose(gram_inner_products(loras[3:], loras[:4]), brute_gram(loras[3:], loras[:4]), rtol=1e-5)


@pytest.mark.parametrize(
    "select",
    [
        ModuleSelection(layers=["self_attention"]),
        ModuleSelection(layers=["cross_attention", "feed_forward"]),
        ModuleSelection(blocks=["up"]),
        ModuleSelection(parts=["text_encoder"]),
    ],
)
def test_selection_restricts_kernels(loras, select):
    np.testing.assert_allclose(
        delta_inner_products(loras, select=select), brute_delta(loras, loras, select), rtol=1e-5, atol=1e-9
    )
    np.testing.assert_allclose(
        gram_inner_products(loras, select=select), brute_gram(loras, loras, select), rtol=1e-5, atol=1e-9
    )


def test_selection_classifies_modules():
    names = list(MODULES)
    assert [n for n in names if ModuleSelection(layers=["self_attention"]).accepts(n)] == [names[0], names[3], names[5]]
    assert [n for n in names if ModuleSelection(layers=["cross_attention"]).accepts(n)] == [names[1]]
    assert [n for n in names if ModuleSelection(layers=["feed_forward"]).accepts(n)] == [names[2]]
    assert [n for n in names if ModuleSelection(blocks=["mid"]).accepts(n)] == [names[2]]
    assert [n for n in names if ModuleSelection(blocks=["down", "up"]).accepts(n)] == names[:2] + names[3:5]
    assert [n for n in names if ModuleSelection(parts="unet").accepts(n)] == names[:5]


def test_selection_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"unknown layers 'attention'; choose from 'self_attention'"):
        ModuleSelection(layers=["attention"])
    with pytest.raises(ValueError, match=r"unknown blocks 'middle'; choose from 'down'"):
        ModuleSelection(blocks=["middle"])


def test_gauge_invariance():
    """A -> G A, B -> B G^-1 leaves delta and gram unchanged and changes concat."""
    rng = np.random.default_rng(1)
    lora = make_lora(rng, rank=3)
    factors = {}
    for name, m in lora.modules.items():
        G = rng.standard_normal((3, 3)) + 3 * np.eye(3)
        factors[name] = (G @ m.down.astype(np.float64), m.up.astype(np.float64) @ np.linalg.inv(G))
    moved = make_lora(rng, rank=3, factors=factors)
    others = [make_lora(rng, rank=3) for _ in range(3)]
    for kernel in (delta_inner_products, gram_inner_products):
        np.testing.assert_allclose(kernel([lora], others), kernel([moved], others), rtol=1e-4)
    assert not np.allclose(concat_vectors([lora]), concat_vectors([moved]), rtol=1e-2)


def test_gram_invariant_to_input_rotation():
    """dW -> dW Q (Q orthogonal, as a different random A would give) keeps dW dW^T, so gram, unchanged."""
    rng = np.random.default_rng(2)
    lora = make_lora(rng, rank=2)
    factors = {}
    for name, m in lora.modules.items():
        Q, _ = np.linalg.qr(rng.standard_normal((m.down.shape[1],) * 2))
        factors[name] = (m.down.astype(np.float64) @ Q, m.up.astype(np.float64))
    rotated = make_lora(rng, rank=2, factors=factors)
    others = [make_lora(rng, rank=2) for _ in range(3)]
    np.testing.assert_allclose(gram_inner_products([lora], others), gram_inner_products([rotated], others), rtol=1e-4)
    assert not np.allclose(delta_inner_products([lora], others), delta_inner_products([rotated], others), rtol=1e-2)


def test_concat_is_flattened_a_then_b():
    rng = np.random.default_rng(3)
    lora = make_lora(rng, rank=2)
    expected = np.concatenate([np.concatenate([m.down.ravel(), m.up.ravel()]) for m in lora.modules.values()])
    np.testing.assert_array_equal(concat_vectors([lora])[0], expected)
    assert concat_vectors([lora]).shape == (1, sum(2 * (m + n) for m, n in MODULES.values()))


def test_concat_kernel_is_dot_product(loras):
    same_rank = [loras[0], loras[4]]
    V = np.stack([concat_vectors([lora])[0].astype(np.float64) for lora in same_rank])
    np.testing.assert_allclose(descriptor_kernel("concat", same_rank), V @ V.T, rtol=1e-6)


def test_concat_refuses_different_ranks(loras):
    with pytest.raises(IncomparableLorasError, match="concat needs the same modules, factors and ranks"):
        concat_vectors([loras[0], loras[1]])


def test_incomparable_base_and_shapes():
    rng = np.random.default_rng(4)
    a = make_lora(rng, path="a.safetensors")
    b = make_lora(rng, base="sd1", path="b.safetensors")
    with pytest.raises(
        IncomparableLorasError, match=r"b.safetensors: base family sd1 differs from tiny of a.safetensors"
    ):
        delta_inner_products([a, b])
    name = next(iter(a.modules))
    m = a.modules[name]
    wide = LoraModule(
        name=name,
        part="unet",
        kind="lora",
        rank=m.rank,
        alpha=None,
        scale=1.0,
        factors={"lora_up": m.up, "lora_down": np.zeros((m.rank, 99), np.float32)},
        out_features=m.shape[0],
        in_features=99,
    )
    c = LoRA(path="c.safetensors", format="test", base="tiny", modules={**a.modules, name: wide}, dtype="float32")
    with pytest.raises(IncomparableLorasError, match=r"c.safetensors: module .* has shape \(8, 99\), not \(8, 8\)"):
        gram_inner_products([a, c])


def test_unknown_descriptor(loras):
    with pytest.raises(ValueError, match="unknown descriptor 'pixels'"):
        descriptor_kernel("pixels", loras)


def test_selection_options_are_checked_as_wholes():
    """A single string is one option, not its letters; parts are validated like layers and blocks."""
    assert ModuleSelection(layers="feed_forward").layers == ("feed_forward",)
    with pytest.raises(ValueError, match="unknown parts 'unte'; choose from 'unet'"):
        ModuleSelection(parts=["unte"])
    with pytest.raises(ValueError, match="unknown layers 'feed'"):
        ModuleSelection(layers="feed")


def test_module_selection_by_names_intersects_the_other_rules():
    from lorastyle.descriptors import ModuleSelection

    q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    ff = "unet.down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2"
    by_name = ModuleSelection(names=[q, ff])
    assert by_name.accepts(q) and by_name.accepts(ff)
    assert not by_name.accepts(q.replace("to_q", "to_k"))
    both = ModuleSelection(names=[q, ff], layers=["feed_forward"])
    assert both.accepts(ff) and not both.accepts(q)
    with pytest.raises(ValueError, match="names"):
        ModuleSelection(names=q)  # one string is not a collection of names
