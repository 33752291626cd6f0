"""A streamed concat index (memory flat in the number of files) against the exact in-memory fit.

The reference is scikit-learn's PCA of the whole concat matrix (what :func:`build_index` runs
when the vectors fit its memory budget), and :func:`concat_vectors` for the vectors.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from sklearn.decomposition import PCA

import lorastyle.index._old as index_module
from lorastyle.descriptors import concat_vectors
from lorastyle.embedding import calibration_factors
from lorastyle.index import SKETCH_DIM, LoraCache, LoraIndex, build_index, index_folder
from lorastyle.io.formats import load_lora, save_lora

MODULES = [f"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn{a}.to_{p}" for a in (1, 2) for p in "qkv"]


def collection(folder, n, *, width=16, rank=4, n_styles=3, noise=0.3, seed=0, first_rank=None):
    """n LoRAs whose factors are one of n_styles patterns scaled at random, plus noise.

    The leading principal components are then well separated (low rank plus noise), as
    in a collection of styles. ``first_rank`` gives the first file (in sorted order)
    another rank, so that it is not of the majority.
    """
    rng = np.random.default_rng(seed)
    styles = [
        {m: (rng.standard_normal((rank, width)), rng.standard_normal((width, rank))) for m in MODULES}
        for _ in range(n_styles)
    ]
    paths = []
    for i in range(n):
        weights = rng.standard_normal(n_styles)
        factors = {}
        for m in MODULES:
            A = sum(w * s[m][0] for w, s in zip(weights, styles)) + noise * rng.standard_normal((rank, width))
            B = sum(w * s[m][1] for w, s in zip(weights, styles)) + noise * rng.standard_normal((width, rank))
            factors[m] = (A.astype(np.float32), B.astype(np.float32))
        if i == 0 and first_rank is not None:
            factors = {
                m: (np.ones((first_rank, width), np.float32), np.ones((width, first_rank), np.float32)) for m in MODULES
            }
        path = str(folder / f"l{i:03d}.safetensors")
        save_lora(path, factors, alpha=float(rank), base="tiny", layout="kohya")
        paths.append(path)
    return paths


def same_up_to_sign(a, b, rtol):
    signs = np.sign(np.sum(a * b, axis=0))
    err = np.abs(a - b * signs).max() / np.abs(b).max()
    assert err < rtol, f"largest difference {err:.2e} of the largest value"


def small_budget(paths):
    """A budget of about three vectors: the fit streams."""
    return 3 * 4 * concat_vectors([load_lora(paths[0])]).shape[1]


def test_concat_row_is_concat_vectors(tmp_path):
    paths = collection(tmp_path, 3)
    for path in paths:
        lora = load_lora(path)
        np.testing.assert_array_equal(index_module._concat_row(lora), concat_vectors([lora])[0])


def test_exact_path_is_sklearn_pca_and_records_no_streaming(tmp_path):
    paths = collection(tmp_path, 12)
    index, skipped = build_index(paths, n_components=3)
    assert skipped == [] and not hasattr(index.embedding, "fit_method_")
    X = concat_vectors([load_lora(p) for p in paths])
    same_up_to_sign(index.embedding.embedding_, PCA(n_components=3, svd_solver="full").fit_transform(X), rtol=1e-5)


def test_streamed_equals_exact_when_the_sketch_is_lossless(tmp_path):
    """Vectors shorter than SKETCH_DIM fold without collisions: the sketched kernel is exact, so is the fit."""
    paths = collection(tmp_path, 30)
    X = concat_vectors([load_lora(p) for p in paths])
    assert X.shape[1] <= SKETCH_DIM
    exact, _ = build_index(paths, n_components=4)
    streamed, skipped = build_index(paths, n_components=4, memory_budget=small_budget(paths))
    assert skipped == [] and streamed.embedding.fit_method_ == "streamed"
    assert streamed.paths == exact.paths and streamed.sha256 == exact.sha256
    ref = PCA(n_components=4, svd_solver="full").fit(X.astype(np.float64))
    same_up_to_sign(streamed.embedding.embedding_, ref.transform(X), rtol=1e-4)
    same_up_to_sign(streamed.embedding.pca_.components_.T, ref.components_.T, rtol=1e-4)
    np.testing.assert_allclose(streamed.embedding.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-4)
    # calibration from the (here exact) kernel, against the function on X X^T
    Xd = X.astype(np.float64)
    np.testing.assert_allclose(
        streamed.embedding.calibration_, calibration_factors(Xd @ Xd.T, 4, random_state=0), rtol=1e-4
    )
    np.testing.assert_allclose(streamed.embedding.pca_.mean_, X.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_streamed_is_close_to_exact_when_the_sketch_folds(tmp_path):
    """Long vectors (4x SKETCH_DIM): the sketch is an estimate; leading scores and calibration stay close."""
    paths = collection(tmp_path, 40, width=700, rank=4, n_styles=3, noise=0.5)
    X = concat_vectors([load_lora(p) for p in paths])
    assert X.shape[1] > 4 * SKETCH_DIM
    exact, _ = build_index(paths, n_components=3)
    streamed, _ = build_index(paths, n_components=3, memory_budget=small_budget(paths))
    assert streamed.embedding.fit_method_ == "streamed"
    a, b = streamed.embedding.embedding_, exact.embedding.embedding_
    for j in range(3):  # one score per style direction: correlation with the exact score
        assert abs(np.corrcoef(a[:, j], b[:, j])[0, 1]) > 0.999
    np.testing.assert_allclose(
        streamed.embedding.explained_variance_ratio_, exact.embedding.explained_variance_ratio_, rtol=0.01
    )
    np.testing.assert_allclose(streamed.embedding.calibration_, exact.embedding.calibration_, rtol=0.05)


def test_streamed_index_saves_loads_and_projects_like_exact(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    paths = collection(folder, 20, seed=3)
    query = collection(tmp_path, 1, seed=4)[0]  # not in the index
    budget = small_budget(paths)
    run = index_folder(folder, tmp_path / "s.safetensors", n_components=3, memory_budget=budget)
    exact = index_folder(folder, tmp_path / "e.safetensors", n_components=3)
    streamed = LoraIndex.load(tmp_path / "s.safetensors")
    assert run.index.embedding.fit_method_ == "streamed"
    p_s, p_e = streamed.project(load_lora(query)), exact.index.project(load_lora(query))
    np.testing.assert_allclose(np.abs(p_s), np.abs(p_e), rtol=1e-4, atol=1e-5 * np.abs(p_e).max())
    assert [r["path"] for r in streamed.similar(load_lora(query), k=5)] == [
        r["path"] for r in exact.index.similar(load_lora(query), k=5)
    ]
    # a second run reads every file from the cache, in each pass, and gives the same index
    again = index_folder(folder, tmp_path / "s.safetensors", n_components=3, memory_budget=budget)
    assert again.from_cache == 20
    np.testing.assert_allclose(again.index.embedding.embedding_, run.index.embedding.embedding_, rtol=1e-6)


def test_first_file_not_of_the_majority_is_skipped_and_fit_is_unchanged(tmp_path):
    paths = collection(tmp_path, 16, first_rank=8)
    budget = small_budget(paths[1:])
    streamed, skipped = build_index(paths, n_components=3, memory_budget=budget)
    exact, _ = build_index(paths[1:], n_components=3)
    assert [p for p, _ in skipped] == [paths[0]] and "its rank is 8 where theirs is 4" in skipped[0][1]
    assert streamed.paths == paths[1:]
    same_up_to_sign(streamed.embedding.embedding_, exact.embedding.embedding_, rtol=1e-4)
    # and in memory (the first file's vector was taken, then the majority refitted)
    in_memory, skipped = build_index(paths, n_components=3)
    assert in_memory.paths == paths[1:]
    np.testing.assert_allclose(in_memory.embedding.embedding_, exact.embedding.embedding_, rtol=1e-6, atol=1e-9)


def test_file_changed_between_passes_is_skipped_with_a_reason(tmp_path, monkeypatch):
    paths = collection(tmp_path, 12)
    victim = paths[5]
    real_load, calls = index_module.load_lora, {}

    def load_and_change_on_the_second_read(path):
        calls[path] = calls.get(path, 0) + 1
        lora = real_load(path)
        if os.fspath(path) == victim and calls[path] == 2:
            os.utime(victim, ns=(1, 1))  # a new mtime: as if rewritten after the first pass
        return lora

    monkeypatch.setattr(index_module, "load_lora", load_and_change_on_the_second_read)
    index, skipped = build_index(paths, n_components=3, memory_budget=small_budget(paths))
    assert skipped == [(victim, "the file changed or vanished while it was being read")]
    assert victim not in index.paths and len(index.paths) == 11


def test_cache_lookup_of_a_later_pass_is_not_counted(tmp_path):
    paths = collection(tmp_path, 12)
    cache = LoraCache(tmp_path / "cache")
    build_index(paths, n_components=3, cache=cache)
    cache = LoraCache(tmp_path / "cache")
    build_index(paths, n_components=3, cache=cache, memory_budget=small_budget(paths))
    assert (cache.hits, cache.misses) == (12, 0)


def test_memory_budget_must_be_positive(tmp_path):
    paths = collection(tmp_path, 4)
    with pytest.raises(ValueError, match="memory_budget must be at least 1 byte, got 0"):
        build_index(paths, memory_budget=0)


def test_gram64_of_rows_in_chunks_is_the_float64_gram():
    rng = np.random.default_rng(1)
    sketches = [rng.normal(size=3000).astype(np.float32) for _ in range(7)]
    S = np.stack(sketches).astype(np.float64)
    # 7 rows x 8 bytes x 100 columns per chunk: 30 chunks, the last one short
    np.testing.assert_allclose(index_module._gram64(sketches, chunk_bytes=5600), S @ S.T, rtol=1e-12)
    np.testing.assert_allclose(index_module._gram64(np.stack(sketches), chunk_bytes=5600), S @ S.T, rtol=1e-12)
