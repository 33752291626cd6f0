"""The generator-fidelity gate (lorastyle.book.fidelity) against worked examples and brute force."""

import numpy as np
import pytest

from lorastyle.book.experiments import colour_statistics
from lorastyle.book.fidelity import (
    COLOUR_TOP1,
    GAP_CLOSED,
    LOSS_DROP,
    fidelity_gate,
    gap_closed,
    luminance,
    painting_identification,
    texture_statistics,
)

RNG = np.random.default_rng(0)


def _stripes(n, horizontal, colour=(200, 40, 40), period=4):
    img = np.zeros((n, 32, 32, 3), np.uint8)
    band = (np.arange(32) // (period // 2)) % 2 == 0
    if horizontal:
        img[:, band, :, :] = colour
    else:
        img[:, :, band, :] = colour
    return img


def _flat(n, colour, noise=8.0, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(np.array(colour, float) + rng.normal(0, noise, (n, 32, 32, 3)), 0, 255).astype(np.uint8)


def test_luminance_is_rec601():
    img = np.array([[[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]]], np.uint8)
    np.testing.assert_allclose(luminance(img)[0, 0], [0.299 * 255, 0.587 * 255, 0.114 * 255, 2.99 + 11.74 + 3.42])


def test_texture_statistics_ignore_colour_and_contrast():
    img = RNG.integers(30, 220, (5, 32, 32, 3)).astype(np.uint8)
    grey = np.repeat(luminance(img)[..., None], 3, axis=-1)
    base = texture_statistics(np.round(grey).astype(np.uint8))
    brighter = np.clip(0.5 * grey + 60, 0, 255).round().astype(np.uint8)  # less contrast, brighter, same layout
    tinted = np.clip(grey * np.array([1.0, 0.8, 0.5]), 0, 255).round().astype(np.uint8)  # a tint is a linear luma
    np.testing.assert_allclose(texture_statistics(brighter), base, atol=0.02)
    np.testing.assert_allclose(texture_statistics(tinted), base, atol=0.02)


def test_texture_statistics_see_orientation_and_detail():
    h, v = texture_statistics(_stripes(3, True)), texture_statistics(_stripes(3, False))
    h_red, h_blue = (
        texture_statistics(_stripes(3, True, (200, 40, 40))),
        texture_statistics(_stripes(3, True, (20, 40, 220))),
    )
    noise = texture_statistics(RNG.integers(0, 256, (3, 32, 32, 3)).astype(np.uint8))
    assert np.linalg.norm(h - v) > 0.3
    assert np.linalg.norm(h_red - h_blue) < 1e-6  # colour-blind: the same stripes in another colour
    assert np.linalg.norm(noise - h) > 0.3
    with pytest.raises(ValueError, match="grid"):
        texture_statistics(np.zeros((1, 30, 30, 3), np.uint8), grid=4)


def test_gap_closed_worked_example():
    train = _flat(4, (200, 50, 50))
    base = _flat(4, (120, 120, 120), seed=1)
    assert gap_closed(train, train, base) == pytest.approx(1.0)
    assert gap_closed(base, train, base) == pytest.approx(0.0)
    d = lambda a, b: np.linalg.norm(colour_statistics(a) - colour_statistics(b))  # noqa: E731
    half = _flat(4, (160, 85, 85), seed=2)
    assert gap_closed(half, train, base) == pytest.approx(1 - d(half, train) / d(base, train))
    assert np.isnan(gap_closed(train, train, train))


def test_painting_identification_brute_force():
    colours = {"a": (200, 30, 30), "b": (30, 200, 30), "c": (30, 30, 200), "d": (190, 40, 40)}
    candidates = {k: _flat(3, c, seed=i) for i, (k, c) in enumerate(colours.items())}
    painting = {"a": "p1", "b": "p2", "c": "p3", "d": "p1", "qa": "p1", "qc": "p3", "qx": "p2"}
    queries = {
        "qa": _flat(2, (198, 32, 32), seed=9),
        "qc": _flat(2, (31, 29, 199), seed=8),
        "qx": _flat(2, (30, 30, 200), seed=7),
    }
    hits, chance = painting_identification(queries, candidates, painting, colour_statistics)
    # qa -> a or d (p1: hit), qc -> c (p3: hit), qx looks like c but is p2: a miss
    assert hits.tolist() == [True, True, False]
    np.testing.assert_allclose(chance, [2 / 4, 1 / 4, 1 / 4])
    with pytest.raises(ValueError, match="no painting"):
        painting_identification({"zz": queries["qa"]}, candidates, painting, colour_statistics)


def _world(move: float, base_grey: bool = True, textured: bool = True):
    """6 main LoRAs on 6 paintings (stripes of their own colour, direction and period) whose samples moved
    ``move`` of the way to their images: pixel by pixel (``textured``), or to their mean colour only."""
    colours = [(200, 40, 40), (40, 180, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200), (200, 40, 200)]
    base_colour = np.array((120, 120, 120)) if base_grey else np.array((250, 250, 250))
    train, samples, painting, collection = {}, {}, {}, {}
    for k in range(6):
        i = f"m{k}"
        stripes = _stripes(4, k % 2 == 0, colours[k], period=(2, 4, 8)[k // 2])
        train[i] = np.clip(stripes + _flat(4, (0, 0, 0), 3, k), 0, 255).astype(np.uint8)
        if textured:
            mix = (1 - move) * base_colour + move * train[i][:3].astype(float)
            samples[i] = np.clip(mix + np.random.default_rng(10 + k).normal(0, 3, mix.shape), 0, 255).astype(np.uint8)
        else:
            samples[i] = _flat(3, (1 - move) * base_colour + move * train[i].reshape(-1, 3).mean(0), seed=10 + k)
        painting[i], collection[i] = f"p{k}", "main"
    base_samples = _flat(3, base_colour, 40, seed=99)  # as varied as the crops below
    base_train = _flat(8, (120, 120, 120), 40, seed=98)
    return dict(
        samples=samples,
        train=train,
        base_samples=base_samples,
        base_train=base_train,
        painting=painting,
        collection=collection,
    )


def test_gate_passes_and_fails_where_it_should():
    good = fidelity_gate(**_world(0.95), held_losses={f"m{k}": (1.0, 0.7) for k in range(6)})
    names = {c.name: c for c in good.checks}
    assert (
        names["samples move toward their images"].passed
        and names["samples move toward their images"].value > GAP_CLOSED
    )
    assert names["painting identified by colour"].value >= COLOUR_TOP1
    assert names["LoRAs learn"].passed and names["LoRAs learn"].value == pytest.approx(0.3)
    assert names["painting identified without colour"].passed and good.passed
    # samples of their images' mean colour but no texture: the colour-blind check fails, and so does the gate
    flat = fidelity_gate(**_world(1.0, textured=False), held_losses={f"m{k}": (1.0, 0.7) for k in range(6)})
    flat_checks = {c.name: c for c in flat.checks}
    assert flat_checks["painting identified by colour"].passed
    assert not flat.passed and "painting identified without colour" in flat.failed()
    lazy = fidelity_gate(**_world(0.0), held_losses={f"m{k}": (1.0, 0.95) for k in range(6)})
    lazy_checks = {c.name: c for c in lazy.checks}
    assert not lazy_checks["samples move toward their images"].passed
    assert not lazy_checks["LoRAs learn"].passed and lazy_checks["LoRAs learn"].value == pytest.approx(0.05)
    assert lazy_checks["LoRAs learn"].value < LOSS_DROP
    # the base check: grey base samples against grey crops pass; white ones fail on luminance
    assert lazy_checks["base luminance"].passed
    pale = {c.name: c for c in fidelity_gate(**_world(0.0, base_grey=False)).checks}
    assert not pale["base luminance"].passed
    assert not pale["LoRAs learn"].passed and pale["LoRAs learn"].detail == "not measured"


def test_gate_reports_other_collections_beside_main():
    world = _world(0.9)
    world["samples"]["r0"] = world["samples"]["m0"]
    world["train"]["r0"] = world["train"]["m0"]
    world["painting"]["r0"], world["collection"]["r0"] = "p0", "real"
    report = fidelity_gate(**world)
    assert sorted(report.by_collection) == ["main", "real"]
    assert report.by_collection["real"]["n"] == 1
    with pytest.raises(ValueError, match="main LoRAs"):
        fidelity_gate(**{**world, "collection": {k: "real" for k in world["collection"]}})


def test_gate_tables_show_every_check_and_collection():
    from lorastyle.book.fidelity import gate_tables

    world = _world(0.95)
    world["samples"]["r0"], world["train"]["r0"] = world["samples"]["m0"], world["train"]["m0"]
    world["painting"]["r0"], world["collection"]["r0"] = "p0", "real"
    report = fidelity_gate(**world, held_losses={"m0": (2.0, 1.0)})
    checks, measures = gate_tables(report)
    assert list(checks.check) == [c.name for c in report.checks]
    assert list(checks.passed) == ["yes" if c.passed else "no" for c in report.checks]
    assert list(measures.collection) == ["main", "real"] and list(measures.LoRAs) == [6, 1]
    assert measures.set_index("collection").loc["main", "loss drop (median)"] == pytest.approx(0.5)
