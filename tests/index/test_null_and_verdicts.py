"""p-values from a family's own pairs, and the verdict of each result, against brute force and the wild benchmark."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from lorastyle.cli import main
from lorastyle.index.null import FamilyNull, family_null
from lorastyle.index.search import SketchMatrix
from lorastyle.index.verdicts import ALPHA, VERDICTS, verdict, verdict_text
from support import DATA


def random_matrix(rng, n=30, dim=64):
    """Unit sketches of two parts; some records lack a part (zero norm), as files adapting only the U-Net do."""
    unit, norms = {}, {}
    for p in ("text_encoder", "unet"):
        X = rng.standard_normal((n, dim)) + 0.5 * rng.standard_normal(dim)  # a shared direction: positive scores
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        unit[p] = X.astype(np.float16)
        norms[p] = rng.uniform(0.5, 3.0, n) * (rng.random(n) > (0.3 if p == "text_encoder" else 0.0))
    return SketchMatrix(parts=("text_encoder", "unet"), unit=unit, norms=norms)


def test_pair_cosines_are_the_cosine_matrix_entries():
    m = random_matrix(np.random.default_rng(0))
    C = m.cosine_matrix()
    a, b = np.triu_indices(len(m), 1)
    np.testing.assert_allclose(m.pair_cosines(a, b), C[a, b], atol=1e-6)
    np.testing.assert_allclose(m.pair_cosines(b, a), C[b, a], atol=1e-6)


def test_the_null_is_every_pair_or_a_sample_of_distinct_pairs():
    m = random_matrix(np.random.default_rng(1))
    C = m.cosine_matrix()
    full = family_null(m)
    assert not full.sampled and full.n_pairs == 30 * 29 // 2 and full.n_files == 30
    np.testing.assert_allclose(full.scores, np.sort(C[np.triu_indices(30, 1)]), atol=1e-6)
    sample = family_null(m, max_pairs=100, seed=3)
    assert sample.sampled and sample.n_pairs == 100
    assert np.all(np.diff(sample.scores) >= 0)
    assert np.isin(np.round(sample.scores, 5), np.round(full.scores, 5)).all()  # each one of the pairs' scores
    np.testing.assert_array_equal(family_null(m, max_pairs=100, seed=3).scores, sample.scores)  # seeded


def test_p_value_is_the_empirical_tail_with_the_plus_one():
    rng = np.random.default_rng(2)
    null = FamilyNull(scores=np.sort(rng.normal(size=200)), n_files=21)
    for s in (-3.0, -0.2, 0.0, 0.7, 5.0, null.scores[10]):
        assert null.p_value(s) == pytest.approx((1 + np.sum(null.scores >= s)) / 201)
    assert null.p_value(10.0) == pytest.approx(1 / 201)
    assert FamilyNull(scores=np.zeros(0), n_files=1).p_value(0.9) == 1.0


def _record(sha="a", shapes=(("m", (4, 4)),), norms=(1.0, 2.0)):
    return SimpleNamespace(sha256=sha, layout=SimpleNamespace(shapes=dict(shapes)), module_norms=np.array(norms))


@pytest.mark.parametrize(
    "other, score, p, want",
    [
        (_record("a"), 0.2, 0.5, "same weights"),  # one sha256, whatever the score
        (_record("b"), 0.9995, 0.001, "same weights"),  # equal module norms, a score of 1
        (_record("b", norms=(1.0, 4.0)), 0.9995, 0.001, "same run"),  # the same directions at another strength
        (_record("b"), 0.8, 0.001, "same run"),  # at or above the near-duplicate threshold
        (_record("b"), 0.3, ALPHA, "related"),
        (_record("b"), 0.3, 0.0101, "nothing close"),
    ],
)
def test_verdicts_in_their_order(other, score, p, want):
    got = verdict(_record("a"), other, score, near_threshold=0.7, p_value=p)
    assert got == want and got in VERDICTS
    text = verdict_text({"verdict": got, "p_value": p})
    assert text.startswith(want) and (("p=" in text) == (want in ("related", "nothing close")))


@pytest.mark.skipif(not (DATA / "wild" / "manifest.csv").exists(), reason="needs data/wild")
def test_p_values_of_the_wild_benchmark_s_unrelated_pairs_are_roughly_uniform(tmp_path):
    """No label made the null; the labels only check it: unrelated pairs' p-values against uniform (scipy's KS)."""
    import csv

    from lorastyle.index import build_index

    with open(DATA / "wild" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    paths = [str(DATA / "wild" / r["file"]) for r in rows]
    index, skipped, _ = build_index(paths, calibrate=False)
    assert not skipped
    (group,) = index.groups.values()
    where = {r.path: i for i, r in enumerate(group.records)}
    order = [where[p] for p in paths]
    C = group.matrix.cosine_matrix()[np.ix_(order, order)]
    null = family_null(group.matrix)
    labels = np.array([r["set_id"] for r in rows])
    a, b = np.triu_indices(len(rows), 1)
    unrelated = labels[a] != labels[b]
    p = np.array([null.p_value(s) for s in C[a, b]])
    ks = stats.kstest(p[unrelated], "uniform").statistic
    assert ks < 0.1, ks
    assert np.mean(p[unrelated] <= 0.05) <= 0.05 and np.mean(p[unrelated] <= ALPHA) <= ALPHA  # conservative
    assert np.mean(p[~unrelated] <= ALPHA) > 5 * ALPHA  # and not blind: same-set pairs are often related


def test_similar_prints_a_verdict_on_every_line_and_json_has_them(tmp_path, capsys):
    from lorastyle.io.formats import save_lora

    rng = np.random.default_rng(4)
    shapes = {"unet.a.to_q": (8, 6), "unet.b.to_k": (8, 8)}
    folder = tmp_path / "f"
    folder.mkdir()
    base = {n: (rng.standard_normal((2, i)), rng.standard_normal((o, 2))) for n, (o, i) in shapes.items()}
    for k in range(6):
        factors = (
            base
            if k < 2
            else {n: (rng.standard_normal((2, i)), rng.standard_normal((o, 2))) for n, (o, i) in shapes.items()}
        )
        save_lora(folder / f"l{k}.safetensors", factors, alpha=2.0, base="sd15")
    index = tmp_path / "i.index"
    assert main(["index", str(folder), "-o", str(index)]) == 0
    capsys.readouterr()
    query = folder / "l0.safetensors"
    assert main(["similar", str(index), str(query), "-k", "5"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert len(lines) == 5
    assert lines[0].split()[1:3] == ["same", "weights"] and lines[0].endswith("l1.safetensors")
    assert all("(exact)" in line for line in lines)  # re-ranked by default: small files
    assert all(("p=" in line) for line in lines[1:])
    assert main(["similar", str(index), str(query), "-k", "5", "--json", "--rerank", "0"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["verdict"] for r in results][0] == "same weights" and all(r["verdict"] in VERDICTS for r in results)
    assert all("exact" not in r for r in results) and all(0 < r["p_value"] <= 1 for r in results)
    assert main(["similar", str(index), str(query), "--rerank", "-1"]) == 2
    assert "error: --rerank: must be at least 0, got -1" in capsys.readouterr().err


def test_similar_help_names_every_verdict_as_printed(capsys):
    assert main(["similar", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for v in VERDICTS:
        printed = verdict_text({"verdict": v, "p_value": 0.5})
        assert printed.split(" (p=")[0] in text, printed
    assert "related (p=...)" in text and "nothing close (p=...)" in text and "p at most 0.01" in text
    assert f"{ALPHA:g}" == "0.01"
