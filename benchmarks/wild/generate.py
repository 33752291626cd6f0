"""Generate the wild benchmark: LoRAs of one training set made as strangers would make them.

Twelve training sets, each the first ``main`` recipe of ``data/plan.json`` of a
different artist (so a different style painting), artists taken round-robin
over genres. Each set is trained five times on the frozen tiny base model
(``data/base.safetensors``) with what differs between people in the wild: the
initialisation seed and the noise seed (always new), rank (2 to 16), alpha
(1, rank/2, rank, 2 rank), learning rate and steps; one run is also saved at an
intermediate checkpoint. Every LoRA is written in the kohya or diffusers-peft
layout and in float32, float16 or bfloat16, round-robin.

Outputs (``--out``, default ``data/wild``)::

    loras/<set>__<run>__step<k>.safetensors   the LoRAs (metadata inside)
    manifest.csv       file, set, artist, style painting, seeds, rank, alpha, lr, steps, checkpoint, layout,
                       dtype, sha256
    training_sets.json every set: source recipe, training images' sha256, colour statistics (the no-weights baseline)
    generate_log.json  seconds per run and in total, threads, what was trained this time

Rendered training images are cached in ``benchmarks/wild/cache/`` (not committed).
Resumable: a LoRA whose file exists with the same ``lorastyle.wild`` metadata
key (its recipe, run, checkpoint, layout, dtype and the base model's checksum) is
not trained again. ``--quick`` makes 2 sets x 2 tiny runs into a temporary folder.

Run with one thread: ``OMP_NUM_THREADS=1 python benchmarks/wild/generate.py``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(__file__).resolve().parent / "cache"
LAYOUTS = ("kohya", "diffusers-peft")
DTYPES = ("float32", "float16", "bfloat16")
# (layout, dtype) pairs, dealt round-robin over a set's LoRAs, shifted by one per set
COMBOS = tuple((layout, dtype) for dtype in DTYPES for layout in LAYOUTS)
MANIFEST_FIELDS = (
    "file",
    "set_id",
    "artist",
    "genre",
    "style_painting",
    "source_recipe",
    "run",
    "init_seed",
    "seed",
    "rank",
    "alpha",
    "lr",
    "steps",
    "batch_size",
    "checkpoint",
    "layout",
    "dtype",
    "sha256",
)


@dataclass(frozen=True)
class Run:
    """One training run of a set: what a stranger chose."""

    name: str
    rank: int
    alpha: float
    lr: float
    steps: int
    checkpoints: tuple[int, ...]  # steps at which the LoRA is saved (the last is ``steps``)


# The default profile's schedule is 60 steps, batch 8, lr 2e-3 (run "a"); the others spread rank, alpha, lr, steps.
RUNS = (
    Run("a", rank=4, alpha=4.0, lr=2e-3, steps=60, checkpoints=(30, 60)),
    Run("b", rank=8, alpha=4.0, lr=1e-3, steps=30, checkpoints=(30,)),
    Run("c", rank=2, alpha=1.0, lr=2e-3, steps=20, checkpoints=(20,)),
    Run("d", rank=16, alpha=32.0, lr=5e-4, steps=30, checkpoints=(30,)),
    Run("e", rank=4, alpha=1.0, lr=1e-3, steps=20, checkpoints=(20,)),
)
QUICK_RUNS = (
    Run("a", rank=4, alpha=4.0, lr=2e-3, steps=3, checkpoints=(1, 3)),
    Run("b", rank=2, alpha=4.0, lr=1e-3, steps=2, checkpoints=(2,)),
)
BATCH_SIZE = 8  # the default profile's


@dataclass(frozen=True)
class TrainingSet:
    """A training set: one ``main`` recipe of the default collection."""

    id: str
    index: int
    spec: dict  # the recipe as in plan.json

    @property
    def style(self) -> str:
        """The style painting of its images (one per recipe)."""
        (style,) = {im["style"] for im in self.spec["images"]}
        return style


@dataclass(frozen=True)
class PlannedLora:
    """One LoRA file to make: a checkpoint of a run of a set, in a layout and dtype."""

    set: TrainingSet
    run: Run
    checkpoint: int
    layout: str
    dtype: str
    init_seed: int
    seed: int

    @property
    def file(self) -> str:
        return f"loras/{self.set.id}__{self.run.name}__step{self.checkpoint}.safetensors"

    def row(self) -> dict[str, str]:
        """The manifest row, without sha256."""
        return {
            "file": self.file,
            "set_id": self.set.id,
            "artist": self.set.spec["artist"],
            "genre": self.set.spec["genre"],
            "style_painting": self.set.style,
            "source_recipe": self.set.spec["id"],
            "run": self.run.name,
            "init_seed": str(self.init_seed),
            "seed": str(self.seed),
            "rank": str(self.run.rank),
            "alpha": f"{self.run.alpha:g}",
            "lr": f"{self.run.lr:g}",
            "steps": str(self.run.steps),
            "batch_size": str(BATCH_SIZE),
            "checkpoint": str(self.checkpoint),
            "layout": self.layout,
            "dtype": self.dtype,
        }

    def key(self, base_sha256: str, resolution: int, stylize_size: int) -> str:
        """What the file must have been made from to be reused."""
        blob = json.dumps(
            [self.set.spec, asdict(self.run), self.row(), resolution, stylize_size, base_sha256], sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def select_training_sets(plan: dict, n_sets: int) -> list[TrainingSet]:
    """The first ``main`` recipe of ``n_sets`` artists, artists taken round-robin over sorted genres.

    Raises
    ------
    ValueError
        When the plan has fewer artists, or two chosen recipes share a style painting.
    """
    first: dict[str, dict] = {}
    for spec in plan["loras"]:
        if spec["collection"] == "main":
            first.setdefault(spec["artist"], spec)
    by_genre: dict[str, list[dict]] = {}
    for spec in first.values():
        by_genre.setdefault(spec["genre"], []).append(spec)
    chosen: list[dict] = []
    while len(chosen) < n_sets and any(by_genre.values()):
        for genre in sorted(by_genre):
            if by_genre[genre] and len(chosen) < n_sets:
                chosen.append(by_genre[genre].pop(0))
    if len(chosen) < n_sets:
        raise ValueError(f"the plan has {len(chosen)} artists with a main recipe, not {n_sets}")
    sets = [
        TrainingSet(f"s{i:02d}-{spec['id'][len('main-') :].rsplit('-', 1)[0]}", i, spec)
        for i, spec in enumerate(chosen)
    ]
    styles = [s.style for s in sets]
    if len(set(styles)) != len(styles):
        raise ValueError(f"two training sets share a style painting: {styles}")
    return sets


def plan_loras(sets: Sequence[TrainingSet], runs: Sequence[Run]) -> list[PlannedLora]:
    """Every LoRA file: seeds new per run, (layout, dtype) dealt round-robin within a set, shifted per set."""
    out = []
    for s in sets:
        k = 0
        for r, run in enumerate(runs):
            for step in run.checkpoints:
                layout, dtype = COMBOS[(k + s.index) % len(COMBOS)]
                out.append(PlannedLora(s, run, step, layout, dtype, 1000 + 10 * s.index + r, 2000 + 10 * s.index + r))
                k += 1
    return out


def _spec_object(spec: dict):
    from lorastyle.collection.plan import LoraSpec, TrainingImage

    images = tuple(TrainingImage(im["content"], tuple(im["box"]), im["style"]) for im in spec["images"])
    return LoraSpec(**{**spec, "images": images})


def render_sets(sets: Sequence[TrainingSet], profile) -> dict[str, np.ndarray]:
    """Every set's training images, rendered as ``build_collection`` does, cached as .npy."""
    from lorastyle.collection.build import render_training_images, source_artworks
    from lorastyle.collection.features import MagentaStyleEncoder
    from lorastyle.io.atomic import atomic_path

    out: dict[str, np.ndarray] = {}
    todo = []
    for s in sets:
        path = CACHE / f"{s.spec['id']}.npy"
        if path.exists():
            out[s.id] = np.load(path, allow_pickle=False)
        else:
            todo.append((s, path))
    if todo:
        _, _, _, _, load = source_artworks(profile)
        stylizer, style_vectors = MagentaStyleEncoder(), {}
        CACHE.mkdir(parents=True, exist_ok=True)
        for s, path in todo:
            out[s.id] = render_training_images(_spec_object(s.spec), load, profile, stylizer, style_vectors)
            with atomic_path(path, suffix=".npy") as tmp:
                np.save(tmp, out[s.id], allow_pickle=False)
    return out


def colour_features(images: np.ndarray) -> list[float]:
    """Per-channel mean and standard deviation of the pixels (in [0, 1]): R, G, B means, then stds."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return [float(v) for v in np.concatenate([x.mean(axis=0), x.std(axis=0)])]


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _is_done(path: Path, key: str) -> bool:
    from lorastyle.errors import LoraFormatError
    from lorastyle.io.safetensors import read_safetensors_header

    if not path.exists():
        return False
    try:
        return read_safetensors_header(path)[1].get("lorastyle.wild") == key
    except LoraFormatError:
        return False


def _write_text(path: Path, text: str) -> None:
    from lorastyle.io.atomic import atomic_write

    atomic_write(path, text)


def write_manifest(out: Path, loras: Sequence[PlannedLora]) -> None:
    """``manifest.csv``: one row per LoRA file, with its sha256."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(MANIFEST_FIELDS))
    writer.writeheader()
    for p in loras:
        writer.writerow({**p.row(), "sha256": _file_sha256(out / p.file)})
    _write_text(out / "manifest.csv", text.getvalue())


def write_training_sets(out: Path, sets: Sequence[TrainingSet], images: dict[str, np.ndarray]) -> None:
    """``training_sets.json``: each set's recipe, images' checksum and colour features."""
    rows = [
        {
            "set_id": s.id,
            "artist": s.spec["artist"],
            "genre": s.spec["genre"],
            "style_painting": s.style,
            "source_recipe": s.spec["id"],
            "n_images": int(len(images[s.id])),
            "images_sha256": hashlib.sha256(np.ascontiguousarray(images[s.id]).tobytes()).hexdigest(),
            "colour_features": colour_features(images[s.id]),
            "colour_feature_names": ["mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b"],
            "images": s.spec["images"],
        }
        for s in sets
    ]
    _write_text(out / "training_sets.json", json.dumps({"training_sets": rows}, indent=1) + "\n")


def train_run(model, images: np.ndarray, run: Run, files: Sequence[PlannedLora], out: Path, key_args: tuple) -> None:
    """Train one run and save each of its checkpoints in its planned layout and dtype."""
    from lorastyle.collection.build import CONDITION
    from lorastyle.collection.diffusion import train_lora
    from lorastyle.io.formats import save_lora

    first = files[0]
    result = train_lora(
        model,
        images,
        CONDITION,
        rank=run.rank,
        alpha=run.alpha,
        steps=run.steps,
        batch_size=BATCH_SIZE,
        lr=run.lr,
        seed=first.seed,
        init_seed=first.init_seed,
        checkpoints=run.checkpoints,
    )
    for p in files:
        meta = {**p.row(), "lorastyle.wild": p.key(*key_args)}
        dtype = p.dtype if p.dtype == "bfloat16" else np.dtype(p.dtype)
        path = out / p.file
        path.parent.mkdir(parents=True, exist_ok=True)
        save_lora(
            path,
            result.checkpoints[p.checkpoint],
            alpha=run.alpha,
            layout=p.layout,
            base="tiny",
            metadata=meta,
            dtype=dtype,
        )


def generate(out: Path, *, n_sets: int, runs: Sequence[Run], base: Path, plan: Path, progress: bool = True) -> dict:
    """Make every missing LoRA; write the manifest, the training sets and the log.

    Returns
    -------
    dict
        The log written to ``out/generate_log.json``.
    """
    import torch
    from tqdm.auto import tqdm

    from lorastyle.collection.build import load_base
    from lorastyle.collection.profiles import get_profile
    from lorastyle.index import file_sha256

    t0 = time.perf_counter()
    profile = get_profile("default")
    sets = select_training_sets(json.loads(plan.read_text()), n_sets)
    loras = plan_loras(sets, runs)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    images = render_sets(sets, profile)
    render_s = time.perf_counter() - t
    key_args = (file_sha256(base), profile.resolution, profile.stylize_size)
    by_run: dict[tuple[str, str], list[PlannedLora]] = {}
    for p in loras:
        by_run.setdefault((p.set.id, p.run.name), []).append(p)
    todo = {k: v for k, v in by_run.items() if not all(_is_done(out / p.file, p.key(*key_args)) for p in v)}
    model = load_base(base) if todo else None
    run_seconds = {}
    bar = tqdm(by_run.items(), desc="runs", disable=not progress, unit="run")
    for (set_id, run_name), files in bar:
        if (set_id, run_name) not in todo:
            continue
        bar.set_postfix_str(f"{set_id} run {run_name}")
        t = time.perf_counter()
        train_run(model, images[set_id], files[0].run, files, out, key_args)
        run_seconds[f"{set_id}/{run_name}"] = time.perf_counter() - t
    bar.close()
    write_manifest(out, loras)
    write_training_sets(out, sets, images)
    log_path = out / "generate_log.json"
    previous = json.loads(log_path.read_text()) if log_path.exists() else {}
    this = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "trained_now": len(run_seconds),
        "render_s": render_s,
        "train_s": sum(run_seconds.values()),
        "total_s": time.perf_counter() - t0,
        "load_average_at_end": list(os.getloadavg()),
        "torch_threads": torch.get_num_threads(),
        "env_threads": {k: os.environ.get(k, "unset") for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
    }
    log = {
        "n_sets": len(sets),
        "n_runs": len(by_run),
        "n_loras": len(loras),
        "runs": [asdict(r) for r in runs],
        "batch_size": BATCH_SIZE,
        "bytes": sum((out / p.file).stat().st_size for p in loras),
        # seconds of the latest training of each run, and every invocation (a resumed build adds one)
        "run_seconds": {**previous.get("run_seconds", {}), **run_seconds},
        "invocations": previous.get("invocations", []) + [this],
        **this,
    }
    _write_text(log_path, json.dumps(log, indent=1) + "\n")
    return log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None, help="output folder (default data/wild; --quick: a temporary one)")
    p.add_argument("--sets", type=int, default=None, help="number of training sets (default 12; --quick: 2)")
    p.add_argument("--quick", action="store_true", help="2 sets x 2 runs of a few steps: checks the script")
    p.add_argument("--base", type=Path, default=ROOT / "data" / "base.safetensors")
    p.add_argument("--plan", type=Path, default=ROOT / "data" / "plan.json")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = args.out or (Path(tempfile.mkdtemp(prefix="lorastyle-wild-")) if args.quick else ROOT / "data" / "wild")
    n_sets = args.sets or (2 if args.quick else 12)
    t0 = time.perf_counter()
    log = generate(out, n_sets=n_sets, runs=QUICK_RUNS if args.quick else RUNS, base=args.base, plan=args.plan)
    print(
        f"{log['n_loras']} LoRAs of {log['n_sets']} training sets in {out} ({log['bytes'] / 1e6:.1f} MB); "
        f"trained {log['trained_now']} of {log['n_runs']} runs in {log['train_s']:.1f} s; "
        f"total {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
