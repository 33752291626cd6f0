"""The generator-fidelity gate: does the collection's model draw what its LoRAs were trained on?

Every claim about generated images (retrieval from generated images, its sensitivity to the
sampling steps T and guidance w, weights against generated images, memorisation) means
something only when the base model draws pictures like its training data and a LoRA moves
its samples toward its own training images. :func:`fidelity_gate` checks that from saved
samples, with numpy alone (no torch), and the book's ledger shows it as a row; the rows that
depend on generated images read "untestable here" while it fails.

The checks and their thresholds (module constants, the issue "A model that draws"):

1. the base matches its training distribution: mean luminance within
   :data:`LUMINANCE_TOLERANCE` levels of its training crops', pixel standard deviation at
   least :data:`STD_RATIO` times theirs;
2. LoRAs learn: the loss on a fixed set of (image, time, noise) draws falls by at least
   :data:`LOSS_DROP` (median over main LoRAs) from B = 0 (the base) to the trained LoRA;
3. samples move toward their own training images: the median share of the colour-statistics
   distance between the base model's samples and the LoRA's training images that the LoRA's
   samples close is at least :data:`GAP_CLOSED`;
4. samples identify their style painting among all main LoRAs' training sets: top-1 at least
   :data:`COLOUR_TOP1` by colour statistics and at least :data:`COLOURBLIND_OVER_CHANCE`
   times chance by a colour-blind descriptor (:func:`texture_statistics`), so that style means
   more than colour.

The gate is decided on the main LoRAs; the same numbers for the other collections (real-pixel,
held-out, 3-image) are reported beside them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .experiments import colour_statistics

__all__ = [
    "LUMINANCE_TOLERANCE",
    "STD_RATIO",
    "LOSS_DROP",
    "GAP_CLOSED",
    "COLOUR_TOP1",
    "COLOURBLIND_OVER_CHANCE",
    "luminance",
    "texture_statistics",
    "gap_closed",
    "painting_identification",
    "FidelityCheck",
    "FidelityReport",
    "fidelity_gate",
    "collection_gate",
    "gate_tables",
]

LUMINANCE_TOLERANCE = 12.0  # levels of 255
STD_RATIO = 0.7
LOSS_DROP = 0.15
GAP_CLOSED = 0.5
COLOUR_TOP1 = 0.5
COLOURBLIND_OVER_CHANCE = 3.0


def _check_images(images, name: str = "images") -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3 or len(x) == 0:
        raise ValueError(f"{name} must have shape (n, H, W, 3) with n >= 1, got {x.shape}")
    return x


def luminance(images: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of RGB images, in levels of 0-255.

    Parameters
    ----------
    images : array-like of shape (n, H, W, 3)

    Returns
    -------
    ndarray of shape (n, H, W), dtype float64

    Raises
    ------
    ValueError
        For another shape.
    """
    x = _check_images(images).astype(np.float64)
    return x @ np.array([0.299, 0.587, 0.114])


def texture_statistics(images: np.ndarray, *, grid: int = 4, orientations: int = 8, bands: int = 6) -> np.ndarray:
    """A colour-blind style descriptor of a set of images: tone, layout, edges and detail of luminance.

    Each image's luminance is standardised (its own mean and contrast removed), so the
    descriptor does not change when colours are permuted, tinted, brightened or given more
    contrast. Per image, four parts, each a distribution or bounded, then averaged over images:

    * tone: the histogram of standardised luminance over 9 bins of [-2.25, 2.25] (dark
      pictures with highlights against pale ones with shadows);
    * layout: the mean standardised luminance of a ``grid`` x ``grid`` block partition, divided
      by 4 (where light and dark sit);
    * edges: the histogram of gradient orientation over ``orientations`` bins of [0, pi),
      weighted by gradient magnitude and normalised;
    * detail: the share of spectral energy in ``bands`` radial frequency bands.

    Parameters
    ----------
    images : array-like of shape (n, H, W, 3)
        ``H`` and ``W`` must be multiples of ``grid``.
    grid : int, default=4
    orientations : int, default=8
    bands : int, default=6

    Returns
    -------
    ndarray of shape (9 + grid * grid + orientations + bands,)

    Raises
    ------
    ValueError
        For images of another shape or a side that ``grid`` does not divide.
    """
    y = luminance(images)
    n, h, w = y.shape
    if h % grid or w % grid:
        raise ValueError(f"images of {h}x{w} pixels do not divide into a {grid}x{grid} grid")
    z = (y - y.mean(axis=(1, 2), keepdims=True)) / (y.std(axis=(1, 2), keepdims=True) + 1e-6)
    edges = np.linspace(-2.25, 2.25, 10)
    tone = np.stack([np.histogram(np.clip(v, -2.25, 2.25), bins=edges)[0] / v.size for v in z])
    layout = z.reshape(n, grid, h // grid, grid, w // grid).mean(axis=(2, 4)).reshape(n, -1) / 4
    gy, gx = np.gradient(z, axis=(1, 2))
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    which = np.minimum((angle / np.pi * orientations).astype(int), orientations - 1)
    orient = np.stack(
        [np.bincount(b.ravel(), weights=m.ravel(), minlength=orientations) for b, m in zip(which, magnitude)]
    )
    orient /= orient.sum(axis=1, keepdims=True) + 1e-12
    power = np.abs(np.fft.fft2(z)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    radius = np.hypot(fy, fx) / np.hypot(0.5, 0.5)  # 0 (the mean, zero here) to 1 (the corner)
    band = np.minimum((radius * bands).astype(int), bands - 1)
    detail = np.stack([np.bincount(band.ravel(), weights=p.ravel(), minlength=bands) for p in power])
    detail /= detail.sum(axis=1, keepdims=True) + 1e-12
    return np.concatenate([tone, layout, orient, detail], axis=1).mean(axis=0)


def gap_closed(
    samples: np.ndarray,
    train: np.ndarray,
    base_samples: np.ndarray,
    describe: Callable[[np.ndarray], np.ndarray] = colour_statistics,
) -> float:
    """The share of the distance from the base model's samples to a LoRA's training images that its samples close.

    ``1 - d(samples, train) / d(base_samples, train)`` with ``d`` the Euclidean distance of
    ``describe``'s descriptors: 1 when the LoRA's samples look like its training images to the
    descriptor, 0 when they look no more so than the base model's, negative when they moved away.

    Parameters
    ----------
    samples, train, base_samples : array-like of shape (n, H, W, 3)
        The LoRA's samples, its training images, and the base model's samples.
    describe : callable, default=colour_statistics
        Image set -> descriptor vector.

    Returns
    -------
    float
        NaN when the base model's samples already match the training images (no gap).

    Raises
    ------
    ValueError
        For image arrays of another shape.
    """
    s, t, b = (
        describe(_check_images(x, name))
        for x, name in ((samples, "samples"), (train, "train"), (base_samples, "base_samples"))
    )
    gap = np.linalg.norm(b - t)
    return float(1 - np.linalg.norm(s - t) / gap) if gap > 0 else float("nan")


def painting_identification(
    queries: Mapping[str, np.ndarray],
    candidates: Mapping[str, np.ndarray],
    painting: Mapping[str, str],
    describe: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """For each query (a LoRA's samples), is the nearest candidate training set one of its style painting?

    Parameters
    ----------
    queries : mapping of str to ndarray of shape (n, H, W, 3)
        LoRA id -> its samples.
    candidates : mapping of str to ndarray of shape (m, H, W, 3)
        LoRA id -> its training images (the main LoRAs').
    painting : mapping of str to str
        LoRA id -> its style painting, for every query and candidate.
    describe : callable
        Image set -> descriptor vector; candidates are ranked by Euclidean distance.

    Returns
    -------
    hits : ndarray of shape (len(queries),), dtype bool
        In the sorted order of the query ids.
    chance : ndarray of shape (len(queries),)
        Each query's chance of a hit: the share of candidates of its painting.

    Raises
    ------
    ValueError
        For no candidates or a query or candidate without a painting.
    """
    cand = sorted(candidates)
    if not cand:
        raise ValueError("no candidate training sets")
    missing = [k for k in [*queries, *cand] if k not in painting]
    if missing:
        raise ValueError(f"no painting for {', '.join(missing[:5])}")
    C = np.stack([describe(candidates[k]) for k in cand])
    cand_painting = np.array([painting[k] for k in cand])
    hits, chance = [], []
    for q in sorted(queries):
        d = np.linalg.norm(C - describe(queries[q]), axis=1)
        hits.append(cand_painting[int(np.argmin(d))] == painting[q])
        chance.append(float(np.mean(cand_painting == painting[q])))
    return np.array(hits, dtype=bool), np.array(chance)


@dataclass(frozen=True)
class FidelityCheck:
    """One check of the gate: its measured value, its threshold and whether it passed."""

    name: str
    value: float
    threshold: float
    passed: bool
    detail: str = ""


@dataclass
class FidelityReport:
    """The gate's checks (decided on the main LoRAs) and the same measures for every collection.

    Attributes
    ----------
    checks : list of FidelityCheck
    by_collection : dict of str to dict of str to float
        Collection -> measure -> value: ``n``, ``loss_drop`` (median), ``gap_closed``
        (median), ``colour_top1``, ``colourblind_top1``, ``colourblind_chance``.
    """

    checks: list[FidelityCheck]
    by_collection: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return all(c.passed for c in self.checks)

    def failed(self) -> list[str]:
        """The names of the checks that failed."""
        return [c.name for c in self.checks if not c.passed]


def _collection_measures(
    ids: list[str], samples, train, base_samples, candidates, painting, held_losses
) -> dict[str, float]:
    out: dict[str, float] = {"n": float(len(ids))}
    if held_losses is not None:
        drops = [1 - held_losses[i][1] / held_losses[i][0] for i in ids if i in held_losses]
        out["loss_drop"] = float(np.median(drops)) if drops else float("nan")
    out["gap_closed"] = float(np.nanmedian([gap_closed(samples[i], train[i], base_samples) for i in ids]))
    queries = {i: samples[i] for i in ids}
    hits, _ = painting_identification(queries, candidates, painting, colour_statistics)
    out["colour_top1"] = float(hits.mean())
    hits, chance = painting_identification(queries, candidates, painting, texture_statistics)
    out["colourblind_top1"] = float(hits.mean())
    out["chance"] = float(chance.mean())
    return out


def fidelity_gate(
    *,
    samples: Mapping[str, np.ndarray],
    train: Mapping[str, np.ndarray],
    base_samples: np.ndarray,
    base_train: np.ndarray,
    painting: Mapping[str, str],
    collection: Mapping[str, str],
    held_losses: Mapping[str, tuple[float, float]] | None = None,
) -> FidelityReport:
    """Run the generator-fidelity gate on saved samples (see the module's docstring for the checks).

    Parameters
    ----------
    samples : mapping of str to ndarray of shape (k, H, W, 3), uint8
        LoRA id -> its samples (every LoRA of ``collection`` that has samples).
    train : mapping of str to ndarray of shape (n, H, W, 3), uint8
        LoRA id -> its training images.
    base_samples : ndarray of shape (k, H, W, 3), uint8
        The base model's samples (no LoRA), drawn as the LoRAs' are.
    base_train : ndarray of shape (m, H, W, 3), uint8
        Crops of the base model's training data; with none (``m = 0``) the base checks fail as
        not measured.
    painting : mapping of str to str
        LoRA id -> its style painting.
    collection : mapping of str to str
        LoRA id -> its collection (``main``, ``real``, ``heldout``, ``memorisation``...).
        The candidates of identification are the main LoRAs' training sets.
    held_losses : mapping of str to (float, float), optional
        LoRA id -> (loss with B = 0, loss of the trained LoRA) on fixed draws
        (:func:`lorastyle.collection.diffusion.held_loss`). Without them the loss check fails
        as unmeasured.

    Returns
    -------
    FidelityReport

    Raises
    ------
    ValueError
        For no main LoRA with samples, or images of the wrong shape.
    """
    main = sorted(i for i in samples if collection.get(i) == "main")
    if not main:
        raise ValueError("the gate needs samples of main LoRAs")
    candidates = {i: train[i] for i in sorted(train) if collection.get(i) == "main"}
    gen_x = _check_images(base_samples, "base_samples").astype(np.float64)
    if len(base_train):  # a base model we did not train (Stable Diffusion) comes without its data
        train_x = _check_images(base_train, "base_train").astype(np.float64)
        y_gen, y_train = luminance(gen_x).mean(), luminance(train_x).mean()
        lum_gap = abs(float(y_gen - y_train))
        std_ratio = float(gen_x.std() / train_x.std()) if train_x.std() > 0 else float("nan")
        base_detail = (
            f"samples {y_gen:.1f}, training crops {y_train:.1f} (levels of 255)",
            f"pixel std {gen_x.std():.1f} against {train_x.std():.1f}",
        )
    else:
        lum_gap = std_ratio = float("nan")
        base_detail = ("not measured: no training crops", "not measured: no training crops")

    by_collection = {}
    for name in sorted({collection[i] for i in samples if i in collection}):
        ids = sorted(i for i in samples if collection.get(i) == name and i in painting)
        if ids:
            by_collection[name] = _collection_measures(
                ids, samples, train, base_samples, candidates, painting, held_losses
            )
    m = by_collection["main"]
    loss_drop = m.get("loss_drop", float("nan"))
    ratio = m["colourblind_top1"] / m["chance"] if m["chance"] > 0 else float("nan")
    checks = [
        FidelityCheck(
            "base luminance",
            lum_gap,
            LUMINANCE_TOLERANCE,
            bool(lum_gap <= LUMINANCE_TOLERANCE),
            base_detail[0],
        ),
        FidelityCheck(
            "base contrast",
            std_ratio,
            STD_RATIO,
            bool(std_ratio >= STD_RATIO),
            base_detail[1],
        ),
        FidelityCheck(
            "LoRAs learn",
            loss_drop,
            LOSS_DROP,
            bool(loss_drop >= LOSS_DROP),
            "median loss drop from B = 0 on fixed draws" if held_losses is not None else "not measured",
        ),
        FidelityCheck(
            "samples move toward their images",
            m["gap_closed"],
            GAP_CLOSED,
            bool(m["gap_closed"] >= GAP_CLOSED),
            "median share of the colour-statistics gap closed",
        ),
        FidelityCheck(
            "painting identified by colour",
            m["colour_top1"],
            COLOUR_TOP1,
            bool(m["colour_top1"] >= COLOUR_TOP1),
            f"chance {m['chance']:.3f}",
        ),
        FidelityCheck(
            "painting identified without colour",
            ratio,
            COLOURBLIND_OVER_CHANCE,
            bool(ratio >= COLOURBLIND_OVER_CHANCE),
            f"top-1 {m['colourblind_top1']:.3f} over chance {m['chance']:.3f} (texture statistics)",
        ),
    ]
    return FidelityReport(checks=checks, by_collection=by_collection)


def collection_gate(coll) -> FidelityReport | None:
    """The gate on a built collection, from its ``samples.npz``, ``held_losses.json`` and ``images.npz``.

    Parameters
    ----------
    coll : lorastyle.book.experiments.Collection

    Returns
    -------
    FidelityReport or None
        None when the collection has no ``samples.npz`` (built before the gate existed).

    Raises
    ------
    ValueError
        When the manifest has no ``painting`` column or no main LoRA has samples.
    """
    import json

    from ..collection.build import read_images

    path = coll.root / "samples.npz"
    if not path.exists():
        return None
    if coll.rows and "painting" not in coll.rows[0]:
        raise ValueError(f"{coll.root / 'manifest.csv'}: no painting column (a collection v1?)")
    with np.load(path, allow_pickle=False) as data:
        samples = {k: data[k] for k in data.files if k not in ("base", "base_train")}
        base_samples, base_train = data["base"], data["base_train"]
    samples = {k: v for k, v in samples.items() if k in coll.by_id}
    held_path = coll.root / "held_losses.json"
    held = {k: tuple(v) for k, v in json.loads(held_path.read_text()).items()} if held_path.exists() else None
    wanted = sorted(set(samples) | set(coll.ids("main")))
    train = read_images(coll.root / "images.npz", "train", wanted)
    return fidelity_gate(
        samples=samples,
        train=train,
        base_samples=base_samples,
        base_train=base_train,
        painting={i: coll.painting(i) for i in wanted},  # pendants and panels of one work as one painting
        collection={i: coll.by_id[i]["collection"] for i in wanted},
        held_losses=held,
    )


def gate_tables(report: FidelityReport):
    """The gate as two tables for the book: its checks, and the same measures per collection.

    Parameters
    ----------
    report : FidelityReport

    Returns
    -------
    checks : pandas.DataFrame
        Columns ``check``, ``measured``, ``threshold``, ``passed``, ``detail``.
    measures : pandas.DataFrame
        One row per collection: ``collection``, ``LoRAs``, ``loss drop (median)``, ``colour gap
        closed (median)``, ``painting top-1 by colour``, ``painting top-1 without colour``, ``chance``.
    """
    import pandas as pd

    checks = pd.DataFrame(
        [
            {
                "check": c.name,
                "measured": round(c.value, 3),
                "threshold": ("≤ " if c.name == "base luminance" else "≥ ") + f"{c.threshold:g}",
                "passed": "yes" if c.passed else "no",
                "detail": c.detail,
            }
            for c in report.checks
        ]
    )
    names = {
        "n": "LoRAs",
        "loss_drop": "loss drop (median)",
        "gap_closed": "colour gap closed (median)",
        "colour_top1": "painting top-1 by colour",
        "colourblind_top1": "painting top-1 without colour",
        "chance": "chance",
    }
    measures = pd.DataFrame(
        [{"collection": name, **{names[k]: v for k, v in m.items()}} for name, m in report.by_collection.items()]
    )
    measures["LoRAs"] = measures["LoRAs"].astype(int)
    return checks, measures.round(3)
