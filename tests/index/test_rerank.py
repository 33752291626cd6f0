"""Exact re-ranking of ``similar``'s best results: the exact score against brute force, and on real files."""

import numpy as np
import pytest

from lorastyle.cli import main
from lorastyle.index import build_index, read_record
from lorastyle.index.search import exact_cosines
from lorastyle.io.formats import LoRA, build_module, load_lora
from lorastyle.sketches import Sketcher
from support import REAL_LORAS

SHAPES = {"unet.a.to_q": (6, 5), "unet.b.to_k": (4, 7), "text_encoder.c.q_proj": (5, 5)}


def lora(rng, parts=("unet", "text_encoder"), zero=()):
    modules = {}
    for name, (out, inp) in SHAPES.items():
        if name.split(".")[0] not in parts:
            continue
        up = rng.standard_normal((out, 2)) * (name not in zero)
        roles = {"lora_down": rng.standard_normal((2, inp)), "lora_up": up, "alpha": np.float32(1.0 + rng.random())}
        modules[name] = build_module("x", name, name.split(".")[0], roles)
    return LoRA(path="x", format="kohya", base="sd1", modules=modules, dtype="float64")


def brute_force(q, c, descriptor):
    """Dense delta-W (or its Gram matrix) per module, unit norm, summed over the parts both adapt."""

    def unit(m):
        D = m.scale * (m.up.astype(np.float64) @ m.down.astype(np.float64))
        G = D @ D.T if descriptor == "gram" else D
        n = np.linalg.norm(G)
        return G / n if n > 0 else None

    shared = {m.part for m in q.modules.values()} & {m.part for m in c.modules.values()}
    uq = {n: unit(m) for n, m in q.modules.items() if m.part in shared}
    uc = {n: unit(m) for n, m in c.modules.items() if m.part in shared}
    uq, uc = {n: g for n, g in uq.items() if g is not None}, {n: g for n, g in uc.items() if g is not None}
    num = sum(float(np.sum(g * uc[n])) for n, g in uq.items() if n in uc)
    return num / np.sqrt(len(uq) * len(uc))


@pytest.mark.parametrize("descriptor", ["gram", "delta"])
def test_exact_cosines_equal_brute_force(descriptor):
    rng = np.random.default_rng(0)
    q = lora(rng)
    candidates = [lora(rng), lora(rng, parts=("unet",)), lora(rng, zero=("unet.a.to_q",)), q]
    got = exact_cosines(descriptor, q, candidates)
    want = [brute_force(q, c, descriptor) for c in candidates]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert got[-1] == pytest.approx(1.0)


def test_rerank_scores_the_best_files_exactly_and_needs_the_query(tmp_path):
    from lorastyle.io.formats import save_lora

    rng = np.random.default_rng(1)
    paths = []
    for i in range(6):
        lo = lora(rng, parts=("unet",))
        path = str(tmp_path / f"l{i}.safetensors")
        save_lora(path, {n: (m.down, m.up) for n, m in lo.modules.items()}, alpha=2.0, base="sd15")
        paths.append(path)
    index, _, _ = build_index(paths, sketcher=Sketcher(dim=64, module_dim=16))  # a coarse sketch: noisy scores
    query = read_record(paths[0], sketcher=index.sketcher)
    q = load_lora(paths[0])
    with pytest.raises(ValueError, match="query_lora"):
        index.similar(query, k=3, rerank=3)
    got = index.similar(query, k=5, rerank=3, query_lora=q)
    assert [r["exact"] for r in got] == [True] * 3 + [False] * 2
    exact = {p: s for p, s in zip(paths[1:], exact_cosines("gram", q, [load_lora(p) for p in paths[1:]]))}
    for r in got[:3]:
        assert r["score"] == pytest.approx(exact[r["path"]], abs=1e-12)
    assert [r["score"] for r in got[:3]] == sorted((r["score"] for r in got[:3]), reverse=True)


@pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="needs ../shared/real-loras")
def test_rerank_finds_each_real_file_s_own_source_first(tmp_path, capsys):
    """The three LoKr dims of one character, the two disney files: the sketches find 3 of 5 first, exact 5 of 5."""
    index = tmp_path / "real.index"
    assert main(["index", str(REAL_LORAS), "-o", str(index)]) == 0
    groups = [
        sorted(REAL_LORAS.glob("lycoris_lokr_sd1_dim*")),
        sorted(REAL_LORAS.glob("cloneofsimo_rank1_with_ti__lora_disney*")),
    ]
    capsys.readouterr()
    for group in groups:
        for query in group:
            assert main(["similar", str(index), str(query), "-k", "1", "--rerank", "6"]) == 0
            line = capsys.readouterr().out.strip()
            assert "(exact)" in line and any(line.endswith(str(other)) for other in group if other != query), line
