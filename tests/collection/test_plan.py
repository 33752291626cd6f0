"""The collection planner's rules, on a synthetic catalogue."""

import pytest

from lorastyle.collection.plan import Artwork, plan_collection, select_artists
from lorastyle.collection.profiles import get_profile


@pytest.fixture
def catalogue():
    paintings = []
    genres = {}
    for a, (genre, n) in enumerate([("baroque", 2), ("baroque", 4), ("realism", 3), ("realism", 1), ("ukiyo", 2)]):
        artist = f"artist{a}"
        genres[artist] = genre
        paintings += [Artwork(f"p{a}-{i}", artist, 300 + 10 * i, 400) for i in range(n)]
    paintings.append(Artwork("p-nogenre", "nogenre", 100, 100))
    paintings.append(Artwork("p-nogenre2", "nogenre", 100, 100))
    content = [Artwork(f"c{i}", None, 200 + i, 250) for i in range(40)]
    return paintings, genres, content


@pytest.fixture
def profile():
    return get_profile("default", images_per_lora=5, loras_per_artist=3, variant_artists=1, memorisation_artists=1)


def test_artist_selection(catalogue, profile):
    paintings, genres, _ = catalogue
    assert select_artists(paintings, genres, profile) == ["artist0", "artist1", "artist2", "artist4"]
    two = select_artists(paintings, genres, get_profile("smoke", n_artists=2))
    assert len({genres[a] for a in two}) == 2  # round-robin over genres


def test_rules_of_the_main_collection(catalogue, profile):
    paintings, genres, content = catalogue
    specs = plan_collection(paintings, genres, content, profile)
    works = {a: sorted(p.id for p in paintings if p.artist == a) for a in genres}
    for artist in ("artist0", "artist1", "artist2", "artist4"):
        mine = [s for s in specs if s.artist == artist and s.collection in ("main", "heldout")]
        assert [s.collection for s in mine] == ["main"] * 3 + ["heldout"]
        sources = [{im.content for im in s.images} for s in mine]
        # distinct sources within a LoRA, and no source shared by two LoRAs of the artist
        assert all(len(src) == profile.images_per_lora for src in sources)
        assert sum(len(src) for src in sources) == len(set().union(*sources))
        # one style painting per LoRA; consecutive main LoRAs differ when the artist has 3+ paintings
        styles = [{im.style for im in s.images} for s in mine]
        assert all(len(st) == 1 for st in styles)
        main_styles = [st.pop() for st in styles[:3]]
        held = styles[3].pop()
        assert held == works[artist][-1] and held not in main_styles
        if len(works[artist]) > 2:
            assert all(a != b for a, b in zip(main_styles, main_styles[1:]))
        # crop boxes are squares inside their source
        sizes = {c.id: c for c in content}
        for s in mine:
            for im in s.images:
                x0, y0, x1, y1 = im.box
                assert x1 - x0 == y1 - y0 and 0 <= x0 < x1 <= sizes[im.content].width
                assert 0 <= y0 < y1 <= sizes[im.content].height


def test_variants_reuse_the_first_lora(catalogue, profile):
    specs = plan_collection(*catalogue, profile)
    first = next(s for s in specs if s.id == "main-artist0-0")
    variants = [s for s in specs if s.collection in ("seed_variant", "rank_variant")]
    assert {s.artist for s in variants} == {"artist0"}
    assert all(s.images == first.images and s.seed == first.seed for s in variants)
    assert sorted(s.init_seed for s in variants if s.collection == "seed_variant") == [1, 2]
    assert sorted(s.rank for s in variants if s.collection == "rank_variant") == [2, 8]
    memo = next(s for s in specs if s.collection == "memorisation")
    assert memo.images == first.images[:3]


def test_real_pixel_loras_use_one_painting(catalogue, profile):
    paintings, genres, content = catalogue
    real = [s for s in plan_collection(paintings, genres, content, profile) if s.collection == "real"]
    assert len(real) == 2 + 4 + 3 + 2  # every painting of the selected artists
    for s in real:
        assert {im.content for im in s.images} == {s.id.rsplit("-", 2)[-2] + "-" + s.id.rsplit("-", 1)[-1]}
        assert all(im.style is None for im in s.images)


def test_plan_is_deterministic_and_seeded(catalogue, profile):
    a = plan_collection(*catalogue, profile)
    b = plan_collection(*catalogue, profile)
    c = plan_collection(*catalogue, get_profile("default", images_per_lora=5, loras_per_artist=3, seed=1))
    assert a == b
    assert [s.images for s in a] != [s.images for s in c]
    assert len({s.id for s in a}) == len(a)


def test_too_little_content(catalogue, profile):
    paintings, genres, content = catalogue
    with pytest.raises(ValueError, match=r"10 content sources cannot give 4 LoRAs of 5 distinct sources each"):
        plan_collection(paintings, genres, content[:10], profile)
    with pytest.raises(ValueError, match="must not include the artists' own paintings"):
        plan_collection(paintings, genres, content + paintings[:1], profile)
