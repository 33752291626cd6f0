"""Sketches against brute force: materialised delta-W and Gram matrices on small shapes."""

import numpy as np
import pytest

from lorastyle.index.sketches import Sketcher, sketch_cosines
from lorastyle.io.formats import LoRA, build_module

SHAPES = {"unet.a.to_q": (12, 9), "unet.b.ff.net.2": (7, 11), "unet.c.to_k": (5, 5)}


def lora(rng, rank=3, shapes=SHAPES, scale=1.0, path="x.safetensors"):
    modules = {}
    for name, (out, inp) in shapes.items():
        roles = {
            "lora_down": rng.standard_normal((rank, inp)).astype(np.float32),
            "lora_up": rng.standard_normal((out, rank)).astype(np.float32),
            "alpha": np.float32(scale * rank),
        }
        modules[name] = build_module(path, name, "unet", roles)
    return LoRA(path=path, format="kohya", base="tiny", modules=modules, dtype="float32")


def dense(lo, descriptor, centre=True):
    """Brute force: every module's delta-W (or its Gram matrix, centred: G - tr(G)/d I) materialised."""
    out = {}
    for name, m in lo.modules.items():
        D = m.scale * (m.up.astype(np.float64) @ m.down.astype(np.float64))
        G = D @ D.T
        if centre:
            G = G - np.trace(G) / len(G) * np.eye(len(G))
        out[name] = G if descriptor == "gram" else D
    return out


def exact_kernel(X, Y, descriptor, normalise, centre=True):
    a, b = dense(X, descriptor, centre), dense(Y, descriptor, centre)
    total = 0.0
    for name in set(a) & set(b):
        v = float(np.sum(a[name] * b[name]))
        if normalise == "module":
            v /= np.linalg.norm(a[name]) * np.linalg.norm(b[name])
        total += v
    return total


@pytest.mark.parametrize(
    "descriptor, centre", [("gram", True), ("gram", False), ("delta", True)]
)  # delta has no centring: centre=True is ignored
@pytest.mark.parametrize("normalise", ["none", "module"])
def test_sketch_inner_products_are_unbiased(descriptor, centre, normalise):
    """Averaged over 400 independent hash seeds, <sketch(X), sketch(Y)> is the exact kernel (within 4 sigma)."""
    rng = np.random.default_rng(0)
    X, Y = lora(rng), lora(rng)
    truth = exact_kernel(X, Y, descriptor, normalise, centre)
    estimates = []
    for seed in range(400):
        sk = Sketcher(dim=64, module_dim=32, seed=seed, normalise=normalise, centre=centre)
        estimates.append(float(sk.sketch(X, descriptor).astype(np.float64) @ sk.sketch(Y, descriptor)))
    mean, sem = np.mean(estimates), np.std(estimates) / np.sqrt(len(estimates))
    assert abs(mean - truth) < 4 * sem + 1e-6 * abs(truth)
    assert np.std(estimates) > 0  # the test can fail: the estimate does vary with the seed


@pytest.mark.parametrize("descriptor", ["gram", "delta"])
def test_self_inner_product_is_the_exact_squared_norm_on_average(descriptor):
    rng = np.random.default_rng(1)
    X = lora(rng)
    truth = exact_kernel(X, X, descriptor, "none")
    est = np.mean(
        [
            np.sum(
                Sketcher(dim=64, module_dim=32, seed=s, normalise="none").sketch(X, descriptor).astype(np.float64) ** 2
            )
            for s in range(300)
        ]
    )
    assert est == pytest.approx(truth, rel=0.1)


def test_cosine_error_at_the_default_settings_is_small():
    """At the default sizes the cosine of sketches is within 0.05 of the exact cosine for 20 random pairs."""
    rng = np.random.default_rng(2)
    shapes = {f"unet.m{i}.to_q": (64, 48) for i in range(40)}
    base = lora(rng, shapes=shapes)
    others = []
    for i in range(20):  # partly related LoRAs: base plus noise of growing size
        noise = lora(rng, shapes=shapes)
        mods = {
            n: build_module(
                "y",
                n,
                "unet",
                {
                    "lora_down": np.vstack([m.down, noise.modules[n].down * i / 10]),
                    "lora_up": np.hstack([m.up, noise.modules[n].up]),
                    "alpha": np.float32(6),
                },
            )
            for n, m in base.modules.items()
        }
        others.append(LoRA(path=f"o{i}", format="kohya", base="tiny", modules=mods, dtype="float32"))
    sk = Sketcher(normalise="module")
    S = np.stack([sk.sketch(x, "gram") for x in [base, *others]])
    C = sketch_cosines(S)[0, 1:]
    exact = np.array(
        [
            exact_kernel(base, o, "gram", "module")
            / np.sqrt(exact_kernel(base, base, "gram", "module") * exact_kernel(o, o, "gram", "module"))
            for o in others
        ]
    )
    assert np.abs(C - exact).max() < 0.05
    assert exact.max() - exact.min() > 0.3  # the pairs span a range of similarities


def test_gram_sketch_ignores_the_gauge_and_input_rotations_delta_only_the_gauge():
    rng = np.random.default_rng(3)
    X = lora(rng)
    sk = Sketcher()
    moved, rotated = {}, {}
    for name, m in X.modules.items():
        G = rng.standard_normal((m.rank, m.rank)) + 3 * np.eye(m.rank)
        Q, _ = np.linalg.qr(rng.standard_normal((m.down.shape[1],) * 2))
        moved[name] = build_module(
            "g",
            name,
            "unet",
            {
                "lora_down": (G @ m.down).astype(np.float32),
                "lora_up": (m.up @ np.linalg.inv(G)).astype(np.float32),
                "alpha": np.float32(m.alpha),
            },
        )
        rotated[name] = build_module(
            "r",
            name,
            "unet",
            {"lora_down": (m.down @ Q).astype(np.float32), "lora_up": m.up, "alpha": np.float32(m.alpha)},
        )
    gauge = LoRA(path="g", format="kohya", base="tiny", modules=moved, dtype="float32")
    rot = LoRA(path="r", format="kohya", base="tiny", modules=rotated, dtype="float32")
    for descriptor, other, same in (
        ("gram", gauge, True),
        ("gram", rot, True),
        ("delta", gauge, True),
        ("delta", rot, False),
    ):
        c = sketch_cosines(np.stack([sk.sketch(X, descriptor), sk.sketch(other, descriptor)]))[0, 1]
        assert (c > 0.999) == same, (descriptor, c)


def test_modules_of_other_files_are_zero_and_module_names_matter():
    rng = np.random.default_rng(4)
    X = lora(rng, shapes={"unet.a.to_q": (12, 9)})
    Y = lora(rng, shapes={"unet.zz.to_q": (12, 9)})
    sk = Sketcher(normalise="none")
    # different modules: an exactly-zero true kernel, so the estimate is small next to the norms
    c = sketch_cosines(np.stack([sk.sketch(X), sk.sketch(Y)]))[0, 1]
    assert abs(c) < 0.1


def test_sketches_are_the_same_in_any_process_order():
    """Hashes depend on names and shapes only: sketching in another order gives the same vectors."""
    rng = np.random.default_rng(5)
    X, Y = lora(rng), lora(rng)
    a, b = Sketcher(), Sketcher()
    np.testing.assert_array_equal(a.sketch(X), (b.sketch(Y), b.sketch(X))[1])


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(dim=4), "dim must be an integer of at least 16"),
        (dict(normalise="l2"), "unknown normalise 'l2'"),
        (dict(seed=-1), "seed must be a non-negative integer"),
    ],
)
def test_invalid_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        Sketcher(**bad)


def _lokr_module(rng, name, p1, q1, p2, q2, r, whole=()):
    roles = {}
    for i, (p, q) in (("1", (p1, q1)), ("2", (p2, q2))):
        if i in whole:
            roles[f"lokr_w{i}"] = rng.standard_normal((p, q)).astype(np.float32)
        else:
            roles[f"lokr_w{i}_a"] = rng.standard_normal((p, r)).astype(np.float32)
            roles[f"lokr_w{i}_b"] = rng.standard_normal((r, q)).astype(np.float32)
    roles["alpha"] = np.float32(2 * r)
    return build_module("k", name, "unet", roles)


@pytest.mark.parametrize("whole", [(), ("1",), ("2",)])
@pytest.mark.parametrize("descriptor", ["gram", "delta"])
def test_lokr_sketch_keeps_the_kronecker_structure_and_equals_the_expanded_one(whole, descriptor):
    """The blocked Kronecker path gives the sketch (and exact norm) of the expanded low-rank form."""
    rng = np.random.default_rng(6)
    m = _lokr_module(rng, "unet.a.to_q", 4, 3, 6, 5, 2, whole)
    up, down = m.low_rank()
    plain = build_module("p", m.name, "unet", {"lora_up": m.scale * up, "lora_down": down})
    sk = Sketcher(dim=64, module_dim=32)
    a, na, da = sk.module_sketch(m, descriptor)
    b, nb, db = sk.module_sketch(plain, descriptor)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(b).max())
    D = m.delta().astype(np.float64)
    truth = np.sum((D @ D.T) ** 2) if descriptor == "gram" else np.sum(D**2)
    assert na == pytest.approx(truth, rel=1e-5) and nb == pytest.approx(truth, rel=1e-5)
    from lorastyle.index.sketches import delta_norm2

    assert da == pytest.approx(np.sum(D**2), rel=1e-5) and db == pytest.approx(da, rel=1e-5)
    assert delta_norm2(m) == pytest.approx(da, rel=1e-5) and delta_norm2(plain) == pytest.approx(da, rel=1e-5)


def test_sketching_a_lokr_takes_memory_like_its_factors_not_its_expansion():
    """A 128x128 (x) 128x128 LoKr of rank 32: its expansion is 2 x 16384 x 1024 floats (128 MB)."""
    import tracemalloc

    rng = np.random.default_rng(7)
    m = _lokr_module(rng, "unet.big.to_q", 128, 128, 128, 128, 32)
    lo = LoRA(path="k", format="lycoris-lokr", base="tiny", modules={m.name: m}, dtype="float32")
    sk = Sketcher()
    sk.sketch(lo)  # hash matrices are made once, outside the measurement
    tracemalloc.start()
    try:
        sk.sketch(lo, "gram")
        sk.sketch(lo, "delta")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 << 20, f"peak {peak >> 20} MB"


def test_stacked_modules_equal_module_by_module_sketches(monkeypatch):
    """The stacked path (modules of one shape and rank in one call per step) against module_sketch of each.

    Convolution factors (4-d), float16, a zero module, several stacks of one shape (a small stack
    size), a factorisation wider than its matrix (module by module), on 1 and 3 threads.
    """
    import lorastyle.index.sketches as sketches

    rng = np.random.default_rng(11)
    modules = {}
    for i in range(7):
        roles = {
            "lora_down": rng.standard_normal((4, 6, 3, 3)).astype(np.float16),
            "lora_up": (rng.standard_normal((10, 4, 1, 1)) * (i > 0)).astype(np.float16),  # module 0 is zero
            "alpha": np.float32(2.0 + i),
        }
        modules[f"unet.conv{i}"] = build_module("x.safetensors", f"unet.conv{i}", "unet", roles)
    for i in range(4):
        name = f"text_encoder.lin{i}.to_q"
        modules[name] = build_module(
            "x.safetensors",
            name,
            "text_encoder",
            {"lora_down": rng.standard_normal((3, 8)).astype(np.float32), "lora_up": rng.standard_normal((5, 3))},
        )
    wide = {"lora_down": rng.standard_normal((6, 4)).astype(np.float32), "lora_up": rng.standard_normal((3, 6))}
    modules["unet.wide.to_k"] = build_module("x.safetensors", "unet.wide.to_k", "unet", wide)
    lo = LoRA(path="x.safetensors", format="kohya", base="tiny", modules=dict(sorted(modules.items())), dtype="mixed")
    monkeypatch.setattr(sketches, "STACK_BYTES", 4 * 4 * (10 + 54) * 3)  # three conv modules per stack
    assert sum(sketches._plain_key(m) is not None for m in lo.modules.values()) == 11
    for descriptor in ("gram", "delta"):
        one_by_one = [Sketcher(workers=1).module_sketch(m, descriptor) for m in lo.modules.values()]
        for workers in (1, 3):
            stacked = Sketcher(workers=workers)._stage1(list(lo.modules.values()), descriptor)
            for a, b in zip(one_by_one, stacked):
                np.testing.assert_allclose(b.sketch, a.sketch, rtol=1e-5, atol=1e-6 * np.abs(a.sketch).max())
                np.testing.assert_allclose([b.norm2, b.delta2], [a.norm2, a.delta2], rtol=1e-9)
        parts = Sketcher(workers=3).part_sketches(lo, descriptor)
        assert sorted(parts) == ["text_encoder", "unet"]
        sub = LoRA(
            path="x",
            format="kohya",
            base="tiny",
            dtype="mixed",
            modules={n: m for n, m in lo.modules.items() if m.part == "unet"},
        )
        v, norm2 = Sketcher(workers=1).sketch_and_norm(sub, descriptor)
        np.testing.assert_allclose(parts["unet"][0], v, rtol=1e-6, atol=1e-9)
        assert parts["unet"][1] == pytest.approx(norm2, rel=1e-12)


def test_a_loha_is_sketched_through_its_factors_not_its_delta_w():
    """(A1 B1) * (A2 B2) = khatri_rao(A1, A2) khatri_rao(B1^T, B2^T)^T: rank 16^2 = 256 of 2048 x 2048.

    Its delta-W would be 16 MB (float32) and its Gram matrix as much again; the sketch stays below
    either, and equals the sketch of the expanded low-rank form (the brute force of delta-W is the
    unbiasedness test's).
    """
    import tracemalloc

    rng = np.random.default_rng(8)
    f = {
        k: (rng.standard_normal(s) * 0.1).astype(np.float16)
        for k, s in (
            ("hada_w1_a", (2048, 16)),
            ("hada_w1_b", (16, 2048)),
            ("hada_w2_a", (2048, 16)),
            ("hada_w2_b", (16, 2048)),
        )
    }
    m = build_module("h", "unet.big.to_q", "unet", {**f, "alpha": np.float32(16)})
    lo = LoRA(path="h", format="lycoris-loha", base="tiny", modules={m.name: m}, dtype="float16")
    sk = Sketcher(workers=1)
    sk.sketch(lo)  # hash matrices made outside the measurement
    tracemalloc.start()
    try:
        got = sk.sketch(lo, "gram")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 << 20, f"peak {peak >> 20} MB"
    D = (
        m.scale
        * (f["hada_w1_a"].astype(np.float64) @ f["hada_w1_b"])
        * (f["hada_w2_a"].astype(np.float64) @ f["hada_w2_b"])
    )
    U, V = m.low_rank()
    np.testing.assert_allclose(m.scale * (U.astype(np.float64) @ V), D, rtol=1e-4, atol=1e-6)
    assert np.linalg.norm(got) > 0


def test_the_old_module_name_is_a_deprecated_alias():
    import importlib
    import sys

    import lorastyle.index.sketches as moved

    sys.modules.pop("lorastyle.sketches", None)
    with pytest.warns(DeprecationWarning, match="moved to lorastyle.index.sketches"):
        old = importlib.import_module("lorastyle.sketches")
    assert old.Sketcher is moved.Sketcher and old.__all__ == moved.__all__
