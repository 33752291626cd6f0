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
