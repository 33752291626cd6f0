"""Plan a LoRA collection: which LoRA learns from which images.

The paper's LoRAs each saw 10-20 paintings of one artist: one style over many
subjects. With 2-4 paintings per artist here, crops of the same paintings
would let any image feature recognise the *pictures* rather than the style, so
the main collection renders varied content in each artist's style (see the
rules in :func:`plan_collection`). A second, real-pixel collection (one LoRA per
painting, crops of that painting only) keeps a check with no stylisation in it.

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

COLLECTIONS = ("main", "heldout", "real", "seed_variant", "rank_variant", "memorisation")


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
    paintings: Sequence[Artwork], genres: Mapping[str, str], content: Sequence[Artwork], profile: Profile
) -> list[LoraSpec]:
    """Decide every LoRA and its training images.

    Rules (main collection, per artist):

    * ``loras_per_artist`` LoRAs, each on ``images_per_lora`` crops of distinct
      content sources; two LoRAs of one artist never share a content source.
    * Styles rotate over the artist's paintings, holding the last one out when
      there is a held-out LoRA: a LoRA's images are all rendered in one painting's
      style, and consecutive LoRAs use different paintings.
    * The held-out LoRA uses content and a painting no other LoRA of the artist used.
    * Seed variants retrain LoRA 0's exact training set with other ``init_seed``;
      rank variants with other ranks; memorisation LoRAs use its first
      ``memorisation_images`` images only.
    * Real-pixel LoRAs: one per painting, crops of that painting only.

    Parameters
    ----------
    paintings : sequence of Artwork
        Candidate style paintings with their artists.
    genres : mapping of str to str
        Artist -> genre.
    content : sequence of Artwork
        Content sources (photos, paintings of other artists), none of them in ``paintings``.
    profile : Profile

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
        works = sorted((p for p in paintings if p.artist == artist), key=lambda p: p.id)
        styles = works[:-1] if profile.heldout else works
        order = rng.permutation(len(content))
        chunks = [order[i * n : (i + 1) * n] for i in range(per_artist)]
        genre, slug = genres[artist], _slug(artist)

        def images(chunk, style):
            return tuple(TrainingImage(content[j].id, _square_box(rng, content[j], 0.4, 0.9), style.id) for j in chunk)

        def spec(
            id_, collection, imgs, rank=profile.rank, init_seed=profile.init_seed, seed=None, artist=artist, genre=genre
        ):
            seed = profile.seed + len(specs) if seed is None else seed
            return LoraSpec(
                id=id_,
                collection=collection,
                artist=artist,
                genre=genre,
                images=imgs,
                rank=rank,
                init_seed=init_seed,
                seed=seed,
            )

        main = []
        for k in range(profile.loras_per_artist):
            s = spec(f"main-{slug}-{k}", "main", images(chunks[k], styles[k % len(styles)]))
            specs.append(s)
            main.append(s)
        if profile.heldout:
            specs.append(spec(f"heldout-{slug}", "heldout", images(chunks[-1], works[-1])))
        if a_index < profile.variant_artists:
            for s_ in profile.variant_init_seeds:
                # same images and training noise as main LoRA 0: only A's initialisation differs
                specs.append(spec(f"seed-{slug}-{s_}", "seed_variant", main[0].images, init_seed=s_, seed=main[0].seed))
            for r in profile.variant_ranks:
                specs.append(spec(f"rank-{slug}-{r}", "rank_variant", main[0].images, rank=r, seed=main[0].seed))
        if a_index < profile.memorisation_artists:
            specs.append(spec(f"memo-{slug}", "memorisation", main[0].images[: profile.memorisation_images]))
        if profile.real_pixels:
            for w in works:
                crops = tuple(TrainingImage(w.id, _square_box(rng, w, 0.3, 0.7), None) for _ in range(n))
                specs.append(spec(f"real-{slug}-{w.id}", "real", crops))
    return specs


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
        first = None
        for k, chunk in enumerate(chunks):
            heldout = profile.heldout and k == len(chunks) - 1
            spec = LoraSpec(
                id=f"heldout-{slug}" if heldout else f"main-{slug}-{k}",
                collection="heldout" if heldout else "main",
                artist=artist,
                genre=genre,
                images=tuple(TrainingImage(w.id, _centre_box(w), None) for w in chunk),
                rank=profile.rank,
                init_seed=profile.init_seed,
                seed=profile.seed + len(specs),
            )
            specs.append(spec)
            first = first or spec
        if a_index < profile.variant_artists:
            specs += [
                LoraSpec(f"seed-{slug}-{s}", "seed_variant", artist, genre, first.images, profile.rank, s, first.seed)
                for s in profile.variant_init_seeds
            ]
            specs += [
                LoraSpec(
                    f"rank-{slug}-{r}", "rank_variant", artist, genre, first.images, r, profile.init_seed, first.seed
                )
                for r in profile.variant_ranks
            ]
        if a_index < profile.memorisation_artists:
            specs.append(
                LoraSpec(
                    f"memo-{slug}",
                    "memorisation",
                    artist,
                    genre,
                    first.images[: profile.memorisation_images],
                    profile.rank,
                    profile.init_seed,
                    first.seed,
                )
            )
    return specs
