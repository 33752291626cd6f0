"""The collection's own figures: one sample grid per artist and the loss curves, as PNG files.

``make data`` runs ``python -m lorastyle.book.figures data`` after the build: the pipeline
(:mod:`lorastyle.collection.build`) writes the images and losses, and this module draws them,
so that the pipeline never imports the book's helpers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .experiments import Collection, load_collection, loss_curves
from .viz import image_grid, loss_plot, use_style

__all__ = ["write_figures", "sample_grid_rows", "main"]


def sample_grid_rows(coll: Collection, artist: str, base: np.ndarray | None) -> tuple[str, dict[str, np.ndarray]]:
    """The rows of one artist's sample grid: training and generated images, the base model, real pixels.

    Parameters
    ----------
    coll : Collection
    artist : str
    base : ndarray of shape (k, H, W, 3) or None
        The base model's samples (no LoRA), or None for a collection built without them.

    Returns
    -------
    lora_id : str
        The artist's first main LoRA, whose images fill the first rows.
    rows : dict of str to ndarray
    """
    mine = [r for r in coll.rows if r["artist"] == artist]
    first = next(r for r in mine if r["collection"] == "main")
    rows = {
        "training images": coll.images(first["id"], "train")[:8],
        "generated with the LoRA": coll.images(first["id"], "gen"),
    }
    if base is not None:
        rows["base model, no LoRA"] = base
    real = next((r for r in mine if r["collection"] == "real"), None)
    if real is not None:
        try:
            generated = coll.images(real["id"], "gen")
        except KeyError:
            generated = None
        if generated is not None:
            rows["real-pixel LoRA: crops"] = coll.images(real["id"], "train")[:8]
            rows["real-pixel LoRA: generated"] = generated
    return first["id"], rows


def write_figures(root: str | Path) -> list[Path]:
    """Draw a built collection's figures into ``ROOT/figures``; return the files written.

    Parameters
    ----------
    root : str or path
        A collection folder written by :func:`lorastyle.collection.build.build_collection`.

    Returns
    -------
    list of Path
    """
    import matplotlib.pyplot as plt

    coll = load_collection(root)
    folder = Path(root) / "figures"
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    with np.load(Path(root) / "images.npz", allow_pickle=False) as data:
        base = data["base"] if "base" in data.files else None
    written = []
    with use_style():
        for artist in sorted({r["artist"] for r in coll.rows if r["collection"] == "main"}):
            lora_id, rows = sample_grid_rows(coll, artist, base)
            genre = coll.by_id[lora_id]["genre"]
            fig = image_grid(rows, title=f"{artist} ({genre}): {lora_id}", max_cols=8)
            path = folder / "samples" / f"{lora_id.split('-', 1)[1].rsplit('-', 1)[0]}.png"
            fig.savefig(path)
            plt.close(fig)
            written.append(path)
        curves = loss_curves(coll)
        fig, axes = plt.subplots(1, 2, figsize=(13, 3.8), width_ratios=(1, 1.1))
        if curves["base"]:
            loss_plot(axes[0], curves["base"], smooth=50, title="Base model pre-training loss")
        loss_plot(
            axes[1],
            curves["loras"],
            smooth=10,
            title="LoRA training loss, mean per collection, against the base model",
            reference=curves["reference"],
        )
        axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)  # beside the curves, not over them
        path = folder / "loss_curves.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m lorastyle.book.figures ROOT``: draw a built collection's figures."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("root", nargs="?", default="data")
    args = parser.parse_args(argv)
    for path in write_figures(args.root):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
