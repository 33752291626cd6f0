"""Plan a LoRA collection: which LoRA learns from which images.

The paper's LoRAs each saw 10-20 paintings of one artist: one style over many
subjects. With 2-4 paintings per artist here, crops of the same paintings
would let any image feature recognise the *pictures* rather than the style, so
the main collection renders varied content in each artist's style (see the
rules in :func:`plan_collection`). A second, real-pixel collection (LoRAs on
crops of one painting only) keeps a check with no stylisation in it.

Ground truth has three levels: the style painting (:attr:`LoraSpec.painting`),
the artist and the genre. The test that matters is across paintings: an
artist's LoRA found through a LoRA of the same artist made from another painting.
So the rules spread every artist's LoRAs over their paintings.

A plan is plain data (:class:`LoraSpec`), deterministic for a profile's seed,
and recorded in the manifest: for every training image its content source, crop
box and style painting.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .profiles import Profile

__all__ = ["Artwork", "TrainingImage", "LoraSpec", "select_artists", "plan_collection", "COLLECTIONS"]

COLLECTIONS = (
    "main",
    "retrained",
    "heldout",
    "heldout_stranger",
    "real",
    "seed_variant",
    "rank_variant",
    "memorisation",
)


@dataclass(frozen=True)
class Artwork:
    """A source image: a painting (with its artist) or a photo (artist None)."""

    id: str
    artist: str | None
    height: int
    width: int


@dataclass(frozen=True)
class TrainingImage:
    """One training image: a square crop of ``content`` (box x0, y0, x1, y1), rendered in the style of ``style``.

    ``style`` is None for real-pixel crops (the crop itself is the image).
    """

    content: str
    box: tuple[int, int, int, int]
    style: str | None


@dataclass(frozen=True)
class LoraSpec:
    """Everything that defines one LoRA of the collection."""

    id: str
    collection: str
    artist: str
    genre: str
    images: tuple[TrainingImage, ...]
    rank: int
    init_seed: int
    seed: int

    @property
    def painting(self) -> str | None:
        """The one painting the LoRA's style comes from: its images' style reference, or for
        real-pixel LoRAs the painting cropped; None when the images come from several."""
        sources = {im.style if im.style is not None else im.content for im in self.images}
        return sources.pop() if len(sources) == 1 else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["images"] = [asdict(im) for im in self.images]
        return d


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower().split("(")[0]).strip("-")


def _square_box(rng: np.random.Generator, art: Artwork, lo: float, hi: float) -> tuple[int, int, int, int]:
    side = max(8, int(min(art.height, art.width) * rng.uniform(lo, hi)))
    x0 = int(rng.integers(0, art.width - side + 1))
    y0 = int(rng.integers(0, art.height - side + 1))
    return (x0, y0, x0 + side, y0 + side)


def select_artists(paintings: Sequence[Artwork], genres: Mapping[str, str], profile: Profile) -> list[str]:
    """Artists with at least ``profile.min_works`` paintings and a genre, sorted by (genre, name).

    With ``profile.genres``, only artists of those genres are eligible. With
    ``profile.n_artists``, artists are taken round-robin over genres (genres in
    alphabetical order, each genre's artists by name) so a small profile still spans
    several genres.

    Parameters
    ----------
    paintings : sequence of Artwork
        Candidate paintings; those with artist None are ignored.
    genres : mapping of str to str
        Artist -> genre; artists missing from it are not eligible.
    profile : Profile
        Uses ``min_works``, ``genres`` and ``n_artists``.

    Returns
    -------
    list of str
        The selected artists (at most ``profile.n_artists``), sorted by (genre, name).
    """
    counts: dict[str, int] = {}
    for p in paintings:
        if p.artist is not None:
            counts[p.artist] = counts.get(p.artist, 0) + 1
    eligible = sorted(
        (
            a
            for a, c in counts.items()
            if c >= profile.min_works and a in genres and (profile.genres is None or genres[a] in profile.genres)
        ),
        key=lambda a: (genres[a], a),
    )
    if profile.n_artists is None:
        return eligible
    by_genre: dict[str, list[str]] = {}
    for a in eligible:
        by_genre.setdefault(genres[a], []).append(a)
    picked: list[str] = []
    while len(picked) < min(profile.n_artists, len(eligible)):
        for g in sorted(by_genre):
            if by_genre[g] and len(picked) < profile.n_artists:
                picked.append(by_genre[g].pop(0))
    return sorted(picked, key=lambda a: (genres[a], a))


def plan_collection(
    paintings: Sequence[Artwork],
    genres: Mapping[str, str],
    content: Sequence[Artwork],
    profile: Profile,
    ensembles: Mapping[str, str] | None = None,
) -> list[LoraSpec]:
    """Decide every LoRA and its training images.

    Rules (per artist):

    * ``loras_per_artist`` main LoRAs, each on ``images_per_lora`` crops of distinct
      content sources; two LoRAs of one artist never share a content source.
    * A LoRA's images are all rendered in one painting's style. Main LoRAs take the
      artist's paintings in turn (sorted by id), so an artist with two paintings or more
      has main LoRAs on at least two, as balanced as the paintings allow: every main LoRA
      has a LoRA of its artist made from another painting. Members of one ensemble
      (``ensembles``: pendants, panels of one polyptych) count as one painting: the turn
      goes through the ensembles first, then through the members within each.
    * The held-out LoRA is held out by its content: sources no other LoRA of the artist
      used, in the style of the next painting in turn (a painting the main LoRAs may use).
    * ``training_seeds - 1`` retrained copies of every main LoRA: the same images and
      initialisation of A, another training seed (noise and batches).
    * With ``heldout_strangers``, every held-out LoRA also trained as a stranger would:
      the same images, its own initialisation seed and training seed.
    * Seed variants retrain main LoRA 0's exact training set with other ``init_seed``
      (same training seed); rank variants with other ranks; memorisation LoRAs use its
      first ``memorisation_images`` images only.
    * Real-pixel LoRAs: ``real_per_painting`` per painting, each on its own random crops
      of that painting only.

    Parameters
    ----------
    paintings : sequence of Artwork
        Candidate style paintings with their artists.
    genres : mapping of str to str
        Artist -> genre.
    content : sequence of Artwork
        Content sources (photos, paintings of other artists), none of them in ``paintings``.
    profile : Profile
    ensembles : mapping of str to str, optional
        Painting id -> its ensemble's id (:func:`lorastyle.collection.datasets.painting_ensembles`);
        paintings absent from it are ensembles of one.

    Returns
    -------
    list of LoraSpec

    Raises
    ------
    ValueError
        If the content pool is too small for the rules.
    """
    if profile.training_images not in ("stylized", "paintings"):
        raise ValueError(f"training_images must be 'stylized' or 'paintings', got {profile.training_images!r}")
    rng = np.random.default_rng(profile.seed)
    artists = select_artists(paintings, genres, profile)
    if not artists:
        raise ValueError(f"no artist has {profile.min_works} paintings and a genre")
    if profile.training_images == "paintings":
        return _plan_on_paintings(paintings, genres, artists, profile, rng)
    content_ids = {c.id for c in content}
    if content_ids & {p.id for p in paintings if p.artist in artists}:
        raise ValueError("content sources must not include the artists' own paintings")
    per_artist = profile.loras_per_artist + int(profile.heldout)
    need = per_artist * profile.images_per_lora
    if len(content) < need:
        raise ValueError(
            f"{len(content)} content sources cannot give {per_artist} LoRAs of "
            f"{profile.images_per_lora} distinct sources each ({need} needed)"
        )
    n = profile.images_per_lora
    specs: list[LoraSpec] = []
    for a_index, artist in enumerate(artists):
        works = _in_turn(sorted((p for p in paintings if p.artist == artist), key=lambda p: p.id), ensembles or {})
        order = rng.permutation(len(content))
        chunks = [order[i * n : (i + 1) * n] for i in range(per_artist)]
        genre, slug = genres[artist], _slug(artist)
        add = _adder(specs, profile, artist, genre)

        def images(chunk, style):
            return tuple(TrainingImage(content[j].id, _square_box(rng, content[j], 0.4, 0.9), style.id) for j in chunk)

        main = [
            add(f"main-{slug}-{k}", "main", images(chunks[k], works[k % len(works)]))
            for k in range(profile.loras_per_artist)
        ]
        held = None
        if profile.heldout:
            held = add(f"heldout-{slug}", "heldout", images(chunks[-1], works[len(main) % len(works)]))
        _add_runs(profile, a_index, slug, main, held, add)
        if profile.real_pixels:
            for w in works:
                for j in range(profile.real_per_painting):
                    crops = tuple(TrainingImage(w.id, _square_box(rng, w, 0.3, 0.7), None) for _ in range(n))
                    add(f"real-{slug}-{w.id}-{j}", "real", crops)
    return specs


def _in_turn(works: list[Artwork], ensembles: Mapping[str, str]) -> list[Artwork]:
    """An artist's paintings in the order main LoRAs take them: one member of each ensemble, then the
    next member of each, and so on (an ensemble in the order of its first member's id)."""
    groups: dict[str, list[Artwork]] = {}
    for w in works:
        groups.setdefault(ensembles.get(w.id, w.id), []).append(w)
    rounds = max(len(g) for g in groups.values())
    return [g[r] for r in range(rounds) for g in groups.values() if r < len(g)]


def _adder(specs: list[LoraSpec], profile: Profile, artist: str, genre: str):
    """``add(id, collection, images, **fields)``: append a LoraSpec of the artist to ``specs``.

    The training seed defaults to ``profile.seed`` plus the number of LoRAs planned before it,
    so every LoRA has its own unless one is given (variants that repeat a LoRA's noise).
    """

    def add(id_: str, collection: str, images: tuple[TrainingImage, ...], **fields) -> LoraSpec:
        fields.setdefault("seed", profile.seed + len(specs))
        fields.setdefault("rank", profile.rank)
        fields.setdefault("init_seed", profile.init_seed)
        specs.append(LoraSpec(id=id_, collection=collection, artist=artist, genre=genre, images=images, **fields))
        return specs[-1]

    return add


def _add_runs(profile: Profile, a_index: int, slug: str, main, held, add) -> None:
    """The extra training runs of an artist's planned images: retrained, stranger, variants, memorisation."""
    for s in main:
        for r in range(1, profile.training_seeds):
            add(f"retrain-{s.id.removeprefix('main-')}-{r}", "retrained", s.images)
    if held is not None and profile.heldout_strangers:
        # its own initialisation, as two people's LoRAs never share one (seeds above any other init seed)
        add(f"stranger-{slug}", "heldout_stranger", held.images, init_seed=1000 + a_index)
    first = main[0]
    if a_index < profile.variant_artists:
        for s_ in profile.variant_init_seeds:
            # same images and training noise as main LoRA 0: only A's initialisation differs
            add(f"seed-{slug}-{s_}", "seed_variant", first.images, init_seed=s_, seed=first.seed)
        for r in profile.variant_ranks:
            add(f"rank-{slug}-{r}", "rank_variant", first.images, rank=r, seed=first.seed)
    if a_index < profile.memorisation_artists:
        add(f"memo-{slug}", "memorisation", first.images[: profile.memorisation_images])


def _centre_box(art: Artwork) -> tuple[int, int, int, int]:
    side = min(art.height, art.width)
    x0, y0 = (art.width - side) // 2, (art.height - side) // 2
    return (x0, y0, x0 + side, y0 + side)


def _plan_on_paintings(
    paintings: Sequence[Artwork],
    genres: Mapping[str, str],
    artists: list[str],
    profile: Profile,
    rng: np.random.Generator,
) -> list[LoraSpec]:
    """The paper's setting: each LoRA on its own ``images_per_lora`` paintings of the artist (disjoint sets)."""
    n = profile.images_per_lora
    per_artist = profile.loras_per_artist + int(profile.heldout)
    specs: list[LoraSpec] = []
    for a_index, artist in enumerate(artists):
        works = sorted((p for p in paintings if p.artist == artist), key=lambda p: p.id)
        if len(works) < per_artist * n:
            raise ValueError(f"{artist} has {len(works)} paintings; {per_artist} LoRAs of {n} need {per_artist * n}")
        order = rng.permutation(len(works))
        chunks = [[works[j] for j in order[i * n : (i + 1) * n]] for i in range(per_artist)]
        genre, slug = genres[artist], _slug(artist)
        add = _adder(specs, profile, artist, genre)
        boxes = [tuple(TrainingImage(w.id, _centre_box(w), None) for w in chunk) for chunk in chunks]
        main = [add(f"main-{slug}-{k}", "main", imgs) for k, imgs in enumerate(boxes[: profile.loras_per_artist])]
        held = add(f"heldout-{slug}", "heldout", boxes[-1]) if profile.heldout else None
        _add_runs(profile, a_index, slug, main, held, add)
    return specs
