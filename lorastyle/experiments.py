"""One function per table or figure of the book, over a built collection.

Chapters stay thin: they call these functions and show what they return. Each
function reads the collection folder written by :mod:`lorastyle.build`
(``data/`` by default) and returns a pandas DataFrame or arrays for
:mod:`lorastyle.viz`.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .descriptors import ModuleSelection, descriptor_kernel
from .embedding import StyleEmbedding
from .formats import LoRA, load_lora
from .metrics import cluster_scores, retrieval_scores

__all__ = ["Collection", "load_collection", "lora_embedding", "feature_matrix", "feature_embedding",
           "clustering_table", "DESCRIPTOR_NAMES", "ENCODER_NAMES"]

DESCRIPTOR_NAMES = ("concat", "delta", "gram")
# Stand-ins for CLIP and DINO in the default profile: named for what they are.
ENCODER_NAMES = {"efficientnet": "EfficientNet-Lite0 (ImageNet)", "vgg_gram": "VGG19 Gram (Gatys)",
                 "magenta": "Magenta style vector (circular)", "clip": "CLIP", "dino": "DINO"}


@dataclass
class Collection:
    """A built collection: its manifest rows, LoRA files and cached image features."""

    root: Path
    rows: list[dict]
    _loras: dict[str, LoRA] = field(default_factory=dict, repr=False)

    def ids(self, collection: str | Sequence[str] = "main") -> list[str]:
        """LoRA ids of one or more collections, in manifest order."""
        wanted = {collection} if isinstance(collection, str) else set(collection)
        return [r["id"] for r in self.rows if r["collection"] in wanted]

    @cached_property
    def by_id(self) -> dict[str, dict]:
        return {r["id"]: r for r in self.rows}

    def labels(self, ids: Sequence[str], level: str) -> np.ndarray:
        """``artist`` or ``genre`` of each id."""
        return np.asarray([self.by_id[i][level] for i in ids])

    def lora(self, lora_id: str) -> LoRA:
        if lora_id not in self._loras:
            self._loras[lora_id] = load_lora(self.root / self.by_id[lora_id]["file"])
        return self._loras[lora_id]

    def features(self, encoder: str) -> dict[str, np.ndarray]:
        with np.load(self.root / "features" / f"{encoder}.npz", allow_pickle=False) as data:
            return {k: data[k] for k in data.files}


def load_collection(root: str | Path = "data") -> Collection:
    """Read a collection folder written by :func:`lorastyle.build.build_collection`."""
    root = Path(root)
    path = root / "manifest.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no manifest; build the collection with `make data`")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return Collection(root=root, rows=rows)


def lora_embedding(coll: Collection, ids: Sequence[str], descriptor: str, *, n_components: int = 16,
                   select: ModuleSelection | None = None, random_state: int = 0) -> np.ndarray:
    """In-sample PCA embedding of LoRAs by a descriptor (kernel form, exact)."""
    loras = [coll.lora(i) for i in ids]
    K = descriptor_kernel(descriptor, loras, select=select)
    k = min(n_components, len(ids) - 2)
    return StyleEmbedding(k, solver="precomputed", random_state=random_state).fit_transform(K)


def feature_matrix(coll: Collection, ids: Sequence[str], encoder: str, source: str = "train") -> np.ndarray:
    """Per-LoRA mean image features (``source`` is ``train`` or a sample setting like ``gen/T25-w3-k6``)."""
    feats = coll.features(encoder)
    return np.stack([feats[f"{source}/{i}"] for i in ids]).astype(np.float64)


def feature_embedding(coll: Collection, ids: Sequence[str], encoder: str, source: str = "train", *,
                      n_components: int = 16, random_state: int = 0) -> np.ndarray:
    """In-sample PCA embedding of per-LoRA mean image features."""
    X = feature_matrix(coll, ids, encoder, source)
    k = min(n_components, len(ids) - 2, X.shape[1])
    return StyleEmbedding(k, random_state=random_state, calibrate=False).fit_transform(X)


def clustering_table(coll: Collection, *, collection: str = "main", descriptors: Sequence[str] = DESCRIPTOR_NAMES,
                     encoders: Sequence[str] = (), levels: Sequence[str] = ("artist", "genre"),
                     n_components: int = 16, seeds: Sequence[int] = (0, 1, 2, 3, 4)):
    """Clustering and 1-NN scores of every representation, mean and spread over k-means seeds.

    Returns
    -------
    pandas.DataFrame
        One row per (representation, level): ``ari``, ``nmi``, ``purity`` (means over
        seeds, with ``*_std``), ``silhouette`` and leave-one-out ``top1``.
    """
    import pandas as pd

    ids = coll.ids(collection)
    reps = {f"LoRA {d}": lora_embedding(coll, ids, d, n_components=n_components) for d in descriptors}
    reps |= {ENCODER_NAMES.get(e, e): feature_embedding(coll, ids, e, n_components=n_components) for e in encoders}
    rows = []
    for name, Z in reps.items():
        for level in levels:
            y = coll.labels(ids, level)
            runs = [cluster_scores(Z, y, random_state=s) for s in seeds]
            row = {"representation": name, "level": level, "n": len(ids), "classes": len(set(y))}
            for key in ("ari", "nmi", "purity"):
                vals = [r[key] for r in runs]
                row[key], row[f"{key}_std"] = float(np.mean(vals)), float(np.std(vals))
            row["silhouette"] = runs[0]["silhouette"]
            row["top1"] = retrieval_scores(Z, y, k=(1,))["top1"]
            rows.append(row)
    return pd.DataFrame(rows)


def _lora_fit(coll: Collection, ids: Sequence[str], descriptor: str, n_components: int,
              select: ModuleSelection | None = None, random_state: int = 0) -> tuple[StyleEmbedding, list[LoRA]]:
    loras = [coll.lora(i) for i in ids]
    K = descriptor_kernel(descriptor, loras, select=select)
    emb = StyleEmbedding(min(n_components, len(ids) - 2), solver="precomputed", random_state=random_state).fit(K)
    return emb, loras


def retrieval_table(coll: Collection, *, descriptors: Sequence[str] = DESCRIPTOR_NAMES,
                    encoders: Sequence[str] = (), n_components: int = 16, k: Sequence[int] = (1, 5)):
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

    Returns
    -------
    pandas.DataFrame
        ``scenario``, ``representation``, ``setting``, ``top1``, ``map``, ``precision@k``, ``drift``.
    """
    import pandas as pd

    from .metrics import query_scores

    main, held = coll.ids("main"), coll.ids("heldout")
    y_main, y_held = coll.labels(main, "artist"), coll.labels(held, "artist")
    rows = []

    def add(scenario, rep, setting, scores, drift=np.nan):
        rows.append({"scenario": scenario, "representation": rep, "setting": setting,
                     "top1": scores["top1"], "map": scores["map"],
                     **{f"precision@{j}": scores[f"precision@{j}"] for j in k}, "drift": drift})

    for d in descriptors:
        emb, loras = _lora_fit(coll, main, d, n_components)
        fitted = emb.embedding_
        add("S1", f"LoRA {d}", "in the fitted set", retrieval_scores(fitted, y_main, k=k))
        K_held = descriptor_kernel(d, [coll.lora(i) for i in held], loras)
        for calibrated in (False, True):
            Z = emb.transform(K_held, calibrated=calibrated)
            drift = float(np.sqrt((Z**2).sum(1).mean() / (fitted**2).sum(1).mean()))
            add("S2", f"LoRA {d}", "calibrated" if calibrated else "uncalibrated",
                query_scores(fitted, y_main, Z, y_held, k=k), drift)
    for e in encoders:
        name = ENCODER_NAMES.get(e, e)
        X_main, X_held = feature_matrix(coll, main, e), feature_matrix(coll, held, e)
        add("S3", name, "training images", query_scores(X_main, y_main, X_held, y_held, k=k))
        feats = coll.features(e)
        settings = sorted({key.split("/")[1] for key in feats if key.startswith("gen/")})
        default = max(settings, key=lambda s: sum(key.startswith(f"gen/{s}/main-") for key in feats))
        X_index = feature_matrix(coll, main, e, f"gen/{default}")
        for s in settings:
            if all(f"gen/{s}/{i}" in feats for i in held):
                add("S4", name, s, query_scores(X_index, y_main, feature_matrix(coll, held, e, f"gen/{s}"),
                                                y_held, k=k))
    return pd.DataFrame(rows)


def structure_comparison(coll: Collection, *, descriptors: Sequence[str] = DESCRIPTOR_NAMES,
                         encoders: Sequence[str] = (), n_components: int = 16, k: int = 5,
                         n_permutations: int = 999, random_state: int = 0):
    """Structural similarity of LoRA embeddings and image embeddings of the same LoRAs (main collection).

    A null row per pair compares the LoRA embedding with the image embedding of
    randomly permuted LoRAs, the baseline any real agreement must beat.

    Returns
    -------
    pandas.DataFrame
        ``lora``, ``images``, ``null``, ``cka``, ``rsa_r``, ``rsa_p``, ``knn_overlap``, ``procrustes``.
    """
    import pandas as pd

    from .metrics import structure_table

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


SUBNETWORKS = {
    "all modules": ModuleSelection(),
    "self-attention": ModuleSelection(layers=["self_attention"]),
    "cross-attention": ModuleSelection(layers=["cross_attention"]),
    "feed-forward": ModuleSelection(layers=["feed_forward"]),
    "down blocks": ModuleSelection(blocks=["down"]),
    "mid block": ModuleSelection(blocks=["mid"]),
    "up blocks": ModuleSelection(blocks=["up"]),
}


def subnetwork_curves(coll: Collection, *, descriptor: str = "concat",
                      dimensions: Sequence[int] = (2, 4, 8, 16, 32), level: str = "artist",
                      subnetworks: dict[str, ModuleSelection] | None = None):
    """Leave-one-out top-1 retrieval and ARI by sub-network over PCA dimensions (main collection).

    Returns
    -------
    pandas.DataFrame
        ``subnetwork``, ``dimensions``, ``n_features``, ``top1``, ``ari``.
    """
    import pandas as pd

    from .descriptors import concat_vectors

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
            rows.append({"subnetwork": name, "dimensions": dim, "n_features": n_features,
                         "top1": retrieval_scores(Z, y, k=(1,))["top1"], "ari": cluster_scores(Z, y, random_state=0)["ari"]})
    return pd.DataFrame(rows)


def invariance_table(coll: Collection, *, descriptors: Sequence[str] = DESCRIPTOR_NAMES):
    """How each descriptor sees a LoRA retrained with another A seed or another rank.

    For each variant, the cosine similarity (in the descriptor's own feature
    space) to the main LoRA it repeats, beside the mean cosine to the other
    main LoRAs of the same artist and of other artists.

    Returns
    -------
    pandas.DataFrame
        ``descriptor``, ``variant``, ``cos_to_original``, ``cos_same_artist``, ``cos_other_artists``.
    """
    import pandas as pd

    variants = coll.ids(["seed_variant", "rank_variant"])
    main = coll.ids("main")
    rows = []
    for d in descriptors:
        for v in variants:
            artist = coll.by_id[v]["artist"]
            original = next(i for i in main if coll.by_id[i]["artist"] == artist)  # main LoRA 0 of the artist
            others = [i for i in main if i != original]
            if d == "concat" and coll.lora(v).ranks != coll.lora(original).ranks:
                continue  # concat cannot compare ranks: the table shows the gap
            group = [v, original] + others
            if d == "concat":
                group = [i for i in group if coll.lora(i).ranks == coll.lora(v).ranks]
            K = descriptor_kernel(d, [coll.lora(i) for i in group])
            norms = np.sqrt(np.diag(K))
            cos = K[0] / (norms[0] * norms)
            same = [j for j, i in enumerate(group[2:], 2) if coll.by_id[i]["artist"] == artist]
            other = [j for j, i in enumerate(group[2:], 2) if coll.by_id[i]["artist"] != artist]
            rows.append({"descriptor": d, "variant": v, "collection": coll.by_id[v]["collection"],
                         "cos_to_original": float(cos[1]),
                         "cos_same_artist": float(np.mean(cos[same])) if same else np.nan,
                         "cos_other_artists": float(np.mean(cos[other])) if other else np.nan})
    return pd.DataFrame(rows)
