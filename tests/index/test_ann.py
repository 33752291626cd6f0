"""The ANN index: candidates from faiss, re-ranked exactly; checked against brute-force search."""

import os

import numpy as np
import pytest

from lorastyle.index import LoraIndex, build_index
from lorastyle.index.ann import AnnIndex, choose_n_lists
from lorastyle.index.sketches import Sketcher
from support import ROOT


def clustered(rng, n, d=64, clusters=300, noise=0.8):
    centres = rng.standard_normal((clusters, d))
    X = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, d))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def brute_top(X, Q, k):
    return np.argsort(-(Q @ X.T), axis=1)[:, :k]


def test_recall_on_new_queries_against_brute_force():
    rng = np.random.default_rng(0)
    data = clustered(rng, 20_200)
    X, Q = data[:20_000], data[20_000:]  # queries the index never saw
    ann = AnnIndex(reduce_dim=32, target_recall=0.95).fit(X)
    assert ann.centroids_.shape[0] == choose_n_lists(20_000)
    assert ann.recall_ >= 0.95 or ann.n_probe_ == ann.centroids_.shape[0]
    found = ann.search(Q, 10, X=X)
    truth = brute_top(X, Q, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.9
    # scores come from X, not the projection: each answer is sorted by its exact inner product
    for f, q in zip(found, Q, strict=True):
        exact = X[f] @ q
        assert np.all(np.diff(exact) <= 1e-6)
    # more probes never lose recall: with every list probed the candidates are the projection's exact top
    ann.n_probe_ = ann.centroids_.shape[0]
    full = ann.search(Q, 10, X=X)
    assert np.mean([len(set(f) & set(t)) / 10 for f, t in zip(full, truth, strict=True)]) >= recall


def test_choose_n_lists_follows_the_size():
    assert choose_n_lists(10**6) == 4096  # 4 * sqrt(n) = 4000
    assert choose_n_lists(10**4) == 256  # 4 * sqrt(n) = 400, but at least 39 points per list
    assert choose_n_lists(10) == 1


def test_state_round_trip_and_damaged_state():
    rng = np.random.default_rng(1)
    X = clustered(rng, 3000, d=16)
    ann = AnnIndex(reduce_dim=8).fit(X)
    again = AnnIndex.from_state(ann.get_state())
    Q = X[:20]
    assert all((a == b).all() for a, b in zip(ann.search(Q, 5, X=X), again.search(Q, 5, X=X), strict=True))
    bad = ann.get_state()
    bad["lists"] = bad["lists"].copy()
    bad["lists"][0] = 10**6
    with pytest.raises(ValueError, match="do not fit"):
        AnnIndex.from_state(bad)


WILD = ROOT / "data" / "wild" / "loras"


@pytest.mark.skipif(not WILD.is_dir(), reason="needs data/wild")
def test_index_with_ann_answers_as_exact_search(tmp_path):
    """Through the index: several lists and few candidates, so that the ANN index does choose.

    Scores stay exact (each returned score is the exact one of that file), the answer mostly agrees
    with exact search, fewer rows are scored than the group holds, and a saved index answers as
    the one in memory.
    """
    paths = sorted(str(WILD / n) for n in os.listdir(WILD))
    exact, _, _ = build_index(paths, sketcher=Sketcher(dim=1024, module_dim=256))
    approx, _, _ = build_index(paths, sketcher=Sketcher(dim=1024, module_dim=256), ann_min_records=10)
    (group,) = approx.groups.values()
    assert group.ann is not None and next(iter(exact.groups.values())).ann is None
    group.ann = AnnIndex(n_lists=4, candidates=12, k=5, reduce_dim=64).fit(group.matrix.full)
    assert group.ann.n_probe_ < 4  # the tuned search does not visit every list
    approx.save(tmp_path / "i.safetensors")
    loaded = LoraIndex.load(tmp_path / "i.safetensors")
    assert next(iter(loaded.groups.values())).ann is not None
    found = []
    for query in exact.records:
        want = {r["path"]: r["score"] for r in exact.similar(query, k=len(exact.records))}
        top = list(want)[:5]
        got = approx.similar(query, k=5)
        assert len(group.ann.candidates_of(group.matrix.full_vector(query.sketches, query.norms))) <= 12 < 72
        for r in got:
            assert r["score"] == pytest.approx(want[r["path"]], abs=1e-12)
        assert [r["score"] for r in got] == sorted((r["score"] for r in got), reverse=True)
        found.append(len({r["path"] for r in got} & set(top)) / 5)
        assert loaded.similar(query, k=5) == got
    assert np.mean(found) >= 0.8  # recall@5 of the ANN answer
