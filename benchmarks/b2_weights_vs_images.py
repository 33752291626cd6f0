"""B2: the cost of a style descriptor for one new LoRA, from its weights against from images.

Tiny model of the embedded collection (``data/base.safetensors``, read only) and one of its
trained LoRAs (``data/loras/main``). From weights: ``load_lora`` + descriptor + calibrated
projection into an index of the collection (``LoraIndex.project``; the index is built once,
untimed), for ``concat`` and ``gram``. From images: K = 8 images at T = 25 DDIM steps and
guidance w = 3 (``lorastyle.collection.diffusion.generate``, the LoRA applied), then each encoder's
``encode`` (encoders built once, untimed). Medians of ``--repeats`` runs, in the same run.
"""

from __future__ import annotations

import glob
from pathlib import Path

import _common as c

GOAL = 1000.0
K_IMAGES, STEPS, GUIDANCE = 8, 25, 3.0
# Published SD 1.5 timing used for the extrapolation (fal-ai/stable-diffusion-benchmarks README):
# A100 80GB SXM, diffusers (torch 2.1, SDPA), fp16, 512x512, 50 steps: 31.44 it/s, median 1.590 s per image.
SD15_IT_PER_S = 31.44
SD15_SOURCE = "https://github.com/fal-ai/stable-diffusion-benchmarks"


def main() -> None:
    args = c.parser(__doc__.split("\n")[0]).parse_args()
    import torch

    from lorastyle.collection.build import CONDITION, load_base
    from lorastyle.collection.diffusion import TrainedLora, generate
    from lorastyle.collection.features import get_encoder
    from lorastyle.index import build_index, read_record
    from lorastyle.io.formats import load_lora

    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    repeats = args.repeats or (1 if args.quick else 5)
    k_images, steps = (2, 2) if args.quick else (K_IMAGES, STEPS)
    data = c.ROOT / "data"
    files = sorted(glob.glob(str(data / "loras" / "main" / "*.safetensors")))
    if len(files) < 5:
        raise SystemExit(f"B2 needs the embedded collection: run `make data` ({len(files)} LoRAs in {data})")
    new, fitted = files[0], files[1:]
    model = load_base(data / "base.safetensors")
    rows, results = [], {}
    weights_s = {}
    for descriptor in ("concat", "gram"):
        index, _, _ = build_index(fitted, descriptor=descriptor, n_components=8)

        def query(index=index, descriptor=descriptor):
            return index.similar(read_record(new, sketcher=index.sketcher, descriptor=descriptor), k=10)

        t, _ = c.median_time(query, repeats=max(repeats, 5))
        weights_s[descriptor] = t
        rows.append([f"weights: read + {descriptor} sketch + search ({len(fitted)} indexed)", c.fmt(t * 1e3), "-"])
    lora = load_lora(new)
    mods = lora.modules.values()
    trained = TrainedLora(
        factors={m.name: (m.factors["lora_down"], m.factors["lora_up"]) for m in mods},
        rank=lora.ranks[0],
        alpha=float(lora.alphas[0]) if lora.alphas else float(lora.ranks[0]),
        losses=[],
    )
    images = {}

    def gen():
        images["x"] = generate(model, k_images, CONDITION, steps=steps, guidance=GUIDANCE, seed=0, lora=trained)

    t_gen, _ = c.median_time(gen, repeats=repeats)
    rows.append([f"images: generate K={k_images}, T={steps}, w={GUIDANCE:g}", c.fmt(t_gen * 1e3), "-"])
    encode_s = {}
    for key in ("efficientnet", "vgg_gram", "magenta"):
        enc = get_encoder(key)
        t_enc, _ = c.median_time(lambda enc=enc: enc.encode(images["x"]), repeats=repeats)
        encode_s[key] = t_enc
    w = weights_s["concat"]
    for key, t_enc in encode_s.items():
        total = t_gen + t_enc
        ratio = total / w
        results[key] = {
            "encode_s": t_enc,
            "images_total_s": total,
            "ratio_to_concat": ratio,
            "ratio_to_gram": total / weights_s["gram"],
        }
        rows.append(
            [f"images: generate + encode ({key})", c.fmt(total * 1e3), f"{c.fmt(ratio)}x ({c.verdict(ratio >= GOAL)})"]
        )
    # extrapolation to SD 1.5 at 512 px on a GPU, from the published per-step speed
    sd15_gen = k_images * steps / SD15_IT_PER_S if not args.quick else K_IMAGES * STEPS / SD15_IT_PER_S
    body = c.table(
        ["route to a descriptor of one new LoRA", "time ms (median)", f"images / weights (concat); goal >= {GOAL:g}x"],
        rows,
    )
    body += (
        f"\n\nTiny model (32 px, 1.66M-parameter U-Net) on this CPU; one LoRA of the collection "
        f"({Path(new).name}) as the new one, projected into an index of the other {len(fitted)}. "
        f"Medians of {repeats} runs (weights: of {max(repeats, 5)}). Encoders and the index are built "
        "once, outside the timings, as a service would. Ratio of the image route to the weight route "
        "(concat), measured in the same run: "
        + ", ".join(f"{k} {c.fmt(v['ratio_to_concat'])}x" for k, v in results.items())
        + "; against gram: "
        + ", ".join(f"{k} {c.fmt(v['ratio_to_gram'])}x" for k, v in results.items())
        + ".\n\n"
        f"**Extrapolation to SD 1.5, 512 px, on a GPU** (on paper): the fal.ai benchmark ({SD15_SOURCE}) "
        f"measures {SD15_IT_PER_S} denoising steps per second for SD 1.5 at 512x512, fp16, diffusers "
        "with SDPA on an A100 80 GB (50 steps, classifier-free guidance, median 1.59 s per image end to "
        f"end). K = {K_IMAGES} images at T = {STEPS} are {K_IMAGES * STEPS} steps: about "
        f"{c.fmt(sd15_gen, 2)} s per LoRA before any encoder. The weight route for an SD 1.5 rank-8 LoRA "
        "(9.5 MB) is a file read and a projection, about 0.1-0.3 s on this CPU (B1 gives the rate), so "
        f"the ratio there is roughly {c.fmt(sd15_gen / 0.3, 2)}-{c.fmt(sd15_gen / 0.1, 2)}x on one GPU "
        "against one CPU core, far below 1,000x: for full-size models the advantage is the GPU the "
        "weight route does not need, not a thousandfold in time."
    )
    c.write_results(
        "b2",
        "Weights against images, per new LoRA",
        {
            "weights_s": weights_s,
            "generate_s": t_gen,
            "encoders": results,
            "k_images": k_images,
            "steps": steps,
            "guidance": GUIDANCE,
            "repeats": repeats,
            "new_lora": Path(new).name,
            "n_indexed": len(fitted),
            "sd15_extrapolated_generate_s": sd15_gen,
            "sd15_source": SD15_SOURCE,
            "sd15_it_per_s": SD15_IT_PER_S,
        },
        body,
        args.out,
        args.quick,
    )


if __name__ == "__main__":
    main()
