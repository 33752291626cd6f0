"""No rank floor: random files of a real layout at ranks 16-128 are nobody's nearest neighbour, beside the real files.

Before the centred score, one random rank-128 SD 1.x file was the first result of every real file and pushed
the true partners of ``../shared/real-loras`` (the three LoKr dims of one character, the two disney files) to
second or third place (``benchmarks/results/rank_floor.md``).
"""

import json
import os

import numpy as np
import pytest

from lorastyle.cli import main
from lorastyle.index.search import exact_cosines
from lorastyle.index.verdicts import VERDICTS
from lorastyle.io.formats import load_lora
from support import KEY_LAYOUTS, REAL_LORAS
from tools.layouts import layout_shapes, write_layout_file

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not KEY_LAYOUTS.is_dir(), reason="needs ../shared/real-loras and its key layouts"),
]
SHINKAI = "invokeai_stripped__sd1_kohya__shinkai_makoto_offset"
RANKS = (16, 32, 64, 128)
SOURCES = {"lycoris_lokr_sd1_dim": "smart falcon", "cloneofsimo_rank1_with_ti__lora_disney": "disney"}


def source(path) -> str:
    name = os.path.basename(str(path))
    return next((s for prefix, s in SOURCES.items() if name.startswith(prefix)), name)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("floor")
    for real in sorted(REAL_LORAS.glob("*.safetensors")):
        (root / real.name).symlink_to(real)
    shapes = layout_shapes(SHINKAI, KEY_LAYOUTS)
    for i, rank in enumerate(RANKS):
        write_layout_file(root / f"random-rank{rank}.safetensors", shapes, rank=rank, alpha=rank / 2, seed=100 + i)
    return root


@pytest.fixture(scope="module")
def exact(folder):
    """Every real query's exact scores against every other file (real and random)."""
    paths = sorted(folder.glob("*.safetensors"))
    loras = {p: load_lora(p) for p in paths}
    out = {}
    for q in paths:
        if q.name.startswith("random"):
            continue
        others = [p for p in paths if p != q]
        out[q] = dict(zip(others, exact_cosines("gram", loras[q], [loras[p] for p in others])))
    return out


def test_no_random_file_is_a_real_file_s_nearest_and_every_partner_is_first_exactly(exact):
    found = 0
    for q, scores in exact.items():
        first = max(scores, key=scores.get)
        assert not first.name.startswith("random"), (q.name, first.name, scores[first])
        partners = [p for p in scores if source(p) == source(q)]
        if partners:
            assert source(first) == source(q), (q.name, first.name)
            found += 1
        randoms = [s for p, s in scores.items() if p.name.startswith("random")]
        assert max(randoms) < 0.001  # the floor is gone: the uncentred score gave the rank-128 file 0.072
    assert found == 5


def test_similar_puts_the_partner_first_and_no_random_file_first_with_a_verdict_on_every_line(folder, exact, capsys):
    index = folder.parent / "floor.index"
    assert main(["index", str(folder), "-o", str(index)]) == 0
    capsys.readouterr()
    for q, scores in exact.items():
        assert main(["similar", str(index), str(q), "-k", "3", "--json"]) == 0  # default re-ranking
        results = json.loads(capsys.readouterr().out)
        first = results[0]
        assert first["exact"] and not os.path.basename(first["path"]).startswith("random"), (q.name, first)
        best = max(scores, key=scores.get)
        if source(best) == source(q):  # the exact kernel finds the partner: so does similar
            assert source(first["path"]) == source(q), (q.name, results)
        for r in results:
            assert 0 < r["p_value"] <= 1 and r["verdict"] in VERDICTS
            assert r["score"] == pytest.approx(scores[next(p for p in scores if str(p) == r["path"])], abs=1e-9)
    assert np.isfinite(first["score"])
