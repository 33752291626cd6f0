"""Fixed-size sketches of a LoRA's descriptors: inner products of sketches estimate the exact kernels.

An index cannot keep every file's factors (they are as large as the collection), so it keeps,
for each file, one vector of :attr:`Sketcher.dim` numbers per descriptor whose inner products are
unbiased estimates of the descriptor's kernel (:func:`lorastyle.descriptors.descriptor_kernel`):

``gram``
    ``sum_modules <G_i, G_j>`` with ``G = dW dW^T`` centred, ``G - tr(G)/d I`` (:attr:`Sketcher.centre`;
    no floor that grows with the files' ranks), the default for files from strangers (invariant to the
    factor gauge and to rotations of the input side, so largely to A's random initialisation): the
    sketch of the identity (:attr:`_Hashes.identity`) times ``tr(G)/d`` is subtracted from each module's;
``delta``
    ``sum_modules <dW_i, dW_j>``;
``concat``
    the paper's flattened factors (meaningful only for files of one initialisation).

How (two count-sketch stages, each an unbiased linear map):

1. per module, a degree-2 *tensor sketch* (Pham and Pagh, KDD 2013) of ``vec(dW dW^T)`` (or
   ``vec(dW)``) into :attr:`Sketcher.module_dim` numbers, computed from the low-rank factors with
   FFTs (``dW = U V`` gives ``dW dW^T = U M U^T`` with ``M = V V^T``, a sum of outer products
   ``u_k (x) (U M)_k``, whose tensor sketch is ``irfft(sum_k rfft(C1 u_k) * rfft(C2 (U M)_k))``):
   never an out x out or out x in matrix;
2. every module's sketch is count-sketched into the one vector of :attr:`Sketcher.dim` numbers,
   with hash functions of its own name, so that a module one file lacks counts as zero and files of
   other module sets remain comparable.

Hash functions depend only on the module's name, its shape and :attr:`Sketcher.seed`: sketches
made by any process with the same settings are comparable. With ``normalise="module"`` each
module's Gram matrix (or delta-W) is scaled to unit Frobenius norm before stage 2, so every
module weighs the same (one high-norm module cannot decide a score).

The error of a cosine of sketches against the exact cosine is measured in
``tests/test_sketches.py`` and in the wild benchmark.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import scipy.fft
import scipy.sparse
from threadpoolctl import threadpool_limits

from .._validation import check_int_at_least, check_option
from ..descriptors import DESCRIPTORS
from ..io.formats import LoRA, LoraModule
from ..module_products import ZERO_FRACTION

__all__ = ["Sketcher", "ModuleSketch", "delta_norm2", "sketch_cosines"]

NORMALISATIONS = ("none", "module")
STACK_BYTES = 8 << 20  # widened factors per stack of plain modules: big calls, bounded memory
MAX_WORKERS = 4  # threads that sketch one file's modules by default (more gain little: reads and hashing)


class ModuleSketch(NamedTuple):
    """Stage 1 of one module: its tensor sketch and two exact squared norms."""

    sketch: np.ndarray
    norm2: float  # of the descriptor (the Gram matrix, or delta-W)
    delta2: float  # of delta-W


class _CountSketch:
    """A (buckets x n) count sketch: one random +-1 per column, kept as its two arrays.

    ``matrix`` is the CSC matrix (made on first use, one entry per column) for products with one
    module's factor; :func:`_block_count_sketch` stacks the arrays of many modules into one matrix.
    """

    def __init__(self, rng: np.random.Generator, n: int, buckets: int):
        # int32 indices: scipy would otherwise scan and downcast int64 ones in every matrix made of them
        self.rows = rng.integers(0, buckets, size=n).astype(np.int32)
        self.signs = rng.integers(0, 2, size=n).astype(np.float32) * 2 - 1
        self.buckets = buckets
        self._matrix = None

    @property
    def matrix(self) -> scipy.sparse.csc_matrix:
        if self._matrix is None:
            n = len(self.rows)
            indptr = np.arange(n + 1, dtype=np.int32)
            self._matrix = scipy.sparse.csc_matrix((self.signs, self.rows, indptr), shape=(self.buckets, n))
        return self._matrix


def _block_count_sketch(sketches: list) -> scipy.sparse.csc_matrix:
    """The block-diagonal count sketch of many modules' factors stacked one under the other."""
    buckets, n = sketches[0].buckets, len(sketches)
    rows = np.concatenate([c.rows for c in sketches]).reshape(n, -1)
    rows += (np.arange(n, dtype=np.int32) * buckets)[:, None]  # module i's buckets: rows i*buckets ...
    rows = rows.ravel()
    signs = np.concatenate([c.signs for c in sketches])
    indptr = np.arange(len(rows) + 1, dtype=np.int32)
    return scipy.sparse.csc_matrix((signs, rows, indptr), shape=(buckets * len(sketches), len(rows)))


@dataclass
class _Hashes:
    """The count sketches of one module: stage 1 (rows, columns) and stage 2 (into the record)."""

    rows_a: _CountSketch  # module_dim x out
    rows_b: _CountSketch  # module_dim x out (an independent pair for the Gram's two sides)
    cols: _CountSketch  # module_dim x in
    bucket: np.ndarray  # module_dim -> dim
    sign: np.ndarray  # module_dim signs
    _identity: np.ndarray | None = None

    @property
    def identity(self) -> np.ndarray:
        """The tensor sketch of the out x out identity, ``sum_i (C_a e_i) (*) (C_b e_i)`` (what centring subtracts)."""
        if self._identity is None:
            a, b = self.rows_a, self.rows_b
            where = (a.rows.astype(np.int64) + b.rows) % a.buckets  # a circular convolution of two one-hot vectors
            self._identity = np.bincount(where, weights=a.signs.astype(np.float64) * b.signs, minlength=a.buckets)
        return self._identity


def _rfft(x) -> np.ndarray:
    """Real FFT of the columns of a count sketch, in single precision (the sketch's own error is far larger)."""
    return scipy.fft.rfft(np.asarray(x, dtype=np.float32), axis=0)


def _tensor_sketch(CU: np.ndarray, CW: np.ndarray, n: int) -> np.ndarray:
    """Tensor sketch of ``sum_k U[:, k] (x) W[:, k]`` from the count sketches ``C1 U`` and ``C2 W`` (float64)."""
    F1 = np.fft.rfft(np.asarray(CU, dtype=np.float64), axis=0)
    F2 = np.fft.rfft(np.asarray(CW, dtype=np.float64), axis=0)
    return np.fft.irfft((F1 * F2).sum(axis=1), n=n)


def _kron_product(C, A1: np.ndarray, A2: np.ndarray, *, block_bytes: int = 4 << 20) -> np.ndarray:
    """``C @ kron(A1, A2)`` without forming ``kron(A1, A2)``: in blocks of its rows."""
    (p1, c1), (p2, c2) = A1.shape, A2.shape
    out = np.zeros((C.shape[0], c1 * c2))
    step = max(1, block_bytes // (4 * p2 * c1 * c2))
    for a in range(0, p1, step):
        b = min(p1, a + step)
        out += C[:, a * p2 : b * p2] @ np.kron(A1[a:b], A2)
    return out


def _gram_trace(U: np.ndarray, Q: np.ndarray | None) -> float:
    """``||U Q U^T||_F^2`` (Q None: the identity), from the smaller side's Gram matrix."""
    U = U.astype(np.float64)
    if Q is None:
        G = U @ U.T if U.shape[0] < U.shape[1] else U.T @ U
        return float(np.sum(G * G))
    QP = Q @ (U.T @ U)
    return float(np.sum(QP * QP.T))


def _delta_trace(U: np.ndarray, Q: np.ndarray | None) -> float:
    """``||U V||_F^2 = tr(U^T U Q)`` (Q None: the identity)."""
    U = U.astype(np.float64)
    return float(np.sum(U * U)) if Q is None else float(np.sum((U.T @ U) * Q))


@dataclass
class Sketcher:
    """Makes the fixed-size sketches of LoRAs' descriptors (see the module docstring).

    Parameters
    ----------
    dim : int, default=16384
        Length of each sketch (float32): 64 kB per descriptor at the default.
    module_dim : int, default=1024
        Length of each module's tensor sketch (stage 1). The defaults keep the error of a cosine
        near 0.01 (RMS) on the tiny model's 70 modules, and lower with more modules.
    seed : int, default=0
        Seeds every hash function; sketches of different seeds are not comparable.
    normalise : {"module", "none"}, default="module"
        Scale each module's descriptor to unit Frobenius norm before summing.
    centre : bool, default=True
        ``gram`` only: sketch each module's centred Gram matrix ``G - tr(G)/d I`` (``d`` = out), whose
        cosines have no floor that grows with the files' ranks
        (:func:`lorastyle.module_products.inner`). False: the uncentred Gram matrix (indexes made
        before the centring was the default; their settings hold no ``centre``).
    workers : int, optional
        Threads that sketch modules in parallel (the result does not depend on it). Default: one
        per core, at most :data:`MAX_WORKERS`. While they run, BLAS runs on one thread: its own
        threads on a module's small products cost more than they save (they tripled the time of
        an SDXL file on 2 cores).

    Attributes
    ----------
    cache : dict
        Hash matrices per (module name, shape), made on first use and kept: an explicit
        object, so that two Sketchers never share state.
    """

    dim: int = 16384
    module_dim: int = 1024
    seed: int = 0
    normalise: str = "module"
    centre: bool = True
    workers: int | None = field(default=None, compare=False)
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        check_int_at_least(self.dim, "dim", 16)
        check_int_at_least(self.module_dim, "module_dim", 8)
        check_int_at_least(self.seed, "seed", 0)
        check_option(self.normalise, "normalise", NORMALISATIONS)
        if not isinstance(self.centre, bool):
            raise ValueError(f"centre must be True or False, got {self.centre!r}")
        if self.workers is None:
            self.workers = min(MAX_WORKERS, os.cpu_count() or 1)
        check_int_at_least(self.workers, "workers", 1)

    @property
    def settings(self) -> dict:
        """What makes two sketches comparable (stored with every record)."""
        return {
            "dim": self.dim,
            "module_dim": self.module_dim,
            "seed": self.seed,
            "normalise": self.normalise,
            "centre": self.centre,
        }

    def _hashes(self, name: str, out: int, inp: int) -> _Hashes:
        key = (name, out, inp)
        h = self.cache.get(key)
        if h is None:
            digest = hashlib.blake2b(f"{self.seed}:{name}:{out}x{inp}".encode(), digest_size=8).digest()
            rng = np.random.default_rng(int.from_bytes(digest, "little"))
            h = _Hashes(
                rows_a=_CountSketch(rng, out, self.module_dim),
                rows_b=_CountSketch(rng, out, self.module_dim),
                cols=_CountSketch(rng, inp, self.module_dim),
                bucket=rng.integers(0, self.dim, size=self.module_dim),
                sign=rng.integers(0, 2, size=self.module_dim).astype(np.float64) * 2 - 1,
            )
            self.cache[key] = h
        return h

    def module_sketch(self, m: LoraModule, descriptor: str) -> ModuleSketch:
        """Stage 1 for one module: its tensor sketch (before normalisation) and its exact squared norm.

        A LoKr module keeps its Kronecker structure: ``kron(U1, U2)`` is never formed whole
        (:func:`_kron_product` counts it into the sketch in blocks of rows).

        Parameters
        ----------
        m : LoraModule
        descriptor : {"gram", "delta"}

        Returns
        -------
        ModuleSketch
            ``sketch`` (module_dim floats), ``norm2`` (the exact squared Frobenius norm of the
            module's Gram matrix, or of delta-W for ``delta``) and ``delta2`` (of delta-W).
        """
        h = self._hashes(m.name, *m.shape)
        kron = m.kronecker()
        if kron is not None:
            return self._kron_module_sketch(m, kron, h, descriptor)
        U, V = m.low_rank()  # float32, the scale left out: it multiplies the results below
        s = float(m.scale)
        # the k x k Gram matrices in float32 BLAS (one pass over the factors), then float64
        P = (U.T @ U).astype(np.float64)
        Q = (V @ V.T).astype(np.float64)
        F1 = _rfft(h.rows_a.matrix @ U)
        if descriptor == "gram":
            QP = Q @ P
            norm2 = s**4 * float(np.sum(QP * QP.T))  # ||U Q U^T||_F^2 = tr(QPQP)
            # the tensor sketch of sum_kl Q_kl u_k (x) u_l: U M^T counted in the frequency domain (k x k, not out x k)
            F2 = _rfft(h.rows_b.matrix @ U) @ Q.T.astype(np.complex64)  # complex BLAS (a complex x real product is not)
            delta2 = s**2 * float(np.sum(P * Q))  # ||U V||_F^2 = tr(PQ)
            return ModuleSketch(s**2 * np.fft.irfft((F1 * F2).sum(axis=1), n=self.module_dim), norm2, delta2)
        F2 = _rfft(h.cols.matrix @ V.T)
        delta2 = s**2 * float(np.sum(P * Q))
        return ModuleSketch(s * np.fft.irfft((F1 * F2).sum(axis=1), n=self.module_dim), delta2, delta2)

    def plain_sketches(self, modules: list, descriptor: str) -> list:
        """:meth:`module_sketch` of plain LoRA modules of one shape and rank, one numpy call per step.

        A file holds hundreds of modules of a few shapes (986 of 21 in an SDXL file); done one by
        one, the calls' overheads cost more than the arithmetic. Here the modules' factors are
        widened once into stacked arrays, and every product, count sketch and FFT is one call over
        the stack (the count sketches as one block-diagonal matrix). Equal to :meth:`module_sketch`
        up to float rounding (tested).

        Parameters
        ----------
        modules : list of LoraModule
            Of kind ``"lora"``, of one shape and one stored rank, without row slices (those for which
            ``_plain_key`` gives one key).
        descriptor : {"gram", "delta"}

        Returns
        -------
        list of ModuleSketch
        """
        n = len(modules)
        (out, inp), k = modules[0].shape, modules[0].factors["lora_down"].shape[0]
        U = np.empty((n, out, k), dtype=np.float32)
        V = np.empty((n, k, inp), dtype=np.float32)
        for i, m in enumerate(modules):
            U[i] = m.factors["lora_up"].reshape(out, k)  # widened by the assignment, once
            V[i] = m.factors["lora_down"].reshape(k, inp)
        hashes = [self._hashes(m.name, out, inp) for m in modules]
        s = np.array([float(m.scale) for m in modules])
        D = self.module_dim
        P = np.matmul(U.transpose(0, 2, 1), U).astype(np.float64)  # U^T U, k x k per module
        Q = np.matmul(V, V.transpose(0, 2, 1)).astype(np.float64)  # V V^T
        delta2 = s**2 * np.einsum("nij,nij->n", P, Q)  # ||U V||_F^2 = tr(PQ)

        def spectrum(sketches: list, X: np.ndarray, right: np.ndarray | None = None) -> np.ndarray:
            CX = (_block_count_sketch(sketches) @ X.reshape(-1, k)).reshape(n, D, k).astype(np.float32, copy=False)
            if right is not None:  # (C X) M before the FFT: a real product, half the work of a complex one
                CX = np.matmul(CX, right)
            return scipy.fft.rfft(CX, axis=1)

        F1 = spectrum([h.rows_a for h in hashes], U)
        if descriptor == "gram":
            QP = np.matmul(Q, P)
            norm2 = s**4 * np.einsum("nij,nji->n", QP, QP)  # ||U Q U^T||_F^2 = tr(QPQP)
            F2 = spectrum([h.rows_b for h in hashes], U, Q.transpose(0, 2, 1).astype(np.float32))
            factor = s**2
        else:
            norm2 = delta2
            F2 = spectrum([h.cols for h in hashes], np.ascontiguousarray(V.transpose(0, 2, 1)))
            factor = s
        T = np.fft.irfft(np.einsum("ndk,ndk->nd", F1, F2), n=D, axis=1) * factor[:, None]
        return [ModuleSketch(T[i], float(norm2[i]), float(delta2[i])) for i in range(n)]

    def _kron_module_sketch(self, m: LoraModule, kron: tuple, h: _Hashes, descriptor: str) -> ModuleSketch:
        """:meth:`module_sketch` of ``scale * kron(U1 V1, U2 V2)`` through ``kron(A, B) kron(C, D) = kron(AC, BD)``."""
        U1, V1, U2, V2 = kron
        U1 = (m.scale * U1.astype(np.float64)).astype(np.float32)
        # Q_i = V_i V_i^T (the identity for a factor stored whole); norms through traces of small products
        Q1 = None if V1 is None else V1.astype(np.float64) @ V1.T
        Q2 = None if V2 is None else V2.astype(np.float64) @ V2.T
        delta2 = _delta_trace(U1, Q1) * _delta_trace(U2, Q2)
        if descriptor == "gram":
            norm2 = _gram_trace(U1, Q1) * _gram_trace(U2, Q2)  # tr(QPQP) of a Kronecker product
            left = (h.rows_a.matrix, U1, U2)
            right = (
                h.rows_b.matrix,
                U1 if Q1 is None else U1 @ Q1.astype(np.float32),
                U2 if Q2 is None else U2 @ Q2.astype(np.float32),
            )
        else:
            norm2 = delta2
            eye = lambda n: np.eye(n, dtype=np.float32)  # noqa: E731  (V stored whole: an identity)
            left = (h.rows_a.matrix, U1, U2)
            right = (h.cols.matrix, eye(U1.shape[1]) if V1 is None else V1.T, eye(U2.shape[1]) if V2 is None else V2.T)
        # columns (k1, k2) of the two sides pair up: take them a few k1 at a time (memory ~ module_dim x chunk)
        c1, c2 = U1.shape[1], U2.shape[1]
        step = max(1, 256 // c2)
        spectrum = np.zeros(self.module_dim // 2 + 1, dtype=np.complex128)
        for k in range(0, c1, step):
            cols = slice(k, min(c1, k + step))
            L = _kron_product(left[0], left[1][:, cols], left[2])
            R = _kron_product(right[0], right[1][:, cols], right[2])
            spectrum += np.einsum("dk,dk->d", _rfft(L), _rfft(R))  # float32 FFTs, as the plain path
        return ModuleSketch(np.fft.irfft(spectrum, n=self.module_dim), norm2, delta2)

    def sketch(self, lora: LoRA, descriptor: str = "gram") -> np.ndarray:
        """The sketch of one LoRA's descriptor.

        Parameters
        ----------
        lora : LoRA
        descriptor : {"gram", "delta", "concat"}, default="gram"

        Returns
        -------
        ndarray of shape (dim,), float32
        """
        return self.sketch_and_norm(lora, descriptor)[0].astype(np.float32)

    def sketch_and_norm(
        self, lora: LoRA, descriptor: str = "gram", *, module_norms: dict | None = None
    ) -> tuple[np.ndarray, float]:
        """The sketch (float64) and the exact squared norm of the descriptor before any normalisation.

        Parameters
        ----------
        lora : LoRA
        descriptor : {"gram", "delta", "concat"}, default="gram"
        module_norms : dict, optional
            Filled with every module's exact squared Frobenius norm of delta-W, by name (what tells
            files of the same weights apart from merely similar ones).

        Returns
        -------
        sketch : ndarray of shape (dim,), float64
        norm2 : float
            ``sum_modules ||dW dW^T||_F^2`` (gram), ``sum ||dW||_F^2`` (delta) or the sum of the
            squared stored factors (concat): what tells weights too large to describe.
        """
        return self.part_sketches(lora, descriptor, module_norms=module_norms, by_part=False)[None]

    def part_sketches(
        self, lora: LoRA, descriptor: str = "gram", *, module_norms: dict | None = None, by_part: bool = True
    ) -> dict:
        """:meth:`sketch_and_norm` of each model part, from one pass over all the modules.

        Parameters
        ----------
        lora : LoRA
        descriptor : {"gram", "delta", "concat"}, default="gram"
        module_norms : dict, optional
            As in :meth:`sketch_and_norm`.
        by_part : bool, default=True
            False: one sketch of all the modules, under the key None.

        Returns
        -------
        dict of str to (ndarray, float)
            Per part (sorted), its sketch and the exact squared norm of its descriptor.
        """
        check_option(descriptor, "descriptor", DESCRIPTORS)
        modules = list(lora.modules.values())
        keys = sorted({m.part for m in modules}) if by_part else [None]
        out = {key: np.zeros(self.dim) for key in keys}
        total = dict.fromkeys(keys, 0.0)
        with np.errstate(over="ignore", invalid="ignore"):
            if descriptor == "concat":
                for m in modules:
                    key = m.part if by_part else None
                    for role, f in sorted(m.factors.items()):
                        x = np.asarray(f, dtype=np.float64).ravel()
                        total[key] += float(x @ x)
                        self._add_concat(out[key], m.name, role, x)
                    if module_norms is not None:
                        module_norms[m.name] = delta_norm2(m)
                return {key: (out[key], total[key]) for key in keys}
            stage1 = self._stage1(modules, descriptor)  # all parts at once: more work for the threads
            buckets, values = {key: [] for key in keys}, {key: [] for key in keys}
            for m, (t, norm2, delta2) in zip(modules, stage1):
                key = m.part if by_part else None
                if module_norms is not None:
                    module_norms[m.name] = delta2
                h = self._hashes(m.name, *m.shape)
                if descriptor == "gram" and self.centre:  # G - tr(G)/d I: tr(G) = ||dW||^2
                    t = t - (delta2 / m.shape[0]) * h.identity
                    centred = norm2 - delta2**2 / m.shape[0]
                    # zero when isotropic to rounding; NaN or inf (overflowing weights) kept, for the caller to refuse
                    norm2 = centred if centred > ZERO_FRACTION * norm2 or not np.isfinite(centred) else 0.0
                total[key] += norm2
                if self.normalise == "module":
                    if not norm2 > 0:
                        continue  # a zero update contributes nothing
                    t = t / np.sqrt(norm2)
                buckets[key].append(h.bucket)
                values[key].append(h.sign * t)
            for key in keys:  # stage 2: one count over all of a part's modules, in module order
                if buckets[key]:
                    out[key] = np.bincount(
                        np.concatenate(buckets[key]), weights=np.concatenate(values[key]), minlength=self.dim
                    )
        return {key: (out[key], total[key]) for key in keys}

    def _stage1(self, modules: list, descriptor: str) -> list:
        """:meth:`module_sketch` of every module, in their order: plain LoRA modules in stacks of one
        shape (:meth:`plain_sketches`, at most :data:`STACK_BYTES` of widened factors each), the rest
        one by one; on :attr:`workers` threads, BLAS on one."""
        jobs, stacks = [], {}
        for i, m in enumerate(modules):
            key = _plain_key(m)
            if key is None:
                jobs.append(([i], lambda m=m: [self.module_sketch(m, descriptor)]))
            else:
                stacks.setdefault(key, []).append(i)
        for (out, inp, k), members in stacks.items():
            step = max(1, STACK_BYTES // (4 * k * (out + inp)))
            for a in range(0, len(members), step):
                idx = members[a : a + step]
                jobs.append((idx, lambda idx=idx: self.plain_sketches([modules[i] for i in idx], descriptor)))
        results = [None] * len(modules)

        def run(job):
            with np.errstate(over="ignore", invalid="ignore"):  # per thread: overflow is checked by the caller
                return job[1]()

        with threadpool_limits(limits=1, user_api="blas"):
            if self.workers > 1 and len(jobs) > 1:
                # numpy, BLAS and the FFTs release the GIL; results are placed in module order
                with ThreadPoolExecutor(self.workers) as pool:
                    done = list(pool.map(run, jobs))
            else:
                done = [run(job) for job in jobs]
        for (idx, _), sketches in zip(jobs, done):
            for i, sk in zip(idx, sketches):
                results[i] = sk
        return results

    def _add_concat(self, out: np.ndarray, name: str, role: str, x: np.ndarray) -> None:
        """Count-sketch one stored factor straight into ``out`` (concat compares entries one by one).

        The hash of entry ``i`` is computed, not stored: a multiply-shift hash seeded by the factor's
        name, so that memory stays that of the factor whatever its size.
        """
        digest = hashlib.blake2b(f"{self.seed}:concat:{name}:{role}:{x.size}".encode(), digest_size=16).digest()
        a = np.uint64(int.from_bytes(digest[:8], "little") | 1)  # odd multiplier
        b = np.uint64(int.from_bytes(digest[8:], "little"))
        for start in range(0, x.size, 1 << 22):  # 4M entries at a time: bounded temporaries
            i = np.arange(start, min(x.size, start + (1 << 22)), dtype=np.uint64)
            with np.errstate(over="ignore"):
                h = i * a + b  # wraps modulo 2^64: a universal hash of the index
            bucket = ((h >> np.uint64(32)) % np.uint64(self.dim)).astype(np.int64)
            sign = np.where((h >> np.uint64(31)) & np.uint64(1), 1.0, -1.0)
            out += np.bincount(bucket, weights=sign * x[start : start + len(i)], minlength=self.dim)


def _plain_key(m: LoraModule) -> tuple | None:
    """(out, in, rank) of a plain LoRA module that :meth:`Sketcher.plain_sketches` can stack; None otherwise."""
    if m.kind != "lora" or m.rows is not None:
        return None
    up, down = m.factors["lora_up"], m.factors["lora_down"]
    (out, inp), k = m.shape, down.shape[0]
    if k > min(out, inp) or up.size != out * k or down.size != k * inp:
        return None  # wider than the matrix: module_sketch handles it through the dense product
    return out, inp, k


def delta_norm2(m: LoraModule) -> float:
    """Exact ``||delta-W||_F^2`` of one module, in low rank (and through a LoKr's Kronecker structure).

    Parameters
    ----------
    m : LoraModule

    Returns
    -------
    float
    """
    kron = m.kronecker()
    if kron is not None:
        U1, V1, U2, V2 = kron
        Q1 = None if V1 is None else V1.astype(np.float64) @ V1.T
        Q2 = None if V2 is None else V2.astype(np.float64) @ V2.T
        return m.scale**2 * _delta_trace(U1, Q1) * _delta_trace(U2, Q2)
    U, V = m.low_rank()
    return m.scale**2 * float(np.sum((U.T @ U).astype(np.float64) * (V @ V.T).astype(np.float64)))


def sketch_cosines(S: np.ndarray, T: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarities between rows of sketches (0 where a sketch is zero).

    Parameters
    ----------
    S : ndarray of shape (n, dim)
    T : ndarray of shape (m, dim), optional
        Defaults to ``S``.

    Returns
    -------
    ndarray of shape (n, m)
    """
    S = np.asarray(S, dtype=np.float64)
    T = S if T is None else np.asarray(T, dtype=np.float64)
    ns, nt = np.linalg.norm(S, axis=1), np.linalg.norm(T, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        C = (S @ T.T) / np.outer(ns, nt)
    return np.nan_to_num(C, nan=0.0, posinf=0.0, neginf=0.0)
