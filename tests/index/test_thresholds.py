"""A family's thresholds: one rule for similar, duplicates and map, each with where it comes from."""

import numpy as np
import pytest

from lorastyle.index import build_index
from lorastyle.index.calibration import load_calibration
from lorastyle.index.null import FamilyNull, family_null
from lorastyle.index.thresholds import near_threshold, related_threshold
from lorastyle.index.verdicts import ALPHA
from lorastyle.io.formats import save_lora

SD1 = {  # SD 1.x shapes: an uncalibrated family
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (320, 320),
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": (768, 768),
}
TINY = {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (16, 16)}


def folder(tmp_path, shapes, base, n):
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        fs = {m: (0.1 * rng.standard_normal((4, c)), 0.1 * rng.standard_normal((o, 4))) for m, (o, c) in shapes.items()}
        path = tmp_path / f"{base}{i:02d}.safetensors"
        save_lora(
            path, {m: (a.astype(np.float32), b.astype(np.float32)) for m, (a, b) in fs.items()}, alpha=4.0, base=base
        )
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("n_pairs", [50, 99, 100, 500, 2000])
def test_a_null_threshold_is_the_lowest_score_with_a_small_enough_p_value(n_pairs):
    null = FamilyNull(scores=np.sort(np.random.default_rng(n_pairs).standard_normal(n_pairs)), n_files=0)
    t = null.threshold(ALPHA)
    if 1 / (1 + n_pairs) > ALPHA:
        assert t is None
        return
    assert null.p_value(t) <= ALPHA  # brute force: the p-value there, and just below
    assert null.p_value(np.nextafter(t, -np.inf)) > ALPHA


def test_an_uncalibrated_family_of_enough_files_takes_its_own_null(tmp_path):
    index, _, _ = build_index(folder(tmp_path, SD1, "sd1", 16))  # 120 pairs
    (group,) = index.groups.values()
    value, why = related_threshold(index, group)
    null = family_null(group.matrix)
    assert value == null.threshold(ALPHA) and "among the family's 120 pairs" in why
    # what similar calls related is what map clusters at: p <= ALPHA exactly from this score on
    assert null.p_value(value) <= ALPHA < null.p_value(np.nextafter(value, -np.inf))


def test_a_calibrated_family_takes_its_calibration_and_a_small_one_the_tiny_models(tmp_path):
    tiny = folder(tmp_path, TINY, "tiny", 4)
    sd1 = folder(tmp_path, SD1, "sd1", 3)
    index, _, _ = build_index(tiny + sd1)
    calibration = load_calibration(index.descriptor, index.sketcher.settings)
    assert calibration is not None
    values = {g.base: related_threshold(index, g) for g in index.groups.values()}
    assert values["tiny"] == (calibration.threshold, f"the 'same source likely' score of {calibration.calibrated_on}")
    assert (
        values["sd1"][0] == calibration.threshold
        and "too few files for a null of their own (3 pairs)" in values["sd1"][1]
    )
    assert near_threshold(index, "tiny")[0] == near_threshold(index, "sd1")[0] == calibration.near_duplicate
    assert related_threshold(index, index.groups["sd1"], given=0.3) == (0.3, "given with --threshold")
