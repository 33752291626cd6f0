"""Does a LoRA of the tiny generator carry its style into generated images? A recipe study.

Collection v2 needs a generator whose samples through a LoRA are closer to that LoRA's own
training images than to other LoRAs'. This script measures how far LoRA training alone gets
on the committed base model (``data/base.safetensors``): it retrains the held-out LoRAs of
``data/`` (one style painting each, from ``data/images.npz``) with longer schedules and higher
learning rates, samples each checkpoint, and scores the samples against every LoRA's
training images with the skeptic's colour statistics (``experiments.colour_statistics``) and
with raw 8 x 8 pixels (``experiments.downsampled_pixels``).

Per recipe and checkpoint it reports

* ``top1``: the fraction of LoRAs whose samples are nearest to their own training set among
  the ``--loras`` training sets (chance ``1 / loras``), with a Wilson 95% interval;
* ``ratio``: mean over LoRAs of distance(samples, own set) / mean distance(samples, other sets)
  (1 means no preference; step 0, the base model's samples with the same noise, is the control);
* how far the samples moved: their RMS pixel change from the base model's samples with the same
  noise, and the share of the gap between the base samples' mean colour and the training images'
  mean colour that the LoRA closed (1: its samples have its training images' mean colour);
* the LoRA's training loss over its first 10 steps and the 10 steps before each checkpoint.

``--queries N`` trains only the first N of the chosen LoRAs (every chosen training set stays a
candidate), for recipes too slow to run on all of them.

Results go to ``benchmarks/results/generator_lora.json`` (and ``.md``), one entry per
(recipe, LoRA) written as soon as it is done: an interrupted run resumes where it stopped.

    python benchmarks/generator/lora_recipe.py [--loras 9] [--queries N] [--steps 600] [--lr 2e-3 1e-2]

The committed table (``benchmarks/results/generator_lora.md``) comes from, one after the other::

    python benchmarks/generator/lora_recipe.py --queries 3 --lr 2e-3 --steps 600 --checkpoints 60 200 600
    python benchmarks/generator/lora_recipe.py --queries 3 --lr 1e-2 3e-2 --steps 200 --checkpoints 60 200
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


def _chosen(coll, n: int) -> list[str]:
    """n held-out LoRAs of distinct artists, spread over the sorted list (deterministic)."""
    ids = coll.ids("heldout")
    picks = np.linspace(0, len(ids) - 1, n).round().astype(int)
    return [ids[i] for i in sorted(set(picks.tolist()))]


def _scores(gen: dict[str, np.ndarray], train: dict[str, np.ndarray], describe) -> tuple[int, float]:
    """(queries whose own training set is nearest, mean own/others distance ratio).

    Every set of ``gen`` is a query; every set of ``train`` is a candidate (``train`` may hold more).
    """
    ids = sorted(train)
    T = np.stack([describe(train[i]) for i in ids])
    hits, ratios = 0, []
    for i, g in gen.items():
        k = ids.index(i)
        d = np.linalg.norm(T - describe(g), axis=1)
        hits += int(np.argmin(d) == k)
        ratios.append(d[k] / np.delete(d, k).mean())
    return hits, float(np.mean(ratios))


def _effect(
    gen: dict[str, np.ndarray], base: dict[str, np.ndarray], train: dict[str, np.ndarray]
) -> tuple[float, float]:
    """(RMS pixel change from the base model's samples with the same noise, share of the mean-colour gap closed).

    The gap is the distance between the mean colour of the base model's samples and that of the
    LoRA's training images; 1 means the LoRA's samples have its training images' mean colour.
    """
    rms, closed = [], []
    for i, g in gen.items():
        g, b = g.astype(float), base[i].astype(float)
        rms.append(np.sqrt(np.mean((g - b) ** 2)))
        target = train[i].reshape(-1, 3).mean(0)
        gap = np.linalg.norm(b.reshape(-1, 3).mean(0) - target)
        closed.append(1 - np.linalg.norm(g.reshape(-1, 3).mean(0) - target) / gap)
    return float(np.mean(rms)), float(np.mean(closed))


def _samples(cache: Path, key: str, step: int) -> np.ndarray:
    with np.load(cache / (key.replace("/", "__") + ".npz")) as z:
        return z[str(step)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "data"))
    parser.add_argument("--loras", type=int, default=9, help="candidate training sets (held-out LoRAs)")
    parser.add_argument("--queries", type=int, default=None, help="train only the first N of them (default: all)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[60, 200, 600])
    parser.add_argument("--lr", type=float, nargs="+", default=[2e-3, 1e-2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "generator_lora.json"))
    args = parser.parse_args(argv)

    import torch

    from lorastyle.book.experiments import colour_statistics, downsampled_pixels, load_collection, wilson_interval
    from lorastyle.collection.build import CONDITION, load_base
    from lorastyle.collection.diffusion import TrainedLora, generate, train_lora

    torch.set_num_threads(args.threads)
    coll = load_collection(args.data)
    model = load_base(Path(args.data) / "base.safetensors")
    ids = _chosen(coll, args.loras)
    train = {i: coll.images(i, "train") for i in ids}
    checkpoints = sorted(set(args.checkpoints) | {args.steps})
    out = Path(args.out)
    done = json.loads(out.read_text()) if out.exists() else {}
    if done.get("loras") not in (None, ids):
        raise SystemExit(f"{out} was made with other LoRAs: remove it or pass --out")
    done["loras"] = ids
    runs = done.setdefault("runs", {})
    cache = out.parent / ".generator-samples"  # uint8 samples per run (not committed; the table is)

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(done, indent=1))
        tmp.replace(out)

    def sample(lora, seed):
        return generate(model, args.samples, CONDITION, steps=25, guidance=3.0, seed=seed, lora=lora)

    base = {i: sample(None, k) for k, i in enumerate(ids)}  # the same noise as each LoRA's samples
    describe = {"colour": colour_statistics, "pixels": downsampled_pixels}
    for lr in args.lr:
        for k, i in enumerate(ids[: args.queries]):
            key = f"lr{lr:g}-steps{args.steps}-batch{args.batch}/{i}"
            if key in runs and (cache / (key.replace("/", "__") + ".npz")).exists():
                continue
            t = time.perf_counter()
            result = train_lora(
                model,
                train[i],
                CONDITION,
                rank=4,
                alpha=4,
                steps=args.steps,
                batch_size=args.batch,
                lr=lr,
                seed=k,
                init_seed=0,
                checkpoints=checkpoints,
            )
            entry = {"train_s": time.perf_counter() - t, "loss_first10": float(np.mean(result.losses[:10]))}
            entry["loss_last10"] = {str(c): float(np.mean(result.losses[c - 10 : c])) for c in checkpoints}
            samples = {
                str(c): sample(TrainedLora(factors=result.checkpoints[c], rank=4, alpha=4.0, losses=[]), k)
                for c in checkpoints
            }
            cache.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(cache / (key.replace("/", "__") + ".npz"), **samples)
            runs[key] = entry
            save()
            print(
                f"{key}: {entry['train_s']:.0f} s, loss {entry['loss_first10']:.4f} -> "
                f"{entry['loss_last10'][str(args.steps)]:.4f}",
                flush=True,
            )

    # the table: one row per (recipe, checkpoint) over the LoRAs trained so far, and the base model's
    # samples (the same noise) on the same queries as the control; candidates: all chosen training sets
    rows = []
    recipes = sorted({k.split("/")[0] for k in runs})
    for recipe in recipes:
        queries = [i for i in ids if f"{recipe}/{i}" in runs]
        steps = sorted(int(c) for c in runs[f"{recipe}/{queries[0]}"]["loss_last10"])
        for c in [0, *steps]:
            if c == 0:
                gen = {i: base[i] for i in queries}
            else:
                gen = {i: _samples(cache, f"{recipe}/{i}", c) for i in queries}
            rms, closed = _effect(gen, base, train)
            loss = (
                np.mean([runs[f"{recipe}/{i}"]["loss_last10"][str(c)] for i in queries])
                if c
                else np.mean([runs[f"{recipe}/{i}"]["loss_first10"] for i in queries])
            )
            for name, fn in describe.items():
                hits, ratio = _scores(gen, train, fn)
                rows.append(
                    {
                        "recipe": recipe,
                        "step": c,
                        "features": name,
                        "n": len(queries),
                        "hits": hits,
                        "top1_ci": list(wilson_interval(hits / len(queries), len(queries))),
                        "ratio": ratio,
                        "rms_from_base": rms,
                        "colour_gap_closed": closed,
                        "loss": float(loss),
                    }
                )
    done["table"] = rows
    done["chance"] = 1 / len(ids)
    save()
    lines = [
        f"# Generator study: held-out LoRAs retrained on the committed base (candidates: {len(ids)} training"
        f" sets, chance {1 / len(ids):.3f})",
        "",
        "`python benchmarks/generator/lora_recipe.py` (see its docstring). Step 0: the base model's samples,"
        " no LoRA. Loss: mean training loss of the first 10 steps (step 0) or of the 10 steps before the"
        " checkpoint.",
        "",
        "| recipe | step | loss | features | own set nearest | 95% interval | own/others distance |"
        " RMS change from base samples (0-255) | mean-colour gap closed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["top1_ci"]
        lines.append(
            f"| {r['recipe']} | {r['step']} | {r['loss']:.4f} | {r['features']} | {r['hits']}/{r['n']} |"
            f" [{lo:.2f}, {hi:.2f}] | {r['ratio']:.3f} | {r['rms_from_base']:.1f} | {r['colour_gap_closed']:.2f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
