"""A searchable index of a LoRA collection: embed a folder, save it, query it.

The index is one safetensors file (never a pickle): the fitted embedding, the
PCA (or, for the ``delta`` and ``gram`` kernels, the indexed LoRAs' low-rank
factors, which new queries need), and a JSON block with the paths.

Collections downloaded from the internet are messy: :func:`build_index` skips
files it cannot read, files of another base family than most of the
collection, files whose modules do not match the others', and files whose
weights are too large to embed, and reports each with the reason; it embeds
the rest.

Interrupted work (:func:`index_folder`, behind ``lorastyle index``):

* the index file is written atomically (a temporary file, fsync, rename, and
  an fsync of the folder), so after a crash or a ``kill -9`` it is either the
  previous complete index or the new complete one;
* every file read is recorded in a cache folder next to the index
  (``INDEX.cache/``, see :class:`LoraCache`), one entry per file, each written
  atomically; a re-run reads only new or changed files and refits the
  embedding;
* a lock (``INDEX.lock``, ``flock``) lets one run at a time write an index:
  a second run on the same output is refused (:class:`IndexBusyError`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import __version__
from ..descriptors import DESCRIPTORS, ModuleSelection, concat_vectors, descriptor_kernel
from ..embedding import StyleEmbedding, _top_eigen
from ..errors import IndexBusyError, LoraFormatError
from ..io.formats import LORA_SUFFIXES, LoRA, build_module, load_lora
from ..io.safetensors import PICKLE_SUFFIXES, read_safetensors, write_safetensors
from ..metrics import similarity_matrix

try:  # POSIX; elsewhere index runs are not serialised (documented)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = [
    "LoraIndex",
    "LoraCache",
    "IndexBusyError",
    "IndexRun",
    "NotEnoughLorasError",
    "build_index",
    "index_folder",
    "index_lock",
    "find_lora_files",
    "file_sha256",
    "INDEX_FORMAT",
    "CACHE_FORMAT",
    "MEMORY_BUDGET",
    "SKETCH_DIM",
]

INDEX_FORMAT = "lorastyle-index-1"
CACHE_FORMAT = "lorastyle-cache-1"
CACHE_SUFFIX = ".lorastyle-cache"
# A descriptor whose squared norm exceeds this would overflow the embedding's arithmetic
# (float32 PCA for concat, products of kernel values for gram); no trained LoRA comes near it.
MAX_DESCRIPTOR_NORM2 = 1e30
# Bytes of concat vectors (float32) build_index holds at once; beyond it the fit is streamed.
MEMORY_BUDGET = 128 * 2**20
# Length of the random-sign sketch of each concat vector in a streamed fit (its kernel's estimate).
SKETCH_DIM = 2**13


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


def find_lora_files(
    root: str | os.PathLike, *, exclude: Iterable[str | os.PathLike] = ()
) -> tuple[list[str], list[tuple[str, str]]]:
    """Every LoRA-like file under ``root``, recursively, in walk order; and what could not be walked.

    Parameters
    ----------
    root : str or path-like
    exclude : iterable of paths, optional
        Files or folders to leave out (an index's own file and cache).

    Returns
    -------
    files : list of str
        Regular files (or links to them) with a LoRA suffix, pickle suffixes
        included so that they are reported as refused rather than ignored.
        Names that are not valid UTF-8 come back as ``str`` with surrogate
        escapes (``os.fsdecode``), which ``open`` accepts.
    problems : list of (path, reason)
        Folders that could not be listed, symbolic links to folders (not
        followed, so a link loop cannot make the walk endless), and entries
        with a LoRA suffix that are not regular files (a FIFO would block the
        reader forever) or cannot be examined (a link loop).
    """
    root = os.fspath(root)
    skip = {os.path.abspath(os.fspath(p)) for p in exclude}
    found: list[str] = []
    problems: list[tuple[str, str]] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            problems.append((folder, f"cannot list folder: {exc.strerror or exc}"))
            continue
        subfolders = []
        for entry in entries:
            if os.path.abspath(entry.path) in skip:
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(entry.path)
                    continue
                lora_like = entry.name.lower().endswith(LORA_SUFFIXES) and not entry.name.startswith(".")
                if entry.is_symlink() and os.path.isdir(entry.path):
                    problems.append((entry.path, "symbolic link to a folder: not followed"))
                    continue
                if not lora_like:
                    continue
                mode = os.stat(entry.path).st_mode  # follows links: the file that would be read
            except OSError as exc:
                problems.append((entry.path, f"cannot read file: {exc.strerror or exc}"))
                continue
            if not stat.S_ISREG(mode):
                problems.append((entry.path, f"not a regular file ({_file_kind(mode)})"))
                continue
            found.append(entry.path)
        stack.extend(reversed(subfolders))  # depth first, in name order, like os.walk
    return found, problems


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a file"


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
        norm2 = _descriptor_norm2(self.descriptor, lora)
        if not norm2 <= MAX_DESCRIPTOR_NORM2:  # also catches nan
            raise LoraFormatError(lora.path, _too_large(self.descriptor, norm2))
        if self.descriptor == "concat":
            x = _query_vector(lora, self)
        else:
            x = descriptor_kernel(self.descriptor, [lora], self.loras)
        return self.embedding.project(x)[0]

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
                    if m.alpha is not None:  # float64: the scale alpha / rank comes back exactly
                        tensors[f"factors/{i}/{name}/alpha"] = np.asarray(m.alpha, dtype=np.float64)
        meta = {
            "format": INDEX_FORMAT,
            "descriptor": self.descriptor,
            "base": self.base,
            "paths": json.dumps(self.paths),
            "sha256": json.dumps(self.sha256),
            "n_components": str(emb.n_components),
            "solver": emb.solver,
            "modules": json.dumps(_module_names(self)),
        }
        write_safetensors(path, tensors, meta)
        _fsync_folder(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LoraIndex:
        """Read an index written by :meth:`save`.

        Raises
        ------
        LoraFormatError
            If the file is not a lorastyle index or any part of it is missing
            or inconsistent (an index is a file like any other: it may be
            damaged or hostile).
        """
        path = os.fspath(path)
        tensors, meta = read_safetensors(path)
        if meta.get("format") != INDEX_FORMAT:
            raise LoraFormatError(path, f"not a lorastyle index (format {meta.get('format')!r})")
        try:
            index = cls._from_parts(path, tensors, meta)
        except LoraFormatError as exc:
            raise LoraFormatError(path, f"damaged lorastyle index ({exc})") from None
        except (KeyError, ValueError, TypeError, IndexError, AttributeError, ZeroDivisionError) as exc:
            # build_module and numpy report inconsistent stored factors so; the file is the problem
            raise LoraFormatError(path, f"damaged lorastyle index ({type(exc).__name__}: {exc})") from None
        return index

    @classmethod
    def _from_parts(cls, path: str, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> LoraIndex:
        def need(condition: bool, what: str) -> None:
            if not condition:
                raise ValueError(what)

        paths, sha = json.loads(meta["paths"]), json.loads(meta["sha256"])
        need(isinstance(paths, list) and all(isinstance(p, str) for p in paths), "paths is not a list of strings")
        need(
            isinstance(sha, list)
            and len(sha) == len(paths)
            and all(isinstance(h, str) and re.fullmatch(r"[0-9a-f]{64}", h) for h in sha),
            "sha256 is not one hex digest per path",
        )
        descriptor, k, solver, base = meta["descriptor"], int(meta["n_components"]), meta["solver"], meta["base"]
        need(descriptor in DESCRIPTORS, f"unknown descriptor {descriptor!r}")
        need(solver == ("full" if descriptor == "concat" else "precomputed"), f"solver {solver!r}")
        n = len(paths)
        need(1 <= k < max(n, 2), f"n_components {k} for {n} files")
        emb = StyleEmbedding(n_components=k, solver=solver)
        emb.embedding_ = _stored(tensors, "embedding", (n, k), float64=True)
        emb.calibration_ = _stored(tensors, "calibration", (k,), float64=True)
        loras: list[LoRA] = []
        if descriptor == "concat":
            from sklearn.decomposition import PCA

            d = tensors["pca_mean"].shape[0] if tensors["pca_mean"].ndim == 1 else -1
            pca = PCA(n_components=k)
            pca.mean_ = _stored(tensors, "pca_mean", (d,))
            pca.components_ = _stored(tensors, "pca_components", (k, d))
            pca.explained_variance_ = _stored(tensors, "pca_explained_variance", (k,))
            pca.n_components_ = k
            pca.n_features_in_ = d
            emb.pca_ = pca
            emb.n_features_in_ = d
            names = json.loads(meta["modules"])
            need(isinstance(names, list) and all(isinstance(x, str) for x in names), "modules is not a list")
            emb.module_names_ = names
        else:
            emb.kernel_fit_ = _stored(tensors, "kernel_fit", (n, n))
            emb.dual_coef_ = _stored(tensors, "dual_coef", (n, k))
            emb.n_features_in_ = n
            loras = _loras_from_factors(tensors, paths, base)
            need(all(lora.modules for lora in loras), "an indexed LoRA has no stored factors")
        return cls(paths=paths, sha256=sha, descriptor=descriptor, base=base, embedding=emb, loras=loras)


def _stored(tensors: dict[str, np.ndarray], name: str, shape: tuple[int, ...], float64: bool = False) -> np.ndarray:
    """A stored array (as float64 if asked), checked for its shape and for finite values."""
    arr = tensors[name]
    if arr.shape != shape or arr.dtype.kind != "f":
        raise ValueError(f"{name} has shape {arr.shape} and dtype {arr.dtype}, expected {shape} floats")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds NaN or Inf values")
    return arr.astype(np.float64) if float64 else arr


def _fsync_folder(path: str | os.PathLike) -> None:
    """Make a rename inside the file's folder durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(fd)


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
        raise LoraFormatError(
            lora.path,
            f"concat vector has {x.shape[1]} values, the index has {index.embedding.n_features_in_} (different ranks?)",
        )
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
        mods = {
            name: build_module(path, name, name.split(".", 1)[0], roles)
            for name, roles in sorted(per.get(i, {}).items())
        }
        loras.append(LoRA(path=path, format="index", base=base, modules=mods, dtype="float32"))
    return loras


def _majority(values: Sequence) -> object:
    counts = Counter(values)
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)  # ties: the first file's value


def _factor_signature(lora: LoRA) -> tuple:
    return tuple((n, r, f.shape) for n, m in lora.modules.items() for r, f in sorted(m.factors.items()))


def _concat_difference(lora: LoRA, ref: LoRA) -> str:
    """How ``lora``'s stored factors differ from ``ref``'s, in words."""
    if lora.ranks != ref.ranks:
        return f"its rank is {_listed(lora.ranks)} where theirs is {_listed(ref.ranks)}"
    missing = sorted(set(ref.modules) - set(lora.modules))
    extra = sorted(set(lora.modules) - set(ref.modules))
    if missing:
        return f"it lacks module {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    if extra:
        return f"it has module {extra[0]} that they lack" + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")
    for name, m in lora.modules.items():
        theirs = ref.modules[name].factors
        for role, f in sorted(m.factors.items()):
            if role not in theirs or theirs[role].shape != f.shape:
                other = theirs[role].shape if role in theirs else "none"
                return f"module {name} factor {role} has shape {f.shape} where theirs has {other}"
        if set(theirs) - set(m.factors):
            return f"module {name} lacks factor {sorted(set(theirs) - set(m.factors))[0]}"
    return "its factors differ"


def _listed(values: list) -> str:
    return ", ".join(str(v) for v in values)


def _comparable_subset(loras: list[LoRA], descriptor: str) -> tuple[list[LoRA], list[tuple[str, str]]]:
    """Keep the LoRAs that can share one descriptor space with the majority; explain each of the others.

    Nothing incomparable is compared silently: a file of another base family,
    a ``concat`` descriptor of other modules or ranks, a module of another
    shape, or a file that shares no module with any other file (its kernel
    similarity to every file would be 0 by construction) is skipped, and the
    reason names what differs and a file of the majority.
    """
    skipped = []
    bases = [lora.base for lora in loras]
    base = _majority(bases)
    example = loras[bases.index(base)].path
    keep = []
    for lora in loras:
        if lora.base != base:
            skipped.append(
                (
                    lora.path,
                    f"base family {lora.base} differs from {base}, the family of "
                    f"{bases.count(base)} of {len(loras)} files (such as {example}); "
                    "LoRAs of different base models cannot be compared",
                )
            )
        else:
            keep.append(lora)
    out = []
    if descriptor == "concat":
        sigs = [_factor_signature(lora) for lora in keep]
        ref_sig = _majority(sigs)
        ref = keep[sigs.index(ref_sig)]
        n_ref = sigs.count(ref_sig)
        for lora, sig in zip(keep, sigs):
            if sig == ref_sig:
                out.append(lora)
            else:
                skipped.append(
                    (
                        lora.path,
                        f"concat needs the same modules, ranks and factor shapes as the "
                        f"{n_ref} other files (such as {ref.path}): "
                        f"{_concat_difference(lora, ref)}; --descriptor delta or gram "
                        "compare LoRAs of different ranks",
                    )
                )
        return out, skipped
    votes: dict[str, Counter] = {}
    for lora in keep:
        for name, m in lora.modules.items():
            votes.setdefault(name, Counter())[m.shape] += 1
    shape = {name: c.most_common(1)[0][0] for name, c in votes.items()}
    shaped = []
    for lora in keep:
        bad = next((n for n, m in lora.modules.items() if m.shape != shape[n]), None)
        if bad is None:
            shaped.append(lora)
        else:
            holder = next(x.path for x in keep if bad in x.modules and x.modules[bad].shape == shape[bad])
            skipped.append(
                (
                    lora.path,
                    f"module {bad} has shape {lora.modules[bad].shape}, where "
                    f"{votes[bad][shape[bad]]} other files have {shape[bad]} "
                    f"(such as {holder})",
                )
            )
    # a module adapted by one file only contributes nothing to its similarity with the others
    holders = Counter(name for lora in shaped for name in lora.modules)
    for lora in shaped:
        if len(shaped) > 1 and all(holders[name] == 1 for name in lora.modules):
            some = next(iter(lora.modules))
            skipped.append(
                (
                    lora.path,
                    f"shares no module with the other files (it adapts {len(lora.modules)} "
                    f"modules such as {some}, which no other file adapts); its similarity "
                    "to every file would be 0",
                )
            )
        else:
            out.append(lora)
    return out, skipped


def _descriptor_norm2(descriptor: str, lora: LoRA) -> float:
    """Squared norm of one LoRA's descriptor (its kernel value with itself), in float64."""
    with np.errstate(over="ignore", invalid="ignore"):
        if descriptor == "concat":
            return float(
                sum(np.sum(np.square(f, dtype=np.float64)) for m in lora.modules.values() for f in m.factors.values())
            )
        return float(descriptor_kernel(descriptor, [lora])[0, 0])


def _too_large(descriptor: str, norm2: float) -> str:
    return (
        f"weights too large to embed: the squared norm of its {descriptor} descriptor is {norm2:.3g}, "
        f"above {MAX_DESCRIPTOR_NORM2:.0e}, where the embedding's arithmetic would overflow"
    )


def _embeddable(
    loras: list[LoRA], descriptor: str, norms: dict[int, float] | None = None
) -> tuple[list[LoRA], list[tuple[str, str]]]:
    """Skip LoRAs whose descriptor would overflow the fit (finite stored weights can still be huge).

    ``norms`` maps ``id(lora)`` to its squared descriptor norm when already known.
    """
    out, skipped = [], []
    for lora in loras:
        norm2 = norms[id(lora)] if norms is not None else _descriptor_norm2(descriptor, lora)
        if norm2 <= MAX_DESCRIPTOR_NORM2:  # False for nan too
            out.append(lora)
        else:
            skipped.append((lora.path, _too_large(descriptor, norm2)))
    return out, skipped


def _warn_mixed_scales(loras: list[LoRA]) -> None:
    """concat compares stored factors, which leave alpha out: say so when the files' scales differ."""
    scales = [tuple(sorted({m.scale for m in lora.modules.values()})) for lora in loras]
    counts = Counter(scales)
    if len(counts) > 1:
        parts = [f"{n} with {_listed(s)} (such as {loras[scales.index(s)].path})" for s, n in counts.most_common(3)]
        warnings.warn(
            "concat compares the stored factors and leaves alpha out, but the files' scales "
            f"(alpha / rank) differ: {'; '.join(parts)}; --descriptor delta or gram include the scale",
            stacklevel=3,
        )


# ---------------------------------------------------------------------------
# The per-file cache


class LoraCache:
    """Loaded LoRAs kept on disk, so that a re-run of an index reads only new or changed files.

    One entry per file content: ``directory/<sha256>.lorastyle-cache``, a
    safetensors file holding the file's normalised module factors (float16
    where that is exact, else float32) and alphas (float64), or, for a file
    that is not a usable LoRA, the reason. Entries are written atomically
    (temporary file, fsync, rename), so an interrupted run leaves whole entries
    only.

    The key is the file's sha256: a renamed or moved file is found again, a
    changed file is read again. Entries written by another version of
    lorastyle, or damaged ones, count as misses. The descriptor, the module
    selection and the number of components are applied after the cache, so
    one cache serves every setting. Reasons that depend on the moment (a file
    that could not be read) are not cached.

    Parameters
    ----------
    directory : str or path-like
        Created on the first write.

    Attributes
    ----------
    hits, misses : int
        Look-ups answered from the cache, and not.
    seen : set of str
        Digests looked up (what :meth:`prune` keeps).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0
        self.seen: set[str] = set()
        self._write_error: str | None = None

    def entry_path(self, digest: str) -> Path:
        """Where the entry of a file with this sha256 lives."""
        return self.directory / f"{digest}{CACHE_SUFFIX}"

    def get(self, path: str, digest: str) -> LoRA | LoraFormatError | None:
        """The cached LoRA (or the cached reason the file is not one) for a file; None on a miss.

        Parameters
        ----------
        path : str
            The file now (the entry may have been written under another name).
        digest : str
            Its sha256.
        """
        self.seen.add(digest)
        item = self._lookup(path, digest)
        if item is None:
            self.misses += 1
        else:
            self.hits += 1
        return item

    def _lookup(self, path: str, digest: str) -> LoRA | LoraFormatError | None:
        """The entry of a file, without counting a hit or a miss (a later pass of the same run reads so)."""
        try:
            tensors, meta = read_safetensors(self.entry_path(digest))
            return self._decode(path, digest, tensors, meta)
        except LoraFormatError:
            return None  # no entry, or not one we can read
        except (KeyError, ValueError, TypeError, IndexError, AttributeError, ZeroDivisionError):
            return None  # a damaged entry: read the file again, the entry is rewritten

    @staticmethod
    def _decode(path: str, digest: str, tensors: dict, meta: dict) -> LoRA | LoraFormatError | None:
        if (meta.get("format"), meta.get("version"), meta.get("sha256")) != (CACHE_FORMAT, __version__, digest):
            return None
        if "error" in meta:
            return LoraFormatError(path, meta["error"])
        roles: dict[str, dict[str, np.ndarray]] = {}
        for key, arr in tensors.items():
            name, role = key.rsplit("/", 1)
            roles.setdefault(name, {})[role] = arr if role == "alpha" else arr.astype(np.float32)
        if not roles:
            return None
        modules = {name: build_module(path, name, name.split(".", 1)[0], r) for name, r in sorted(roles.items())}
        return LoRA(path=path, format=meta["layout"], base=meta["base"], modules=modules, dtype=meta["dtype"])

    def put(self, digest: str, item: LoRA | LoraFormatError) -> None:
        """Record a loaded LoRA or the reason a file is not one.

        A cache that cannot be written (read-only folder, full disk) is not an
        error: one warning, and the run goes on without it.
        """
        if self._write_error is not None:
            return
        meta = {"format": CACHE_FORMAT, "version": __version__, "sha256": digest}
        tensors: dict[str, np.ndarray] = {}
        if isinstance(item, LoraFormatError):
            meta["error"] = item.reason
        else:
            meta.update(layout=item.format, base=item.base, dtype=item.dtype)
            for name, m in item.modules.items():
                for role, arr in m.factors.items():
                    tensors[f"{name}/{role}"] = _compact(arr)
                if m.alpha is not None:
                    tensors[f"{name}/alpha"] = np.asarray(m.alpha, dtype=np.float64)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_safetensors(self.entry_path(digest), tensors, meta)
        except OSError as exc:
            self._write_error = f"{exc.strerror or exc}"
            warnings.warn(
                f"{self.directory}: cannot write the cache ({self._write_error}); going on without it", stacklevel=2
            )

    def prune(self, keep: Iterable[str] | None = None) -> int:
        """Remove entries of files not in ``keep`` (default: :attr:`seen`); return how many were removed."""
        keep = set(self.seen if keep is None else keep)
        removed = 0
        try:
            names = os.listdir(self.directory)
        except OSError:
            return 0
        for name in names:
            if name.endswith(CACHE_SUFFIX) and name[: -len(CACHE_SUFFIX)] not in keep:
                try:
                    os.unlink(self.directory / name)
                    removed += 1
                except OSError:
                    pass
        return removed


def _compact(arr: np.ndarray) -> np.ndarray:
    """float16 when it holds the values exactly (LoRAs are mostly stored so), else float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        half = arr.astype(np.float16)
        return half if np.array_equal(half.astype(arr.dtype), arr) else arr


# ---------------------------------------------------------------------------
# Reading one file


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _read_one(path: str | os.PathLike, cache: LoraCache | None) -> tuple[LoRA, str, tuple[int, int, int, int]]:
    """Load one file (from the cache when it has it); return the LoRA, the file's sha256 and its identity.

    The identity (device, inode, size, mtime) lets a later pass over the same
    file check that it has not changed since its digest was taken.

    Raises
    ------
    LoraFormatError
        For a file that is not a usable LoRA, cannot be read, or changed while it was read.
    """
    try:
        before = os.stat(path)
        if not stat.S_ISREG(before.st_mode):  # a FIFO would block the reader forever
            raise LoraFormatError(path, f"not a regular file ({_file_kind(before.st_mode)})")
        digest = file_sha256(path)
    except OSError as exc:
        raise LoraFormatError(path, f"cannot read file: {exc.strerror or exc}") from None
    # A pickle suffix is refused by name, whatever the bytes: ask load_lora (which refuses without
    # reading), never the cache, so that a copy of a good file renamed .bin is refused too.
    if cache is not None and os.path.splitext(os.fspath(path))[1].lower() not in PICKLE_SUFFIXES:
        hit = cache.get(os.fspath(path), digest)
        if isinstance(hit, LoraFormatError):
            raise hit
        if hit is not None:
            return hit, digest, _identity(before)
    lora, error = None, None
    try:
        lora = load_lora(path)
    except LoraFormatError as exc:
        error = exc
    try:
        changed = _identity(os.stat(path)) != _identity(before)
    except OSError:
        changed = True
    if changed:  # the digest may not describe what was loaded: cache nothing, embed nothing
        raise LoraFormatError(path, "the file changed or vanished while it was being read")
    transient = error is not None and error.reason.startswith("cannot read file")
    by_name = os.path.splitext(os.fspath(path))[1].lower() in PICKLE_SUFFIXES
    if cache is not None and not transient and not by_name:
        cache.put(digest, lora if error is None else error)
    if error is not None:
        raise error
    return lora, digest, _identity(before)


# ---------------------------------------------------------------------------
# Building


def build_index(
    paths: Iterable[str],
    *,
    descriptor: str = "concat",
    n_components: int = 8,
    select: ModuleSelection | None = None,
    random_state: int = 0,
    progress: Callable[[Iterable], Iterable] | None = None,
    cache: LoraCache | None = None,
    calibrate: bool = True,
    memory_budget: int = MEMORY_BUDGET,
) -> tuple[LoraIndex, list[tuple[str, str]]]:
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
        Wraps the iteration over files (for example ``tqdm``); a streamed
        ``concat`` fit wraps its two later passes too.
    cache : LoraCache, optional
        Files it holds are not read again; files read are added to it.
    calibrate : bool, default=True
        Estimate the out-of-sample calibration (:class:`StyleEmbedding`). Its
        leave-one-out fits cost about ``n_calibration * n**2`` with Lanczos.
    memory_budget : int, default=MEMORY_BUDGET
        Bytes of ``concat`` vectors (float32) held in memory at once. A
        collection within it is fitted exactly (PCA of the whole matrix); a
        larger one is streamed (see Notes), so that memory does not grow with
        the number of files. Kernel descriptors keep every file's factors.

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
        For an unknown descriptor, n_components < 1 or memory_budget < 1.

    Notes
    -----
    A streamed ``concat`` fit reads the files three times and holds only
    O(D) numbers (the mean and ``n_components`` component rows, D the vector
    length) and O(n * SKETCH_DIM) for a sketch of the kernel:

    1. while loading: the sum of the vectors, and a random-sign sketch of each
       (D values folded into :data:`SKETCH_DIM` with independent +-1 signs, so
       that sketch inner products are unbiased estimates of the vectors');
    2. components: the leading eigenvectors of the sketched, centred kernel
       give each file's coefficients, and the components are those
       combinations of the (exact) vectors, orthonormalised;
    3. scores: every file is projected on them exactly, and the components are
       rotated to uncorrelated, descending-variance scores (PCA within that
       subspace).

    Steps 2-3 are one step of subspace iteration started from the sketch, so
    the subspace is close to, not equal to, the exact PCA's; the calibration
    uses the sketched kernel. ``tests/test_index_streaming.py`` measures both
    against the exact fit. A file that changes between the passes is skipped
    with a reason.
    """
    if descriptor not in DESCRIPTORS:
        raise ValueError(f"unknown descriptor {descriptor!r}; choose from {list(DESCRIPTORS)}")
    if n_components < 1:
        raise ValueError(f"n_components must be at least 1, got {n_components}")
    if memory_budget < 1:
        raise ValueError(f"memory_budget must be at least 1 byte, got {memory_budget}")
    paths = list(paths)
    concat = descriptor == "concat"
    items: list[_Item] = []
    skipped: list[tuple[str, str]] = []
    # concat: vectors go into the accumulator as they are read, on the guess that the first usable
    # file is of the majority; a wrong guess (rare) costs one more pass, never a wrong index.
    acc = _ConcatAccumulator(memory_budget, random_state) if concat else None
    reference, fed = None, []
    skeletons: dict = {}  # layout -> shared skeleton modules
    for path in (progress or (lambda x: x))(paths):
        try:
            lora, digest, ident = _read_one(path, cache)
            if select is not None:
                lora.modules = select.modules(lora)
                if not lora.modules:
                    raise LoraFormatError(path, f"no module matches the selection {select}")
        except LoraFormatError as exc:
            skipped.append((path, exc.reason))
            continue
        norm2 = _descriptor_norm2(descriptor, lora)
        item = _Item(lora=lora, digest=digest, identity=ident, norm2=norm2)
        if concat:
            signature = (lora.base, _factor_signature(lora))
            if reference is None and norm2 <= MAX_DESCRIPTOR_NORM2:
                reference = signature
            if signature == reference and norm2 <= MAX_DESCRIPTOR_NORM2:
                acc.add(_concat_row(lora))
                fed.append(item)
            item.lora = _skeleton(lora, skeletons)  # the factors are in the accumulator (or not needed): let them go
        items.append(item)
    by_lora = {id(item.lora): item for item in items}
    loras = [item.lora for item in items]
    if loras:
        loras, more = _comparable_subset(loras, descriptor)
        skipped.extend(more)
        loras, more = _embeddable(loras, descriptor, norms={id(x): by_lora[id(x)].norm2 for x in loras})
        skipped.extend(more)
    if len(loras) < 2:
        raise NotEnoughLorasError(
            f"need at least 2 comparable LoRA files to fit an embedding, found {len(loras)}", skipped
        )
    kept = [by_lora[id(lora)] for lora in loras]
    # n - 2 components leave the leave-one-out calibration something to estimate
    k = max(1, min(n_components, len(kept) - 2))
    if concat:
        _warn_mixed_scales(loras)
        again = _Rereader(cache, select, progress)
        if [id(x) for x in fed] != [id(x) for x in kept]:  # the first file was not of the majority
            acc = _ConcatAccumulator(memory_budget, random_state)
            present = []
            for item, lora in again.each(kept, skipped):
                acc.add(_concat_row(lora))
                present.append(item)
            kept = present
            if len(kept) < 2:
                raise NotEnoughLorasError(
                    f"need at least 2 comparable LoRA files to fit an embedding, found {len(kept)}", skipped
                )
            k = max(1, min(n_components, len(kept) - 2))
        if acc.streaming:
            emb, kept = _fit_streamed(
                acc, kept, k, calibrate=calibrate, random_state=random_state, again=again, skipped=skipped
            )
        else:
            emb = StyleEmbedding(n_components=k, solver="full", calibrate=calibrate, random_state=random_state).fit(
                np.stack(acc.rows)
            )
        emb.module_names_ = list(kept[0].lora.modules)
        stored = []
    else:
        K = descriptor_kernel(descriptor, loras)
        emb = StyleEmbedding(n_components=k, solver="precomputed", calibrate=calibrate, random_state=random_state).fit(
            K
        )
        stored = loras
    index = LoraIndex(
        paths=[item.lora.path for item in kept],
        sha256=[item.digest for item in kept],
        descriptor=descriptor,
        base=kept[0].lora.base,
        embedding=emb,
        loras=stored,
    )
    return index, skipped


# ---------------------------------------------------------------------------
# Streaming concat fit


@dataclass(eq=False)
class _Item:
    """One loaded file of a build: its LoRA (a shape-only skeleton for concat), digest, identity, norm."""

    lora: LoRA
    digest: str
    identity: tuple[int, int, int, int]
    norm2: float


def _concat_row(lora: LoRA) -> np.ndarray:
    """One LoRA's concat vector (float32), in the order of :func:`concat_vectors`, with one copy."""
    factors = [f for m in lora.modules.values() for _, f in sorted(m.factors.items())]
    out = np.empty(sum(f.size for f in factors), dtype=np.float32)
    start = 0
    for f in factors:
        out[start : start + f.size] = f.ravel()
        start += f.size
    return out


def _skeleton(lora: LoRA, shared: dict) -> LoRA:
    """The LoRA with every array replaced by a zero-stride view of its shape: what the checks need, no memory.

    ``shared`` maps a layout (module names, shapes, ranks, scales) to its skeleton modules, so that
    the files of one layout share one dict of modules: a file then costs a few hundred bytes, not
    one object per module (about 0.5 MB for an SD 1.5 LoRA, which made memory grow with N).
    """

    def ghost(a: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.zeros((), dtype=a.dtype), a.shape)

    key = tuple(
        (
            name,
            m.kind,
            m.rank,
            m.alpha,
            m.scale,
            m.up.dtype.str,
            tuple((r, f.shape) for r, f in sorted(m.factors.items())),
        )
        for name, m in lora.modules.items()
    )
    modules = shared.get(key)
    if modules is None:
        modules = shared[key] = {
            name: replace(m, up=ghost(m.up), down=ghost(m.down), factors={r: ghost(f) for r, f in m.factors.items()})
            for name, m in lora.modules.items()
        }
    return LoRA(path=lora.path, format=lora.format, base=lora.base, modules=modules, dtype=lora.dtype)


class _ConcatAccumulator:
    """concat vectors of a build: kept while they fit the budget, then only their sum and sketches.

    Parameters
    ----------
    budget : int
        Bytes of vectors to hold before switching to streaming.
    random_state : int
        Seeds the sketch's signs.
    """

    def __init__(self, budget: int, random_state: int):
        self.budget = budget
        self.random_state = random_state
        self.rows: list[np.ndarray] | None = []  # None once streaming
        self.sketches: list[np.ndarray] = []
        self.total: np.ndarray | None = None
        self.n = 0
        self._held = 0
        self._signs: np.ndarray | None = None

    @property
    def streaming(self) -> bool:
        return self.rows is None

    def add(self, x: np.ndarray) -> None:
        if self.total is None:
            self.total = np.zeros(x.size)
        self.total += x  # float64: the mean of thousands of float32 vectors
        self.n += 1
        if self.rows is None:
            self.sketches.append(self._sketch(x))
            return
        self.rows.append(x)
        self._held += x.nbytes
        if self._held > self.budget:
            self.sketches = [self._sketch(r) for r in self.rows]
            self.rows = None

    def _sketch(self, x: np.ndarray) -> np.ndarray:
        """Fold x * signs into SKETCH_DIM values: <sketch(x), sketch(y)> is an unbiased estimate of <x, y>."""
        p = SKETCH_DIM
        if self._signs is None:
            rng = np.random.default_rng(self.random_state)
            self._signs = (rng.integers(0, 2, size=x.size, dtype=np.int8) * 2 - 1).astype(np.float32)
        padded = np.zeros(-(-x.size // p) * p, dtype=np.float32)
        np.multiply(x, self._signs, out=padded[: x.size])
        return padded.reshape(-1, p).sum(axis=0, dtype=np.float64).astype(np.float32)


class _Rereader:
    """Reads the kept files again in a later pass: from the cache when it has them, checked unchanged."""

    def __init__(
        self, cache: LoraCache | None, select: ModuleSelection | None, progress: Callable[[Iterable], Iterable] | None
    ):
        self.cache, self.select, self.progress = cache, select, progress or (lambda x: x)
        self.gone: set[int] = set()  # items reported changed: left out of later passes, reported once

    def each(self, items: list[_Item], skipped: list[tuple[str, str]]) -> Iterator[tuple[_Item, LoRA]]:
        """Yield (item, full LoRA) for every item still as it was; report the others in ``skipped``."""
        for item in self.progress([item for item in items if id(item) not in self.gone]):
            path = item.lora.path
            try:
                lora = None
                if self.cache is not None:
                    hit = self.cache._lookup(path, item.digest)
                    lora = hit if isinstance(hit, LoRA) else None
                if lora is None:
                    lora = load_lora(path)
                if _identity(os.stat(path)) != item.identity:
                    raise LoraFormatError(path, "the file changed or vanished while it was being read")
                if self.select is not None:
                    lora.modules = self.select.modules(lora)
                if _factor_signature(lora) != _factor_signature(item.lora):
                    raise LoraFormatError(path, "the file changed or vanished while it was being read")
            except (LoraFormatError, OSError):
                self.gone.add(id(item))
                skipped.append((path, "the file changed or vanished while it was being read"))
                continue
            yield item, lora


def _fit_streamed(
    acc: _ConcatAccumulator,
    items: list[_Item],
    k: int,
    *,
    calibrate: bool,
    random_state: int,
    again: _Rereader,
    skipped: list[tuple[str, str]],
) -> tuple[StyleEmbedding, list[_Item]]:
    """PCA of the accumulated vectors in two more passes (see :func:`build_index`'s Notes)."""
    from sklearn.decomposition import PCA

    from ..embedding import calibration_factors, center_kernel

    position = {id(item): i for i, item in enumerate(items)}
    mean = acc.total / acc.n
    K = _gram64(acc.sketches)
    w, V = _top_eigen(center_kernel(K, K), k)
    coef = np.divide(V, np.sqrt(np.clip(w, 0, None)), out=np.zeros_like(V), where=w > 0)
    # pass 2: components as combinations of the exact vectors, sum_i coef_i (x_i - mean), in blocks (one GEMM each)
    C = np.zeros((k, mean.size), dtype=np.float32)
    # rows are written straight into one reused block (no stacked copy of it)
    block = np.empty((max(1, acc.budget // (4 * mean.size)), mean.size), dtype=np.float32)
    weights = np.zeros((block.shape[0], k), dtype=np.float32)
    filled = 0
    for item, lora in again.each(items, skipped):
        block[filled] = _concat_row(lora)
        weights[filled] = coef[position[id(item)]]
        filled += 1
        if filled == block.shape[0]:
            C += weights.T @ block
            filled = 0
    if filled:
        C += weights[:filled].T @ block[:filled]
    del block
    mean32 = mean.astype(np.float32)
    for j, c in enumerate(coef.sum(axis=0)):  # row by row: no k x D float64 temporary
        C[j] -= np.float32(c) * mean32
    g, E = np.linalg.eigh(_gram64(C))
    good = g > 1e-12 * max(g.max(), 1e-300)
    Q = (E[:, good] / np.sqrt(g[good])).T.astype(np.float32) @ C  # orthonormal rows spanning C's
    del C
    # pass 3: exact scores on that subspace, and the exact total variance
    present, rows, total = [], [], 0.0
    for item, lora in again.each(items, skipped):
        x = _concat_row(lora)
        x -= mean32
        present.append(item)
        rows.append(Q @ x)
        total += float(np.dot(x, x))
    if len(present) < 2:
        raise NotEnoughLorasError(
            f"need at least 2 comparable LoRA files to fit an embedding, found {len(present)}", skipped
        )
    Z = np.asarray(rows, dtype=np.float64)
    # PCA within the subspace: uncorrelated scores of descending variance
    _, _, Wt = np.linalg.svd(Z - Z.mean(axis=0), full_matrices=False)
    k = min(k, Wt.shape[0], max(1, len(present) - 2))
    Wt = Wt[:k]
    components = Wt.astype(np.float32) @ Q  # a rotation of orthonormal rows: float32 loses nothing here
    del Q
    # sklearn's sign convention (svd_flip on the components): each one's largest loading is positive
    signs = np.sign(components[np.arange(k), np.argmax(np.abs(components), axis=1)])
    signs[signs == 0] = 1
    components *= signs[:, None]
    Z = (Z @ Wt.T) * signs
    pca = PCA(n_components=k)
    pca.mean_ = mean32
    pca.components_ = components
    pca.n_components_ = k
    pca.n_features_in_ = mean.size
    pca.explained_variance_ = Z.var(axis=0, ddof=1)
    total /= len(present) - 1
    pca.explained_variance_ratio_ = pca.explained_variance_ / total if total > 0 else np.zeros(k)
    emb = StyleEmbedding(n_components=k, solver="full", calibrate=calibrate, random_state=random_state)
    emb.pca_ = pca
    emb.n_features_in_ = mean.size
    emb.embedding_ = Z
    emb.explained_variance_ = pca.explained_variance_
    emb.explained_variance_ratio_ = pca.explained_variance_ratio_
    idx = [position[id(item)] for item in present]
    K = K[np.ix_(idx, idx)]
    if calibrate:
        emb.calibration_ = calibration_factors(K, k, n_calibration=emb.n_calibration, random_state=random_state)
    else:
        emb.calibration_ = np.ones(k)
    emb.fit_method_ = "streamed"  # not part of the saved index: the saved PCA is used the same way
    return emb, present


def _gram64(rows: np.ndarray | list[np.ndarray], chunk_bytes: int = 16 << 20) -> np.ndarray:
    """Inner products of equal-length rows (an array or a list of 1-D arrays) in float64.

    Over column chunks of about ``chunk_bytes`` in float64: no float64 copy of all the rows.
    """
    n = len(rows)
    chunk = max(1, chunk_bytes // (8 * n))
    G = np.zeros((n, n))
    for start in range(0, len(rows[0]), chunk):
        part = np.stack([r[start : start + chunk] for r in rows]).astype(np.float64)
        G += part @ part.T
    return G


# ---------------------------------------------------------------------------
# Indexing a folder, safely


@contextmanager
def index_lock(output: str | os.PathLike) -> Iterator[None]:
    """Hold ``OUTPUT.lock`` while an index is written; refuse if another process holds it.

    The lock is ``flock`` on the lock file, released by the kernel when the
    holder exits, however it exits (``kill -9`` included), so a crashed run
    never leaves a stale lock. The lock file itself stays: deleting it would
    let two runs lock two different files of the same name.

    Raises
    ------
    IndexBusyError
        If another process holds the lock.
    OSError
        If the lock file cannot be created (a missing or read-only folder).
    """
    if fcntl is None:  # pragma: no cover - not POSIX
        warnings.warn("file locking is unavailable here: concurrent index runs are not prevented", stacklevel=3)
        yield
        return
    fd = os.open(f"{os.fspath(output)}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexBusyError(output) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a person who wonders
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_stale_temporaries(output: str, cache_dir: str) -> int:
    """Delete temporary files a killed run left (call with the lock held: no writer is running)."""
    from ..io.atomic import remove_temporaries

    return remove_temporaries(
        os.path.dirname(os.path.abspath(output)), re.escape(os.path.basename(output))
    ) + remove_temporaries(cache_dir, ".*" + re.escape(CACHE_SUFFIX))


@dataclass
class IndexRun:
    """What :func:`index_folder` did.

    Attributes
    ----------
    index : LoraIndex
    skipped : list of (path, reason)
        Everything not embedded: entries the walk could not use, then files.
    n_files : int
        LoRA-like files found.
    from_cache : int
        Files answered by the cache (not read again).
    cache_dir : str or None
    """

    index: LoraIndex
    skipped: list[tuple[str, str]]
    n_files: int
    from_cache: int
    cache_dir: str | None


def index_folder(
    root: str | os.PathLike,
    output: str | os.PathLike,
    *,
    descriptor: str = "concat",
    n_components: int = 8,
    select: ModuleSelection | None = None,
    use_cache: bool = True,
    calibrate: bool = True,
    random_state: int = 0,
    progress: Callable[[Iterable], Iterable] | None = None,
    memory_budget: int = MEMORY_BUDGET,
) -> IndexRun:
    """Index every LoRA file under a folder into ``output``, safely (what ``lorastyle index`` runs).

    Holds the lock ``OUTPUT.lock`` throughout (:func:`index_lock`), removes
    temporary files a killed run left, reads files through the cache
    ``OUTPUT.cache/`` (:class:`LoraCache`), writes the index atomically, then
    drops cache entries of files that are gone. The index's own file, lock and
    cache are left out of the walk.

    Parameters
    ----------
    root, output : str or path-like
    descriptor, n_components, select, calibrate, random_state, progress, memory_budget
        As in :func:`build_index`.
    use_cache : bool, default=True

    Returns
    -------
    IndexRun

    Raises
    ------
    IndexBusyError
        If another run holds the lock.
    NotEnoughLorasError
        If no file or fewer than two comparable files were found; ``skipped`` has every reason.
    OSError
        If the index, its lock or its folder cannot be written.
    """
    output = os.fspath(output)
    cache_dir = f"{output}.cache"
    with index_lock(output):
        _remove_stale_temporaries(output, cache_dir)
        files, problems = find_lora_files(root, exclude=[output, cache_dir, f"{output}.lock"])
        if not files:
            raise NotEnoughLorasError("no LoRA files (.safetensors) found", problems)
        cache = LoraCache(cache_dir) if use_cache else None
        try:
            index, skipped = build_index(
                files,
                descriptor=descriptor,
                n_components=n_components,
                select=select,
                random_state=random_state,
                progress=progress,
                cache=cache,
                calibrate=calibrate,
                memory_budget=memory_budget,
            )
        except NotEnoughLorasError as exc:
            raise NotEnoughLorasError(str(exc), problems + exc.skipped) from None
        index.save(output)
        if cache is not None:
            cache.prune()
    return IndexRun(
        index=index,
        skipped=problems + skipped,
        n_files=len(files),
        from_cache=cache.hits if cache is not None else 0,
        cache_dir=cache_dir if cache is not None else None,
    )
