"""A searchable index of a LoRA collection: embed a folder, save it, query it.

The index is one safetensors file (never a pickle): the fitted embedding, the
PCA (or, for the ``delta`` and ``gram`` kernels, the indexed LoRAs' low-rank
factors, which new queries need), and a JSON block with the paths. It is
written atomically.

Collections downloaded from the internet are messy: :func:`build_index` skips
files it cannot read, files of another base family than most of the
collection, and files whose modules do not match the others', and reports each
with the reason; it embeds the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .descriptors import DESCRIPTORS, ModuleSelection, concat_vectors, descriptor_kernel
from .embedding import StyleEmbedding
from .formats import LORA_SUFFIXES, LoRA, LoraFormatError, build_module, load_lora
from .metrics import similarity_matrix
from .safetensors_io import read_safetensors, write_safetensors

__all__ = ["LoraIndex", "NotEnoughLorasError", "build_index", "find_lora_files", "file_sha256", "INDEX_FORMAT"]

INDEX_FORMAT = "lorastyle-index-1"


class NotEnoughLorasError(ValueError):
    """Fewer than two files could be embedded together; ``skipped`` says why the others were not."""

    def __init__(self, message: str, skipped: list[tuple[str, str]]):
        super().__init__(message)
        self.skipped = skipped


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_lora_files(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """Every LoRA-like file under ``root``, recursively, sorted; and the folders that could not be read.

    Symbolic links to folders are not followed (no loops); pickle suffixes are
    listed too, so that they are reported as refused rather than ignored.
    """
    found, problems = [], []
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: problems.append((e.filename, e.strerror))):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(LORA_SUFFIXES) and not name.startswith("."):
                found.append(os.path.join(dirpath, name))
    return found, problems


@dataclass
class LoraIndex:
    """A fitted embedding of LoRA files, ready for similarity queries.

    Attributes
    ----------
    paths : list of str
    sha256 : list of str
    descriptor : {"concat", "delta", "gram"}
    base : str
        Base family of every indexed LoRA.
    embedding : StyleEmbedding
        Fitted on the indexed LoRAs' descriptors.
    loras : list of LoRA
        For kernel descriptors only: the factors that project new queries.
    """

    paths: list[str]
    sha256: list[str]
    descriptor: str
    base: str
    embedding: StyleEmbedding
    loras: list[LoRA] = field(default_factory=list, repr=False)

    def project(self, lora: LoRA) -> np.ndarray:
        """Calibrated out-of-sample embedding of one LoRA (shape (n_components,))."""
        if lora.base != self.base:
            raise LoraFormatError(lora.path, f"base family {lora.base} differs from the index's {self.base}")
        if self.descriptor == "concat":
            x = _query_vector(lora, self)
        else:
            x = descriptor_kernel(self.descriptor, [lora], self.loras)
        return self.embedding.transform(x)[0]

    def similar(self, lora: LoRA, k: int = 10) -> list[dict]:
        """The k indexed LoRAs closest to ``lora`` by cosine similarity of embeddings, best first.

        A query whose file is in the index (same sha256) is answered with its
        fitted embedding and left out of the results.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        digest = file_sha256(lora.path) if os.path.exists(lora.path) else None
        fitted = self.embedding.embedding_
        if digest in self.sha256:
            own = self.sha256.index(digest)
            query = fitted[own]
            candidates = [i for i in range(len(self.paths)) if i != own]
        else:
            query = self.project(lora)
            candidates = list(range(len(self.paths)))
        scores = similarity_matrix(query[None, :], fitted[candidates])[0]
        order = np.argsort(-scores, kind="stable")[:k]
        return [{"path": self.paths[candidates[j]], "score": float(scores[j])} for j in order]

    def save(self, path: str | os.PathLike) -> None:
        """Write the index atomically as a safetensors file."""
        emb = self.embedding
        tensors = {"embedding": emb.embedding_, "calibration": emb.calibration_}
        if self.descriptor == "concat":
            tensors["pca_mean"] = emb.pca_.mean_
            tensors["pca_components"] = emb.pca_.components_
            tensors["pca_explained_variance"] = emb.pca_.explained_variance_
        else:
            tensors["kernel_fit"] = emb.kernel_fit_
            tensors["dual_coef"] = emb.dual_coef_
            # The stored factors (not the expanded low-rank form, which is large for LoKr)
            for i, lora in enumerate(self.loras):
                for name, m in lora.modules.items():
                    for role, arr in m.factors.items():
                        tensors[f"factors/{i}/{name}/{role}"] = arr
                    if m.alpha is not None:
                        tensors[f"factors/{i}/{name}/alpha"] = np.asarray(m.alpha, dtype=np.float32)
        meta = {"format": INDEX_FORMAT, "descriptor": self.descriptor, "base": self.base,
                "paths": json.dumps(self.paths), "sha256": json.dumps(self.sha256),
                "n_components": str(emb.n_components), "solver": emb.solver,
                "modules": json.dumps(_module_names(self))}
        write_safetensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LoraIndex:
        """Read an index written by :meth:`save`."""
        tensors, meta = read_safetensors(path)
        if meta.get("format") != INDEX_FORMAT:
            raise LoraFormatError(path, f"not a lorastyle index (format {meta.get('format')!r})")
        try:
            paths, sha = json.loads(meta["paths"]), json.loads(meta["sha256"])
            descriptor, k = meta["descriptor"], int(meta["n_components"])
            emb = StyleEmbedding(n_components=k, solver=meta["solver"])
            emb.embedding_ = tensors["embedding"].astype(np.float64)
            emb.calibration_ = tensors["calibration"].astype(np.float64)
            loras = []
            if descriptor == "concat":
                from sklearn.decomposition import PCA

                pca = PCA(n_components=k)
                pca.mean_ = tensors["pca_mean"]
                pca.components_ = tensors["pca_components"]
                pca.explained_variance_ = tensors["pca_explained_variance"]
                pca.n_components_ = k
                pca.n_features_in_ = pca.mean_.shape[0]
                emb.pca_ = pca
                emb.n_features_in_ = pca.n_features_in_
                emb.module_names_ = json.loads(meta["modules"])
            else:
                emb.kernel_fit_ = tensors["kernel_fit"]
                emb.dual_coef_ = tensors["dual_coef"]
                emb.n_features_in_ = len(paths)
                loras = _loras_from_factors(tensors, paths, meta["base"])
        except (KeyError, ValueError) as exc:
            raise LoraFormatError(path, f"damaged lorastyle index ({exc})") from None
        return cls(paths=paths, sha256=sha, descriptor=descriptor, base=meta["base"], embedding=emb, loras=loras)


def _module_names(index: LoraIndex) -> list[str]:
    return list(getattr(index.embedding, "module_names_", []))


def _query_vector(lora: LoRA, index: LoraIndex) -> np.ndarray:
    names = index.embedding.module_names_
    if list(lora.modules) != names:
        missing = sorted(set(names) - set(lora.modules))[:2]
        extra = sorted(set(lora.modules) - set(names))[:2]
        raise LoraFormatError(lora.path, f"concat needs the index's modules (missing {missing}, extra {extra})")
    x = concat_vectors([lora])
    if x.shape[1] != index.embedding.n_features_in_:
        raise LoraFormatError(lora.path, f"concat vector has {x.shape[1]} values, the index has "
                                         f"{index.embedding.n_features_in_} (different ranks?)")
    return x


def _loras_from_factors(tensors: dict, paths: list[str], base: str) -> list[LoRA]:
    per: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    for key, arr in tensors.items():
        if key.startswith("factors/"):
            _, i, rest = key.split("/", 2)
            name, role = rest.rsplit("/", 1)
            per.setdefault(int(i), {}).setdefault(name, {})[role] = arr
    loras = []
    for i, path in enumerate(paths):
        mods = {name: build_module(path, name, name.split(".", 1)[0], roles)
                for name, roles in sorted(per.get(i, {}).items())}
        loras.append(LoRA(path=path, format="index", base=base, modules=mods, dtype="float32"))
    return loras


def _majority(values: Sequence) -> object:
    counts = Counter(values)
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)  # ties: the first file's value


def _comparable_subset(loras: list[LoRA], descriptor: str) -> tuple[list[LoRA], list[tuple[str, str]]]:
    """Keep the LoRAs that share the majority's base family and module shapes; explain the others."""
    skipped = []
    base = _majority([lora.base for lora in loras])
    keep = []
    for lora in loras:
        if lora.base != base:
            skipped.append((lora.path, f"base family {lora.base} differs from the index's {base}"))
        else:
            keep.append(lora)
    if descriptor == "concat":
        sigs = [tuple((n, r, f.shape) for n, m in lora.modules.items() for r, f in sorted(m.factors.items()))
                for lora in keep]
        ref = _majority(sigs)
        out = []
        for lora, sig in zip(keep, sigs):
            if sig == ref:
                out.append(lora)
            else:
                skipped.append((lora.path, "concat needs the same modules and ranks as the other files "
                                           f"({len(sig)} factors against {len(ref)}); try --descriptor delta"))
        return out, skipped
    votes: dict[str, Counter] = {}
    for lora in keep:
        for name, m in lora.modules.items():
            votes.setdefault(name, Counter())[m.shape] += 1
    shape = {name: c.most_common(1)[0][0] for name, c in votes.items()}
    out = []
    for lora in keep:
        bad = next((n for n, m in lora.modules.items() if m.shape != shape[n]), None)
        if bad is None:
            out.append(lora)
        else:
            skipped.append((lora.path, f"module {bad} has shape {lora.modules[bad].shape}, "
                                       f"the other files have {shape[bad]}"))
    return out, skipped


def build_index(paths: Iterable[str], *, descriptor: str = "concat", n_components: int = 8,
                select: ModuleSelection | None = None, random_state: int = 0,
                progress: Callable[[Iterable], Iterable] | None = None) -> tuple[LoraIndex, list[tuple[str, str]]]:
    """Load, check and embed LoRA files.

    Parameters
    ----------
    paths : iterable of str
        LoRA files.
    descriptor : {"concat", "delta", "gram"}, default="concat"
    n_components : int, default=8
        Capped at (number of embedded files - 2), so that calibration can be estimated.
    select : ModuleSelection, optional
        Sub-network to describe.
    random_state : int, default=0
    progress : callable, optional
        Wraps the iteration over files (for example ``tqdm``).

    Returns
    -------
    index : LoraIndex
    skipped : list of (path, reason)
        Files that were not embedded, and why.

    Raises
    ------
    NotEnoughLorasError
        If fewer than two files can be embedded together (with the skipped files).
    ValueError
        For an unknown descriptor or n_components < 1.
    """
    if descriptor not in DESCRIPTORS:
        raise ValueError(f"unknown descriptor {descriptor!r}; choose from {list(DESCRIPTORS)}")
    if n_components < 1:
        raise ValueError(f"n_components must be at least 1, got {n_components}")
    paths = list(paths)
    loras, skipped = [], []
    for path in (progress or (lambda x: x))(paths):
        try:
            lora = load_lora(path)
            if select is not None:
                lora.modules = select.modules(lora)
                if not lora.modules:
                    raise LoraFormatError(path, f"no module matches the selection {select}")
            loras.append(lora)
        except LoraFormatError as exc:
            skipped.append((path, exc.reason))
    if loras:
        loras, more = _comparable_subset(loras, descriptor)
        skipped.extend(more)
    if len(loras) < 2:
        raise NotEnoughLorasError(
            f"need at least 2 comparable LoRA files to fit an embedding, found {len(loras)}", skipped)
    # n - 2 components leave the leave-one-out calibration something to estimate
    k = max(1, min(n_components, len(loras) - 2))
    if descriptor == "concat":
        X = concat_vectors(loras)
        emb = StyleEmbedding(n_components=k, solver="full", random_state=random_state).fit(X)
        emb.module_names_ = list(loras[0].modules)
        kept = []
    else:
        K = descriptor_kernel(descriptor, loras)
        emb = StyleEmbedding(n_components=k, solver="precomputed", random_state=random_state).fit(K)
        kept = loras
    index = LoraIndex(paths=[lora.path for lora in loras], sha256=[file_sha256(lora.path) for lora in loras],
                      descriptor=descriptor, base=loras[0].base, embedding=emb, loras=kept)
    return index, skipped
