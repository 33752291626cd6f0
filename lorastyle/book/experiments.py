"""One function per table or figure of the book, over a built collection.

Chapters stay thin: they call these functions and show what they return. Each
function reads the collection folder written by :mod:`lorastyle.collection.build`
(``data/`` by default) and returns a pandas DataFrame or arrays for
:mod:`lorastyle.book.viz`.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ..collection.build import read_images
from ..descriptors import ModuleSelection, descriptor_kernel
from ..embedding import StyleEmbedding
from ..io.formats import LoRA, load_lora
from ..metrics import cluster_scores, retrieval_scores, similarity_matrix

__all__ = [
    "Collection",
    "load_collection",
    "lora_embedding",
    "feature_matrix",
    "feature_embedding",
    "clustering_table",
    "factor_split_table",
    "retrieval_table",
    "structure_comparison",
    "structure_references",
    "subnetwork_curves",
    "random_module_control",
    "invariance_table",
    "collection_summary",
    "artist_table",
    "map_panels",
    "map_neighbour_table",
    "procrustes_aligned",
    "sample_rows",
    "loss_curves",
    "memorisation_table",
    "memorisation_summary",
    "real_lora_similarity",
    "nearest_neighbour_chance",
    "restricted_top1",
    "style_reference_table",
    "wilson_interval",
    "representations",
    "representation_kind",
    "paired_top1_table",
    "heldout_paired_table",
    "subnetwork_paired_table",
    "colour_statistics",
    "downsampled_pixels",
    "DESCRIPTOR_NAMES",
    "IMAGE_BASELINES",
    "MODEL_BASELINES",
    "ENCODER_NAMES",
    "SUBNETWORKS",
]

DESCRIPTOR_NAMES = ("concat", "delta", "gram")
# Stand-ins for CLIP and DINO in the default profile: named for what they are.
ENCODER_NAMES = {
    "efficientnet": "EfficientNet-Lite0 (ImageNet)",
    "vgg_gram": "VGG19 Gram (Gatys)",
    "magenta": "Magenta style vector (circular)",
    "clip": "CLIP",
    "dino": "DINO",
    "colour": "Colour statistics (baseline)",
    "pixels": "Raw pixels 8x8 (baseline)",
    "base_gradient": "Base-model loss gradient (baseline)",
}
#: Baselines computed by the build from the base model alone, no training (``features/<name>.npz``).
MODEL_BASELINES = ("base_gradient",)


@dataclass
class Collection:
    """A built collection: its manifest rows, LoRA files and cached image features.

    Parameters
    ----------
    root : Path
        The collection folder (holds ``manifest.csv``, ``loras/``, ``features/`` and
        ``images.npz``).
    rows : list of dict
        The rows of ``manifest.csv`` as read by :class:`csv.DictReader`: every value a
        str (``id``, ``file``, ``artist``, ``genre``, ``collection``, ``seed``,
        ``init_seed``, ``rank``, ``n_images``, ``training_images``, ...).
    """

    root: Path
    rows: list[dict]
    _loras: dict[str, LoRA] = field(default_factory=dict, repr=False)

    def ids(self, collection: str | Sequence[str] = "main") -> list[str]:
        """LoRA ids of one or more collections, in manifest order.

        Parameters
        ----------
        collection : str or sequence of str, default="main"
            A collection name (``main``, ``heldout``, ``real``, ``seed_variant``,
            ``rank_variant``, ``memorisation``) or several.

        Returns
        -------
        list of str
            The ``id`` of every manifest row whose ``collection`` is one of those given.
        """
        wanted = {collection} if isinstance(collection, str) else set(collection)
        return [r["id"] for r in self.rows if r["collection"] in wanted]

    @cached_property
    def by_id(self) -> dict[str, dict]:
        """Manifest row of each LoRA id (computed once, then cached)."""
        return {r["id"]: r for r in self.rows}

    def labels(self, ids: Sequence[str], level: str) -> np.ndarray:
        """``artist`` or ``genre`` of each id.

        Parameters
        ----------
        ids : sequence of str
            LoRA ids of the manifest.
        level : str
            A manifest column, ``"artist"`` or ``"genre"``.

        Returns
        -------
        ndarray of shape (len(ids),) of str
            The ``level`` value of each id's manifest row, in the order of ``ids``.
        """
        return np.asarray([self.by_id[i][level] for i in ids])

    @cached_property
    def ensembles(self) -> dict[str, str]:
        """Painting id -> its ensemble's id, for pendants and panels of one work
        (:func:`lorastyle.collection.datasets.painting_ensembles`); they count as one painting."""
        from ..collection.datasets import painting_ensembles

        return painting_ensembles()

    def painting(self, lora_id: str) -> str:
        """A LoRA's style painting (the manifest's ``painting``), its ensemble's id for a member of one.

        Parameters
        ----------
        lora_id : str
            A LoRA id of the manifest.

        Returns
        -------
        str
            Empty for a LoRA whose images come from several paintings.
        """
        painting = self.by_id[lora_id].get("painting", "")
        return self.ensembles.get(painting, painting)

    def source_paintings(self, lora_id: str) -> frozenset[str]:
        """The paintings a LoRA's training images come from: each image's style reference
        (``content@box~style`` in the manifest), or its content where it has none; a member of
        an ensemble (pendant portraits, panels of one polyptych) is given as its ensemble.

        Parameters
        ----------
        lora_id : str
            A LoRA id of the manifest.

        Returns
        -------
        frozenset of str
            Artwork ids: the part after ``~`` of each entry of the ``training_images``
            column, or, for a real-pixel image (empty style), the part before ``@``.
        """
        images = filter(None, self.by_id[lora_id]["training_images"].split(";"))
        sources = (im.partition("~")[2] or im.partition("@")[0] for im in images)
        return frozenset(self.ensembles.get(p, p) for p in sources)

    def lora(self, lora_id: str) -> LoRA:
        """Load one LoRA file of the collection (read once, then kept in memory).

        Parameters
        ----------
        lora_id : str
            A LoRA id of the manifest.

        Returns
        -------
        LoRA
            The file ``root / row["file"]`` as read by :func:`lorastyle.io.formats.load_lora`.
        """
        if lora_id not in self._loras:
            self._loras[lora_id] = load_lora(self.root / self.by_id[lora_id]["file"])
        return self._loras[lora_id]

    def features(self, encoder: str) -> dict[str, np.ndarray]:
        """Every cached mean feature vector of one image encoder (read from disk at each call).

        Parameters
        ----------
        encoder : str
            An encoder name of :attr:`encoders` (``features/<encoder>.npz``).

        Returns
        -------
        dict of str to ndarray of shape (d,)
            Keys ``train/<id>`` (mean over the LoRA's training images) and
            ``gen/<setting>/<id>`` (mean over its samples at a setting such as
            ``T25-w3-k6``). ``d`` is the encoder's dimension, or the number of vectors in
            the file when the build stored them in an orthonormal basis of their span
            (:func:`lorastyle.collection.build.isometric_coordinates`).
        """
        with np.load(self.root / "features" / f"{encoder}.npz", allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    @property
    def encoders(self) -> list[str]:
        """Image encoders whose features the build computed (``features/<name>.npz``), in book order."""
        found = {p.stem for p in (self.root / "features").glob("*.npz")} - set(MODEL_BASELINES)
        order = list(ENCODER_NAMES)
        return sorted(found, key=lambda e: (order.index(e) if e in order else len(order), e))

    @property
    def baselines(self) -> list[str]:
        """The skeptic's baselines for this collection: :data:`IMAGE_BASELINES` (computed from the
        training images), then those of :data:`MODEL_BASELINES` the build computed."""
        found = {p.stem for p in (self.root / "features").glob("*.npz")}
        return list(IMAGE_BASELINES) + [b for b in MODEL_BASELINES if b in found]

    def images(self, lora_id: str, kind: str = "train") -> np.ndarray:
        """uint8 images of a LoRA: ``train`` (its training images) or ``gen`` (generated at the default setting).

        Parameters
        ----------
        lora_id : str
            A LoRA id of the manifest.
        kind : {"train", "gen"}, default="train"

        Returns
        -------
        ndarray of shape (n_images, H, W, 3), dtype uint8
            ``train``: the array ``train/<lora_id>`` of ``images.npz``. ``gen``: the array
            ``<lora_id>`` of ``samples.npz`` where the collection has one, else ``gen/<lora_id>``
            of ``images.npz`` (collections v1 and v2). ``KeyError`` when absent (a LoRA that was
            not sampled).
        """
        samples = self.root / "samples.npz"
        if kind == "gen" and samples.exists():  # collections from v3 on keep every LoRA's samples there
            with np.load(samples, allow_pickle=False) as data:
                if lora_id not in data.files:
                    raise KeyError(f"{samples}: no samples of {lora_id}")
                return data[lora_id]
        path = self.root / "images.npz"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no images; rebuild the collection with `make data`")
        return read_images(path, kind, [lora_id])[lora_id]


def load_collection(root: str | Path = "data") -> Collection:
    """Read a collection folder written by :func:`lorastyle.collection.build.build_collection`.

    Only ``manifest.csv`` is read here; LoRA files, features and images are read on demand.

    Parameters
    ----------
    root : str or Path, default="data"
        The collection folder.

    Returns
    -------
    Collection
        Its ``rows`` are the rows of ``root/manifest.csv``, in file order.

    Raises
    ------
    FileNotFoundError
        If ``root/manifest.csv`` does not exist.
    """
    root = Path(root)
    path = root / "manifest.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no manifest; build the collection with `make data`")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return Collection(root=root, rows=rows)


def lora_embedding(
    coll: Collection,
    ids: Sequence[str],
    descriptor: str,
    *,
    n_components: int = 16,
    select: ModuleSelection | None = None,
    random_state: int = 0,
) -> np.ndarray:
    """In-sample PCA embedding of LoRAs by a descriptor (kernel form, exact).

    Kernel PCA of the descriptor's linear kernel
    (:func:`lorastyle.descriptors.descriptor_kernel`) with
    :class:`lorastyle.embedding.StyleEmbedding` (``solver="precomputed"``): the same
    scores as PCA of the descriptor vectors, never calibrated.

    Parameters
    ----------
    coll : Collection
    ids : sequence of str
        LoRA ids to embed (at least 3).
    descriptor : {"concat", "delta", "gram"}
    n_components : int, default=16
        Requested dimension; capped at ``len(ids) - 2``.
    select : ModuleSelection, optional
        Sub-network the descriptor uses (default: every module).
    random_state : int, default=0
        Seed of the embedding's calibration subset (which does not change the scores returned).

    Returns
    -------
    ndarray of shape (len(ids), min(n_components, len(ids) - 2))
        Principal-component scores, rows in the order of ``ids``.
    """
    loras = [coll.lora(i) for i in ids]
    K = descriptor_kernel(descriptor, loras, select=select)
    k = min(n_components, len(ids) - 2)
    return StyleEmbedding(k, solver="precomputed", calibrate=False, random_state=random_state).fit_transform(K)


def feature_matrix(coll: Collection, ids: Sequence[str], encoder: str, source: str = "train") -> np.ndarray:
    """Per-LoRA mean image features (``source`` is ``train`` or a sample setting like ``gen/T25-w3-k6``).

    Parameters
    ----------
    coll : Collection
    ids : sequence of str
        LoRA ids.
    encoder : str
        An encoder name of :attr:`Collection.encoders`, or a baseline of
        :attr:`Collection.baselines`: :data:`IMAGE_BASELINES` are computed here from the
        training images (no model), :data:`MODEL_BASELINES` read like encoders' features.
    source : str, default="train"
        ``"train"`` (mean over each LoRA's training images) or ``"gen/<setting>"`` (mean
        over its samples at that setting); the key ``<source>/<id>`` must exist for every id.

    Returns
    -------
    X : ndarray of shape (len(ids), d), dtype float64
        One mean feature vector per id, in the order of ``ids`` (``d`` as in
        :meth:`Collection.features`).
    """
    if encoder in IMAGE_BASELINES:
        if source != "train":
            raise ValueError(f"the {encoder!r} baseline is computed from training images only; got source={source!r}")
        return np.stack([IMAGE_BASELINES[encoder](coll.images(i)) for i in ids]).astype(np.float64)
    feats = coll.features(encoder)
    return np.stack([feats[f"{source}/{i}"] for i in ids]).astype(np.float64)


def feature_embedding(
    coll: Collection,
    ids: Sequence[str],
    encoder: str,
    source: str = "train",
    *,
    n_components: int = 16,
    random_state: int = 0,
) -> np.ndarray:
    """In-sample PCA embedding of per-LoRA mean image features.

    PCA (:class:`lorastyle.embedding.StyleEmbedding`, ``solver="full"``, no
    calibration) of :func:`feature_matrix`.

    Parameters
    ----------
    coll : Collection
    ids : sequence of str
        LoRA ids to embed (at least 3).
    encoder : str
        An encoder name of :attr:`Collection.encoders`.
    source : str, default="train"
        As in :func:`feature_matrix`.
    n_components : int, default=16
        Requested dimension; capped at ``len(ids) - 2`` and at the feature dimension.
    random_state : int, default=0
        Passed to the PCA (the full SVD solver does not use it).

    Returns
    -------
    ndarray of shape (len(ids), k)
        Principal-component scores, ``k = min(n_components, len(ids) - 2, d)``, rows in
        the order of ``ids``.
    """
    X = feature_matrix(coll, ids, encoder, source)
    k = min(n_components, len(ids) - 2, X.shape[1])
    return StyleEmbedding(k, random_state=random_state, calibrate=False).fit_transform(X)


def colour_statistics(images: np.ndarray, *, bins: int = 9) -> np.ndarray:
    """The simplest style descriptor a skeptic would try: colour statistics of a set of images.

    Parameters
    ----------
    images : ndarray of shape (n, H, W, 3), dtype uint8
        The images (a LoRA's training images).
    bins : int, default=9
        Histogram bins per channel over [0, 256).

    Returns
    -------
    ndarray of shape (6 + 3 * bins,)
        Per channel (R, G, B) the mean and the standard deviation of all pixels in [0, 1],
        then per channel the normalised histogram: 33 numbers with the default.
    """
    pixels = np.asarray(images, dtype=np.float64).reshape(-1, 3) / 255.0
    hist = [np.histogram(pixels[:, c], bins=bins, range=(0.0, 1.0))[0] / len(pixels) for c in range(3)]
    return np.concatenate([pixels.mean(axis=0), pixels.std(axis=0), *hist])


def downsampled_pixels(images: np.ndarray, *, size: int = 8) -> np.ndarray:
    """The mean of a set of images, block-averaged to ``size`` x ``size`` pixels: raw pixels as a baseline.

    Parameters
    ----------
    images : ndarray of shape (n, H, W, 3), dtype uint8
        The images; ``H`` and ``W`` must be multiples of ``size``.
    size : int, default=8
        Output side in pixels.

    Returns
    -------
    ndarray of shape (size * size * 3,)
        The block means in [0, 1], row-major, channels last.
    """
    x = np.asarray(images, dtype=np.float64) / 255.0
    n, h, w, c = x.shape
    if h % size or w % size:
        raise ValueError(f"images of {h}x{w} pixels do not divide into {size}x{size} blocks")
    return x.reshape(n, size, h // size, size, w // size, c).mean(axis=(0, 2, 4)).ravel()


#: Image-side baselines without any model: the name :func:`feature_matrix` knows them by.
IMAGE_BASELINES = {"colour": colour_statistics, "pixels": downsampled_pixels}


def representation_kind(name: str) -> str:
    """What a representation of :func:`representations` is made from, for grouping tables and figures.

    Parameters
    ----------
    name : str
        A key of :func:`representations`.

    Returns
    -------
    str
        ``"weights"`` (a LoRA descriptor), ``"baseline"`` (an entry of :data:`IMAGE_BASELINES`
        or :data:`MODEL_BASELINES`)
        or ``"image encoder"``.
    """
    if name.startswith("LoRA "):
        return "weights"
    baselines = (*IMAGE_BASELINES, *MODEL_BASELINES)
    return "baseline" if name in {ENCODER_NAMES.get(b, b) for b in baselines} else "image encoder"


def _share_a_painting(coll: Collection, ids: Sequence[str]) -> np.ndarray:
    """``[i, j]``: LoRAs i and j take a source painting in common (:meth:`Collection.source_paintings`)."""
    sources = [coll.source_paintings(i) for i in ids]
    return np.array([[bool(a & b) for b in sources] for a in sources])


def representations(
    coll: Collection,
    ids: Sequence[str],
    *,
    descriptors: Sequence[str] = DESCRIPTOR_NAMES,
    encoders: Sequence[str] = (),
    n_components: int = 16,
) -> dict[str, np.ndarray]:
    """Every representation of the same LoRAs, by display name: weights first, then images.

    Parameters
    ----------
    coll : Collection
    ids : sequence of str
        LoRA ids, the rows of every embedding.
    descriptors : sequence of str, default=DESCRIPTOR_NAMES
        LoRA descriptors (:func:`lora_embedding`), each named ``"LoRA <descriptor>"``.
    encoders : sequence of str, default=()
        Image encoders or baselines of :data:`IMAGE_BASELINES` (:func:`feature_embedding`
        of the training images), named by :data:`ENCODER_NAMES`.
    n_components : int, default=16
        Embedding dimension.

    Returns
    -------
    dict of str to ndarray of shape (len(ids), k)
    """
    reps = {f"LoRA {d}": lora_embedding(coll, ids, d, n_components=n_components) for d in descriptors}
    reps |= {ENCODER_NAMES.get(e, e): feature_embedding(coll, ids, e, n_components=n_components) for e in encoders}
    return reps


def paired_top1_table(
    coll: Collection,
    *,
    collection: str | Sequence[str] = "main",
    reference: str = "LoRA concat",
    descriptors: Sequence[str] = DESCRIPTOR_NAMES,
    encoders: Sequence[str] = (),
    level: str = "artist",
    across_paintings: bool = False,
    n_components: int = 16,
    n_resamples: int = 2000,
    random_state: int = 0,
):
    """Leave-one-out top-1 of every representation, each compared with one reference on the same queries.

    A difference between two representations is tested on the queries both answer, not by
    overlapping intervals: the exact McNemar test (:func:`lorastyle.metrics.mcnemar_test`)
    on the queries where they disagree, and a bootstrap interval of the difference that
    resamples whole artists (:func:`lorastyle.metrics.paired_bootstrap`), since queries of
    one artist are not independent.

    Parameters
    ----------
    coll : Collection
    collection : str or sequence of str, default="main"
        Collection(s) whose LoRAs are embedded together and queried leave-one-out.
    reference : str, default="LoRA concat"
        The representation the others are compared with (a key of :func:`representations`).
    descriptors, encoders, n_components
        As in :func:`representations`.
    level : str, default="artist"
        The manifest column a hit must share with its query.
    across_paintings : bool, default=False
        If True, the test across paintings: every LoRA that shares a source painting with the
        query (:meth:`Collection.source_paintings`) is removed from its candidates, and only
        queries with a LoRA of their class left count.
    n_resamples : int, default=2000
        Bootstrap resamples.
    random_state : int, default=0
        Seed of the bootstrap.

    Returns
    -------
    pandas.DataFrame
        One row per representation: ``representation``, ``kind`` (:func:`representation_kind`),
        ``n`` (queries), ``top1`` with its
        Wilson interval (``top1_low``, ``top1_high``), ``chance`` (a random allowed
        candidate), ``diff`` (top-1 minus the reference's) with its artist-bootstrap interval
        (``diff_low``, ``diff_high``), ``only_this`` and ``only_reference`` (queries one of the
        two answers and the other misses) and ``p_mcnemar`` (NaN on the reference's row).
    """
    import pandas as pd

    ids = coll.ids(collection)
    y = coll.labels(ids, level)
    artists = coll.labels(ids, "artist")
    if across_paintings:
        allowed = ~_share_a_painting(coll, ids)
    else:
        allowed = np.ones((len(ids), len(ids)), dtype=bool)
    reps = representations(coll, ids, descriptors=descriptors, encoders=encoders, n_components=n_components)
    if reference not in reps:
        raise ValueError(f"reference {reference!r} is not one of the representations {sorted(reps)}")
    results = {name: restricted_top1(Z, y, allowed) for name, Z in reps.items()}
    rows = _compared_with(results, reference, artists, n_resamples=n_resamples, random_state=random_state)
    for row in rows:
        row["kind"] = representation_kind(row["representation"])
    columns = ["representation", "kind", *[c for c in rows[0] if c not in ("representation", "kind")]]
    return pd.DataFrame(rows)[columns]


def _compared_with(results: dict, reference: str, artists: np.ndarray, *, n_resamples: int, random_state) -> list:
    """Rows of :func:`paired_top1_table` from :func:`restricted_top1`'s results per representation.

    Every representation is counted on the queries the reference can answer, and compared
    with it on those: exact McNemar on the discordant queries, bootstrap over artists.
    """
    from ..metrics import mcnemar_test, paired_bootstrap

    queried, ref_hit = results[reference][0], results[reference][1]
    rows = []
    for name, (_, hit, chance, _) in results.items():
        a, b = hit[queried], ref_hit[queried]
        n = int(queried.sum())
        top1 = float(a.mean())
        row = {"representation": name, "n": n, "top1": top1}
        row["top1_low"], row["top1_high"] = wilson_interval(top1, n)
        row["chance"] = float(chance[queried].mean())
        boot = paired_bootstrap(a, b, artists[queried], n_resamples=n_resamples, random_state=random_state)
        test = mcnemar_test(a, b)
        row |= {"diff": boot["difference"], "diff_low": boot["low"], "diff_high": boot["high"]}
        row |= {"only_this": test["a_only"], "only_reference": test["b_only"]}
        row["p_mcnemar"] = float("nan") if name == reference else test["p_value"]
        rows.append(row)
    return rows


def factor_split_table(coll: Collection, *, collection: str = "main", n_components: int = 16):
    """The paper's ``concat`` split into its halves: is the style in A (``lora_down``), in B (``lora_up``), or both?

    Each LoRA's stored factors of one role, flattened and concatenated over modules in
    canonical order (as :func:`lorastyle.descriptors.concat_vectors` does with both), then the
    in-sample PCA and leave-one-out artist top-1 of :func:`paired_top1_table`, with every
    split compared with the whole ``concat`` on the same queries (exact McNemar).

    Parameters
    ----------
    coll : Collection
    collection : str, default="main"
        Collection whose LoRAs are embedded.
    n_components : int, default=16
        Embedding dimension.

    Returns
    -------
    pandas.DataFrame
        One row per split (``A only``, ``B only``, ``A and B``): ``split``, ``n_features``,
        ``n``, ``top1`` with its Wilson interval (``top1_low``, ``top1_high``),
        ``only_this``, ``only_concat`` and ``p_mcnemar`` against ``A and B``.
    """
    import pandas as pd

    from ..metrics import mcnemar_test

    ids = coll.ids(collection)
    y = coll.labels(ids, "artist")
    loras = [coll.lora(i) for i in ids]
    roles = {"A only": ("lora_down",), "B only": ("lora_up",), "A and B": ("lora_down", "lora_up")}
    hits, sizes = {}, {}
    for name, keep in roles.items():
        X = np.stack(
            [np.concatenate([m.factors[r].ravel() for m in lora.modules.values() for r in keep]) for lora in loras]
        ).astype(np.float64)
        k = min(n_components, len(ids) - 2)
        Z = StyleEmbedding(k, calibrate=False).fit_transform(X)
        _, hits[name], _, _ = restricted_top1(Z, y, np.ones((len(ids), len(ids)), dtype=bool))
        sizes[name] = X.shape[1]
    rows = []
    for name in roles:
        top1 = float(hits[name].mean())
        low, high = wilson_interval(top1, len(ids))
        test = mcnemar_test(hits[name], hits["A and B"])
        rows.append(
            {
                "split": name,
                "n_features": sizes[name],
                "n": len(ids),
                "top1": top1,
                "top1_low": low,
                "top1_high": high,
                "only_this": test["a_only"],
                "only_concat": test["b_only"],
                "p_mcnemar": float("nan") if name == "A and B" else test["p_value"],
            }
        )
    return pd.DataFrame(rows)


def clustering_table(
    coll: Collection,
    *,
    collection: str = "main",
    descriptors: Sequence[str] = DESCRIPTOR_NAMES,
    encoders: Sequence[str] = (),
    levels: Sequence[str] = ("artist", "genre"),
    n_components: int = 16,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
):
    """Clustering and 1-NN scores of every representation, mean and spread over k-means seeds.

    Each representation is an in-sample PCA embedding of the collection's LoRAs
    (:func:`lora_embedding` for descriptors, :func:`feature_embedding` of the
    training-image features for encoders), clustered by k-means into as many clusters
    as the level has classes (:func:`lorastyle.metrics.cluster_scores`).

    Parameters
    ----------
    coll : Collection
    collection : str, default="main"
        Collection whose LoRAs are embedded.
    descriptors : sequence of str, default=DESCRIPTOR_NAMES
        LoRA descriptors, each a row ``"LoRA <descriptor>"``.
    encoders : sequence of str, default=()
        Image encoders, each a row named by :data:`ENCODER_NAMES` (or the encoder name).
    levels : sequence of str, default=("artist", "genre")
        Manifest columns used as labels.
    n_components : int, default=16
        Embedding dimension (capped as in :func:`lora_embedding` and :func:`feature_embedding`).
    seeds : sequence of int, default=(0, 1, 2, 3, 4)
        k-means seeds.

    Returns
    -------
    pandas.DataFrame
        One row per (representation, level), descriptors first: ``representation``, ``kind``
        (:func:`representation_kind`), ``level``, ``n`` (LoRAs), ``classes`` (distinct labels);
        ``ari``, ``nmi``, ``purity`` (means over k-means seeds, with ``*_std``, the population
        standard deviation over seeds); ``silhouette`` (euclidean, of the true labels); leave-
        one-out cosine ``top1`` over the ``n_queries`` LoRAs whose class has another member,
        with its 95% Wilson interval over them (``top1_low``, ``top1_high``: what those
        queries allow one to conclude) and ``top1_chance``, the expected top-1 of a random
        neighbour (:func:`nearest_neighbour_chance`).
    """
    import pandas as pd

    ids = coll.ids(collection)
    reps = representations(coll, ids, descriptors=descriptors, encoders=encoders, n_components=n_components)
    rows = []
    for name, Z in reps.items():
        for level in levels:
            y = coll.labels(ids, level)
            runs = [cluster_scores(Z, y, random_state=s) for s in seeds]
            row = {"representation": name, "kind": representation_kind(name), "level": level}
            row |= {"n": len(ids), "classes": len(set(y))}
            for key in ("ari", "nmi", "purity"):
                vals = [r[key] for r in runs]
                row[key], row[f"{key}_std"] = float(np.mean(vals)), float(np.std(vals))
            row["silhouette"] = runs[0]["silhouette"]
            row["top1"] = retrieval_scores(Z, y, k=(1,))["top1"]
            # retrieval_scores averages over the queries whose class has another member
            _, counts = np.unique(y, return_counts=True)
            row["n_queries"] = int(counts[counts > 1].sum())
            row["top1_low"], row["top1_high"] = wilson_interval(row["top1"], row["n_queries"])
            row["top1_chance"] = nearest_neighbour_chance(y)
            rows.append(row)
    return pd.DataFrame(rows)


def wilson_interval(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``p`` measured on ``n`` trials.

    Parameters
    ----------
    p : float
        Observed proportion, in [0, 1].
    n : int
        Number of trials (positive).
    z : float, default=1.959964
        Standard-normal quantile; the default gives a 95% interval.

    Returns
    -------
    low, high : float
        Bounds of the interval, within [0, 1].

    Raises
    ------
    ValueError
        If ``n <= 0``.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return float(centre - half), float(centre + half)


def nearest_neighbour_chance(labels: Sequence) -> float:
    """Expected leave-one-out top-1 accuracy when the neighbour is drawn at random.

    A query of class c is right with probability (n_c - 1) / (n - 1).

    Parameters
    ----------
    labels : sequence of length n
        Label of each item (n >= 2).

    Returns
    -------
    float
        ``sum_c n_c (n_c - 1) / (n (n - 1))``: the mean over all n queries (a query
        alone in its class counts as 0).
    """
    y = np.asarray(labels)
    _, counts = np.unique(y, return_counts=True)
    return float((counts * (counts - 1)).sum() / (len(y) * (len(y) - 1)))


def restricted_top1(
    Z: np.ndarray, labels: Sequence, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Leave-one-out top-1 (cosine) where each query may only retrieve the items ``allowed`` to it.

    Parameters
    ----------
    Z : ndarray of shape (n, d)
        Embedding of the items, compared by cosine similarity.
    labels : sequence of length n
        Label of each item.
    allowed : bool ndarray of shape (n, n)
        ``allowed[i, j]``: item j is a candidate for query i (the diagonal is ignored).

    Returns
    -------
    queried : bool ndarray of shape (n,)
        Queries that have at least one allowed candidate of their own label (the others
        cannot succeed and are left out).
    hit : bool ndarray of shape (n,)
        Whether the most similar allowed candidate shares the query's label (False where not queried).
    chance : ndarray of shape (n,)
        Probability of a hit for a random allowed candidate (0 where not queried).
    nearest : int ndarray of shape (n,)
        Index of each query's most similar allowed candidate (meaningless where none is allowed).
    """
    y = np.asarray(labels)
    ok = np.asarray(allowed, dtype=bool).copy()
    np.fill_diagonal(ok, False)
    same = y[:, None] == y[None, :]
    queried = (ok & same).any(axis=1)
    S = np.where(ok, similarity_matrix(np.asarray(Z, dtype=np.float64), metric="cosine"), -np.inf)
    nearest = S.argmax(axis=1)
    hit = queried & same[np.arange(len(y)), nearest]
    chance = np.where(queried, (ok & same).sum(axis=1) / np.maximum(ok.sum(axis=1), 1), 0.0)
    return queried, hit, chance, nearest


def style_reference_table(
    coll: Collection,
    *,
    collection: str = "main",
    descriptors: Sequence[str] = DESCRIPTOR_NAMES,
    encoders: Sequence[str] = (),
    n_components: int = 16,
):
    """Is an artist found through another of their paintings, or only through the same one?

    Two LoRAs of an artist may take the same painting as style reference. This table
    separates the two: ``same_painting`` is the share of nearest neighbours that share a
    source painting with the query; ``cross_top1`` is the artist top-1 when every LoRA
    sharing a source painting with the query is removed from its candidates, over the
    ``cross_n`` queries that still have a LoRA of their artist to find, with its 95% Wilson
    interval and ``cross_chance`` (a random remaining candidate).

    Parameters
    ----------
    coll : Collection
    collection : str, default="main"
        Collection whose LoRAs are embedded and queried (leave-one-out).
    descriptors : sequence of str, default=DESCRIPTOR_NAMES
        LoRA descriptors (:func:`lora_embedding`), each a row ``"LoRA <descriptor>"``.
    encoders : sequence of str, default=()
        Image encoders (:func:`feature_embedding` of the training-image features).
    n_components : int, default=16
        Embedding dimension.

    Returns
    -------
    pandas.DataFrame
        One row per representation: ``representation``; ``top1``, the artist top-1 with
        every other LoRA a candidate (over all queries); ``same_painting``, the share of
        queries whose nearest neighbour shares a source painting
        (:meth:`Collection.source_paintings`) with them; ``cross_n``, ``cross_top1``,
        ``cross_low``, ``cross_high`` and ``cross_chance`` as above (NaN when
        ``cross_n`` is 0).
    """
    import pandas as pd

    ids = coll.ids(collection)
    y = coll.labels(ids, "artist")
    shares = _share_a_painting(coll, ids)
    reps = representations(coll, ids, descriptors=descriptors, encoders=encoders, n_components=n_components)
    rows = []
    for name, Z in reps.items():
        _, hit_any, _, nearest = restricted_top1(Z, y, np.ones_like(shares))
        queried, hit, chance, _ = restricted_top1(Z, y, ~shares)
        n = int(queried.sum())
        top1 = float(hit[queried].mean()) if n else float("nan")
        low, high = wilson_interval(top1, n) if n else (float("nan"), float("nan"))
        rows.append(
            {
                "representation": name,
                "top1": float(hit_any.mean()),
                "same_painting": float(shares[np.arange(len(ids)), nearest].mean()),
                "cross_n": n,
                "cross_top1": top1,
                "cross_low": low,
                "cross_high": high,
                "cross_chance": float(chance[queried].mean()) if n else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def _lora_fit(
    coll: Collection,
    ids: Sequence[str],
    descriptor: str,
    n_components: int,
    select: ModuleSelection | None = None,
    random_state: int = 0,
) -> tuple[StyleEmbedding, list[LoRA]]:
    loras = [coll.lora(i) for i in ids]
    K = descriptor_kernel(descriptor, loras, select=select)
    emb = StyleEmbedding(min(n_components, len(ids) - 2), solver="precomputed", random_state=random_state).fit(K)
    return emb, loras


def retrieval_table(
    coll: Collection,
    *,
    descriptors: Sequence[str] = DESCRIPTOR_NAMES,
    encoders: Sequence[str] = (),
    n_components: int = 16,
    k: Sequence[int] = (1, 5),
):
    """Retrieval by artist in the paper's scenarios, one row per (scenario, representation).

    S1
        The query LoRA is in the fitted set (leave-one-out over the main collection).
    S2
        Unseen query: each held-out LoRA is projected out of sample into the main
        collection's embedding, calibration off and on; ``drift`` is the RMS norm
        of the projected queries over that of the fitted LoRAs.
    S3
        Image features of the known training images: main collection as the
        index, held-out LoRAs' training-image features as queries.
    S4
        Training images unknown: every LoRA is represented by images it
        generates (index: the main collection at the default T and w; queries:
        the held-out LoRAs at each T and w of the sweep).

    Descriptor scenarios (S1, S2) use an in-sample PCA of the main collection; image
    scenarios (S3, S4) compare the mean feature vectors themselves. Similarity is
    cosine throughout (:func:`lorastyle.metrics.retrieval_scores`,
    :func:`lorastyle.metrics.query_scores`).

    Parameters
    ----------
    coll : Collection
        A collection with ``main`` and ``heldout`` LoRAs.
    descriptors : sequence of str, default=DESCRIPTOR_NAMES
        LoRA descriptors for S1 and S2.
    encoders : sequence of str, default=()
        Image encoders for S3 and S4.
    n_components : int, default=16
        Dimension of the descriptor embeddings (capped at the number of main LoRAs - 2).
    k : sequence of int, default=(1, 5)
        Cut-offs of the ``precision@<k>`` columns.

    Returns
    -------
    pandas.DataFrame
        One row per (scenario, representation, setting): ``scenario`` (``S1`` to
        ``S4``), ``representation`` (``"LoRA <descriptor>"`` or the encoder's
        :data:`ENCODER_NAMES` name), ``setting`` (``"in the fitted set"``,
        ``"uncalibrated"``/``"calibrated"``, ``"training images"``, or a sample setting
        such as ``T25-w3-k6``), ``n`` (queries), ``top1`` with its 95% Wilson interval
        (``top1_low``, ``top1_high``), ``map`` (mean average precision), one
        ``precision@<k>`` column per cut-off, and ``drift`` (S2 only; NaN elsewhere).
    """
    import pandas as pd

    from ..metrics import query_scores

    main, held = coll.ids("main"), coll.ids("heldout")
    y_main, y_held = coll.labels(main, "artist"), coll.labels(held, "artist")
    rows = []

    def add(scenario, rep, setting, scores, drift=np.nan):
        n = len(main) if scenario == "S1" else len(held)  # every query has a relevant item in the index
        low, high = wilson_interval(scores["top1"], n)
        rows.append(
            {
                "scenario": scenario,
                "representation": rep,
                "setting": setting,
                "n": n,
                "top1": scores["top1"],
                "top1_low": low,
                "top1_high": high,
                "map": scores["map"],
                **{f"precision@{j}": scores[f"precision@{j}"] for j in k},
                "drift": drift,
            }
        )

    for d in descriptors:
        emb, loras = _lora_fit(coll, main, d, n_components)
        fitted = emb.embedding_
        add("S1", f"LoRA {d}", "in the fitted set", retrieval_scores(fitted, y_main, k=k))
        K_held = descriptor_kernel(d, [coll.lora(i) for i in held], loras)
        for calibrated in (False, True):
            Z = emb.project(K_held, calibrated=calibrated)
            drift = float(np.sqrt((Z**2).sum(1).mean() / (fitted**2).sum(1).mean()))
            add(
                "S2",
                f"LoRA {d}",
                "calibrated" if calibrated else "uncalibrated",
                query_scores(fitted, y_main, Z, y_held, k=k),
                drift,
            )
    for e in encoders:
        name = ENCODER_NAMES.get(e, e)
        X_main, X_held = feature_matrix(coll, main, e), feature_matrix(coll, held, e)
        add("S3", name, "training images", query_scores(X_main, y_main, X_held, y_held, k=k))
        feats = coll.features(e)
        settings = sorted({key.split("/")[1] for key in feats if key.startswith("gen/")})
        X_index = feature_matrix(coll, main, e, f"gen/{_default_setting(coll, e)}")
        for s in settings:
            if all(f"gen/{s}/{i}" in feats for i in held):
                add(
                    "S4", name, s, query_scores(X_index, y_main, feature_matrix(coll, held, e, f"gen/{s}"), y_held, k=k)
                )
    return pd.DataFrame(rows)


def _default_setting(coll: Collection, encoder: str) -> str:
    """The sample setting of the index (``T25-w3-k6``): the one every main LoRA was sampled at."""
    feats = coll.features(encoder)
    settings = sorted({key.split("/")[1] for key in feats if key.startswith("gen/")})
    return max(settings, key=lambda s: sum(key.startswith(f"gen/{s}/main-") for key in feats))


def heldout_paired_table(
    coll: Collection,
    *,
    descriptors: Sequence[str] = DESCRIPTOR_NAMES,
    encoders: Sequence[str] = (),
    reference: str = "LoRA concat",
    queries: str = "heldout",
    generated: bool = False,
    n_components: int = 16,
    n_resamples: int = 2000,
    random_state: int = 0,
):
    """Unseen queries answered from the weights (S2), the training images (S3) or generated images (S4).

    Each LoRA of the ``queries`` collection is one query for every representation: its
    calibrated projection into the main collection's embedding for a descriptor
    (:func:`retrieval_table`'s S2), its training images' mean features against the main LoRAs'
    for an encoder (S3) and, with ``generated``, the mean features of the images it generates
    at the default setting against those of the main LoRAs (S4, rows named ``"<encoder>,
    generated"``). A hit is a nearest main LoRA (cosine) of the query's artist.
    Representations are compared with one reference on these same queries as
    :func:`paired_top1_table` does (exact McNemar, bootstrap over artists).

    Parameters
    ----------
    coll : Collection
        With ``main`` LoRAs and LoRAs of the ``queries`` collection.
    descriptors, encoders, n_components
        As in :func:`retrieval_table`.
    reference : str, default="LoRA concat"
    queries : str, default="heldout"
        The collection of the queries: ``heldout`` (A initialised as the main LoRAs were) or
        ``heldout_stranger`` (the same training sets, each from its own initialisation seed, as
        a stranger would train them).
    generated : bool, default=False
        Add the S4 rows (the queries must have generated images).
    n_resamples : int, default=2000
    random_state : int, default=0

    Returns
    -------
    pandas.DataFrame
        The columns of :func:`paired_top1_table`, with ``scenario`` (S2, S3 or S4) after
        ``representation``.
    """
    import pandas as pd

    main, held = coll.ids("main"), coll.ids(queries)
    if not held:
        raise ValueError(f"the collection has no {queries!r} LoRAs to query with")
    y_main, y_held = coll.labels(main, "artist"), coll.labels(held, "artist")
    queried_by, scenario = {}, {}
    for d in descriptors:
        emb, loras = _lora_fit(coll, main, d, n_components)
        Z = emb.project(descriptor_kernel(d, [coll.lora(i) for i in held], loras), calibrated=True)
        queried_by[f"LoRA {d}"], scenario[f"LoRA {d}"] = (emb.embedding_, Z), "S2"
    for e in encoders:
        name = ENCODER_NAMES.get(e, e)
        queried_by[name], scenario[name] = (feature_matrix(coll, main, e), feature_matrix(coll, held, e)), "S3"
    for e in encoders if generated else ():
        name, source = f"{ENCODER_NAMES.get(e, e)}, generated", f"gen/{_default_setting(coll, e)}"
        index, Q = feature_matrix(coll, main, e, source), feature_matrix(coll, held, e, source)
        queried_by[name], scenario[name] = (index, Q), "S4"
    if reference not in queried_by:
        raise ValueError(f"reference {reference!r} is not one of the representations {sorted(queried_by)}")
    same = y_held[:, None] == y_main[None, :]
    results = {}
    for name, (index, Q) in queried_by.items():
        S = similarity_matrix(np.asarray(Q, np.float64), np.asarray(index, np.float64), metric="cosine")
        nearest = S.argmax(axis=1)
        queried = same.any(axis=1)
        hit = queried & same[np.arange(len(held)), nearest]
        results[name] = (queried, hit, same.mean(axis=1), nearest)
    rows = _compared_with(results, reference, y_held, n_resamples=n_resamples, random_state=random_state)
    for row in rows:
        row["scenario"] = scenario[row["representation"]]
    columns = ["representation", "scenario", *[c for c in rows[0] if c not in ("representation", "scenario")]]
    return pd.DataFrame(rows)[columns]


def structure_comparison(
    coll: Collection,
    *,
    descriptors: Sequence[str] = DESCRIPTOR_NAMES,
    encoders: Sequence[str] = (),
    n_components: int = 16,
    k: int = 5,
    n_permutations: int = 999,
    random_state: int = 0,
):
    """Structural similarity of LoRA embeddings and image embeddings of the same LoRAs (main collection).

    A null row per pair compares the LoRA embedding with the image embedding of
    randomly permuted LoRAs, the baseline any real agreement must beat.

    Parameters
    ----------
    coll : Collection
    descriptors : sequence of str, default=DESCRIPTOR_NAMES
        LoRA descriptors (:func:`lora_embedding`).
    encoders : sequence of str, default=()
        Image encoders (:func:`feature_embedding` of the training-image features);
        with none, the table is empty.
    n_components : int, default=16
        Dimension of both embeddings.
    k : int, default=5
        Neighbours for the k-NN overlap.
    n_permutations : int, default=999
        Permutations of the Mantel test behind ``rsa_p``.
    random_state : int, default=0
        Seeds the one permutation of the null rows (the same for every pair) and the
        Mantel test.

    Returns
    -------
    pandas.DataFrame
        One row per (descriptor, encoder, null): ``lora`` (descriptor), ``images``
        (encoder name), ``null`` (True: image embedding of permuted LoRAs), then
        :func:`lorastyle.metrics.structure_table`'s ``cka``, ``rsa_r``, ``rsa_p``,
        ``knn_overlap`` and ``procrustes``.
    """
    import pandas as pd

    from ..metrics import structure_table

    ids = coll.ids("main")
    rng = np.random.default_rng(random_state)
    perm = rng.permutation(len(ids))
    rows = []
    for d in descriptors:
        Z = lora_embedding(coll, ids, d, n_components=n_components)
        for e in encoders:
            F = feature_embedding(coll, ids, e, n_components=n_components)
            for null, other in ((False, F), (True, F[perm])):
                s = structure_table(Z, other, k=k, n_permutations=n_permutations, random_state=random_state)
                rows.append({"lora": d, "images": ENCODER_NAMES.get(e, e), "null": null, **s})
    return pd.DataFrame(rows)


def structure_references(
    coll: Collection,
    *,
    descriptor: str = "concat",
    encoders: Sequence[str] = (),
    n_components: int = 16,
    k: int = 5,
    n_permutations: int = 999,
    random_state: int = 0,
):
    """What "structurally similar" should be compared with: image against image, and a null that keeps artists.

    Three kinds of row on the main collection, each with the measures of
    :func:`lorastyle.metrics.structure_table`:

    ``image vs image``
        Two image embeddings of the same LoRAs (every pair of ``encoders``): how much two
        good image representations agree, the level a LoRA embedding can hope for.
    ``within-artist null``
        The LoRA embedding against an image embedding whose LoRAs are permuted *within* each
        artist: both still sort by artist, only the order inside an artist is lost. A LoRA
        embedding that beats this null agrees with the images on more than artist identity.
    ``baseline``
        The LoRA embedding against the colour statistics of the training images
        (:func:`colour_statistics`).

    Parameters
    ----------
    coll : Collection
    descriptor : str, default="concat"
        The LoRA descriptor of the null and baseline rows (:func:`lora_embedding`).
    encoders : sequence of str, default=()
        Image encoders (:func:`feature_embedding` of the training images).
    n_components, k, n_permutations, random_state
        As in :func:`structure_comparison`; ``random_state`` also seeds the within-artist
        permutation.

    Returns
    -------
    pandas.DataFrame
        One row per comparison: ``kind``, ``a``, ``b`` (the two representations), then ``cka``,
        ``rsa_r``, ``rsa_p``, ``knn_overlap`` and ``procrustes``.
    """
    import pandas as pd

    from ..metrics import structure_table

    ids = coll.ids("main")
    artists = coll.labels(ids, "artist")
    rng = np.random.default_rng(random_state)
    within = np.arange(len(ids))
    for a in np.unique(artists):
        members = np.flatnonzero(artists == a)
        within[members] = rng.permutation(members)
    images = {ENCODER_NAMES.get(e, e): feature_embedding(coll, ids, e, n_components=n_components) for e in encoders}
    Z = lora_embedding(coll, ids, descriptor, n_components=n_components)
    pairs = [
        ("image vs image", a, images[a], b, images[b]) for i, a in enumerate(images) for b in list(images)[i + 1 :]
    ]
    pairs += [("within-artist null", f"LoRA {descriptor}", Z, name, F[within]) for name, F in images.items()]
    colour = feature_embedding(coll, ids, "colour", n_components=n_components)
    pairs.append(("baseline", f"LoRA {descriptor}", Z, ENCODER_NAMES["colour"], colour))
    rows = []
    for kind, a, X, b, Y in pairs:
        scores = structure_table(X, Y, k=k, n_permutations=n_permutations, random_state=random_state)
        rows.append({"kind": kind, "a": a, "b": b, **scores})
    return pd.DataFrame(rows)


SUBNETWORKS = {
    "all modules": ModuleSelection(),
    "self-attention": ModuleSelection(layers=["self_attention"]),
    "cross-attention": ModuleSelection(layers=["cross_attention"]),
    "feed-forward": ModuleSelection(layers=["feed_forward"]),
    "down blocks": ModuleSelection(blocks=["down"]),
    "mid block": ModuleSelection(blocks=["mid"]),
    "up blocks": ModuleSelection(blocks=["up"]),
}


def subnetwork_curves(
    coll: Collection,
    *,
    descriptor: str = "concat",
    dimensions: Sequence[int] = (2, 4, 8, 16, 32),
    level: str = "artist",
    subnetworks: dict[str, ModuleSelection] | None = None,
):
    """Leave-one-out top-1 retrieval and ARI by sub-network over PCA dimensions (main collection).

    Parameters
    ----------
    coll : Collection
    descriptor : {"concat", "delta", "gram"}, default="concat"
    dimensions : sequence of int, default=(2, 4, 8, 16, 32)
        PCA dimensions; those above the number of main LoRAs - 2 are skipped.
    level : str, default="artist"
        Manifest column used as labels for both scores.
    subnetworks : dict of str to ModuleSelection, optional
        Name to module selection; default :data:`SUBNETWORKS`.

    Returns
    -------
    pandas.DataFrame
        One row per (subnetwork, dimension): ``subnetwork``, ``dimensions``,
        ``n_features`` (length of the sub-network's ``concat`` vector, whatever the
        descriptor), ``top1`` (leave-one-out, cosine) and ``ari`` (one k-means run,
        seed 0).
    """
    import pandas as pd

    from ..descriptors import concat_vectors

    ids = coll.ids("main")
    y = coll.labels(ids, level)
    loras = [coll.lora(i) for i in ids]
    rows = []
    for name, select in (subnetworks or SUBNETWORKS).items():
        K = descriptor_kernel(descriptor, loras, select=select)
        n_features = concat_vectors(loras[:1], select=select).shape[1]
        for dim in dimensions:
            if dim > len(ids) - 2:
                continue
            Z = StyleEmbedding(dim, solver="precomputed", calibrate=False).fit_transform(K)
            rows.append(
                {
                    "subnetwork": name,
                    "dimensions": dim,
                    "n_features": n_features,
                    "top1": retrieval_scores(Z, y, k=(1,))["top1"],
                    "ari": cluster_scores(Z, y, random_state=0)["ari"],
                }
            )
    return pd.DataFrame(rows)


def subnetwork_paired_table(
    coll: Collection,
    *,
    descriptor: str = "concat",
    dimensions: int = 8,
    reference: str = "all modules",
    level: str = "artist",
    subnetworks: dict[str, ModuleSelection] | None = None,
    n_resamples: int = 2000,
    random_state: int = 0,
):
    """Each sub-network against one reference (all modules) on the same queries, at one PCA dimension.

    The embeddings of :func:`subnetwork_curves`; leave-one-out top-1 by cosine
    (:func:`restricted_top1`, every other main LoRA a candidate), compared as
    :func:`paired_top1_table` compares representations: exact McNemar on the discordant
    queries and a bootstrap of the difference over artists.

    Parameters
    ----------
    coll : Collection
    descriptor : {"concat", "delta", "gram"}, default="concat"
    dimensions : int, default=8
    reference : str, default="all modules"
        A key of ``subnetworks``.
    level : str, default="artist"
    subnetworks : dict of str to ModuleSelection, optional
        Default :data:`SUBNETWORKS`.
    n_resamples : int, default=2000
    random_state : int, default=0

    Returns
    -------
    pandas.DataFrame
        One row per sub-network: ``subnetwork`` and the columns of :func:`paired_top1_table`
        but ``kind``.
    """
    import pandas as pd

    subnetworks = subnetworks or SUBNETWORKS
    if reference not in subnetworks:
        raise ValueError(f"reference {reference!r} is not one of the sub-networks {sorted(subnetworks)}")
    ids = coll.ids("main")
    y, artists = coll.labels(ids, level), coll.labels(ids, "artist")
    loras = [coll.lora(i) for i in ids]
    allowed = np.ones((len(ids), len(ids)), dtype=bool)
    results = {}
    for name, select in subnetworks.items():
        K = descriptor_kernel(descriptor, loras, select=select)
        Z = StyleEmbedding(dimensions, solver="precomputed", calibrate=False).fit_transform(K)
        results[name] = restricted_top1(Z, y, allowed)
    rows = _compared_with(results, reference, artists, n_resamples=n_resamples, random_state=random_state)
    return pd.DataFrame(rows).rename(columns={"representation": "subnetwork"})


def random_module_control(
    coll: Collection,
    *,
    like: str = "feed-forward",
    descriptor: str = "concat",
    dimensions: int = 8,
    n_draws: int = 20,
    level: str = "artist",
    random_state: int = 0,
):
    """Top-1 of random sets of modules as large as a sub-network: what a sub-network's result must beat.

    Each draw takes modules in a random order until their ``concat`` length reaches that of
    the sub-network ``like``, then scores them as :func:`subnetwork_curves` does.

    Parameters
    ----------
    coll : Collection
    like : str, default="feed-forward"
        A key of :data:`SUBNETWORKS`: the size to match.
    descriptor : {"concat", "delta", "gram"}, default="concat"
    dimensions : int, default=8
        PCA dimensions.
    n_draws : int, default=20
        Random module sets.
    level : str, default="artist"
        Manifest column used as labels.
    random_state : int, default=0
        Seed of the draws.

    Returns
    -------
    pandas.DataFrame
        One row per draw: ``draw``, ``n_modules``, ``n_features`` (its ``concat`` length, the
        first at or above the target's) and ``top1``.
    """
    import pandas as pd

    from ..descriptors import concat_vectors

    ids = coll.ids("main")
    y = coll.labels(ids, level)
    loras = [coll.lora(i) for i in ids]
    target = concat_vectors(loras[:1], select=SUBNETWORKS[like]).shape[1]
    names = list(loras[0].modules)
    sizes = {n: concat_vectors(loras[:1], select=ModuleSelection(names=[n])).shape[1] for n in names}
    rng = np.random.default_rng(random_state)
    rows = []
    for draw in range(n_draws):
        chosen, total = [], 0
        for n in rng.permutation(names):
            if total >= target:
                break
            chosen.append(str(n))
            total += sizes[n]
        K = descriptor_kernel(descriptor, loras, select=ModuleSelection(names=chosen))
        Z = StyleEmbedding(dimensions, solver="precomputed", calibrate=False).fit_transform(K)
        top1 = retrieval_scores(Z, y, k=(1,))["top1"]
        rows.append({"draw": draw, "n_modules": len(chosen), "n_features": total, "top1": top1})
    return pd.DataFrame(rows)


def invariance_table(
    coll: Collection,
    *,
    collections: Sequence[str] = ("seed_variant", "rank_variant"),
    descriptors: Sequence[str] = DESCRIPTOR_NAMES,
    n_components: int = 16,
):
    """How each descriptor sees a LoRA retrained on the same images: another A seed, rank or training seed.

    For each variant, the cosine similarity (in the descriptor's own feature
    space) to the main LoRA it repeats, beside the mean cosine to the other
    main LoRAs of the same artist and of other artists; then, as a search would see it,
    where the original ranks among all main LoRAs and whether the nearest main LoRA is of the
    variant's artist: in the descriptor's own space, and in the ``n_components``-dimensional
    PCA of the main collection into which the variant is projected (as scenario S2 of
    :func:`retrieval_table` projects held-out LoRAs).

    The original is the main LoRA trained on the same training images (the manifest's
    ``training_images``). ``concat`` has no row for a rank variant: it cannot compare
    different ranks.

    Parameters
    ----------
    coll : Collection
        A collection with LoRAs of ``collections``, each a retraining of a main LoRA.
    collections : sequence of str, default=("seed_variant", "rank_variant")
        ``seed_variant`` (another initialisation seed of A), ``rank_variant`` (another rank),
        ``retrained`` (the same initialisation, another seed for the noise and the batches).
    descriptors : sequence of str, default=DESCRIPTOR_NAMES
    n_components : int, default=16
        Dimension of the PCA of the main collection.

    Returns
    -------
    pandas.DataFrame
        One row per (descriptor, variant): ``descriptor``, ``variant`` (its id), ``original``
        (the id of the main LoRA it retrains), ``collection`` (one of ``collections``), ``cos_to_original``,
        ``cos_same_artist``, ``cos_other_artists`` (means; NaN where there is no such LoRA),
        ``rank_of_original`` (1 = the nearest of the main LoRAs) and ``nearest_same_artist``
        in the descriptor's space, and ``rank_of_original_pca`` and ``nearest_same_artist_pca``
        in the PCA.
    """
    import pandas as pd

    variants = coll.ids(list(collections))
    main = coll.ids("main")
    artists = coll.labels(main, "artist")
    by_training_set = {coll.by_id[i]["training_images"]: i for i in main}
    originals = {}
    for v in variants:
        if coll.by_id[v]["training_images"] not in by_training_set:
            raise ValueError(f"{v}: no main LoRA was trained on its training images")
        originals[v] = by_training_set[coll.by_id[v]["training_images"]]
    rows = []

    def rank_and_hit(similarity: np.ndarray, original: int, artist: str) -> tuple[int, bool]:
        order = np.argsort(-similarity, kind="stable")
        return int(np.flatnonzero(order == original)[0]) + 1, bool(artists[order[0]] == artist)

    for d in descriptors:
        emb, loras = _lora_fit(coll, main, d, n_components)
        fitted = emb.embedding_
        # concat cannot compare ranks: a rank variant has no concat row (the table shows the gap)
        queries = [v for v in variants if d != "concat" or coll.lora(v).ranks == coll.lora(originals[v]).ranks]
        if not queries:
            continue
        # One kernel of every variant against the main LoRAs, and only the norms of each side
        # (a full kernel per variant would recompute the main LoRAs' own one each time)
        K = descriptor_kernel(d, [coll.lora(v) for v in queries], loras)
        norms_main = np.sqrt([descriptor_kernel(d, [m])[0, 0] for m in loras])
        for row, v in enumerate(queries):
            artist = coll.by_id[v]["artist"]
            original = originals[v]
            norm_v = np.sqrt(descriptor_kernel(d, [coll.lora(v)])[0, 0])
            cos = K[row] / (norm_v * norms_main)  # to every main LoRA, in the order of `main`
            o = main.index(original)
            same = [j for j, i in enumerate(main) if i != original and artists[j] == artist]
            other = [j for j, i in enumerate(main) if artists[j] != artist]
            rank, hit = rank_and_hit(cos, o, artist)
            z = emb.project(K[row : row + 1])[0]
            pca_cos = fitted @ z / (np.linalg.norm(fitted, axis=1) * np.linalg.norm(z))
            rank_pca, hit_pca = rank_and_hit(pca_cos, o, artist)
            rows.append(
                {
                    "descriptor": d,
                    "variant": v,
                    "original": original,
                    "collection": coll.by_id[v]["collection"],
                    "cos_to_original": float(cos[o]),
                    "cos_same_artist": float(np.mean(cos[same])) if same else np.nan,
                    "cos_other_artists": float(np.mean(cos[other])) if other else np.nan,
                    "rank_of_original": rank,
                    "nearest_same_artist": hit,
                    "rank_of_original_pca": rank_pca,
                    "nearest_same_artist_pca": hit_pca,
                }
            )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# The collections (chapter 2), maps (chapter 3), real files (chapter 8), memorisation (chapter 9)
# ---------------------------------------------------------------------------------------------


def collection_summary(coll: Collection):
    """One row per collection of the build: what it is for and how its LoRAs were trained.

    Parameters
    ----------
    coll : Collection

    Returns
    -------
    pandas.DataFrame
        One row per collection, in order of first appearance in the manifest:
        ``collection``, ``loras``, ``artists``, ``genres`` (counts), and
        ``images_per_lora``, ``ranks``, ``A_init_seeds``: the distinct values in that
        collection, as a comma-separated str in increasing order.
    """
    import pandas as pd

    rows = []
    for name in dict.fromkeys(r["collection"] for r in coll.rows):
        sub = [r for r in coll.rows if r["collection"] == name]
        rows.append(
            {
                "collection": name,
                "loras": len(sub),
                "artists": len({r["artist"] for r in sub}),
                "genres": len({r["genre"] for r in sub}),
                "images_per_lora": ", ".join(sorted({r["n_images"] for r in sub}, key=int)),
                "ranks": ", ".join(sorted({r["rank"] for r in sub}, key=int)),
                "A_init_seeds": ", ".join(sorted({r["init_seed"] for r in sub}, key=int)),
            }
        )
    return pd.DataFrame(rows)


def artist_table(coll: Collection):
    """The artists of the collection with their genre, movement, dates and LoRA counts, by genre.

    Genre, movement and dates come from
    :func:`lorastyle.collection.datasets.artist_genres`, so every artist of the
    collection must be in that table (the default profile's Met artists).

    Parameters
    ----------
    coll : Collection

    Returns
    -------
    pandas.DataFrame
        One row per artist of the manifest, sorted by genre then artist: ``genre``,
        ``artist``, ``movement``, ``dates``, ``paintings`` (in the Met package),
        ``main`` and ``real`` (LoRAs in each collection).
    """
    import pandas as pd

    from ..collection.datasets import artist_genres, met_paintings

    genres = artist_genres()
    works: dict[str, int] = {}
    for p in met_paintings():
        works[p.artist] = works.get(p.artist, 0) + 1
    rows = []
    for artist in sorted({r["artist"] for r in coll.rows}):
        g = genres[artist]
        count = {c: sum(r["artist"] == artist and r["collection"] == c for r in coll.rows) for c in ("main", "real")}
        rows.append(
            {
                "genre": g.genre,
                "artist": artist,
                "movement": g.movement,
                "dates": g.dates,
                "paintings": works.get(artist, 0),
                **count,
            }
        )
    return pd.DataFrame(rows).sort_values(["genre", "artist"], ignore_index=True)


def map_panels(
    coll: Collection,
    *,
    collection: str = "main",
    descriptors: Sequence[str] = ("concat",),
    encoders: Sequence[str] = (),
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """2-D PCA maps of LoRA descriptors and image encoders, ready for :func:`lorastyle.book.viz.style_maps`.

    Parameters
    ----------
    coll : Collection
    collection : str, default="main"
        Collection whose LoRAs are mapped.
    descriptors : sequence of str, default=("concat",)
        LoRA descriptors, each a panel ``"LoRA weights (<descriptor>)"``.
    encoders : sequence of str, default=()
        Image encoders, each a panel ``"<encoder name> of training images"``.

    Returns
    -------
    dict of str to (points, artists, genres)
        Panel title to its first two principal components (ndarray of shape
        (n_loras, 2)) and the artist and genre of each LoRA (ndarrays of str), in the
        order descriptors, then encoders. Every map is of the same LoRAs.
    """
    ids = coll.ids(collection)
    artists, genres = coll.labels(ids, "artist"), coll.labels(ids, "genre")
    panels = {f"LoRA weights ({d})": lora_embedding(coll, ids, d, n_components=2) for d in descriptors}
    panels |= {
        f"{ENCODER_NAMES.get(e, e)} of training images": feature_embedding(coll, ids, e, n_components=2)
        for e in encoders
    }
    return {title: (Z[:, :2], artists, genres) for title, Z in panels.items()}


def procrustes_aligned(reference: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Two maps of the same items, ``other`` rotated (or reflected) and scaled onto ``reference``.

    Both are centred and scaled to unit Frobenius norm, then ``other`` gets the orthogonal
    transform that best matches ``reference`` (:func:`scipy.spatial.procrustes`): what "similar up
    to rotation" means, drawn.

    Parameters
    ----------
    reference, other : ndarray of shape (n_items, 2)
        Rows aligned (the same items in the same order).

    Returns
    -------
    reference : ndarray of shape (n_items, 2)
        Centred and normalised.
    aligned : ndarray of shape (n_items, 2)
        ``other`` centred, normalised, rotated and scaled onto ``reference``.
    disparity : float
        The remaining sum of squared differences (0: identical up to rotation and scale).

    Raises
    ------
    ValueError
        For maps of different shapes.
    """
    from scipy.spatial import procrustes

    reference, other = np.asarray(reference, float), np.asarray(other, float)
    if reference.shape != other.shape:
        raise ValueError(f"maps of shapes {reference.shape} and {other.shape}: the same items are needed")
    a, b, disparity = procrustes(reference, other)
    return a, b, float(disparity)


def map_neighbour_table(panels: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """How often a map's nearest point is of the same artist: what the eye reads as "grouped together".

    Parameters
    ----------
    panels : dict of str to (points, artists, genres)
        As :func:`map_panels` returns.

    Returns
    -------
    pandas.DataFrame
        One row per panel: ``map``, ``n`` (points), ``same_artist`` (leave-one-out share of
        points whose nearest other point in the 2-D map, euclidean, is of their artist) with its
        95% Wilson interval (``low``, ``high``), ``same_genre`` likewise, and ``chance`` (a
        random other point of the same artist).
    """
    import pandas as pd

    rows = []
    for title, (points, artists, genres) in panels.items():
        n = len(points)
        row = {"map": title, "n": n}
        for key, labels in (("same_artist", artists), ("same_genre", genres)):
            row[key] = retrieval_scores(points, labels, k=(1,), metric="euclidean")["top1"]
        row["low"], row["high"] = wilson_interval(row["same_artist"], n)
        row["chance"] = nearest_neighbour_chance(artists)
        rows.append(row)
    return pd.DataFrame(rows)


def sample_rows(coll: Collection, artist: str, *, n: int = 6) -> dict[str, np.ndarray]:
    """Training images beside generated images for one artist, for :func:`lorastyle.book.viz.image_grid`.

    Rows: the first main LoRA's training images and samples, and the same for the
    artist's first real-pixel LoRA when the collection has one.

    Parameters
    ----------
    coll : Collection
    artist : str
        An artist of the manifest.
    n : int, default=6
        At most this many images per row.

    Returns
    -------
    dict of str to ndarray of shape (m, H, W, 3), dtype uint8
        ``"stylized LoRA: training images"``, ``"stylized LoRA: generated"`` and, when
        the artist has a real-pixel LoRA, ``"real-pixel LoRA: training images"`` and
        ``"real-pixel LoRA: generated"``; ``m <= n``.

    Raises
    ------
    ValueError
        If the artist has neither a main nor a real-pixel LoRA.
    """
    rows = {}
    for collection, label in (("main", "stylized"), ("real", "real-pixel")):
        ids = [i for i in coll.ids(collection) if coll.by_id[i]["artist"] == artist]
        if ids:
            rows[f"{label} LoRA: training images"] = coll.images(ids[0], "train")[:n]
            rows[f"{label} LoRA: generated"] = coll.images(ids[0], "gen")[:n]
    if not rows:
        raise ValueError(f"no main or real-pixel LoRA of {artist!r} in {coll.root}")
    return rows


def loss_curves(coll: Collection) -> dict[str, dict[str, list[float]]]:
    """Training losses: ``{"base": {"base model": curve}, "loras": {collection: mean curve}}``.

    Parameters
    ----------
    coll : Collection
        A collection folder with ``losses.json``.

    Returns
    -------
    dict
        ``"base"``: ``{"base model": loss per step}`` of the base model's pre-training,
        or ``{}`` when the build did not train one; ``"loras"``: collection name to the
        per-step mean loss over its LoRAs recorded in ``losses.json``, in order of first
        appearance in the manifest; ``"reference"``: ``{label: level}``, the base model's loss
        on the LoRAs' own images, as the mean over every LoRA of its first step (taken while
        B is still zero, so the LoRA adds nothing yet), or ``{}`` without LoRA losses.
    """
    import json

    losses = json.loads((coll.root / "losses.json").read_text())
    by_collection: dict[str, list[list[float]]] = {}
    for r in coll.rows:
        if r["id"] in losses:
            by_collection.setdefault(r["collection"], []).append(losses[r["id"]])
    firsts = [curve[0] for curves in by_collection.values() for curve in curves if curve]
    n = len(firsts)
    return {
        "base": {"base model": losses["base"]} if "base" in losses else {},
        "loras": {c: list(np.mean(v, axis=0)) for c, v in by_collection.items()},
        "reference": {f"base model on the LoRAs' images (step 1 of {n} LoRAs)": float(np.mean(firsts))} if n else {},
    }


def _nearest_distances(images: np.ndarray, references: np.ndarray) -> np.ndarray:
    """RMS pixel distance (0-255 scale) of every image to its nearest reference image."""
    x = images.reshape(len(images), -1).astype(np.float64)
    y = references.reshape(len(references), -1).astype(np.float64)
    d2 = (x**2).sum(1)[:, None] - 2 * x @ y.T + (y**2).sum(1)[None, :]
    return np.sqrt(np.maximum(d2, 0).min(axis=1) / x.shape[1])


def memorisation_table(
    coll: Collection,
    *,
    collections: Sequence[str] = ("memorisation", "main"),
    n_draws: int = 20,
    random_state: int = 0,
):
    """Do LoRAs trained on few images copy them? Nearest-neighbour distances of generated images.

    For every LoRA, the RMS pixel distance of each generated image to the nearest
    of its own training images (``d_own``), and to the nearest of as many training images
    of other LoRAs, drawn at random (``d_others``, the mean over ``n_draws`` draws). A
    nearest distance shrinks as the reference set grows, so both sides get sets of the same
    size: comparing 3 own images with 1,300 others would make every ratio look like "no
    copying". Copying shows as ``d_own`` far below ``d_others``; ``ratio = d_own / d_others``.
    ``d_all_others`` (nearest over every other LoRA's images) is kept for reference.

    Distances are per pixel channel on the 0-255 scale, averaged over the generated
    images. LoRAs that share a training image with the query LoRA are not "others".

    Parameters
    ----------
    coll : Collection
    collections : sequence of str, default=("memorisation", "main")
        Collections whose LoRAs are rows; "others" are taken from all of them together.
    n_draws : int, default=20
        Random reference sets of other LoRAs' images per LoRA.
    random_state : int, default=0
        Seed of the draws.

    Returns
    -------
    pandas.DataFrame
        One row per LoRA: ``collection``, ``id``, ``n_images``, ``d_own``, ``d_others``,
        ``ratio`` and ``d_all_others``.
    """
    import pandas as pd

    rng = np.random.default_rng(random_state)
    ids = coll.ids(collections)
    train = {i: coll.images(i, "train") for i in ids}
    sources = {i: set(filter(None, coll.by_id[i].get("training_images", "").split(";"))) for i in ids}
    rows = []
    for c in collections:
        for i in coll.ids(c):
            gen = coll.images(i, "gen")
            # a LoRA that saw any of the same training images is not an "other" (a memorisation
            # LoRA's three images are the first images of a main LoRA)
            pool = [train[j] for j in ids if j != i and not sources[i] & sources[j]]
            n = len(train[i])
            if sum(map(len, pool)) < n:
                raise ValueError(f"{i}: fewer than {n} training images of other LoRAs to compare its samples with")
            others = np.concatenate(pool)
            d_own = _nearest_distances(gen, train[i]).mean()
            draws = [rng.choice(len(others), size=n, replace=False) for _ in range(n_draws)]
            d_others = float(np.mean([_nearest_distances(gen, others[d]).mean() for d in draws]))
            rows.append(
                {
                    "collection": c,
                    "id": i,
                    "n_images": int(coll.by_id[i]["n_images"]),
                    "d_own": float(d_own),
                    "d_others": d_others,
                    "ratio": float(d_own / d_others) if d_others > 0 else np.nan,
                    "d_all_others": float(_nearest_distances(gen, others).mean()),
                }
            )
    return pd.DataFrame(rows)


def memorisation_summary(mem, *, reference: str = "main"):
    """The distance ratio of each collection of :func:`memorisation_table`, with a 95% interval.

    One row per collection: ``n`` (LoRAs), the mean ``ratio`` with its Student-t interval
    (``ratio_low``, ``ratio_high``; one value per LoRA, so LoRAs are the units), the mean
    ``d_own`` and ``d_others``, and ``p_vs_reference``, the two-sided Mann-Whitney p-value of
    the collection's ratios against the ``reference`` collection's (NaN on its own row).
    Memorisation would show as an interval below 1, and below the reference's.

    Parameters
    ----------
    mem : pandas.DataFrame
        The output of :func:`memorisation_table`.
    reference : str, default="main"
        The collection the others are compared with.

    Returns
    -------
    pandas.DataFrame
    """
    import pandas as pd
    from scipy.stats import mannwhitneyu, t

    ref = mem[mem.collection == reference].ratio.to_numpy()
    rows = []
    for c, group in mem.groupby("collection", sort=False):
        r = group.ratio.to_numpy()
        half = t.ppf(0.975, len(r) - 1) * r.std(ddof=1) / np.sqrt(len(r)) if len(r) > 1 else np.nan
        p = np.nan if c == reference or not len(ref) else float(mannwhitneyu(r, ref).pvalue)
        rows.append(
            {
                "collection": c,
                "n": len(r),
                "ratio": float(r.mean()),
                "ratio_low": float(r.mean() - half),
                "ratio_high": float(r.mean() + half),
                "d_own": float(group.d_own.mean()),
                "d_others": float(group.d_others.mean()),
                "p_vs_reference": p,
            }
        )
    return pd.DataFrame(rows)


REAL_LORA_MODULES = ModuleSelection(parts=["unet"], layers=["self_attention", "cross_attention"])


def real_lora_similarity(
    folder: str | Path, *, descriptors: Sequence[str] = DESCRIPTOR_NAMES, select: ModuleSelection = REAL_LORA_MODULES
):
    """Cosine similarities between real LoRA files made by others, by each descriptor.

    Only modules that every file adapts are compared (by default the U-Net's
    attention projections). ``concat`` is defined only for pairs with the same
    modules and ranks; other pairs are NaN, which is the point: it cannot compare
    a rank-4 file with a rank-8 one.

    Parameters
    ----------
    folder : str or Path
        A folder of ``.safetensors`` LoRA files (every file is read).
    descriptors : sequence of str, default=DESCRIPTOR_NAMES
    select : ModuleSelection, default=REAL_LORA_MODULES
        Modules considered (U-Net self- and cross-attention); of those, only the ones
        every file adapts are compared.

    Returns
    -------
    labels : list of str
        One per file, sorted by file name: the part after ``__`` (the shared folder names
        files ``<layout>__<name>.safetensors``), else the file's stem.
    summary : pandas.DataFrame
        One row per file: ``file`` (name), ``label``, ``layout`` (the file's format),
        ``base`` (its base model), ``ranks`` (the distinct ranks over the compared
        modules, comma-separated) and ``modules`` (number of compared modules).
    cosines : dict of str to pandas.DataFrame
        Descriptor to a files x files cosine matrix, index and columns the labels.

    Raises
    ------
    ValueError
        If the files share no module of ``select``.
    """
    import pandas as pd

    from ..errors import IncomparableLorasError

    paths = sorted(Path(folder).glob("*.safetensors"))
    if len(paths) < 2:
        raise ValueError(f"{folder}: {len(paths)} .safetensors file(s); comparing needs at least 2")
    loras = [load_lora(p) for p in paths]
    shared = set.intersection(*(set(select.modules(lora)) for lora in loras))
    if not shared:
        raise ValueError(f"{folder}: the files share no module of {select}")

    def only_shared(lora: LoRA) -> LoRA:
        from dataclasses import replace

        return replace(lora, modules={n: m for n, m in lora.modules.items() if n in shared})

    loras = [only_shared(lora) for lora in loras]
    # "<layout>__<name>.safetensors" (the shared folder's naming) is labelled by its name part
    names = [p.stem.split("__")[-1] for p in paths]
    summary = pd.DataFrame(
        [
            {
                "file": p.name,
                "label": n,
                "layout": lora.format,
                "base": lora.base,
                "ranks": ", ".join(map(str, sorted(set(lora.ranks)))),
                "modules": len(lora.modules),
            }
            for p, n, lora in zip(paths, names, loras)
        ]
    )
    cosines = {}
    for d in descriptors:
        C = np.full((len(loras), len(loras)), np.nan)
        if d == "concat":
            for i in range(len(loras)):
                for j in range(i, len(loras)):
                    try:
                        K = descriptor_kernel(d, [loras[i], loras[j]])
                    except IncomparableLorasError:
                        continue
                    C[i, j] = C[j, i] = K[0, 1] / np.sqrt(K[0, 0] * K[1, 1])
        else:
            K = descriptor_kernel(d, loras)
            norms = np.sqrt(np.diag(K))
            C = K / np.outer(norms, norms)
        cosines[d] = pd.DataFrame(C, index=names, columns=names)
    return names, summary, cosines
