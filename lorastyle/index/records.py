"""One small, fixed-size record per file: what an index keeps, made from one read of the file.

A :class:`Record` holds what the file is (layout, base family, parts, ranks, dtype, sha256,
identity) and, per model part, a unit-length sketch of its descriptor
(:class:`lorastyle.index.sketches.Sketcher`) with the sketch's norm. It never holds the factors:
at the default settings it is 32 kB per part in float16 whatever the file's size, so an
index of any collection is a few hundred bytes of JSON and at most ``4 * 32`` kB per file.

:func:`read_record` reads each file once: the bytes are hashed (sha256, in a thread, since
hashing releases the GIL) while the same bytes are parsed and sketched.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np

from ..comparability import Layout
from ..descriptors import ModuleSelection
from ..errors import LoraFormatError, UnreadableFileError
from ..io.formats import LoRA, ParsedHeader, load_lora, parse_header
from ..io.safetensors import PICKLE_SUFFIXES
from .sketches import Sketcher
from .walk import file_kind, identity

__all__ = [
    "Record",
    "ReadOutcome",
    "read_record",
    "read_query",
    "read_outcome",
    "read_files",
    "describe_lora",
    "file_info",
    "MAX_NORM2",
    "INIT_SKETCH_DIM",
    "INFO_KEYS",
    "record_row",
    "record_from_row",
]

# Squared descriptor norms beyond this come from weights no trainer writes (fp16 LoRAs stay below 1e20)
# and overflow float32 arithmetic downstream (the fuzzer's 1e18-valued factors reach 1e72).
MAX_NORM2 = 1e60
# Length of the sketch of A factors that tells whether concat files share an initialisation.
INIT_SKETCH_DIM = 1024


@dataclass
class Record:
    """What an index keeps of one file.

    Attributes
    ----------
    path : str
        Absolute path when indexed.
    sha256 : str
    identity : tuple of int
        (device, inode, size, mtime_ns) when read: an unchanged file is not read again.
    format, base, dtype : str
        As :func:`lorastyle.io.formats.load_lora` reports them.
    parts : tuple of str
        Model parts with a sketch, sorted.
    ranks : list of int
        The distinct module ranks.
    alphas : list of float
        The distinct stored alphas (empty when the file stores none).
    scales : list of float or None
        The distinct module scales ``alpha / rank`` (1 for a module without an alpha), each
        module's own; None for a record of an index made before they were kept.
    n_modules : int
    layout : Layout
    sketches : dict of str to ndarray of shape (dim,), float16
        Per part, the unit-length sketch of the descriptor (zero for a zero update).
    norms : dict of str to float
        Per part, the sketch's norm before it was made unit.
    init : ndarray of shape (INIT_SKETCH_DIM,), float16, or None
        Unit sketch of the A factors (``concat`` only), to tell shared initialisations.
    module_norms : ndarray of shape (n_modules,), float32
        Exact ``||delta-W||_F`` of every module, in the layout's (sorted) module order: equal for
        files of the same weights whatever their names, layout, dtype or factor gauge.
    info : dict
        Small facts for people (title, trigger words), from the file's metadata.
    """

    path: str
    sha256: str
    identity: tuple
    format: str
    base: str
    dtype: str
    parts: tuple
    ranks: list
    alphas: list
    n_modules: int
    layout: Layout
    sketches: dict = field(repr=False)
    norms: dict = field(repr=False)
    init: np.ndarray | None = field(default=None, repr=False)
    module_norms: np.ndarray | None = field(default=None, repr=False)
    info: dict = field(default_factory=dict, repr=False)
    scales: list | None = None

    @property
    def size(self) -> int:
        """File size in bytes."""
        return int(self.identity[2])


def _unit(v: np.ndarray) -> tuple[np.ndarray, float]:
    norm = float(np.linalg.norm(v))
    return ((v / norm) if norm > 0 else v).astype(np.float16), norm


def describe_lora(
    lora: LoRA,
    *,
    sha256: str,
    identity: tuple,
    sketcher: Sketcher,
    descriptor: str,
    info: dict | None = None,
) -> Record:
    """The record of a loaded LoRA.

    Parameters
    ----------
    lora : LoRA
        With the modules to describe (a selection already applied).
    sha256 : str
    identity : tuple of int
    sketcher : Sketcher
    descriptor : {"gram", "delta", "concat"}
    info : dict, optional
        Facts for people (:func:`file_info`).

    Returns
    -------
    Record

    Raises
    ------
    LoraFormatError
        When the weights are too large to sketch without overflow, or no module is left.
    """
    if not lora.modules:
        raise LoraFormatError(lora.path, "no module to describe")
    sketches, norms, module_norms = {}, {}, {}
    for part, (v, norm2) in sketcher.part_sketches(lora, descriptor, module_norms=module_norms).items():
        if not (norm2 <= MAX_NORM2 and np.all(np.isfinite(v))):  # False for nan too
            raise LoraFormatError(
                lora.path,
                f"weights too large to describe: the squared norm of its {descriptor} descriptor is {norm2:.3g}, "
                f"above {MAX_NORM2:.0e}, where float32 arithmetic overflows",
            )
        sketches[part], norms[part] = _unit(v)
    init = None
    if descriptor == "concat":
        downs = {
            n: replace(
                m,
                factors={
                    r: f
                    for r, f in m.factors.items()
                    if r in ("lora_down", "lokr_w1", "lokr_w1_a", "hada_w1_b", "hada_w2_b")
                },
            )
            for n, m in lora.modules.items()
        }
        init, _ = _unit(
            Sketcher(dim=INIT_SKETCH_DIM, seed=sketcher.seed).sketch(replace(lora, modules=downs), "concat")
        )
    return Record(
        path=os.path.abspath(lora.path),
        sha256=sha256,
        identity=tuple(identity),
        format=lora.format,
        base=lora.base,
        dtype=lora.dtype,
        parts=tuple(sorted(sketches)),
        ranks=lora.ranks,
        alphas=lora.alphas,
        scales=sorted({m.alpha / m.rank if m.alpha else 1.0 for m in lora.modules.values()}),
        n_modules=len(lora.modules),
        layout=Layout.of(lora),
        sketches=sketches,
        norms=norms,
        init=init,
        module_norms=np.sqrt([module_norms[n] for n in lora.modules]).astype(np.float32),
        info=info or {},
    )


INFO_KEYS = ("kind", "title", "trigger_words", "base_model", "base_mismatch")


def file_info(path: str, data: bytes | memoryview | None = None, *, _header: ParsedHeader | None = None) -> dict:
    """What people want to see of a file in a list or a map: kind, title, trigger words, base model.

    From :func:`lorastyle.io.metadata.describe_file` (the header and the alphas only), kept short:
    at most 5 trigger words.

    Parameters
    ----------
    path : str
    data : bytes, optional
        The file's bytes, already read.

    Returns
    -------
    dict
    """
    from ..io.metadata import describe_file

    described = describe_file(path, hashes=False, data=data, _header=_header)
    info = {k: described[k] for k in INFO_KEYS if described.get(k) not in (None, "", [])}
    if "trigger_words" in info:
        info["trigger_words"] = [t["text"][:100] for t in info["trigger_words"][:5]]
    if "title" in info:
        info["title"] = info["title"][:200]
    return info


def _hash(data: memoryview, out: list) -> None:
    out.append(hashlib.sha256(data).hexdigest())  # releases the GIL: runs beside the parser


@dataclass
class _Parsed:
    """A file read once and parsed: what :func:`describe_lora` needs besides the sketcher."""

    lora: LoRA
    sha256: str
    identity: tuple
    info: dict


def _read_and_parse(path: str, select: ModuleSelection | None) -> _Parsed:
    """The reading half of :func:`read_record` (raises as it does)."""
    if os.path.splitext(path)[1].lower() in PICKLE_SUFFIXES:
        load_lora(path)  # refuses by name, with the reason, without reading
    try:
        before = os.stat(path)
        if not stat.S_ISREG(before.st_mode):  # a FIFO would block the reader forever
            raise LoraFormatError(path, f"not a regular file ({file_kind(before.st_mode)})")
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise UnreadableFileError(path, f"cannot read file: {exc.strerror or exc}") from None
    digest: list[str] = []
    hasher = threading.Thread(target=_hash, args=(memoryview(data), digest), daemon=True)
    hasher.start()
    try:
        header = parse_header(path, data=data)  # interpreted once for both readers
        lora = load_lora(path, data=data, _header=header)
        info = file_info(path, data, _header=header)
    finally:
        hasher.join()
    try:
        changed = identity(os.stat(path)) != identity(before) or len(data) != before.st_size
    except OSError:
        changed = True
    if changed:
        raise UnreadableFileError(path, "the file changed or vanished while it was being read")
    if select is not None:
        lora.modules = select.modules(lora)
        if not lora.modules:
            raise LoraFormatError(path, f"no module matches the selection {select}")
    return _Parsed(lora, digest[0], identity(before), info)


def read_record(
    path: str | os.PathLike,
    *,
    sketcher: Sketcher,
    descriptor: str = "gram",
    select: ModuleSelection | None = None,
) -> Record:
    """Read one file once and describe it.

    Parameters
    ----------
    path : str or path-like
    sketcher : Sketcher
    descriptor : {"gram", "delta", "concat"}, default="gram"
    select : ModuleSelection, optional
        Sub-network to describe.

    Returns
    -------
    Record

    Raises
    ------
    LoraFormatError
        For a file that is not a usable LoRA, cannot be read, changed while it was read, or
        has no module in the selection. :class:`~lorastyle.errors.UnreadableFileError` (a
        subclass) for read errors: the file may be readable later, so such a reason is never
        remembered.
    """
    return _describe(_read_and_parse(os.fspath(path), select), sketcher, descriptor)


def read_query(
    path: str | os.PathLike,
    *,
    sketcher: Sketcher,
    descriptor: str = "gram",
    select: ModuleSelection | None = None,
) -> tuple[Record, LoRA]:
    """:func:`read_record`, and the loaded file it was made from (for exact re-ranking), from one read.

    Parameters
    ----------
    path : str or path-like
    sketcher : Sketcher
    descriptor : {"gram", "delta", "concat"}, default="gram"
    select : ModuleSelection, optional
        Sub-network to describe (applied to the returned file too).

    Returns
    -------
    record : Record
    lora : LoRA

    Raises
    ------
    LoraFormatError
        As :func:`read_record`.
    """
    parsed = _read_and_parse(os.fspath(path), select)
    return _describe(parsed, sketcher, descriptor), parsed.lora


def _describe(parsed: _Parsed, sketcher: Sketcher, descriptor: str) -> Record:
    return describe_lora(
        parsed.lora,
        sha256=parsed.sha256,
        identity=parsed.identity,
        sketcher=sketcher,
        descriptor=descriptor,
        info=parsed.info,
    )


@dataclass
class ReadOutcome:
    """What one attempt to read a file gave: a record, or the reason there is none.

    Attributes
    ----------
    record : Record or None
    reason : str or None
        Why there is no record.
    lasting : bool
        The reason holds while the file is unchanged (not a read error), so a later run may
        report it without reading the file again.
    counted : bool
        The file was opened and read (pickles are refused by name, unread).
    """

    record: Record | None
    reason: str | None = None
    lasting: bool = False
    counted: bool = True


def read_outcome(
    path: str,
    *,
    sketcher: Sketcher,
    descriptor: str = "gram",
    select: ModuleSelection | None = None,
) -> ReadOutcome:
    """:func:`read_record`, with a bad file's reason returned rather than raised (for batch work).

    Parameters
    ----------
    path : str
    sketcher : Sketcher
    descriptor : {"gram", "delta", "concat"}, default="gram"
    select : ModuleSelection, optional

    Returns
    -------
    ReadOutcome
    """
    return _outcome(path, lambda: read_record(path, sketcher=sketcher, descriptor=descriptor, select=select))


def _outcome(path: str, make) -> ReadOutcome:
    """``make()``'s record, or the reason it raised (see :class:`ReadOutcome`)."""
    try:
        return ReadOutcome(make())
    except UnreadableFileError as exc:  # may be readable later: not remembered
        return ReadOutcome(None, exc.reason, lasting=False, counted=False)
    except LoraFormatError as exc:
        counted = os.path.splitext(path)[1].lower() not in PICKLE_SUFFIXES
        return ReadOutcome(None, exc.reason, lasting=True, counted=counted)


def read_files(
    paths: list, *, sketcher: Sketcher, descriptor: str, select=None, progress=None
) -> Iterator[tuple[int, ReadOutcome]]:
    """Read files one after the other in this process, yielding each outcome as soon as it is made.

    The next file is read and parsed in a thread while this one is sketched: parsing is mostly
    Python (it holds the GIL), sketching mostly numpy (it releases it), so the two overlap. At most
    two files are in memory at a time.

    Parameters
    ----------
    paths : list of str
    sketcher : Sketcher
    descriptor : str
    select : ModuleSelection, optional
    progress : callable, optional
        ``progress(iterable, desc=..., total=...)``.

    Yields
    ------
    position : int
        The file's position in ``paths``.
    outcome : ReadOutcome
    """
    items = enumerate(paths)
    if progress is not None:
        items = progress(items, desc="reading files", total=len(paths))
    with ThreadPoolExecutor(1) as reader:
        parse = lambda p: reader.submit(_outcome, p, lambda: _read_and_parse(p, select))  # noqa: E731
        pending = parse(paths[0]) if paths else None
        for position, path in items:
            outcome = pending.result()  # its record, if any, is the parsed file
            pending = parse(paths[position + 1]) if position + 1 < len(paths) else None
            if outcome.record is not None:
                outcome = _outcome(path, lambda p=outcome.record: _describe(p, sketcher, descriptor))
            yield position, outcome


# ---------------------------------------------------------------------------------------------
# One codec of a record, for the index file and the cache alike


def record_row(record: Record) -> dict:
    """The JSON part of a record (its arrays and its layout are stored beside it by the caller).

    Parameters
    ----------
    record : Record

    Returns
    -------
    dict
    """
    return {
        "path": record.path,
        "sha256": record.sha256,
        "identity": list(record.identity),
        "format": record.format,
        "base": record.base,
        "dtype": record.dtype,
        "parts": list(record.parts),
        "ranks": record.ranks,
        "alphas": record.alphas,
        "scales": record.scales,
        "n_modules": record.n_modules,
        "norms": {p: record.norms[p] for p in record.parts},
        "info": record.info,
    }


def record_from_row(
    row: dict,
    *,
    layout: Layout,
    sketches: dict,
    module_norms: np.ndarray,
    init: np.ndarray | None = None,
    norms: dict | None = None,
    checked_sketches: bool = False,
) -> Record:
    """A record from :func:`record_row`'s JSON and its arrays, checked as hostile input.

    Parameters
    ----------
    row : dict
    layout : Layout
    sketches : dict of str to ndarray of shape (dim,)
        The unit sketch of each of the row's parts.
    module_norms : ndarray of shape (n_modules,)
    init : ndarray, optional
    norms : dict of str to float, optional
        The sketches' norms, where the caller keeps them apart from the row (an index stacks them).
    checked_sketches : bool, default=False
        The caller has checked the sketches already (an index checks its stacked matrix at once).

    Returns
    -------
    Record

    Raises
    ------
    ValueError
        For a missing or malformed field, a sketch that is not one finite float16 vector per part,
        module norms of the wrong length, or a norm that is not finite and non-negative.
    """

    def need(condition: bool, what: str) -> None:
        if not condition:
            raise ValueError(f"a record's {what}")

    need(isinstance(row, dict), "row")
    need(isinstance(row.get("path"), str), "path")
    need(isinstance(row.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", row["sha256"]) is not None, "sha256")
    parts = tuple(str(p) for p in row["parts"])
    need(set(parts) == set(sketches), "parts")
    for v in () if checked_sketches else sketches.values():
        need(v.dtype == np.float16 and v.ndim == 1 and bool(np.all(np.isfinite(v))), "sketches")
    norms = {p: float((norms if norms is not None else row["norms"])[p]) for p in parts}
    need(all(np.isfinite(x) and x >= 0 for x in norms.values()), "norms")
    n_modules = int(row["n_modules"])
    need(np.shape(module_norms) == (n_modules,) and bool(np.all(np.isfinite(module_norms))), "module norms")
    need(init is None or (np.ndim(init) == 1 and bool(np.all(np.isfinite(init)))), "init sketch")
    scales = row.get("scales")
    need(scales is None or (isinstance(scales, list) and all(np.isfinite(float(x)) for x in scales)), "scales")
    return Record(
        path=row["path"],
        sha256=row["sha256"],
        identity=tuple(int(x) for x in row["identity"]),
        format=str(row["format"]),
        base=str(row["base"]),
        dtype=str(row["dtype"]),
        parts=parts,
        ranks=[int(x) for x in row["ranks"]],
        alphas=[float(x) for x in row["alphas"]],
        scales=None if scales is None else [float(x) for x in scales],
        n_modules=n_modules,
        layout=layout,
        sketches=sketches,
        norms=norms,
        init=init,
        info=dict(row.get("info") or {}),
        module_norms=module_norms,
    )
