"""Which base-model recipe makes the tiny model draw? A study at a fixed wall-time budget per arm.

Each arm trains a tiny base model (``TINY_UNET_CONFIG``, the collection's U-Net) from scratch
with one recipe for the same wall-time budget, then trains LoRAs on a fixed choice of the
committed collection's main training sets with the collection's LoRA schedule (rank 4, 60 steps,
batch 8, lr 2e-3), samples them, and runs the generator-fidelity gate
(:func:`lorastyle.book.fidelity.fidelity_gate`) on the result: base luminance and contrast
against the base crops, the LoRAs' loss drop on fixed draws, the share of the colour gap their
samples close, and how often their samples identify their style painting among all 108 main
training sets (by colour and by a colour-blind descriptor).

Arms (``--arms``; each differs from ``flow`` in one thing):

* ``flow``: rectified flow, uniform t, AdamW 1e-3 with 100 warm-up steps and cosine decay to 0.1x,
  batch 32, clipping 1.0, flips, 10% null labels, EMA 0.999, 2,000 base crops;
* ``epsilon``: the same recipe with DDPM epsilon prediction (the objective of collections v1/v2);
* ``logit_normal``: t drawn logit-normally; ``min_snr``: min-SNR-5 weighting;
* ``crops4000``: 4,000 base crops; ``bf16``: the forward pass in bfloat16 autocast;
* ``long``: ``flow`` with ``--long-factor`` times the budget (base length);
* ``lora_lr5e-3``, ``lora_lr1e-2``, ``lora_steps150``: the LoRAs' learning rate or length, on the
  ``flow`` arm's base (run that arm first).

Arms write into one results file under a lock, and an arm being run by one study process is skipped
by another, so two processes given the same arms share them (one core each).

The number of base steps of an arm is its budget divided by the time of a step measured in one
20-step trial at the start (the cosine schedule needs the length in advance; ``bf16`` has a trial of
its own); it is recorded, so a resumed run keeps it. Base training keeps its full state every 200
steps and LoRAs and samples are cached: an interrupted run resumes
(``~/.cache/lorastyle/generator-recipe/``); an arm whose gate is in the results file is not run
again.
``--throughput`` also measures base-training steps per second with 2 threads in one process
against 2 processes of 1 thread.

Results: ``benchmarks/results/generator_recipe.json`` and ``.md``, and a sample grid per arm in
``benchmarks/results/generator_recipe/`` (base samples, then training images beside samples for six
LoRAs).

    python benchmarks/generator/recipe_study.py --budget 900 --arms flow epsilon
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
# base states, LoRA samples, crops: outside the work tree, so a later session on the same machine resumes
WORK = Path.home() / ".cache" / "lorastyle" / "generator-recipe"

ARMS = {
    "flow": {},
    "epsilon": {"objective": "epsilon"},
    "logit_normal": {"time_sampling": "logit_normal"},
    "min_snr": {"loss_weighting": "min_snr"},
    "crops4000": {"base_images": 4000},
    "bf16": {"autocast": True},
    "long": {"long": True},
    # LoRA recipes on the flow arm's base (no base of their own)
    "lora_lr5e-3": {"base_from": "flow", "lora_lr": 5e-3},
    "lora_lr1e-2": {"base_from": "flow", "lora_lr": 1e-2},
    "lora_steps150": {"base_from": "flow", "lora_steps": 150},
}


def _chosen(manifest: list[dict], n: int) -> list[str]:
    """n main LoRAs on n distinct style paintings of distinct artists, spread over the sorted list."""
    seen_artist, seen_painting, picks = set(), set(), []
    main = sorted((r for r in manifest if r["collection"] == "main"), key=lambda r: r["id"])
    step = max(len(main) // n, 1)
    for offset in range(step):
        for r in main[offset::step]:
            if len(picks) < n and r["artist"] not in seen_artist and r["painting"] not in seen_painting:
                picks.append(r["id"])
                seen_artist.add(r["artist"])
                seen_painting.add(r["painting"])
    return sorted(picks)


def _save(path: Path, obj) -> None:
    """Merge ``obj`` into the results file under a lock: several study processes may run arms side by side."""
    import fcntl
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        on_disk = json.loads(path.read_text()) if path.exists() else {}
        arms = dict(on_disk.get("arms", {}))
        for name, mine in obj.get("arms", {}).items():
            theirs = arms.get(name, {})
            # a finished arm (its gate measured) is final; otherwise an arm belongs to the process
            # running it: another process's copy of it is stale
            if "gate" in theirs and "gate" not in mine:
                continue
            if "gate" in mine or mine.get("running") == os.getpid() or not theirs:
                arms[name] = mine
        merged = {**on_disk, **obj, "arms": arms}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(merged, indent=1))
        tmp.replace(path)
    obj.update(merged)


def _step_time(model, images, recipe, batch: int) -> float:
    """Seconds per base step, from a 20-step trial on a copy of the model (after 3 warm-up steps)."""
    import copy

    from lorastyle.collection.diffusion import train_base

    trial = copy.deepcopy(model)
    train_base(trial, images, [1] * len(images), steps=3, batch_size=batch, recipe=recipe, progress=False)
    t = time.perf_counter()
    train_base(trial, images, [1] * len(images), steps=20, batch_size=batch, recipe=recipe, progress=False)
    return (time.perf_counter() - t) / 20


def _throughput(images, seconds: float = 60.0) -> dict:
    """Base steps per second: one process on 2 threads against 2 processes on 1 thread each."""
    import subprocess
    import sys

    code = (
        "import sys, time, numpy as np, torch\n"
        "torch.set_num_threads(int(sys.argv[1]))\n"
        "from lorastyle.collection.diffusion import tiny_model, train_base\n"
        "x = np.load(sys.argv[2])\n"
        "m = tiny_model()\n"
        "train_base(m, x, [1]*len(x), steps=3, batch_size=32, progress=False)\n"
        "t = time.perf_counter(); n = 0\n"
        "while time.perf_counter() - t < float(sys.argv[3]):\n"
        "    train_base(m, x, [1]*len(x), steps=5, batch_size=32, progress=False); n += 5\n"
        "print(n / (time.perf_counter() - t))\n"
    )
    path = WORK / "throughput-images.npy"
    np.save(path, images[:512])

    def run(threads: int, procs: int) -> float:
        ps = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(threads), str(path), str(seconds)], stdout=subprocess.PIPE
            )
            for _ in range(procs)
        ]
        return sum(float(p.communicate()[0]) for p in ps)

    return {"one_process_2_threads": run(2, 1), "two_processes_1_thread": run(1, 2)}


def _crops(n: int) -> np.ndarray:
    """The default profile's n base crops (as ``make data`` draws them), cached."""
    from lorastyle.collection.build import _base_images, source_artworks
    from lorastyle.collection.profiles import get_profile

    path = WORK / f"base-crops-{n}.npy"
    if not path.exists():
        profile = get_profile("default", base_images=n)
        _, _, _, base_pool, load = source_artworks(profile)
        np.save(path, _base_images(profile, base_pool, load))
    return np.load(path)


def run_arm(name: str, args, train, painting, collection_of, chosen, results: dict) -> dict:
    import os

    import torch

    from lorastyle.book.fidelity import fidelity_gate
    from lorastyle.collection.build import CONDITION, load_base, save_base
    from lorastyle.collection.diffusion import (
        BaseRecipe,
        generate,
        held_loss,
        tiny_model,
        train_base,
        train_lora,
    )

    settings = dict(ARMS[name])
    _save(args.out, results)  # read what other study processes did meanwhile
    arm = results.setdefault("arms", {}).setdefault(name, {"settings": settings})
    if "gate" in arm:
        return arm
    owner = arm.get("running")
    if owner and owner != os.getpid() and Path(f"/proc/{owner}").exists():
        print(f"{name}: being run by process {owner}; skipped here", flush=True)
        return arm
    arm["running"] = os.getpid()
    _save(args.out, results)
    arm = results["arms"][name]
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    images = _crops(settings.get("base_images", 2000))
    recipe = BaseRecipe(autocast=settings.get("autocast", False))
    budget = args.budget * (args.long_factor if settings.get("long") else 1)
    base_path = work / "base.safetensors"
    if "base_from" in settings:
        base_path = WORK / settings["base_from"] / "base.safetensors"
        if not base_path.exists():
            raise SystemExit(f"arm {name} needs the base of arm {settings['base_from']}: run that arm first")
        source = results["arms"][settings["base_from"]]
        arm.update(base_steps=source["base_steps"], base_wall_s=source.get("base_wall_s", float("nan")))
        model = load_base(base_path)
        work = WORK / name
    elif base_path.exists():
        model = load_base(base_path)
    else:
        model = tiny_model(
            seed=0,
            objective=settings.get("objective", "flow"),
            time_sampling=settings.get("time_sampling", "uniform"),
            loss_weighting=settings.get("loss_weighting", "none"),
        )
        if "base_steps" not in arm:
            # one trial for every arm whose step costs the same (all but bf16): arms measured later, on a
            # machine busier or quieter than at the first trial, still get the same number of steps
            if settings.get("autocast"):
                arm["step_s"] = _step_time(model, images, recipe, 32)
            else:
                if "step_s" not in results:
                    results["step_s"] = _step_time(model, images, recipe, 32)
                arm["step_s"] = results["step_s"]
            arm["base_steps"] = int(budget / arm["step_s"])
            arm["budget_s"] = budget
            _save(args.out, results)
        print(f"{name}: {arm['base_steps']} base steps ({arm['step_s']:.2f} s each, budget {budget:.0f} s)", flush=True)
        t = time.perf_counter()
        losses = train_base(
            model,
            images,
            [CONDITION] * len(images),
            steps=arm["base_steps"],
            batch_size=32,
            lr=1e-3,
            recipe=recipe,
            state_path=work / "base-state.safetensors",
            progress=True,
        )
        arm["base_wall_s"] = arm.get("base_wall_s", 0.0) + time.perf_counter() - t
        arm["base_loss_last100"] = float(np.mean(losses[-100:]))
        save_base(model, base_path, {"steps": arm["base_steps"], "recipe": recipe.to_dict()})
        _save(args.out, results)
    gen_kw = dict(steps=25, guidance=3.0)
    base_samples_path = base_path.parent / "base-samples.npy"
    if not base_samples_path.exists():
        np.save(base_samples_path, generate(model, args.base_samples, CONDITION, seed=10_000, **gen_kw))
    base_samples = np.load(base_samples_path)
    samples, held = {}, {}
    for k, i in enumerate(chosen):
        path = work / f"lora-{i}.npz"
        if not path.exists():
            t = time.perf_counter()
            lora = train_lora(
                model,
                train[i],
                CONDITION,
                rank=4,
                alpha=4,
                steps=settings.get("lora_steps", 60),
                batch_size=8,
                lr=settings.get("lora_lr", 2e-3),
                seed=k,
            )
            lora_s = time.perf_counter() - t
            before = held_loss(model, train[i], CONDITION, seed=k)
            after = held_loss(model, train[i], CONDITION, lora=lora, seed=k)
            imgs = generate(model, args.samples, CONDITION, seed=k, lora=lora, **gen_kw)
            np.savez(path, samples=imgs, held=np.array([before, after]), lora_s=np.array(lora_s))
        with np.load(path) as z:
            samples[i], held[i] = z["samples"], tuple(z["held"].tolist())
    report = fidelity_gate(
        samples=samples,
        train=train,
        base_samples=base_samples,
        base_train=images[:: max(len(images) // 256, 1)],  # 256 crops spread over every painting
        painting=painting,
        collection={i: collection_of[i] for i in train},
        held_losses=held,
    )
    arm["gate"] = {
        c.name: {"value": c.value, "threshold": c.threshold, "passed": c.passed, "detail": c.detail}
        for c in report.checks
    }
    arm["passed"] = report.passed
    arm["measures"] = report.by_collection
    arm.pop("running", None)
    arm["sample_rms_from_base"] = float(
        np.mean(
            [
                np.sqrt(np.mean((samples[i].astype(float) - base_samples[: len(samples[i])].astype(float)) ** 2))
                for i in chosen
            ]
        )
    )
    _save(args.out, results)
    torch.set_num_threads(args.threads)
    return arm


def _grid(name: str, results: dict, train: dict) -> Path | None:
    """A sample grid of an arm (base samples, then each LoRA's training images beside its samples), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lorastyle.book.viz import image_grid

    arm = results["arms"][name]
    base_dir = WORK / arm["settings"].get("base_from", name)
    if not (base_dir / "base-samples.npy").exists():
        return None
    rows = {"base model": np.load(base_dir / "base-samples.npy")[:8]}
    for i in results["loras"][:6]:
        path = WORK / name / f"lora-{i}.npz"
        if path.exists():
            with np.load(path) as z:
                rows[f"{i}: training"] = train[i][:4]
                rows[f"{i}: samples"] = z["samples"][:4]
    gate = "passes" if arm.get("passed") else "fails"
    fig = image_grid(rows, title=f"arm {name} ({arm['base_steps']} base steps): the gate {gate}", max_cols=8)
    out = RESULTS / "generator_recipe" / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=60)
    plt.close(fig)
    return out


def _table(results: dict) -> str:
    names = list(next(iter(results["arms"].values()))["gate"]) if results.get("arms") else []
    lines = [
        "# Generator recipe study: which base recipe makes the tiny model draw",
        "",
        f"`python benchmarks/generator/recipe_study.py` (see its docstring): each arm's base trained for the steps its"
        f" budget buys at one measured step time ({results.get('step_s', float('nan')):.2f} s on"
        f" {results.get('threads', 1)} thread), then {len(results.get('loras', []))} LoRAs on main training sets of"
        " distinct artists and paintings (rank 4, 60 steps, lr 2e-3 unless the arm says otherwise), their samples"
        " judged"
        " by the fidelity gate against all 108 main training sets of the committed collection. Thresholds below the"
        " table; a value in bold passed. With 12 queries one hit is 1/12 = 0.083: the identification columns move in"
        " steps that large (one hit by texture statistics is about 5 times chance). Wall times are in the JSON file;"
        " they include other work on the machine, so arms compare by steps.",
        "",
        "| arm | settings | base steps | " + " | ".join(names) + " | gate |",
        "|---|---|---|" + "---|" * len(names) + "---|",
    ]
    thresholds = {}
    for name, arm in results.get("arms", {}).items():
        if "gate" not in arm:
            continue
        cells = []
        for check in names:
            g = arm["gate"][check]
            thresholds[check] = g["threshold"]
            cells.append(f"**{g['value']:.3g}**" if g["passed"] else f"{g['value']:.3g}")
        settings = ", ".join(f"{k} {v}" for k, v in arm["settings"].items()) or "the flow recipe"
        lines.append(
            f"| {name} | {settings} | {arm['base_steps']} | "
            + " | ".join(cells)
            + f" | {'passes' if arm['passed'] else 'fails'} |"
        )
    lines += ["", "Thresholds: " + "; ".join(f"{k} {v:g}" for k, v in thresholds.items()), ""]
    if "throughput" in results:
        t = results["throughput"]
        lines.append(
            f"Base-training throughput: one process on 2 threads {t['one_process_2_threads']:.2f} steps/s;"
            f" two processes on 1 thread {t['two_processes_1_thread']:.2f} steps/s in all."
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "data"), help="a built collection: its main training sets")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--budget", type=float, default=900.0, help="seconds of base training per arm")
    parser.add_argument("--long-factor", type=float, default=4.0, help="the long arm's budget, in budgets")
    parser.add_argument("--loras", type=int, default=12)
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--base-samples", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--throughput", action="store_true")
    parser.add_argument("--grids-only", action="store_true", help="redraw the sample grids of finished arms")
    parser.add_argument("--out", type=Path, default=RESULTS / "generator_recipe.json")
    args = parser.parse_args(argv)

    import csv

    import torch

    from lorastyle.collection.build import read_images

    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    with open(Path(args.data) / "manifest.csv", newline="") as f:
        manifest = list(csv.DictReader(f))
    collection_of = {r["id"]: r["collection"] for r in manifest}
    painting = {r["id"]: r["painting"] for r in manifest}
    main_ids = sorted(i for i, c in collection_of.items() if c == "main")
    train = read_images(Path(args.data) / "images.npz", "train", main_ids)
    chosen = _chosen(manifest, args.loras)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.grids_only:
        _save(args.out, results)
        for name in results.get("arms", {}):
            print(_grid(name, results, train))
        args.out.with_suffix(".md").write_text(_table(results))
        return 0
    if results.get("loras") not in (None, chosen) or results.get("budget") not in (None, args.budget):
        raise SystemExit(f"{args.out} was made with other LoRAs or another budget: remove it or pass --out")
    results.update(loras=chosen, budget=args.budget, threads=args.threads)
    if args.throughput and "throughput" not in results:
        results["throughput"] = _throughput(_crops(2000))
        _save(args.out, results)
    for name in args.arms:
        print(f"[{time.strftime('%H:%M:%S')}] arm {name}", flush=True)
        run_arm(name, args, train, painting, collection_of, chosen, results)
        args.out.with_suffix(".md").write_text(_table(results))
        _grid(name, results, train)
        print(_table(results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
