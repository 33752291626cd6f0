"""Exact module products through Kronecker and Hadamard factors, against the materialised delta-W."""

import itertools

import numpy as np
import pytest

from lorastyle.io.formats import build_module
from lorastyle.module_products import Factor, delta_inner, factored, gram_inner


def lokr(rng, split, rank=2, whole=(), alpha=3.0, name="unet.a.to_q"):
    """A LoKr module of delta-W kron(W1, W2), W_i of shape split[i], decomposed at ``rank`` unless whole."""
    roles = {}
    for i, (p, q) in zip(("1", "2"), split):
        if i in whole:
            roles[f"lokr_w{i}"] = rng.standard_normal((p, q)).astype(np.float32)
        else:
            roles[f"lokr_w{i}_a"] = rng.standard_normal((p, rank)).astype(np.float32)
            roles[f"lokr_w{i}_b"] = rng.standard_normal((rank, q)).astype(np.float32)
    roles["alpha"] = np.float32(alpha)
    return build_module("k", name, "unet", roles)


def lora(rng, out, inp, rank=3, conv=False, name="unet.a.to_q"):
    if conv:  # a 3x3 convolution: (r, in/9, 3, 3) down, (out, r, 1, 1) up
        down = rng.standard_normal((rank, inp // 9, 3, 3)).astype(np.float32)
        up = rng.standard_normal((out, rank, 1, 1)).astype(np.float32)
    else:
        down = rng.standard_normal((rank, inp)).astype(np.float32)
        up = rng.standard_normal((out, rank)).astype(np.float32)
    return build_module("l", name, "unet", {"lora_down": down, "lora_up": up, "alpha": np.float32(2.0)})


def loha(rng, out, inp, rank=2, name="unet.a.to_q"):
    roles = {
        "hada_w1_a": rng.standard_normal((out, rank)),
        "hada_w1_b": rng.standard_normal((rank, inp)),
        "hada_w2_a": rng.standard_normal((out, rank)),
        "hada_w2_b": rng.standard_normal((rank, inp)),
        "alpha": np.float32(1.0),
    }
    return build_module("h", name, "unet", {k: np.asarray(v, np.float32) for k, v in roles.items()})


def dense(m):
    """delta-W materialised from the stored tensors (never through low_rank or kronecker)."""
    f = {k: np.asarray(v, np.float64) for k, v in m.factors.items()}
    flat = lambda x: x.reshape(x.shape[0], -1)  # noqa: E731
    if m.kind == "lora":
        return m.scale * flat(f["lora_up"]) @ flat(f["lora_down"])
    if m.kind == "loha":
        return m.scale * (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"])
    W = [f[f"lokr_w{i}"] if f"lokr_w{i}" in f else f[f"lokr_w{i}_a"] @ f[f"lokr_w{i}_b"] for i in "12"]
    return m.scale * np.kron(W[0], W[1])


def modules_12x18(rng):
    """Modules of delta-W 12 x 18 in every structure: LoKr of two splits (decomposed and whole), LoRA, LoHa."""
    return [
        lokr(rng, ((3, 3), (4, 6))),
        lokr(rng, ((3, 3), (4, 6)), rank=3, whole=("1",)),
        lokr(rng, ((3, 3), (4, 6)), whole=("2",)),
        lokr(rng, ((3, 3), (4, 6)), whole=("1", "2")),
        lokr(rng, ((2, 6), (6, 3))),  # another split
        lokr(rng, ((4, 2), (3, 9)), whole=("2",)),
        lora(rng, 12, 18),
        lora(rng, 12, 18, rank=1),
        lora(rng, 12, 18, conv=True),
        loha(rng, 12, 18),
        loha(rng, 12, 18, rank=3),  # width 9
        loha(rng, 12, 18, rank=4),  # width 16 > 12: its low-rank form is dense
    ]


def test_every_pair_of_structures_equals_the_materialised_delta_w():
    rng = np.random.default_rng(0)
    mods = modules_12x18(rng)
    for m in mods:
        assert dense(m).shape == (12, 18), m
    for a, b in itertools.product(mods, repeat=2):
        Da, Db = dense(a), dense(b)
        Ga, Gb = Da @ Da.T, Db @ Db.T
        x, y = factored(a), factored(b)
        # low_rank() works in float32: errors relative to the norms (Cauchy-Schwarz's bound)
        tol_d, tol_g = 1e-6 * np.linalg.norm(Da) * np.linalg.norm(Db), 1e-6 * np.linalg.norm(Ga) * np.linalg.norm(Gb)
        assert delta_inner(x, y) == pytest.approx(np.sum(Da * Db), abs=tol_d), (a.kind, b.kind)
        assert gram_inner(x, y) == pytest.approx(np.sum(Ga * Gb), abs=tol_g), (a.kind, b.kind)
    for m in mods:
        D = dense(m)
        assert factored(m).delta2 == pytest.approx(np.sum(D**2), rel=1e-6)
        assert factored(m).gram2 == pytest.approx(np.sum((D @ D.T) ** 2), rel=1e-6)


def test_lokr_of_one_split_never_expands_and_a_lokr_against_a_lora_keeps_its_factors():
    rng = np.random.default_rng(1)
    a, b = lokr(rng, ((3, 4), (5, 2))), lokr(rng, ((3, 4), (5, 2)), rank=1, whole=("2",))
    x, y = factored(a), factored(b)
    gram_inner(x, y), delta_inner(x, y), x.gram2, y.delta2
    assert "low" not in vars(x) and "low" not in vars(y)  # the low-rank (expanded) form was never made
    z = factored(lora(rng, 15, 8))
    gram_inner(x, z), delta_inner(z, x)
    assert "low" not in vars(x) and "low" in vars(z)


def test_a_large_lokr_takes_memory_like_its_factors():
    """kron(128x128, 128x128): delta-W would be 16384 x 16384 (1 GB in float32); its products stay below 40 MB."""
    import tracemalloc

    rng = np.random.default_rng(2)
    a = lokr(rng, ((128, 128), (128, 128)), rank=8)
    b = lokr(rng, ((128, 128), (128, 128)), rank=4)
    c = build_module(
        "l",
        "unet.a.to_q",
        "unet",
        {"lora_down": rng.standard_normal((4, 16384)), "lora_up": rng.standard_normal((16384, 4))},
    )
    x, y, z = factored(a), factored(b), factored(c)
    tracemalloc.start()
    try:
        values = [gram_inner(x, y), delta_inner(x, y), gram_inner(x, z), delta_inner(z, x), x.gram2]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert all(np.isfinite(values))
    assert peak < 40 << 20, f"peak {peak >> 20} MB"
    # the Kronecker identities on the same factors, checked on the small Kronecker sides
    W = [[f.scale * (f.U if f.V is None else f.U.astype(np.float64) @ f.V) for f in m.kron] for m in (x, y)]
    assert delta_inner(x, y) == pytest.approx(np.sum(W[0][0] * W[1][0]) * np.sum(W[0][1] * W[1][1]), rel=1e-5)


def test_factor_operations_equal_dense_ones():
    rng = np.random.default_rng(3)
    f = Factor(rng.standard_normal((4, 2)), rng.standard_normal((2, 5)), scale=0.5)
    g = Factor(rng.standard_normal((4, 5)))
    for h in (f, g):
        W = h.scale * (h.U if h.V is None else h.U @ h.V)
        assert h.shape == W.shape
        X = rng.standard_normal((3, 5, 2))
        np.testing.assert_allclose(h.left(X), W @ X)
        Y = rng.standard_normal((3, 2, 5))
        np.testing.assert_allclose(h.right_t(Y), Y @ W.T)
        np.testing.assert_allclose(h.gram(), W @ W.T)


def test_modules_of_different_shapes_have_no_product():
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match="different shapes"):
        gram_inner(factored(lora(rng, 4, 5)), factored(lora(rng, 5, 4)))
