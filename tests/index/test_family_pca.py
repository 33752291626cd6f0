"""A family's PCA in an index: the PCA of its sketches, kept while its files are unchanged, nothing n x n."""

import json
import os

import numpy as np
import pytest
from sklearn.decomposition import PCA

from lorastyle.embedding import calibration_factors
from lorastyle.errors import IncomparableLorasError
from lorastyle.index import LoraIndex, build_index
from lorastyle.index.ann import ANN_MIN_RECORDS
from lorastyle.index.records import read_record
from lorastyle.io.formats import save_lora
from lorastyle.io.safetensors import read_safetensors, write_safetensors
from support import index_of_format

UNET = [f"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_{p}" for p in "qkv"]
TE = ["text_encoder.text_model.encoder.layers.0.self_attn.q_proj"]


def write(path, seed, *, with_te=True):
    rng = np.random.default_rng(seed)
    style = np.random.default_rng(seed % 3).standard_normal((16, 4))  # three styles, shared up factors
    names = UNET + (TE if with_te else [])
    factors = {n: (0.1 * rng.standard_normal((4, 16)), style + 0.3 * rng.standard_normal((16, 4))) for n in names}
    save_lora(
        path, {n: (a.astype(np.float32), b.astype(np.float32)) for n, (a, b) in factors.items()}, alpha=4.0, base="tiny"
    )
    return str(path)


@pytest.fixture
def folder(tmp_path):
    """24 files of one family, a third of them without the text encoder (zero sketch on that part)."""
    return [write(tmp_path / f"l{i:02d}.safetensors", i, with_te=i % 3 != 0) for i in range(24)]


def dense_features(group):
    n = len(group.records)
    return np.asarray(group.matrix.features[np.arange(n)], dtype=np.float64)


def test_the_pca_is_scikit_learns_pca_of_the_sketches_and_calibrated_by_leave_one_out(folder):
    index, _, _ = build_index(folder, descriptor="delta", n_components=4)
    (group,) = index.groups.values()
    X = dense_features(group)
    reference = PCA(n_components=4, svd_solver="full").fit(X)
    signs = np.sign((group.embedding.embedding_ * reference.transform(X)).sum(axis=0))
    scale = np.abs(reference.transform(X)).max()  # the products are float32: agreement to 1e-5 of the scale
    np.testing.assert_allclose(group.embedding.embedding_, reference.transform(X) * signs, rtol=0, atol=1e-5 * scale)
    # below 100 files the calibration is leave-one-out on every file: the kernel implementation's
    np.testing.assert_allclose(
        group.embedding.calibration_, calibration_factors(X @ X.T, 4, n_calibration=24, random_state=0), rtol=1e-6
    )


def test_pca_scores_of_a_new_file_follow_the_calibrated_projection(folder, tmp_path):
    index, _, _ = build_index(folder[:-1], descriptor="delta", n_components=4)
    (group,) = index.groups.values()
    query = read_record(folder[-1], sketcher=index.sketcher, descriptor="delta")
    found = index.similar(query, k=5, scorer="pca")
    X = dense_features(group)
    reference = PCA(n_components=4, svd_solver="full").fit(X)
    q = np.concatenate(
        [
            query.norms.get(p, 0) * query.sketches[p].astype(np.float32)
            if p in query.sketches
            else np.zeros(index.sketcher.dim)
            for p in group.matrix.parts
        ]
    )
    signs = np.sign((group.embedding.embedding_ * reference.transform(X)).sum(axis=0))
    z = reference.transform(q[None, :])[0] * signs * group.embedding.calibration_
    Z = group.embedding.embedding_
    scores = Z @ z / (np.linalg.norm(Z, axis=1) * np.linalg.norm(z))
    order = np.argsort(-scores)[:5]
    assert [r["path"] for r in found] == [group.records[i].path for i in order]
    np.testing.assert_allclose([r["score"] for r in found], scores[order], rtol=1e-5)


class Passes:
    """A progress callable that records what each pass was given."""

    def __init__(self):
        self.seen = {}

    def __call__(self, items, desc="", total=None):
        items = list(items)
        self.seen[desc] = len(items)
        return items


def test_a_rerun_keeps_the_fit_of_unchanged_families_and_refits_a_changed_one(folder, tmp_path):
    index, _, _ = build_index(folder, descriptor="delta", n_components=4)
    index.save(tmp_path / "index.safetensors")
    previous = LoraIndex.load(tmp_path / "index.safetensors")
    passes = Passes()
    again, _, stats = build_index(folder, descriptor="delta", n_components=4, previous=previous, progress=passes)
    assert stats.read == 0 and passes.seen["fitting PCA per base family"] == 0
    (before,), (after,) = index.groups.values(), again.groups.values()
    np.testing.assert_array_equal(after.embedding.embedding_, before.embedding.embedding_)
    # other settings: refitted
    passes = Passes()
    build_index(folder, descriptor="delta", n_components=3, previous=previous, progress=passes)
    assert passes.seen["fitting PCA per base family"] == 1
    # one file rewritten: its family is refitted
    write(folder[5], 99)
    passes = Passes()
    changed, _, stats = build_index(folder, descriptor="delta", n_components=4, previous=previous, progress=passes)
    assert stats.read == 1 and passes.seen["fitting PCA per base family"] == 1
    (refit,) = changed.groups.values()
    assert not np.allclose(np.abs(refit.embedding.embedding_), np.abs(before.embedding.embedding_))


def test_an_index_of_format_2_is_read_and_its_pca_is_left_for_the_next_run(folder, tmp_path):
    index, _, _ = build_index(folder, descriptor="delta", n_components=4)
    index.save(tmp_path / "index.safetensors")
    tensors, meta = read_safetensors(tmp_path / "index.safetensors")
    old = {k: v for k, v in tensors.items() if "/pca/" not in k}
    old["g0/pca/dual_coef_"] = np.zeros((24, 4))  # format 2 kept a kernel PCA: not read
    write_safetensors(tmp_path / "old.safetensors", *index_of_format(old, meta, "lorastyle-index-2"))
    loaded = LoraIndex.load(tmp_path / "old.safetensors")
    query = read_record(folder[0], sketcher=loaded.sketcher, descriptor="delta")
    assert len(loaded.similar(query, k=3)) == 3  # the sketches are used as they are
    with pytest.raises(IncomparableLorasError, match="re-run `lorastyle index`"):
        loaded.similar(query, k=3, scorer="pca")
    assert loaded.fitted_with is None


def test_a_pca_of_the_wrong_width_is_a_damaged_index(folder, tmp_path):
    index, _, _ = build_index(folder, descriptor="delta", n_components=4)
    index.save(tmp_path / "index.safetensors")
    tensors, meta = read_safetensors(tmp_path / "index.safetensors")
    tensors["g0/pca/components_"] = tensors["g0/pca/components_"][:, :-1]
    tensors["g0/pca/mean_"] = tensors["g0/pca/mean_"][:-1]
    write_safetensors(tmp_path / "bad.safetensors", tensors, meta)
    from lorastyle.errors import LoraFormatError

    with pytest.raises(LoraFormatError, match="the PCA embedding's size"):
        LoraIndex.load(tmp_path / "bad.safetensors")
    assert json.loads(meta["fitted_with"]) == [4, True, 0, ANN_MIN_RECORDS]


def test_a_familys_sketches_are_held_once(folder):
    """Stacking takes the records' sketches over: each record's sketch is a view of its row, not a copy."""
    index, _, _ = build_index(folder, descriptor="delta", n_components=2)
    (group,) = index.groups.values()
    for i, record in enumerate(group.records):
        for part, sketch in record.sketches.items():
            assert np.shares_memory(sketch, group.matrix.unit[part])
            np.testing.assert_array_equal(sketch, group.matrix.unit[part][i])


def test_the_familys_null_is_kept_in_the_index_and_checked(folder, tmp_path, monkeypatch):
    """A query's p-values come from the null made when the index was: the same as one made again."""
    import lorastyle.index.store as store
    from lorastyle.errors import LoraFormatError
    from lorastyle.index.null import family_null

    index, _, _ = build_index(folder[:-1], descriptor="delta", n_components=2)
    index.save(tmp_path / "index.safetensors")
    loaded = LoraIndex.load(tmp_path / "index.safetensors")
    (group,) = loaded.groups.values()
    again = family_null(group.matrix)
    np.testing.assert_array_equal(group.null.scores, again.scores)
    assert group.null.n_pairs == 23 * 22 // 2 and not group.null.sampled
    query = read_record(folder[-1], sketcher=loaded.sketcher, descriptor="delta")
    monkeypatch.setattr(store, "family_null", lambda *a, **k: pytest.fail("the null was made again"))
    found = loaded.similar(query, k=5)
    assert [r["p_value"] for r in found] == [again.p_value(r["score"]) for r in found]
    tensors, meta = read_safetensors(tmp_path / "index.safetensors")
    for bad in (tensors["g0/null"][::-1].copy(), tensors["g0/null"][:-1], np.full_like(tensors["g0/null"], np.nan)):
        write_safetensors(tmp_path / "bad.safetensors", {**tensors, "g0/null": bad}, meta)
        with pytest.raises(LoraFormatError, match="the family's null"):
            LoraIndex.load(tmp_path / "bad.safetensors")


def test_an_unchanged_rerun_does_not_write_the_index_again(folder, tmp_path, monkeypatch):
    """The index file of an unchanged folder is left as it is; a changed file, or an older format, rewrites it.

    And each unchanged file is asked about once (the walk's ``stat``; the build asked again before).
    """
    from lorastyle.index import index_folder

    root = tmp_path
    out = tmp_path / "out" / "library.index"
    out.parent.mkdir()
    index_folder(root, out, descriptor="delta", n_components=4)
    first = os.stat(out)
    asked = []
    real_stat = os.stat

    def counted(path, *args, **kwargs):
        if os.fspath(path) in folder:
            asked.append(os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counted)
    run = index_folder(root, out, descriptor="delta", n_components=4)
    monkeypatch.setattr(os, "stat", real_stat)
    assert sorted(asked) == sorted(folder)  # once each
    again = os.stat(out)
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # not written
    assert run.stats.read == 0 and sorted(run.index.paths) == sorted(folder) and not run.written
    # an index of format 3 is rewritten in this format, even with nothing changed
    tensors, meta = read_safetensors(out)
    write_safetensors(out, *index_of_format(tensors, meta, "lorastyle-index-3"))
    index_folder(root, out, descriptor="delta", n_components=4)
    assert read_safetensors(out)[1]["format"] == LoraIndex.load(out).loaded_format == "lorastyle-index-4"
    before = os.stat(out)
    write(folder[3], 1234)  # one file changed: written
    run = index_folder(root, out, descriptor="delta", n_components=4)
    assert run.stats.read == 1 and os.stat(out).st_mtime_ns != before.st_mtime_ns
