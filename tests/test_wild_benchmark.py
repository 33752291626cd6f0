"""The wild benchmark (benchmarks/wild): its experimental scorers, its metrics, its quick mode and its plan.

Scorers are checked against brute force on materialised delta-W (tiny random
shapes, rtol 1e-8); the evaluation's top-1 and average precision against a
leave-one-out computed here on the same similarity matrices; the quick mode
against a planted exact duplicate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from support import ROOT

WILD = ROOT / "benchmarks" / "wild"
DATA = ROOT / "data" / "wild"
sys.path.insert(0, str(WILD))

import evaluate  # noqa: E402
import generate  # noqa: E402
import scorers  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
SHAPES = {"m.a": (7, 5), "m.b": (9, 11), "m.c": (6, 6)}


def random_loras(seed: int = 0) -> list[SimpleNamespace]:
    """Five LoRAs of ranks 1-4 and various scales; the last lacks module m.b."""
    rng = np.random.default_rng(seed)
    loras = []
    for i, (rank, scale) in enumerate(zip([1, 2, 3, 4, 2], [0.5, 2.0, 1.0, 0.25, 3.0])):
        modules = {}
        for name, (out, inn) in SHAPES.items():
            if i == 4 and name == "m.b":
                continue
            up, down = rng.standard_normal((out, rank)), rng.standard_normal((rank, inn))
            modules[name] = SimpleNamespace(up=up, down=down, scale=scale)
        loras.append(SimpleNamespace(modules=modules))
    return loras


def dense(lora, name: str) -> np.ndarray:
    m = lora.modules.get(name)
    return np.zeros(SHAPES[name]) if m is None else m.scale * m.up @ m.down


def brute_normalised(loras, kind: str, centre: bool = False) -> np.ndarray:
    n = len(loras)
    K = np.zeros((n, n))
    for name in SHAPES:
        F = [dense(lora, name) for lora in loras]
        F = [f if kind == "delta" else f @ f.T for f in F]
        if centre and kind == "gram":
            F = [g - np.trace(g) / len(g) * np.eye(len(g)) for g in F]
        for i in range(n):
            for j in range(n):
                ni, nj = np.linalg.norm(F[i]), np.linalg.norm(F[j])
                K[i, j] += 0.0 if ni == 0 or nj == 0 else np.sum(F[i] * F[j]) / (ni * nj)
    return K


def brute_subspace(loras, k: int | None) -> np.ndarray:
    n = len(loras)
    K = np.zeros((n, n))
    for name in SHAPES:
        P, widths = [], []
        for lora in loras:
            m = lora.modules.get(name)
            if m is None:
                P.append(None)
                widths.append(0)
                continue
            kk = m.up.shape[1] if k is None else min(k, m.up.shape[1])
            u = np.linalg.svd(dense(lora, name))[0][:, :kk]
            P.append(u @ u.T)
            widths.append(kk)
        for i in range(n):
            for j in range(n):
                if P[i] is not None and P[j] is not None:
                    K[i, j] += np.trace(P[i] @ P[j]) / np.sqrt(widths[i] * widths[j])
    return K / len(SHAPES)


@pytest.mark.parametrize("kind", ["gram", "delta"])
@pytest.mark.parametrize("centre", [False, True])
def test_per_module_normalised_kernels_equal_brute_force(kind, centre):
    loras = random_loras()
    np.testing.assert_allclose(
        scorers.normalised_kernel(loras, kind, centre=centre), brute_normalised(loras, kind, centre), rtol=1e-8
    )


@pytest.mark.parametrize("kind", ["gram", "delta"])
def test_module_kernel_equals_brute_force_inner_products(kind):
    loras = random_loras(1)
    F = [dense(lora, "m.b") for lora in loras]
    F = [f if kind == "delta" else f @ f.T for f in F]
    want = np.array([[np.sum(a * b) for b in F] for a in F])
    np.testing.assert_allclose(scorers.module_kernel(loras, "m.b", kind), want, rtol=1e-8)


@pytest.mark.parametrize("k", [None, 1, 2])
def test_subspace_overlap_equals_brute_force(k):
    loras = random_loras(2)
    got = scorers.subspace_kernel(loras, k=k)
    np.testing.assert_allclose(got, brute_subspace(loras, k), rtol=1e-8)
    assert np.allclose(np.diag(got)[:4], 1.0)
    assert np.isclose(got[4, 4], 2 / 3)  # the LoRA without m.b


def test_left_singular_basis_is_orthonormal_and_the_svd_subspace():
    rng = np.random.default_rng(3)
    up, down = rng.standard_normal((8, 3)), rng.standard_normal((3, 10))
    U = scorers.left_singular_basis(up, down, 2)
    ref = np.linalg.svd(up @ down)[0][:, :2]
    np.testing.assert_allclose(U.T @ U, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(U @ U.T, ref @ ref.T, atol=1e-12)
    with pytest.raises(ValueError, match="k="):
        scorers.left_singular_basis(up, down, 4)


def test_cosine_leaves_zero_rows_zero():
    K = np.array([[4.0, 2.0, 0.0], [2.0, 9.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(scorers.cosine(K), [[1, 1 / 3, 0], [1 / 3, 1, 0], [0, 0, 0]])


def brute_loo(S: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 hit and average precision of every query, ranking the others by S (ties: lower index first)."""
    n = len(labels)
    hits, aps = np.full(n, np.nan), np.full(n, np.nan)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        rel = np.array([labels[j] == labels[i] for j in others])
        if not rel.any():
            continue
        order = sorted(range(len(others)), key=lambda t: (-S[i, others[t]], t))
        ranked = rel[order]
        hits[i] = ranked[0]
        aps[i] = np.mean([ranked[: r + 1].mean() for r in np.flatnonzero(ranked)])
    return hits, aps


def test_evaluation_equals_brute_force_on_a_random_kernel():
    rng = np.random.default_rng(4)
    labels = np.repeat(["s0", "s1", "s2", "s3"], 3)
    Z = rng.standard_normal((12, 5)) + 1.5 * rng.standard_normal((4, 5))[np.repeat(np.arange(4), 3)]
    S = scorers.cosine(Z @ Z.T)
    rows = [{"set_id": lab, "init_seed": str(i // 2), "run": str(i)} for i, lab in enumerate(labels)]
    res = evaluate.evaluate(S, rows)
    hits, aps = brute_loo(S, labels)
    assert res["per_query_hit"] == [bool(h) for h in hits]
    assert res["top1"] == pytest.approx(hits.mean()) and res["map"] == pytest.approx(aps.mean())
    assert res["top1_ci"][0] <= res["top1"] <= res["top1_ci"][1]
    assert res["map_ci"][0] <= res["map"] <= res["map_ci"][1]
    # items 2i and 2i+1 share an init seed; with sets of 3, the pairs (0, 1), (4, 5), (6, 7), (10, 11) are same-set too
    same_seed_same_set = {i for i in range(12) for j in range(12) if i != j and i // 2 == j // 2 and i // 3 == j // 3}
    keep = [i for i in range(12) if i not in same_seed_same_set]
    assert res["n_queries_other_init"] == len(keep)
    assert res["top1_other_init"] == pytest.approx(hits[keep].mean())
    assert evaluate.bootstrap_map(aps, labels) == evaluate.bootstrap_map(aps, labels)  # fixed seed


def test_plan_varies_what_strangers_vary():
    plan = json.loads((ROOT / "data" / "plan.json").read_text())
    sets = generate.select_training_sets(plan, 12)
    assert len({s.spec["artist"] for s in sets}) == 12 and len({s.style for s in sets}) == 12
    loras = generate.plan_loras(sets, generate.RUNS)
    runs = {(p.set.id, p.run.name): (p.init_seed, p.seed) for p in loras}
    assert len({v[0] for v in runs.values()}) == len(runs) == len({v[1] for v in runs.values()})
    for s in sets:
        mine = [p for p in loras if p.set is s]
        assert len({p.run.name for p in mine}) >= 5
        assert len({p.layout for p in mine}) == 2 and len({p.dtype for p in mine}) == 3
    assert {p.run.rank for p in loras} == {2, 4, 8, 16}
    assert any(p.run.alpha != p.run.rank for p in loras) and len({p.run.lr for p in loras}) >= 3
    assert len({p.file for p in loras}) == len(loras)


@pytest.mark.skipif(not (DATA / "manifest.csv").exists(), reason="needs data/wild (benchmarks/wild/generate.py)")
def test_scorers_on_real_files_equal_brute_force():
    from lorastyle.io.formats import load_lora

    rows = evaluate.read_manifest(DATA)
    picked = [r for r in rows if r["set_id"] == rows[0]["set_id"]][:3] + [rows[-1]]
    loras = [load_lora(DATA / r["file"]) for r in picked]
    names = scorers.module_names(loras)[::10]
    small = [SimpleNamespace(modules={n: lora.modules[n] for n in names}) for lora in loras]
    K = np.zeros((4, 4))
    for name in names:
        F = [m.scale * m.up.astype(np.float64) @ m.down.astype(np.float64) for m in (x.modules[name] for x in small)]
        G = [f @ f.T for f in F]
        K += np.array([[np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b) for b in G] for a in G])
    np.testing.assert_allclose(scorers.normalised_kernel(small, "gram"), K, rtol=1e-8)


@pytest.mark.skipif(not (DATA / "manifest.csv").exists(), reason="needs data/wild (benchmarks/wild/generate.py)")
def test_quick_mode_matches_brute_force_and_finds_the_planted_duplicate(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(WILD / "evaluate.py"),
            "--quick",
            "--out",
            str(tmp_path),
            "--tmp",
            str(tmp_path),
            "--matrices",
            str(tmp_path / "m.npz"),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "wild.json").read_text())
    assert data["benchmark"] == "wild" and data["quick"] is True and data["n_loras"] == 13
    m = np.load(tmp_path / "m.npz")
    labels = m["labels"]
    (dup,) = m["planted"]
    src = 0  # the duplicated LoRA is the first of the subset
    rank4 = m["rank4"]
    for key in m.files:
        if "/" not in key:
            continue
        table, name = key.split("/", 1)
        S = m[key]
        lab = labels if table == "all" else labels[rank4]
        hits, aps = brute_loo(S, lab)
        res = data[table][name]
        assert res["per_query_hit"] == [None if np.isnan(h) else bool(h) for h in hits], key
        assert res["top1"] == pytest.approx(np.nanmean(hits)) and res["map"] == pytest.approx(np.nanmean(aps)), key
        if "colour" in name:
            continue
        i, j = (dup, src) if table == "all" else (list(rank4).index(dup), list(rank4).index(src))
        others = [t for t in range(len(S)) if t != i]
        assert others[int(np.argmax(S[i, others]))] == j, key  # the duplicate's nearest LoRA is its original
        assert S[i, j] == pytest.approx(1.0, abs=1e-6), key
    md = (tmp_path / "wild.md").read_text()
    assert md.startswith("### WILD: ") and "(quick mode" in md and "| concat |" in md
