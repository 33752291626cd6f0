"""The collection planner's rules, on a synthetic catalogue."""

from collections import Counter

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


_small = dict(images_per_lora=5, loras_per_artist=3, variant_artists=1, memorisation_artists=1)


@pytest.fixture
def profile():
    return get_profile("default", **_small)


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
        # distinct sources within a LoRA, and no source shared by two LoRAs of the artist: the
        # held-out LoRA is held out by its content
        assert all(len(src) == profile.images_per_lora for src in sources)
        assert sum(len(src) for src in sources) == len(set().union(*sources))
        # one style painting per LoRA, from the artist's own
        styles = [{im.style for im in s.images} for s in mine]
        assert all(len(st) == 1 and st <= set(works[artist]) for st in styles)
        assert [s.painting for s in mine] == [st.pop() for st in styles]
        # main LoRAs spread over the paintings as evenly as they allow: counts differ by at most one
        counts = Counter(s.painting for s in mine[:3])
        assert len(counts) == min(3, len(works[artist])) and max(counts.values()) - min(counts.values()) <= 1
        # every main LoRA has a main LoRA of its artist on another painting
        assert all(any(o.painting != s.painting for o in mine[:3]) for s in mine[:3])
        # crop boxes are squares inside their source
        sizes = {c.id: c for c in content}
        for s in mine:
            for im in s.images:
                x0, y0, x1, y1 = im.box
                assert x1 - x0 == y1 - y0 and 0 <= x0 < x1 <= sizes[im.content].width
                assert 0 <= y0 < y1 <= sizes[im.content].height


def test_retrained_and_stranger_runs(catalogue, profile):
    specs = plan_collection(*catalogue, profile)
    by_id = {s.id: s for s in specs}
    main = [s for s in specs if s.collection == "main"]
    retrained = [s for s in specs if s.collection == "retrained"]
    assert len(retrained) == len(main) * (profile.training_seeds - 1)
    for s in main:
        twin = by_id[f"retrain-{s.id.removeprefix('main-')}-1"]
        # the same images and initialisation; another training seed
        assert (twin.images, twin.init_seed, twin.rank) == (s.images, s.init_seed, s.rank)
        assert twin.seed != s.seed
    strangers = [s for s in specs if s.collection == "heldout_stranger"]
    held = [s for s in specs if s.collection == "heldout"]
    assert len(strangers) == len(held) == 4
    init_seeds = {s.init_seed for s in specs if s.collection not in ("heldout_stranger", "seed_variant")}
    for s in strangers:
        h = by_id[s.id.replace("stranger-", "heldout-")]
        assert s.images == h.images and s.seed != h.seed
    # a stranger shares its initialisation with no other LoRA of the collection
    assert len({s.init_seed for s in strangers}) == 4 and not init_seeds & {s.init_seed for s in strangers}
    assert len({s.seed for s in specs if s.collection in ("main", "retrained", "heldout", "heldout_stranger")}) == (
        len(main) + len(retrained) + 2 * len(held)
    )
    one = plan_collection(*catalogue, get_profile("default", **_small, training_seeds=1, heldout_strangers=False))
    assert not {s.collection for s in one} & {"retrained", "heldout_stranger"}


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
    # real_per_painting LoRAs of every painting of the selected artists
    selected = ("artist0", "artist1", "artist2", "artist4")
    assert Counter(s.painting for s in real) == {p.id: 2 for p in paintings if p.artist in selected}
    artist = {p.id: p.artist for p in paintings}
    for s in real:
        assert {im.content for im in s.images} == {s.painting} and artist[s.painting] == s.artist
        assert all(im.style is None for im in s.images)
    # the two LoRAs of a painting are on different crops
    for pid in {s.painting for s in real}:
        a, b = ({im.box for im in s.images} for s in real if s.painting == pid)
        assert a != b


def _cross_painting_queries(specs, collections=("main", "heldout", "real")):
    """LoRAs of ``collections`` with a LoRA of the same artist, made from another painting, among them."""
    pool = [s for s in specs if s.collection in collections]
    return [s for s in pool if any(o.artist == s.artist and o.painting != s.painting for o in pool)]


def test_the_default_plan_on_the_met_paintings():
    """The rules on the real painting table: the counts collection v2 promises."""
    from lorastyle.collection.build import source_artworks

    profile = get_profile("default")
    paintings, genres, content, _, _ = source_artworks(profile)
    specs = plan_collection(paintings, genres, content, profile)
    by = Counter(s.collection for s in specs)
    n_artists = len({s.artist for s in specs})
    n_paintings = len({s.painting for s in specs if s.collection == "real"})
    assert n_artists == 27 and n_paintings == 68
    assert by["main"] == by["retrained"] == 4 * n_artists and by["heldout"] == by["heldout_stranger"] == n_artists
    assert by["real"] == 2 * n_paintings and by["memorisation"] == 9
    works = Counter(p.artist for p in paintings)
    for artist in {s.artist for s in specs}:
        used = Counter(s.painting for s in specs if s.artist == artist and s.collection == "main")
        # every artist's main LoRAs use min(4, paintings) paintings, as balanced as that allows
        assert len(used) == min(4, works[artist]) and max(used.values()) - min(used.values()) <= 1
    # every main LoRA has a same-artist neighbour on another painting; the test across paintings has
    # at least 150 queries, pooled over main, held-out and real-pixel LoRAs
    queries = _cross_painting_queries(specs)
    assert {s.id for s in specs if s.collection == "main"} <= {s.id for s in queries}
    assert len(queries) >= 150
    # three levels of truth: every LoRA has one style painting, of an artist with two or more
    for s in specs:
        assert s.painting is not None and works[s.artist] >= 2


def test_plan_is_deterministic_and_seeded(catalogue, profile):
    a = plan_collection(*catalogue, profile)
    b = plan_collection(*catalogue, profile)
    c = plan_collection(*catalogue, get_profile("default", **_small, seed=1))
    assert a == b
    assert [s.images for s in a] != [s.images for s in c]
    assert len({s.id for s in a}) == len(a)


def test_too_little_content(catalogue, profile):
    paintings, genres, content = catalogue
    with pytest.raises(ValueError, match=r"10 content sources cannot give 4 LoRAs of 5 distinct sources each"):
        plan_collection(paintings, genres, content[:10], profile)
    with pytest.raises(ValueError, match="must not include the artists' own paintings"):
        plan_collection(paintings, genres, content + paintings[:1], profile)


def test_members_of_an_ensemble_count_as_one_painting(catalogue, profile):
    """artist1 has four paintings, two of them pendants: main LoRAs go through the three works first."""
    paintings, genres, content = catalogue
    ensembles = {"p1-0": "p1-0", "p1-1": "p1-0"}
    specs = plan_collection(paintings, genres, content, profile, ensembles)
    main = [s.painting for s in specs if s.artist == "artist1" and s.collection == "main"]
    assert main == ["p1-0", "p1-2", "p1-3"]  # p1-1 (p1-0's pendant) waits for the second round
    plain = [
        s.painting
        for s in plan_collection(paintings, genres, content, profile)
        if s.artist == "artist1" and s.collection == "main"
    ]
    assert plain == ["p1-0", "p1-1", "p1-2"]


def test_the_met_plan_is_unchanged_by_its_ensembles():
    """On the Met table every ensemble is all of its artist's paintings: the plan (collection v2's) stays."""
    from lorastyle.collection.build import source_artworks
    from lorastyle.collection.datasets import painting_ensembles

    profile = get_profile("default")
    paintings, genres, content, _, _ = source_artworks(profile)
    with_ensembles = plan_collection(paintings, genres, content, profile, painting_ensembles())
    assert [s.to_dict() for s in with_ensembles] == [
        s.to_dict() for s in plan_collection(paintings, genres, content, profile)
    ]
