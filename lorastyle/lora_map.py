"""A map of a user's LoRA folder: one self-contained, offline HTML page (what ``lorastyle map`` writes).

For every base family of an index (each family is scored on its own, see
:mod:`lorastyle.index.store`):

* the pairwise scores are the default scorer of ``lorastyle similar``
  (:meth:`lorastyle.index.search.SketchMatrix.cosine_matrix`: the cosine of the descriptors
  over the model parts both files adapt);
* :func:`map_layout` places the files in 2-D from the distances ``1 - score``;
* :func:`clusters` groups them by average linkage: a cluster is a set of files whose average
  score is above the family's threshold, by default the score from which ``similar`` calls two
  of its files related (:func:`lorastyle.index.thresholds.related_threshold`: calibrated where the
  family was, else from the family's own null).

:func:`map_page` is the page: the map (plotly.js embedded inline: the page loads nothing from
the network), a side panel with the file under the mouse and its preview image, and the cluster
list as plain HTML. :func:`map_json` is the cluster list as JSON (``lorastyle map --json``).

Preview images are the ones LoRA managers keep next to a file (:func:`find_preview`), embedded
as ``data:`` URIs downscaled to at most :data:`PREVIEW_SIZE` pixels. Titles, trigger words and
base models come from the sidecar files LoRA managers keep next to a file and from its header,
read when the map is made (:mod:`lorastyle.io.sidecars`, whose precedence rule decides), so an
edited sidecar shows without re-indexing; ``base_models`` keeps only the files whose base model
(for example a Civitai ``baseModel`` such as ``Pony`` or ``Illustrious``) names one of them.

This module imports plotly, scikit-learn, umap-learn and Pillow inside its functions only, so
that importing it costs nothing; the command imports it only when ``map`` runs.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._memory import check_fits
from ._validation import check_option
from .io.sidecars import PREVIEW_SUFFIXES, VIDEO_PREVIEW_SUFFIXES, file_facts, find_preview

__all__ = [
    "DEFAULT_THRESHOLD",
    "MDS_MAX_POINTS",
    "PREVIEW_SIZE",
    "PREVIEW_SUFFIXES",
    "CIVITAI_INFO_SUFFIX",
    "MARKS",
    "GroupMap",
    "MapData",
    "map_layout",
    "layout_fidelity",
    "FAITHFUL_LAYOUT",
    "MAP_MAX_FILES",
    "clusters",
    "default_threshold",
    "find_preview",
    "preview_data_uri",
    "map_data",
    "map_page",
    "map_json",
]

#: Cluster threshold when the index's descriptor and sketch settings have no calibration:
#: files join a cluster when their average score is at least 0.5 (the calibrated ``gram``
#: threshold of the tiny model's wild benchmark is 0.46).
DEFAULT_THRESHOLD = 0.5
#: Groups of up to this many files are placed by metric MDS, larger ones by UMAP (see :func:`map_layout`).
MDS_MAX_POINTS = 300
#: A family of more files is placed from a seeded random sample of this many (its n x n scores are
#: 128 MB; a browser draws 4,000 points at ease, 70,000 hardly): the page says so, and ``similar``
#: and ``duplicates`` still cover every file.
MAP_MAX_FILES = 4000
#: Longest side, in pixels, of an embedded preview image.
PREVIEW_SIZE = 256
#: The Civitai Helper extension's info file, ``NAME.civitai.info`` (read with the other sidecars by
#: :mod:`lorastyle.io.sidecars`). Its ``images`` are URLs (the first is saved as ``NAME.preview.png``).
CIVITAI_INFO_SUFFIX = ".civitai.info"
#: What the marker symbol can show.
MARKS = ("base", "kind", "format", "dtype", "none")
#: Below this :func:`layout_fidelity` a family's positions say little of its scores (metric MDS places
#: 8 to 20 unrelated files at 0.5 to 0.6, four clusters of them at 0.7 and more): where no family has
#: both a cluster and a map above it, the page leads with the lists.
FAITHFUL_LAYOUT = 0.6

# Okabe & Ito's colour-blind-safe palette, then Paul Tol's "bright" (as lorastyle.book.viz, which
# imports matplotlib: the colours are repeated here). Files in no cluster are grey.
_PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#D55E00",
    "#56B4E9",
    "#F0E442",
    "#4477AA",
    "#EE6677",
    "#228833",
    "#CCBB44",
    "#66CCEE",
    "#AA3377",
)
_SINGLE = "#BBBBBB"
_NO_BASE_MODEL = "(none named)"  # the base-model filter's value for files whose sidecars name none
_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "x", "star", "triangle-down", "pentagon", "hexagon")
_MAX_IMAGE_PIXELS = 64_000_000  # a larger preview is not decoded (a decompression bomb)
_GAP = 0.5  # space between two families' maps, in units of a map's width
# n x n float64 arrays a family's map holds at once at most (the scores' terms, the scores, the distances)
_N_BY_N_COPIES = 6

Progress = Callable[..., Iterable]


def _no_progress(items, **_):
    return items


# --------------------------------------------------------------------------- positions and clusters


def _check_similarity(similarity) -> np.ndarray:
    S = np.asarray(similarity, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"similarity must be a square matrix, got shape {S.shape}")
    if not np.all(np.isfinite(S)):
        raise ValueError("similarity holds NaN or Inf")
    return S


def _distances(S: np.ndarray) -> np.ndarray:
    D = np.clip(1.0 - (S + S.T) / 2.0, 0.0, 2.0)
    np.fill_diagonal(D, 0.0)
    return D


def map_layout(similarity, random_state=0, *, method: str = "auto") -> np.ndarray:
    """2-D positions of a group's files from their similarity matrix (distance ``1 - similarity``).

    * up to :data:`MDS_MAX_POINTS` files: metric MDS (scikit-learn's SMACOF on the precomputed
      distances, started from classical MDS). It fits every pair's distance, so for a few hundred
      files the gaps between clusters are readable as distances; being started from classical MDS
      (an eigendecomposition) it is deterministic.
    * more files: UMAP on the precomputed distances (15 nearest neighbours). In a large collection
      most pairs are unrelated (distance near 1), which no 2-D placement can keep all equal: MDS's
      stress then crowds the files into a ring, where UMAP keeps each file's nearest neighbours
      next to it. It is deterministic for a given ``random_state`` (single-threaded).

    One file is placed at the origin, two on the x axis at their distance.

    Parameters
    ----------
    similarity : array-like of shape (n, n)
        Scores in [-1, 1], 1 on the diagonal (:meth:`~lorastyle.index.search.SketchMatrix.cosine_matrix`).
    random_state : int, default=0
        Seed of the optimisation.
    method : {"auto", "mds", "umap"}, default="auto"
        ``auto``: MDS up to :data:`MDS_MAX_POINTS` files, UMAP above (MDS where umap-learn is not
        installed).

    Returns
    -------
    ndarray of shape (n, 2)
    """
    check_option(method, "method", ("auto", "mds", "umap"))
    S = _check_similarity(similarity)
    n = len(S)
    if n <= 2:
        out = np.zeros((n, 2))
        if n == 2:
            d = _distances(S)[0, 1]
            out[:, 0] = [-d / 2, d / 2]
        return out
    D = _distances(S)
    if method == "auto":
        import importlib.util

        method = "mds" if n <= MDS_MAX_POINTS or importlib.util.find_spec("umap") is None else "umap"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FutureWarnings of defaults, UMAP's notes on precomputed metrics
        if method == "mds":
            from sklearn.manifold import MDS

            kwargs = dict(n_components=2, n_init=1, max_iter=300, random_state=random_state, init="classical_mds")
            try:
                mds = MDS(metric="precomputed", **kwargs)
            except TypeError:  # scikit-learn < 1.8 calls the option dissimilarity
                kwargs.pop("init")
                mds = MDS(dissimilarity="precomputed", **kwargs)
            if np.allclose(D, 0.0):
                return np.zeros((n, 2))
            try:
                return np.asarray(mds.fit_transform(D), dtype=np.float64)
            except ValueError:  # 1 - S need not be a metric: classical MDS's start then takes a negative root
                params = mds.get_params()
                if "init" not in params:
                    raise
                return np.asarray(MDS(**{**params, "init": "random"}).fit_transform(D), dtype=np.float64)
        import umap

        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=min(15, n - 1),
            min_dist=0.1,
            metric="precomputed",
            random_state=random_state,
            n_jobs=1,
        )
        try:
            return np.asarray(reducer.fit_transform(D), dtype=np.float64)
        except (ValueError, np.linalg.LinAlgError):  # a graph the spectral initialisation cannot use
            reducer.set_params(init="random")
            return np.asarray(reducer.fit_transform(D), dtype=np.float64)


def layout_fidelity(positions, similarity, *, max_pairs: int = 20_000, random_state=0) -> float:
    """How well a map's distances follow the scores: Spearman's rank correlation of the two over pairs.

    1 when closer on the map always means a higher score; near 0 when the positions say nothing of
    the scores (a family of unrelated files, whose scores are all near 0, has no structure to show).

    Parameters
    ----------
    positions : array-like of shape (n, 2)
    similarity : array-like of shape (n, n)
    max_pairs : int, default=20_000
        Pairs drawn (with a fixed seed) when there are more.
    random_state : int, default=0

    Returns
    -------
    float
        NaN for fewer than 3 files, or when every score or every distance is the same.
    """
    from scipy.stats import spearmanr

    P = np.asarray(positions, dtype=np.float64)
    S = _check_similarity(similarity)
    n = len(S)
    if n < 3:
        return float("nan")
    iu, ju = np.triu_indices(n, 1)
    if len(iu) > max_pairs:
        pick = np.random.default_rng(random_state).choice(len(iu), size=max_pairs, replace=False)
        iu, ju = iu[pick], ju[pick]
    distance = np.linalg.norm(P[iu] - P[ju], axis=1)
    score = S[iu, ju]
    if np.ptp(distance) == 0 or np.ptp(score) == 0:
        return float("nan")
    return float(spearmanr(distance, 1.0 - score).statistic)


def clusters(similarity, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Cluster labels of a group's files: average linkage on ``1 - similarity``.

    Two clusters merge while the average score between their files is above ``threshold``
    (scikit-learn's ``AgglomerativeClustering`` with ``distance_threshold = 1 - threshold``).
    Labels are renumbered so that cluster 0 is the largest (ties: the one whose first file
    comes first); a file in no cluster is a cluster of one.

    Parameters
    ----------
    similarity : array-like of shape (n, n)
        Scores in [-1, 1].
    threshold : float, default=DEFAULT_THRESHOLD
        :func:`map_data` passes each family's score from which two files are related
        (:func:`lorastyle.index.thresholds.related_threshold`).

    Returns
    -------
    ndarray of int of shape (n,)
    """
    S = _check_similarity(similarity)
    threshold = float(threshold)
    if not np.isfinite(threshold) or not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a score in [-1, 1], got {threshold!r}")
    n = len(S)
    if n < 2:
        return np.zeros(n, dtype=int)
    if threshold >= 1.0:  # nothing scores above 1: every file alone
        raw = np.arange(n)
    else:
        from sklearn.cluster import AgglomerativeClustering

        model = AgglomerativeClustering(
            n_clusters=None, metric="precomputed", linkage="average", distance_threshold=1.0 - threshold
        )
        raw = model.fit_predict(_distances(S))
    first = {}
    for i, c in enumerate(raw):
        first.setdefault(int(c), i)
    sizes = np.bincount(raw)
    order = sorted(first, key=lambda c: (-sizes[c], first[c]))
    renumber = {c: k for k, c in enumerate(order)}
    return np.array([renumber[int(c)] for c in raw], dtype=int)


def default_threshold(index) -> tuple[float, str]:
    """Deprecated (one release): the tiny model's calibrated cluster threshold, whatever the family.

    Each family now has its own (:func:`lorastyle.index.thresholds.related_threshold`).

    Parameters
    ----------
    index : LoraIndex

    Returns
    -------
    threshold : float
    source : str
    """
    from .index.calibration import load_calibration

    warnings.warn(
        "default_threshold is deprecated: each family has its own (lorastyle.index.thresholds.related_threshold)",
        DeprecationWarning,
        stacklevel=2,
    )
    calibration = load_calibration(index.descriptor, index.sketcher.settings)
    if calibration is None:
        return DEFAULT_THRESHOLD, f"the default {DEFAULT_THRESHOLD} (no calibration for {index.descriptor})"
    return calibration.threshold, f"the 'same source likely' score of {calibration.calibrated_on}"


# --------------------------------------------------------------------------- previews


def preview_data_uri(path: str | os.PathLike, size: int = PREVIEW_SIZE) -> str:
    """An image file as a ``data:image/jpeg;base64,...`` URI, downscaled to at most ``size`` pixels.

    The first frame of an animation; transparency is flattened onto white; EXIF orientation is
    applied.

    Parameters
    ----------
    path : str or path-like
    size : int, default=PREVIEW_SIZE
        Longest side, in pixels.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        If the file is not an image Pillow can decode, or has more than 64 million pixels.
    OSError
        If it cannot be read.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.width * img.height > _MAX_IMAGE_PIXELS:
                raise ValueError(f"{img.width} x {img.height} pixels: too large to decode")
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            img.seek(0)
            frame = ImageOps.exif_transpose(img).convert("RGBA")
            frame.thumbnail((size, size), Image.Resampling.LANCZOS)
    except (UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, EOFError) as exc:
        raise ValueError(f"not a readable image ({exc})") from None
    flat = Image.new("RGB", frame.size, "white")
    flat.paste(frame, mask=frame.getchannel("A"))
    buffer = io.BytesIO()
    flat.save(buffer, format="JPEG", quality=82, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _value(facts: dict, name: str):
    """The value of one resolved fact (:func:`lorastyle.io.sidecars.resolve_facts`), or None."""
    fact = facts.get(name)
    return fact["value"] if fact else None


def _matches_base_model(facts: dict, wanted) -> bool:
    """Whether the file's base model contains one of ``wanted`` (case-insensitive)."""
    base_model = _value(facts, "base_model")
    return isinstance(base_model, str) and any(w.casefold() in base_model.casefold() for w in wanted)


# --------------------------------------------------------------------------- the data


@dataclass
class GroupMap:
    """One base family of the map.

    Attributes
    ----------
    key : str
        The index group's key (its base family).
    records : list of Record
    similarity : ndarray of shape (n, n)
        Every pair's score.
    labels : ndarray of int of shape (n,)
        Cluster of each file (:func:`clusters`).
    positions : ndarray of shape (n, 2) or None
        :func:`map_layout`, when computed.
    threshold : float
        The cluster threshold of this family (:func:`lorastyle.index.thresholds.related_threshold`).
    threshold_source : str
        Where it comes from, in words.
    n_files : int or None
        The family's files the map stands for (those of the base-model filter); more than
        ``len(records)`` where a sample of :data:`MAP_MAX_FILES` was placed. None: ``len(records)``.
    """

    key: str
    records: list
    similarity: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    positions: np.ndarray | None = field(default=None, repr=False)
    threshold: float = DEFAULT_THRESHOLD
    threshold_source: str = ""
    n_files: int | None = None

    @property
    def sampled(self) -> bool:
        """Whether only a sample of the family's files is placed (:data:`MAP_MAX_FILES`)."""
        return self.n_files is not None and self.n_files > len(self.records)

    def cluster_list(self, extra: dict | None = None) -> list[dict]:
        """The clusters, largest first, as :func:`map_json` gives them.

        Each cluster's first member is its medoid (the member with the highest total score to the
        others; ties: the first in the index); the other members follow by their score to it.

        Parameters
        ----------
        extra : dict of str to dict, optional
            :attr:`MapData.extra`: each file's facts (titles from its sidecars or its header).

        Returns
        -------
        list of dict
            ``id``, ``size``, ``members``: ``index`` (in the group), ``path``, ``title``, ``base_model``
            (from the file's sidecars or header; None if neither names one),
            ``score`` (to the first member; 1 for the first itself), ``best_score`` and
            ``best_match`` (the highest score to another member, and that member's path; None
            for a cluster of one).
        """
        S = self.similarity
        extra = extra or {}
        out = []
        for c in range(int(self.labels.max()) + 1 if len(self.labels) else 0):
            members = [int(i) for i in np.flatnonzero(self.labels == c)]
            sub = S[np.ix_(members, members)]
            first = members[int(np.argmax(sub.sum(axis=1)))]
            members.sort(key=lambda i: (i != first, -S[first, i], i))
            sub = S[np.ix_(members, members)].copy()
            np.fill_diagonal(sub, -np.inf)
            rows = []
            for k, i in enumerate(members):
                best = members[int(np.argmax(sub[k]))] if len(members) > 1 else None
                rows.append(
                    {
                        "index": i,
                        "path": self.records[i].path,
                        "title": _value(extra.get(self.records[i].path, {}), "title")
                        or self.records[i].info.get("title"),
                        "base_model": _value(extra.get(self.records[i].path, {}), "base_model")
                        or self.records[i].info.get("base_model"),
                        "score": 1.0 if i == first else float(S[first, i]),
                        "best_score": None if best is None else float(S[i, best]),
                        "best_match": None if best is None else self.records[best].path,
                    }
                )
            out.append({"id": c, "size": len(members), "members": rows})
        return out


@dataclass
class MapData:
    """What the page and the JSON are made from (:func:`map_data`).

    Attributes
    ----------
    groups : list of GroupMap
        Each with its cluster threshold and where it comes from.
    threshold : float or None
        The cluster threshold given for every family (``--threshold``), else None.
    descriptor : str
    previews : dict of str to str
        File path to its preview's ``data:`` URI (files with a readable preview only).
    videos : dict of str to str
        File path to the ``file:`` URI of its preview video, for files without a preview image (a
        video is linked, not embedded: the page plays it where the file is at that path).
    extra : dict of str to dict
        File path to its facts, each with its source (:func:`lorastyle.io.sidecars.file_facts`:
        its sidecar files and its header, by their precedence rule).
    base_models : list of str or None
        The ``base_models`` filter the map was made with.
    duplicates : DuplicateReport or None
        Same weights and near-duplicates among the mapped files
        (:func:`lorastyle.index.duplicates.find_duplicates`, as ``lorastyle duplicates`` lists them).
    """

    groups: list
    threshold: float | None
    descriptor: str
    previews: dict = field(default_factory=dict, repr=False)
    videos: dict = field(default_factory=dict, repr=False)
    extra: dict = field(default_factory=dict, repr=False)
    base_models: list | None = None
    duplicates: object = field(default=None, repr=False)


def map_data(
    index,
    *,
    threshold: float | None = None,
    random_state=0,
    layout: bool = True,
    previews: bool = True,
    progress: Progress | None = None,
    base_models: Iterable[str] | None = None,
) -> MapData:
    """Scores, clusters, positions and previews of every group of an index (computed once).

    Parameters
    ----------
    index : LoraIndex
    threshold : float, optional
        Cluster threshold of every family; by default each family's score from which two files
        are related, as ``similar`` says it (:func:`lorastyle.index.thresholds.related_threshold`).
    random_state : int, default=0
        Seed of :func:`map_layout`.
    layout : bool, default=True
        Compute positions (the page needs them, the JSON does not).
    previews : bool, default=True
        Look for preview images next to the files (sidecar files are read either way).
    progress : callable, optional
        ``progress(iterable, desc=..., total=...)`` wraps each pass (for example ``tqdm``).
    base_models : iterable of str, optional
        Keep only the files whose base model (from their sidecars, else their header; see
        :mod:`lorastyle.io.sidecars`) contains one of these, ignoring case (``pony`` keeps
        ``Pony`` and ``ponyDiffusionV6XL.safetensors``); the clusters are made among them. A family
        with no such file is left out; with none at all, :attr:`MapData.groups` is empty.

    Returns
    -------
    MapData

    Raises
    ------
    NotEnoughMemoryError
        For a family whose n x n scores would not fit in the memory available (before any is made).

    Warns
    -----
    UserWarning
        For a preview image that exists but cannot be decoded (the file is shown without one),
        and for a sidecar file that exists but cannot be read.
    """
    from .index.thresholds import related_threshold

    progress = progress or _no_progress
    wanted = [w for w in (base_models or ()) if w.strip()]
    all_records = [r for g in index.groups.values() for r in g.records]
    facts = {
        r.path: file_facts(r.path, r.info)
        for r in progress(all_records, desc="reading sidecar files", total=len(all_records))
    }
    groups = []
    for g in index.groups.values():
        keep = [i for i, r in enumerate(g.records) if not wanted or _matches_base_model(facts[r.path], wanted)]
        if not keep:
            continue
        n_files = len(keep)
        if n_files > MAP_MAX_FILES:  # a seeded sample, in index order
            rng = np.random.default_rng(random_state if isinstance(random_state, int) else 0)
            keep = sorted(int(i) for i in rng.choice(keep, size=MAP_MAX_FILES, replace=False))
        check_fits(  # the n x n scores, their clustering and their layout: a few n x n float64 copies
            _N_BY_N_COPIES * 8 * len(keep) ** 2,
            g.key,
            f"mapping {len(keep):,} files of family {g.key}",
            "map fewer files at a time (--base-model, or an index of one folder)",
        )
        rows = np.asarray(keep, dtype=np.intp)
        S = g.matrix.cosine_block(rows, rows)
        records = [g.records[i] for i in keep]
        cut, why = related_threshold(index, g, given=threshold)  # of the whole family, whatever is kept
        groups.append(
            GroupMap(
                key=g.key,
                records=records,
                similarity=S,
                labels=clusters(S, cut),
                threshold=cut,
                threshold_source=why,
                n_files=n_files,
            )
        )
    if layout:
        for gm in progress(groups, desc="placing files on the map", total=len(groups)):
            gm.positions = map_layout(gm.similarity, random_state=random_state)
    data = MapData(
        groups=groups,
        threshold=None if threshold is None else float(threshold),
        descriptor=index.descriptor,
        base_models=wanted or None,
    )
    records = [r for gm in groups for r in gm.records]
    data.extra = {r.path: facts[r.path] for r in records}
    from .index.duplicates import find_duplicates

    mapped = set(data.extra)
    report = find_duplicates(index)
    report.same_weights = [g for g in report.same_weights if set(g["paths"]) <= mapped]
    report.near = [pair for pair in report.near if set(pair["paths"]) <= mapped]
    data.duplicates = report
    if previews:
        for r in progress(records, desc="reading preview images", total=len(records)):
            image = find_preview(r.path)
            if image is None:
                video = find_preview(r.path, VIDEO_PREVIEW_SUFFIXES)
                if video is not None:
                    data.videos[r.path] = Path(os.path.abspath(video)).as_uri()
                continue
            try:
                data.previews[r.path] = preview_data_uri(image)
            except (OSError, ValueError) as exc:
                warnings.warn(f"{_text(image)}: preview image not shown: {exc}", stacklevel=2)
    return data


def map_json(index, *, threshold: float | None = None, data: MapData | None = None) -> dict:
    """The clusters of every group of an index, as JSON.

    Parameters
    ----------
    index : LoraIndex
    threshold : float, optional
        Cluster threshold of every family; by default each family's (:func:`map_data`).
    data : MapData, optional
        Already computed by :func:`map_data` (then ``threshold`` is ignored).

    Returns
    -------
    dict
        ``descriptor``, ``base_models`` (the filter, or None), ``threshold`` (the one given, or None),
        ``n_files`` and ``groups``: per group ``key``, ``base``, ``n_files``, ``n_placed`` (fewer
        where a sample of :data:`MAP_MAX_FILES` was placed), ``threshold``, ``threshold_source`` and
        ``clusters`` (:meth:`GroupMap.cluster_list`, largest first, members without their ``index``).
        Every placed file is in exactly one cluster.
    """
    if data is None:
        data = map_data(index, threshold=threshold, layout=False, previews=False)
    groups = []
    for gm in data.groups:
        cl = gm.cluster_list(data.extra)
        for c in cl:
            for m in c["members"]:
                del m["index"]
        groups.append(
            {
                "key": gm.key,
                "base": gm.records[0].base,
                "n_files": gm.n_files or len(gm.records),
                "n_placed": len(gm.records),
                "threshold": gm.threshold,
                "threshold_source": gm.threshold_source,
                "clusters": cl,
            }
        )
    return {
        "descriptor": data.descriptor,
        "base_models": data.base_models,
        "threshold": data.threshold,
        "n_files": sum(gm.n_files or len(gm.records) for gm in data.groups),
        "groups": groups,
    }


# --------------------------------------------------------------------------- the page


def _text(value) -> str:
    """Text that UTF-8 can encode: a name's undecodable bytes (surrogate escapes) become U+FFFD."""
    s = str(value)
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return s.encode("utf-8", "replace").decode("utf-8")


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _facts(record, extra: dict) -> dict:
    """What the page shows of a file; ``extra``: its resolved facts (:attr:`MapData.extra`)."""
    info = record.info
    facts = extra or file_facts(record.path, info)
    words = _value(facts, "trigger_words") or []
    base_model = _value(facts, "base_model")
    return {
        "name": _text(os.path.basename(record.path)),
        "path": _text(record.path),
        "title": _text(_value(facts, "title") or ""),
        "trigger_words": [_text(t)[:100] for t in words[:5]],
        "tags": [_text(t)[:100] for t in (_value(facts, "tags") or [])[:10]],
        "folder": _text(os.path.dirname(record.path)),
        "base": record.base,
        "base_model": _text(base_model) if base_model else "",
        "base_model_source": _text(facts["base_model"]["source"]) if base_model else "",
        "base_mismatch": _text(info["base_mismatch"]) if info.get("base_mismatch") else "",
        "kind": _text(info.get("kind") or "LoRA"),
        "format": record.format,
        "dtype": record.dtype,
        "ranks": sorted(set(record.ranks)),
        "size": _size(record.size),
    }


def _normalised(points: np.ndarray) -> np.ndarray:
    """Positions centred in a box of width and height at most 1 (proportions kept)."""
    if len(points) == 0:
        return points
    p = points - (points.max(axis=0) + points.min(axis=0)) / 2
    extent = float(np.max(points.max(axis=0) - points.min(axis=0)))
    return p / extent if extent > 0 else p


def _cluster_colours(labels: np.ndarray) -> list[str]:
    sizes = np.bincount(labels) if len(labels) else np.zeros(0, dtype=int)
    return [_PALETTE[c % len(_PALETTE)] if sizes[c] > 1 else _SINGLE for c in labels]


def _json_script(element_id: str, value) -> str:
    text = json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


_CSS = """
body { font-family: "DejaVu Sans", Arial, Helvetica, sans-serif; color: #222; margin: 16px; }
h1 { font-size: 20px; margin: 0 0 4px 0; } h2 { font-size: 17px; margin-top: 28px; } h3 { font-size: 15px; }
.note { color: #555; font-size: 13px; margin: 2px 0; }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.plot { flex: 1 1 620px; min-width: 0; order: 1; }
#panel { order: 2; flex: 0 0 300px; box-sizing: border-box; border: 1px solid #ccc; border-radius: 4px; padding: 10px;
  font-size: 13px; position: sticky; top: 8px; min-height: 200px; overflow-wrap: anywhere; }
.controls { margin: 10px 0; font-size: 13px; display: flex; flex-wrap: wrap; gap: 12px; align-items: center; }
#panel img, #panel video { max-width: 256px; max-height: 256px; display: block; margin-bottom: 8px; }
#panel .k { color: #666; }
table.members { border-collapse: collapse; font-size: 13px; margin: 4px 0 12px 0; }
table.members td, table.members th { border-bottom: 1px solid #eee; padding: 3px 8px; text-align: left;
  vertical-align: middle; }
table.members tr:hover { background: #f4f4f4; cursor: pointer; }
table.members img { max-height: 64px; max-width: 64px; display: block; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 50%; margin-right: 6px;
  vertical-align: middle; }
.num { font-variant-numeric: tabular-nums; }
"""

_JS = """
(function () {
  var info = JSON.parse(document.getElementById("lorastyle-map-files").textContent);
  var panel = document.getElementById("panel");
  function add(parent, tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    parent.appendChild(e);
    return e;
  }
  function row(key, value) {
    if (!value || (Array.isArray(value) && !value.length)) return;
    var p = add(panel, "div");
    add(p, "span", key + ": ", "k");
    add(p, "span", Array.isArray(value) ? value.join(", ") : String(value));
  }
  function show(i) {
    var f = info[i];
    if (!f) return;
    panel.textContent = "";
    var thumb = document.getElementById("preview-" + i);
    if (thumb) {
      var img = add(panel, "img");
      img.src = thumb.src;
      img.alt = "preview of " + f.name;
    } else if (f.video) {
      var video = add(panel, "video");
      video.src = f.video;
      video.muted = true; video.loop = true; video.autoplay = true; video.controls = true;
      var link = add(panel, "a", "preview video");
      link.href = f.video;
    } else {
      add(panel, "div", "no preview image", "note");
    }
    add(panel, "b", f.name);
    row("title", f.title);
    row("trigger words", f.trigger_words);
    row("base", f.base + (f.base_model ? " (base model " + f.base_model + ", from " + f.base_model_source + ")" : ""));
    row("warning", f.base_mismatch);
    row("kind", f.kind);
    row("layout", f.format + ", " + f.dtype + ", rank " + f.ranks.join("/"));
    row("size", f.size);
    row("tags", f.tags);
    row("cluster", f.cluster_text);
    row("closest", f.closest);
    row("identical files", f.copies);
    row("path", f.path);
  }
  window.lorastyleShow = show;
  var points = JSON.parse(document.getElementById("lorastyle-map-points").textContent);
  function value(id) { var e = document.getElementById(id); return e ? e.value : ""; }
  function matches(f) {
    if (value("filter-family") && f.group !== value("filter-family")) return false;
    if (value("filter-base-model") && (f.base_model || NO_BASE_MODEL) !== value("filter-base-model")) return false;
    if (value("filter-kind") && f.kind !== value("filter-kind")) return false;
    var words = value("search").trim().toLowerCase().split(/\\s+/).filter(Boolean);
    var hay = [f.name, f.title, f.folder].concat(f.trigger_words, f.tags).join("\\n").toLowerCase();
    return words.every(function (w) { return hay.indexOf(w) >= 0; });
  }
  function filter() {
    var ok = info.map(matches);
    var gd = document.querySelector(".plotly-graph-div");
    points.forEach(function (trace, t) {
      var opacity = trace.map(function (same) { return same.some(function (i) { return ok[i]; }) ? 1 : 0.12; });
      if (gd && window.Plotly) Plotly.restyle(gd, {"marker.opacity": [opacity]}, [t]);
    });
    document.querySelectorAll("tr[data-file]").forEach(function (tr) {
      tr.style.display = ok[Number(tr.dataset.file)] ? "" : "none";
    });
    var n = ok.filter(Boolean).length;
    document.getElementById("matches").textContent = n === info.length ?
      info.length + " files" : n + " of " + info.length + " files match";
  }
  window.lorastyleFilter = filter;
  function hook() {
    var gd = document.querySelector(".plotly-graph-div");
    if (gd && gd.on) {
      gd.on("plotly_hover", function (e) { show(e.points[0].customdata); });
      gd.on("plotly_click", function (e) { show(e.points[0].customdata); });
    }
    document.querySelectorAll("tr[data-file]").forEach(function (tr) {
      tr.addEventListener("click", function () { show(Number(tr.dataset.file)); });
    });
    if (gd && window.Plotly && window.ResizeObserver) {  // follow its box (a scroll bar, the panel laid out later)
      new ResizeObserver(function () { Plotly.Plots.resize(gd); }).observe(gd.parentNode);
    }
    var search = document.getElementById("search");
    if (search) search.addEventListener("input", filter);
    document.querySelectorAll(".controls select").forEach(function (s) { s.addEventListener("change", filter); });
  }
  if (document.readyState === "complete") hook(); else window.addEventListener("load", hook);
})();
"""


def map_page(
    index,
    *,
    mark: str = "base",
    threshold: float | None = None,
    random_state=0,
    title: str | None = None,
    data: MapData | None = None,
    skipped: Iterable[tuple[str, str]] = (),
) -> str:
    """The map of an index as one self-contained HTML page (nothing is loaded from the network).

    * the map: one scatter trace per base family (a legend entry each, to show or hide it, and a
      dropdown to show one family at a time), the families side by side, each placed on its own
      by :func:`map_layout` (distances between families mean nothing: they are never scored
      against each other); points coloured by cluster (Okabe & Ito's colour-blind-safe palette,
      then Paul Tol's; grey for a file in no cluster); the marker symbol shows ``mark``;
    * files of the same weights (one sha256) are one point, larger, whose hover text and panel
      name every copy;
    * hovering a point shows its file name, title, trigger words, base family, kind, size and
      cluster; the side panel (beside the map, below it in a narrow window: never over it) shows
      the same with its preview image and its closest files;
    * a search box (name, title, trigger word, tag, folder: every word must match) and filters by
      family, base model (from the sidecars) and kind dim the other points and hide their rows;
    * the cluster list of every family as plain HTML: each cluster's members with their score to
      its first member (its medoid) and their best match in the cluster, then the files in no
      cluster with their closest file; below the map, or above it when no family has both a
      cluster and positions that follow its scores (:func:`layout_fidelity` of at least
      :data:`FAITHFUL_LAYOUT`);
    * the files that are not on the map, with the reason.

    plotly.js is embedded inline (about 4.7 MB); preview images are embedded as ``data:`` URIs
    (at most 256 pixels, JPEG, a few kB each).

    Parameters
    ----------
    index : LoraIndex
    mark : {"base", "kind", "format", "dtype", "none"}, default="base"
        What the marker symbol shows: the base family (when several are shown), the adapter
        kind (LoRA, LoCon, LoHa, LoKr), the file's layout, its dtype, or nothing.
    threshold : float, optional
        Cluster threshold of every family; by default each family's (:func:`map_data`).
    random_state : int, default=0
        Seed of :func:`map_layout`.
    title : str, optional
        Page title (default: "LoRA map").
    data : MapData, optional
        Already computed by :func:`map_data` (then ``threshold`` and ``random_state`` are ignored).
    skipped : iterable of (path, reason), default=()
        Files that are not on the map, and why (the index's skipped files are added).

    Returns
    -------
    str
        HTML text (UTF-8 encodable).

    Raises
    ------
    ValueError
        For an unknown ``mark``.
    ImportError
        Without plotly.
    """
    check_option(mark, "mark", MARKS)
    try:
        import plotly.graph_objects as go
    except ImportError as exc:  # pragma: no cover - plotly is an optional dependency
        raise ImportError("the map page needs plotly: pip install 'lorastyle[map]'", name="plotly") from exc
    if data is None:
        data = map_data(index, threshold=threshold, random_state=random_state)
    for gm in data.groups:
        if gm.positions is None:
            gm.positions = map_layout(gm.similarity, random_state=random_state)
    title = _text(title or "LoRA map")

    files: list[dict] = []  # per file, in page order (a point's customdata is its first file)
    points: list[list[list[int]]] = []  # per trace, per point: the files it stands for
    lists: list[str] = []
    fidelity: list[float] = []
    fig = go.Figure()
    symbol_of: dict[str, str] = {}
    annotations, buttons = [], []
    several = len(data.groups) > 1
    for gi, gm in enumerate(data.groups):
        S, labels = gm.similarity, gm.labels
        sizes = np.bincount(labels)
        colours = _cluster_colours(labels)
        offset = gi * (1.0 + _GAP)
        pts = _normalised(gm.positions) + np.array([offset, 0.0])
        fidelity.append(layout_fidelity(gm.positions, S))
        start = len(files)
        copies: dict[str, list[int]] = {}  # files of one sha256: one point
        for i, r in enumerate(gm.records):
            copies.setdefault(r.sha256, []).append(i)
        for i, r in enumerate(gm.records):
            facts = _facts(r, data.extra.get(r.path, {}))
            c = int(labels[i])
            facts["group"] = gm.key
            facts["cluster"] = c
            facts["cluster_text"] = f"{c} ({sizes[c]} files)" if sizes[c] > 1 else "none (no other file close enough)"
            near = [j for j in np.argsort(-S[i], kind="stable") if j != i][:3]
            facts["closest"] = [f"{_text(os.path.basename(gm.records[j].path))} ({S[i, j]:.3f})" for j in near]
            facts["video"] = data.videos.get(r.path, "")
            same = copies[r.sha256]
            facts["copies"] = [_text(gm.records[j].path) for j in same if j != i]
            files.append(facts)
        texts, symbols, xs, ys, ids, marker_sizes, trace_points = [], [], [], [], [], [], []
        for same in copies.values():
            i = same[0]
            facts = files[start + i]
            key = {"base": gm.key, "kind": facts["kind"], "format": facts["format"], "dtype": facts["dtype"]}
            key = "" if mark == "none" or (mark == "base" and not several) else key[mark]
            symbols.append(symbol_of.setdefault(key, _SYMBOLS[len(symbol_of) % len(_SYMBOLS)]))
            lines = [f"<b>{html.escape(facts['name'], quote=False)}</b>"]
            if len(same) > 1:
                lines[0] += f" and {_n(len(same) - 1, 'identical file')}"
            if facts["title"]:
                lines.append(f"title: {html.escape(facts['title'], quote=False)}")
            if facts["trigger_words"]:
                lines.append(f"trigger words: {html.escape(', '.join(facts['trigger_words']), quote=False)}")
            lines.append(f"base: {html.escape(facts['base'])} · kind: {html.escape(facts['kind'], quote=False)}")
            lines.append(f"size: {facts['size']} · cluster {html.escape(facts['cluster_text'], quote=False)}")
            texts.append("<br>".join(lines))
            xs.append(round(float(pts[i, 0]), 5))
            ys.append(round(float(pts[i, 1]), 5))
            ids.append(start + i)
            marker_sizes.append(11 if len(same) == 1 else 16)
            trace_points.append([start + j for j in same])
        points.append(trace_points)
        n_points = len(copies)
        name = f"{gm.key} ({_n(len(gm.records), 'file')}"
        name += f", {n_points} distinct" if n_points < len(gm.records) else ""
        name += f": a sample of {gm.n_files:,})" if gm.sampled else ")"
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name=name,
                text=texts,
                customdata=ids,
                hovertemplate="%{text}<extra></extra>",
                marker=dict(
                    size=marker_sizes,
                    color=[colours[i - start] for i in ids],
                    symbol=symbols,
                    line=dict(color="white", width=0.8),
                ),
            )
        )
        annotations.append(
            dict(x=offset, y=0.62, text=f"<b>{html.escape(gm.key)}</b>", showarrow=False, font=dict(size=13))
        )
        visible = [k == gi for k in range(len(data.groups))]
        buttons.append(
            dict(
                label=gm.key,
                method="update",
                args=[{"visible": visible}, {"xaxis.range": [offset - 0.6, offset + 0.6]}],
            )
        )
        lists.append(_group_list(gm, start, data, fidelity[-1]))
    axis = dict(showgrid=False, zeroline=False, showticklabels=False, ticks="", showline=False)
    layout = dict(
        plot_bgcolor="white",
        paper_bgcolor="white",
        hovermode="closest",
        font=dict(family="DejaVu Sans, Arial, sans-serif", size=12, color="#222222"),
        xaxis=dict(**axis),
        yaxis=dict(scaleanchor="x", scaleratio=1, range=[-0.7, 0.7], **axis),
        legend=dict(itemsizing="constant", font=dict(size=11), orientation="h", y=-0.02),
        annotations=annotations,
        height=620,
        margin=dict(l=20, r=20, t=40, b=40),
    )
    if several:
        span = [-0.6, (len(data.groups) - 1) * (1.0 + _GAP) + 0.6]
        buttons.insert(
            0,
            dict(
                label="all families",
                method="update",
                args=[{"visible": [True] * len(data.groups)}, {"xaxis.range": span}],
            ),
        )
        layout["updatemenus"] = [dict(buttons=buttons, direction="down", x=0.0, xanchor="left", y=1.06, yanchor="top")]
    fig.update_layout(**layout)
    digest = hashlib.sha1(json.dumps([f["path"] for f in files]).encode()).hexdigest()[:12]
    plot = fig.to_html(
        include_plotlyjs=True,
        full_html=False,
        div_id=f"lorastyle-map-{digest}",
        config={"displaylogo": False, "responsive": True},
    )
    n_clusters = sum(int((np.bincount(gm.labels) > 1).sum()) for gm in data.groups)
    symbol_note = ""
    if len(symbol_of) > 1:
        shown = ", ".join(f"{sym} {html.escape(_text(k))}" for k, sym in symbol_of.items())
        symbol_note = f'<p class="note">Marker symbol: {html.escape(mark)} ({shown}).</p>'
    left_out = _skipped_list(index, skipped)
    summary = (
        f"{len(files)} files in {len(data.groups)} base famil{'y' if len(data.groups) == 1 else 'ies'}; "
        f"{n_clusters} clusters of 2 or more files; {len(data.previews)} preview images."
    )
    if left_out:
        summary += f" <a href='#skipped'>{_n(left_out[0], 'file')} not on the map</a>, with the reasons."
    if data.base_models:
        summary += f" Only files whose base model contains {html.escape(_text(' or '.join(data.base_models)))}."
    method = "metric MDS" if all(len(g.records) <= MDS_MAX_POINTS for g in data.groups) else "MDS or UMAP"
    how = (
        f"Score: the cosine of the files' {html.escape(data.descriptor)} descriptors (as lorastyle similar "
        f"prints it). Positions: {method} "
        f"of 1 - score, each family on its own (families are never compared). Clusters: average linkage, "
        "files whose average score is at least the family's threshold (with each family's list). "
        "Colour: cluster (grey: in no cluster). A larger point: files of the same weights."
    )
    structured = [  # a cluster to show, and positions that follow the scores (NaN, under 3 files: no)
        bool(f >= FAITHFUL_LAYOUT and (np.bincount(gm.labels) > 1).any()) for f, gm in zip(fidelity, data.groups)
    ]
    lists_first = not any(structured)
    lead = ""
    if lists_first:
        lead = (
            "<p class='note'><b>Read the lists first:</b> no family has both a cluster of 2 or more files and "
            f"a map whose distances follow its scores (rank correlation of map distance and 1 - score of at "
            f"least {FAITHFUL_LAYOUT}), so the lists and each file's closest files say more than the "
            "positions.</p>\n"
        )
    clusters_html = "<section id='clusters'>\n<h2>Clusters</h2>\n" + "\n".join(lists) + "\n</section>\n"
    clusters_html += _duplicates_list(data)
    map_html = (  # the panel comes first, so that the plot is drawn in the width the panel leaves it
        "<div class='row'>\n<div id='panel'><span class='note'>Hover over a point (or click a row) to see "
        "the file and its preview image.</span></div>\n<div class='plot'>\n" + plot + "\n</div>\n</div>\n"
    )
    return "".join(
        [
            "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n",
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n",
            f"<h1>{html.escape(title)}</h1>\n<p class='note'>{summary}</p>\n<p class='note'>{how}</p>\n{symbol_note}\n",
            lead,
            _controls(data, files),
            clusters_html + map_html if lists_first else map_html + clusters_html,
            left_out[1] if left_out else "",
            _json_script("lorastyle-map-files", files),
            _json_script("lorastyle-map-points", points),
            f"\n<script>{_JS.replace('NO_BASE_MODEL', json.dumps(_NO_BASE_MODEL))}</script>\n</body>\n</html>\n",
        ]
    )


def _duplicates_list(data: MapData) -> str:
    """Same weights and near-duplicates among the mapped files, as ``lorastyle duplicates`` lists them."""
    report = data.duplicates
    if report is None:
        return ""
    name = lambda p: html.escape(_text(os.path.basename(p)))  # noqa: E731
    parts = ["<section id='duplicates'>\n<h2>Same weights and near-duplicates</h2>"]
    if not report.same_weights and not report.near:
        parts.append("<p class='note'>None: no two files share their weights or most of their update.</p>")
    for g in report.same_weights:
        others = ", ".join(name(p) for p in g["paths"] if p != g["keep"])
        parts.append(
            f"<p><b>same weights</b> ({g['base']}): keep {name(g['keep'])} ({html.escape(_text(g['keep_reason']))}); "
            f"copies: {others}</p>"
        )
    for pair in report.near:
        why = report.thresholds.get(pair["base"], {})
        parts.append(
            f"<p><b>near-duplicates</b> ({pair['base']}, score {pair['score']:.3f}, at least "
            f"{why.get('threshold', float('nan')):.3f}): {name(pair['paths'][0])} and {name(pair['paths'][1])}</p>"
        )
    return "\n".join(parts) + "\n</section>\n"


def _controls(data: MapData, files: list[dict]) -> str:
    """The search box and the filters (by family, base model and kind: each only where files differ)."""

    def select(element_id: str, label: str, values: list[str]) -> str:
        if len(values) < 2:
            return ""
        options = "".join(f"<option value='{html.escape(v)}'>{html.escape(v)}</option>" for v in values)
        return f"<label>{label} <select id='{element_id}'><option value=''>all</option>{options}</select></label>"

    families = [gm.key for gm in data.groups]
    base_models = sorted({f["base_model"] or _NO_BASE_MODEL for f in files})
    kinds = sorted({f["kind"] for f in files})
    return (
        "<div class='controls'><label>Search <input id='search' type='search' size='32' "
        "placeholder='name, trigger word, tag, folder'></label> "
        + select("filter-family", "family", families)
        + select("filter-base-model", "base model", base_models)
        + select("filter-kind", "kind", kinds)
        + f" <span id='matches' class='note'>{_n(len(files), 'file')}</span></div>\n"
    )


def _skipped_list(index, skipped: Iterable[tuple[str, str]]) -> tuple[int, str] | None:
    """The files that are not on the map, with the reasons, as an HTML section (None when there are none)."""
    rows = {_text(p): _text(reason) for p, reason in skipped}
    for p, _, reason in getattr(index, "skipped", ()):
        rows.setdefault(_text(p), _text(reason))
    if not rows:
        return None
    body = "".join(
        f"<tr><td>{html.escape(p)}</td><td>{html.escape(reason)}</td></tr>" for p, reason in sorted(rows.items())
    )
    return len(rows), (
        "<section id='skipped'>\n<h2>Files not on the map</h2>\n<table class='members'><tr><th>file</th>"
        f"<th>reason</th></tr>{body}</table>\n</section>\n"
    )


def _member_row(gm: GroupMap, start: int, data: MapData, m: dict, colour: str, cells: list[str]) -> str:
    i = m["index"]
    r = gm.records[i]
    uri, video = data.previews.get(r.path), data.videos.get(r.path)
    thumb = f"<img id='preview-{start + i}' src='{uri}' alt=''>" if uri else ""
    if video and not uri:
        thumb = f"<a href='{html.escape(video)}'>video</a>"
    name = html.escape(_text(os.path.basename(r.path)))
    title = html.escape(_text(m["title"])) if m["title"] else ""
    tds = "".join(f"<td class='num'>{c}</td>" for c in cells)
    return (
        f"<tr data-file='{start + i}' title='{html.escape(_text(r.path))}'><td>{thumb}</td>"
        f"<td><span class='swatch' style='background:{colour}'></span>{name}</td><td>{title}</td>{tds}</tr>"
    )


def _group_list(gm: GroupMap, start: int, data: MapData, fidelity: float = float("nan")) -> str:
    """The cluster list of one group as HTML (each file once), with how well its map follows its scores."""
    colours = _cluster_colours(gm.labels)
    cl = gm.cluster_list(data.extra)
    multi = [c for c in cl if c["size"] > 1]
    single = [c for c in cl if c["size"] == 1]
    key = html.escape(gm.key)
    parts = [
        f"<h3 id='group-{key}'>{key}: {_n(len(gm.records), 'file')}, {_n(len(multi), 'cluster')} of 2 or more, "
        f"{_n(len(single), 'file')} in no cluster</h3>"
    ]
    if gm.sampled:
        parts.append(
            f"<p class='note sample'>This family has {gm.n_files:,} files: the map places a random sample of "
            f"{len(gm.records):,} of them (more would not draw in a browser). <code>lorastyle similar</code> and "
            "<code>lorastyle duplicates</code> search them all.</p>"
        )
    parts.append(
        f"<p class='note threshold'>Clusters: average score at least {gm.threshold:.3f} "
        f"({html.escape(_text(gm.threshold_source))}).</p>"
    )
    if np.isfinite(fidelity):
        follows = "follow" if fidelity >= FAITHFUL_LAYOUT else "hardly follow"
        parts.append(
            f"<p class='note fidelity'>Its map's distances {follows} the scores (rank correlation of map "
            f"distance and 1 - score: {fidelity:.2f}).</p>"
        )
    for c in multi:
        rows = []
        for m in c["members"]:
            best = "" if m["best_match"] is None else html.escape(_text(os.path.basename(m["best_match"])))
            cells = [f"{m['score']:.3f}", f"{m['best_score']:.3f} {best}"]
            rows.append(_member_row(gm, start, data, m, colours[m["index"]], cells))
        parts.append(
            f"<div class='cluster' id='cluster-{key}-{c['id']}'><b>cluster {c['id']}</b> ({c['size']} files)"
            "<table class='members'><tr><th></th><th>file</th><th>title</th><th>score to the first</th>"
            "<th>best match in the cluster</th></tr>" + "".join(rows) + "</table></div>"
        )
    if single:
        S = gm.similarity.copy()
        np.fill_diagonal(S, -np.inf)
        rows = []
        for c in single:
            m = c["members"][0]
            i = m["index"]
            if len(gm.records) > 1:
                j = int(np.argmax(S[i]))
                cells = [f"{S[i, j]:.3f} {html.escape(_text(os.path.basename(gm.records[j].path)))}"]
            else:
                cells = [""]
            rows.append(_member_row(gm, start, data, m, _SINGLE, cells))
        parts.append(
            "<div class='cluster single'><b>in no cluster</b>"
            "<table class='members'><tr><th></th><th>file</th><th>title</th>"
            "<th>closest file</th></tr>" + "".join(rows) + "</table></div>"
        )
    return "\n".join(parts)
