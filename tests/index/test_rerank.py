"""Exact re-ranking of ``similar``'s best results: the exact score against brute force, and on real files."""

import numpy as np
import pytest

from lorastyle.cli import main
from lorastyle.index import build_index, read_record
from lorastyle.index.search import exact_cosines
from lorastyle.index.sketches import Sketcher
from lorastyle.io.formats import LoRA, build_module, load_lora
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


def lokr(rng, parts=("unet", "text_encoder")):
    """LoKr modules of the same shapes (splits 6 = 2 x 3, 5 = 5 x 1, 4 = 2 x 2, 7 = 7 x 1)."""
    splits = {6: (2, 3), 5: (5, 1), 4: (2, 2), 7: (7, 1)}
    modules = {}
    for name, (out, inp) in SHAPES.items():
        if name.split(".")[0] not in parts:
            continue
        (a1, a2), (b1, b2) = splits[out], splits[inp]
        roles = {
            "lokr_w1": rng.standard_normal((a1, b1)),
            "lokr_w2_a": rng.standard_normal((a2, 1)),
            "lokr_w2_b": rng.standard_normal((1, b2)),
            "alpha": np.float32(1.0),
        }
        modules[name] = build_module("k", name, name.split(".")[0], roles)
    return LoRA(path="k", format="lycoris", base="sd1", modules=modules, dtype="float64")


def brute_force(q, c, descriptor, centre=True):
    """Dense delta-W (or its Gram matrix, centred: G - tr(G)/d I) per module, unit norm, summed over the parts both
    adapt."""

    def unit(m):
        D = m.scale * (m.up.astype(np.float64) @ m.down.astype(np.float64))
        G = D @ D.T - (np.trace(D @ D.T) / len(D) * np.eye(len(D)) if centre else 0.0)
        G = G if descriptor == "gram" else D
        n = np.linalg.norm(G)
        return G / n if n > 0 else None

    shared = {m.part for m in q.modules.values()} & {m.part for m in c.modules.values()}
    uq = {n: unit(m) for n, m in q.modules.items() if m.part in shared}
    uc = {n: unit(m) for n, m in c.modules.items() if m.part in shared}
    uq, uc = {n: g for n, g in uq.items() if g is not None}, {n: g for n, g in uc.items() if g is not None}
    num = sum(float(np.sum(g * uc[n])) for n, g in uq.items() if n in uc)
    return num / np.sqrt(len(uq) * len(uc))


@pytest.mark.parametrize("descriptor, centre", [("gram", True), ("gram", False), ("delta", True)])
@pytest.mark.parametrize("query_kind", ["lora", "lokr"])
def test_exact_cosines_equal_brute_force(descriptor, centre, query_kind):
    rng = np.random.default_rng(0)
    q = lora(rng) if query_kind == "lora" else lokr(rng)
    candidates = [lora(rng), lora(rng, parts=("unet",)), lora(rng, zero=("unet.a.to_q",)), lokr(rng), q]
    got = exact_cosines(descriptor, q, candidates, centre=centre)
    want = [brute_force(q, c, descriptor, centre) for c in candidates]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
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


def test_an_index_made_before_centring_keeps_scoring_as_it_was_sketched(tmp_path):
    """Its settings hold no ``centre``: it loads uncentred, and re-ranks with the uncentred exact score."""
    import json

    from lorastyle.index import LoraIndex
    from lorastyle.io.formats import save_lora
    from lorastyle.io.safetensors import read_safetensors, write_safetensors

    rng = np.random.default_rng(2)
    paths = []
    for i in range(4):
        lo = lora(rng, parts=("unet",))
        path = str(tmp_path / f"l{i}.safetensors")
        save_lora(path, {n: (m.down, m.up) for n, m in lo.modules.items()}, alpha=2.0, base="sd15")
        paths.append(path)
    index, _, _ = build_index(paths, sketcher=Sketcher(dim=64, module_dim=16, centre=False))
    saved = tmp_path / "old.index"
    index.save(saved)
    tensors, meta = read_safetensors(str(saved))
    settings = json.loads(meta["sketch"])
    del settings["centre"]  # as an earlier version wrote it
    write_safetensors(str(saved), tensors, {**meta, "sketch": json.dumps(settings)})
    old = LoraIndex.load(saved)
    assert old.sketcher.centre is False
    q = load_lora(paths[0])
    got = old.similar(read_record(paths[0], sketcher=old.sketcher), k=3, rerank=3, query_lora=q)
    others = [load_lora(p) for p in paths[1:]]
    want = dict(zip(paths[1:], exact_cosines("gram", q, others, centre=False)))
    centred = dict(zip(paths[1:], exact_cosines("gram", q, others)))
    for r in got:
        assert r["exact"] and r["score"] == pytest.approx(want[r["path"]], abs=1e-9)
    assert any(abs(want[p] - centred[p]) > 1e-3 for p in want)  # the two scores do differ


def test_rerank_in_batches_and_within_a_budget_of_bytes(tmp_path, monkeypatch):
    import os

    import lorastyle.index.search as search
    from lorastyle.io.formats import save_lora

    rng = np.random.default_rng(3)
    paths = []
    for i in range(5):
        lo = lora(rng, parts=("unet",))
        path = str(tmp_path / f"l{i}.safetensors")
        save_lora(path, {n: (m.down, m.up) for n, m in lo.modules.items()}, alpha=2.0, base="sd15")
        paths.append(path)
    index, _, _ = build_index(paths, sketcher=Sketcher(dim=64, module_dim=16))
    query, q = read_record(paths[0], sketcher=index.sketcher), load_lora(paths[0])
    whole = index.similar(query, k=4, rerank=4, query_lora=q)
    monkeypatch.setattr(search, "RERANK_BATCH_BYTES", 1)  # one file per batch
    assert index.similar(query, k=4, rerank=4, query_lora=q) == whole
    size = os.path.getsize(paths[1])
    budgeted = index.similar(query, k=4, rerank=4, query_lora=q, rerank_budget=2 * size + size // 2)
    assert [r["exact"] for r in budgeted] == [True, True, False, False]  # two files fit in 2.5 files' bytes


def test_similar_reads_its_query_once(tmp_path, monkeypatch, capsys):
    """The query's record and the file the re-ranking needs come from one read (one parse, one hash)."""
    import lorastyle.index.records as records_module
    from lorastyle.io.formats import save_lora

    rng = np.random.default_rng(2)
    paths = []
    for i in range(4):
        lo = lora(rng, parts=("unet",))
        paths.append(str(tmp_path / f"l{i}.safetensors"))
        save_lora(paths[-1], {n: (m.down, m.up) for n, m in lo.modules.items()}, alpha=2.0, base="sd15")
    assert main(["index", str(tmp_path), "-o", str(tmp_path / "index.safetensors")]) == 0
    loads = []
    real = records_module.load_lora
    monkeypatch.setattr(records_module, "load_lora", lambda path, **kw: loads.append(str(path)) or real(path, **kw))
    import lorastyle.io.formats as formats

    real_formats = formats.load_lora
    monkeypatch.setattr(formats, "load_lora", lambda path, **kw: loads.append(str(path)) or real_formats(path, **kw))
    capsys.readouterr()
    assert main(["similar", str(tmp_path / "index.safetensors"), paths[0], "-k", "2", "--rerank", "2"]) == 0
    out = capsys.readouterr().out
    assert "(exact)" in out  # the re-ranking ran, on the query's one read
    assert loads.count(paths[0]) == 1, loads
