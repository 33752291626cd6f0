"""Scores of a family's sketches: blocks of pairs against every pair at once (brute force)."""

import numpy as np
import pytest

from lorastyle.index.search import SketchMatrix, SketchRows
from support import ROOT

# float16 keeps 11 bits: a stored unit sketch's norm is 1 within about 1e-3, which the scores inherit
TOL = 2e-3


def matrix(n=150, dim=48, seed=0):
    rng = np.random.default_rng(seed)
    unit, norms = {}, {}
    for p in ("text_encoder", "unet"):
        V = rng.standard_normal((n, dim)) + 2 * rng.standard_normal(dim)  # correlated rows: scores spread out
        V /= np.linalg.norm(V, axis=1, keepdims=True)
        unit[p] = V.astype(np.float16)
        norms[p] = np.abs(rng.standard_normal(n)) * (rng.random(n) > 0.25)  # a quarter lack each part
    return SketchMatrix(parts=("text_encoder", "unet"), unit=unit, norms=norms)


def brute_force(m: SketchMatrix) -> np.ndarray:
    """Each pair's score from its definition: the cosine of the full sketches over the parts both have."""
    n = len(m)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            shared = [p for p in m.parts if m.norms[p][i] > 0 and m.norms[p][j] > 0]
            x = np.concatenate([m.norms[p][i] * m.unit[p][i].astype(np.float64) for p in shared] or [np.zeros(1)])
            y = np.concatenate([m.norms[p][j] * m.unit[p][j].astype(np.float64) for p in shared] or [np.zeros(1)])
            den = np.linalg.norm(x) * np.linalg.norm(y)
            out[i, j] = x @ y / den if den > 0 else 0.0
    return out


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_pairs_at_least_finds_every_pair_above_the_threshold_block_by_block(block):
    m = matrix()
    reference = brute_force(m)
    i, j, scores = m.pairs_at_least(0.3, block=block)
    assert np.all(i < j) and list(zip(i, j)) == sorted(zip(i, j))
    iu = np.triu_indices(len(m), 1)
    want = reference[iu] >= 0.3
    assert 0 < want.sum() < len(want)  # the threshold splits the pairs: the test could fail
    # float16 unit sketches are unit to 1e-3: pairs that close to the threshold may fall either way
    clear = np.abs(reference[iu] - 0.3) > TOL
    found = set(zip(i.tolist(), j.tolist()))
    for a, b, w in zip(iu[0][clear].tolist(), iu[1][clear].tolist(), want[clear]):
        assert ((a, b) in found) == w
    np.testing.assert_allclose(scores, reference[i, j], atol=TOL)


def test_cosine_blocks_agree_with_each_row_and_with_brute_force():
    m = matrix(n=40)
    reference = brute_force(m)
    np.testing.assert_allclose(m.cosine_matrix(), reference, atol=TOL)
    rows, cols = np.array([3, 0, 17]), np.array([5, 39, 3, 8])
    np.testing.assert_allclose(m.cosine_block(rows, cols), reference[np.ix_(rows, cols)], atol=TOL)
    for r in rows:
        q = {p: m.unit[p][r] for p in m.parts if m.norms[p][r] > 0}
        np.testing.assert_allclose(m.cosines(q, {p: m.norms[p][r] for p in q}), reference[r], atol=TOL)


def test_sketch_rows_hold_sketches_in_blocks_freed_once_stacked():
    """Records' sketches live in a few blocks while read, and a block goes once its records are stacked."""
    import gc
    import weakref
    from types import SimpleNamespace

    rng = np.random.default_rng(1)
    records = [
        SimpleNamespace(
            sketches={"unet": rng.standard_normal(16).astype(np.float16)}, norms={"unet": 1.0}, parts=("unet",)
        )
        for _ in range(5)
    ]
    values = [r.sketches["unet"].copy() for r in records]
    rows = SketchRows()
    for r in records:
        rows.take(r)
    block = records[0].sketches["unet"].base
    assert all(r.sketches["unet"].base is block for r in records)  # one allocation for all five
    for r, v in zip(records, values):
        np.testing.assert_array_equal(r.sketches["unet"], v)
    gone = weakref.ref(block)
    del block
    rows.close()
    matrix = SketchMatrix.of(records)
    gc.collect()
    assert gone() is None  # stacked: the block is released
    np.testing.assert_array_equal(matrix.unit["unet"], np.stack(values))


def test_pairs_at_least_reports_its_blocks_to_a_progress_bar():
    m = matrix(n=50)
    seen = []

    def progress(items, desc, total):
        seen.append((desc, total))
        return items

    with_bar = m.pairs_at_least(0.3, block=16, progress=progress)
    without = m.pairs_at_least(0.3, block=16)
    assert seen == [("scoring pairs (blocks of rows)", 4)]
    for a, b in zip(with_bar, without):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not (ROOT / "data" / "wild" / "loras").is_dir(), reason="needs data/wild")
def test_scores_estimated_from_a_sketch_prefix_follow_the_exact_ones_on_real_files():
    """The first 1,024 numbers of a real file's sketch estimate its score within about 0.03.

    What duplicates screens a large family's candidate pairs with (NEAR_MARGIN = 0.1): on the wild
    benchmark's 72 real files (12 training sets, so pairs from near 0 to near 1), every pair.
    """
    from lorastyle.index import build_index

    paths = sorted(str(p) for p in (ROOT / "data" / "wild" / "loras").glob("*.safetensors"))
    index, _, _ = build_index(paths)
    (group,) = index.groups.values()
    n = len(group.records)
    i, j = np.triu_indices(n, k=1)
    exact = group.matrix.pair_cosines(i, j)
    V = group.matrix.prefix_vectors(1024)
    estimate = np.einsum("ij,ij->i", V[i], V[j]).astype(np.float64)
    error = estimate - exact
    assert exact.max() > 0.7 and exact.min() < 0.1  # near and unrelated pairs alike
    parts = len(group.matrix.parts)
    assert error.std() < 1.5 / np.sqrt(1024 * parts)  # a random subsample of buckets: about 1 / sqrt(numbers)
    near = exact >= 0.5  # the pairs a screen at a threshold minus 0.1 must keep
    assert near.sum() >= 20 and np.abs(error[near]).max() < 0.1
    # the whole sketch, where both files adapt the same parts: the exact score
    W = group.matrix.prefix_vectors(index.sketcher.dim)
    same_parts = np.array([group.records[a].parts == group.records[b].parts for a, b in zip(i, j)])
    assert same_parts.any()
    whole = np.einsum("ij,ij->i", W[i], W[j])
    np.testing.assert_allclose(whole[same_parts], exact[same_parts], atol=2e-3)


def test_a_large_family_finds_its_near_pairs_as_every_pair_scored_does(monkeypatch):
    """Above NEAR_SEARCH_MIN, near pairs come from estimated nearest neighbours: the same pairs, exact scores.

    The reference is every pair scored, a block at a time. Planted near-duplicates (a file plus noise:
    scores 0.6 to 0.99, some of them chains of three) sit among 3,000 files of 60 clustered styles
    whose ordinary pairs score below 0.5; sketches of 2,048 numbers per part, of which 512 estimate.
    """
    import lorastyle.index.store as store
    from lorastyle.index.store import Group

    rng = np.random.default_rng(2)
    n, dim = 3000, 2048
    centres = rng.standard_normal((60, dim))
    unit, norms = {}, {}
    style = rng.integers(0, 60, n)
    for p in ("text_encoder", "unet"):
        X = centres[style] + 1.5 * rng.standard_normal((n, dim))
        for k in range(150):  # row 2k+1 := a noisy copy of row 2k (the next planted pair may chain to it)
            X[2 * k + 1] = X[2 * k] + rng.uniform(0.2, 1.4) * rng.standard_normal(dim) * np.linalg.norm(
                X[2 * k]
            ) / np.sqrt(dim)
        unit[p] = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float16)
        norms[p] = rng.uniform(0.5, 2.0, n)
    matrix = SketchMatrix(parts=("text_encoder", "unet"), unit=unit, norms=norms)
    every = matrix.pairs_at_least(0.6)
    assert 100 <= len(every[0]) < 400  # the planted pairs, not the styles
    group = Group(key="tiny", records=[None] * n)
    group._matrix = matrix
    monkeypatch.setattr(store, "NEAR_SEARCH_MIN", 1000)
    i, j, s = group.pairs_at_least(0.6)
    truth = dict(zip(zip(every[0].tolist(), every[1].tolist()), every[2].tolist()))
    found = dict(zip(zip(i.tolist(), j.tolist()), s.tolist()))
    assert set(found) <= set(truth) and all(a < b for a, b in found)
    assert all(found[p] == pytest.approx(truth[p], abs=1e-6) for p in found)  # the exact scores
    assert len(found) >= 0.98 * len(truth)
