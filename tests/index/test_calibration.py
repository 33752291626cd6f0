"""What a score means: p-values against a brute-force empirical p-value of the same null."""

import numpy as np
import pytest

from lorastyle.index.calibration import ScoreCalibration


def test_p_value_is_the_empirical_tail_of_the_null():
    rng = np.random.default_rng(0)
    null = rng.normal(0.2, 0.08, size=5000)
    cal = ScoreCalibration(
        quantiles=np.quantile(null, np.linspace(0, 1, 1001)),
        n_null=len(null),
        threshold=0.4,
        near_duplicate=0.7,
        calibrated_on="test",
    )
    for s in (0.0, 0.15, 0.2, 0.3, 0.45):
        brute = (1 + np.sum(null >= s)) / (1 + len(null))
        assert cal.p_value(s) == pytest.approx(brute, abs=2e-3)
    assert cal.p_value(1.0) == pytest.approx(1 / 5001)  # beyond every null score: the smallest p
    assert cal.p_value(-1.0) == pytest.approx(1.0)
