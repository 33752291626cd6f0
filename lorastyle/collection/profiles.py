"""Profiles: one configuration per scale of the same pipeline (a config, never a fork of the code).

``default``
    The embedded collection the book stands on: every Met artist with two works
    or more, the tiny SD-architecture model, offline encoders. Built by
    ``make data`` on a CPU.
``smoke``
    Two artists, a handful of steps: the whole pipeline inside ``make test``.
``paper``
    The paper's setting: ArtBench-10 paintings, Stable Diffusion 1.5, CLIP and
    DINO. Needs a GPU, internet for the weights, and a local ArtBench-10 copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["Profile", "PROFILES", "get_profile"]


@dataclass(frozen=True)
class Profile:
    """Every knob of the collection pipeline.

    Attributes are grouped by stage: which artists and LoRAs (plan), the base
    model, LoRA training, sampling, and the retrieval sweep over sampling settings.
    """

    name: str
    # plan
    training_images: str = "stylized"  # "stylized": varied content in the artist's style; "paintings": their own works
    n_artists: int | None = None  # None: every artist with min_works paintings
    genres: tuple[str, ...] | None = None  # only artists of these genres
    min_works: int = 2
    loras_per_artist: int = 4
    images_per_lora: int = 12
    heldout: bool = True
    training_seeds: int = 2  # training runs of every main LoRA (same images and init, own noise and batches)
    heldout_strangers: bool = True  # held-out LoRAs also trained from their own initialisation seeds
    real_pixels: bool = True
    real_per_painting: int = 2  # real-pixel LoRAs per painting, each on its own crops
    variant_artists: int = 3
    variant_init_seeds: tuple[int, ...] = (1, 2)
    variant_ranks: tuple[int, ...] = (2, 8)
    memorisation_artists: int = 9
    memorisation_images: int = 3
    # images
    resolution: int = 32
    stylize_size: int = 128
    # base model (the tiny model; a profile with extra["model_id"] uses that model as it is)
    objective: str = "flow"  # "flow" (rectified flow) or "epsilon" (DDPM): see collection.diffusion
    time_sampling: str = "uniform"  # flow: how training draws t ("uniform" or "logit_normal")
    loss_weighting: str = "none"  # flow: "none" or "min_snr"
    # collection v3: 4,000 crops and 5,000 steps (benchmarks/generator/recipe_study.py; about 52 min on 2 threads)
    base_images: int = 4000
    base_steps: int = 5000
    base_batch: int = 32
    base_lr: float = 1e-3
    base_warmup: int = 100  # warm-up steps, then a cosine decay to 0.1x (collection.diffusion.BaseRecipe)
    base_ema: float | None = 0.999  # the base is the weights' moving average (None: the last weights)
    # LoRAs
    rank: int = 4
    lora_steps: int = 60
    lora_batch: int = 8
    lora_lr: float = 2e-3
    init_seed: int = 0  # one seed for A's initialisation across the collection, as the paper implies
    # sampling (sample grids; scenario S4 sweeps T and w on the held-out LoRAs)
    samples_per_lora: int = 6
    sample_steps: int = 25
    sample_guidance: float = 3.0
    sweep_steps: tuple[int, ...] = (10, 25, 50)
    sweep_guidance: tuple[float, ...] = (1.0, 3.0, 7.5)
    sweep_samples: int = 4
    # the untrained model's loss gradient on each training set (the zero-training control): draws per set,
    # as many as a LoRA's training sees (lora_steps x lora_batch)
    gradient_draws: int = 480
    # image features
    encoders: tuple[str, ...] = ("efficientnet", "vgg_gram", "magenta")
    seed: int = 0
    extra: dict = field(default_factory=dict)


PROFILES: dict[str, Profile] = {
    "default": Profile(name="default"),
    "smoke": Profile(
        name="smoke",
        n_artists=2,
        loras_per_artist=2,
        images_per_lora=4,
        variant_artists=1,
        variant_init_seeds=(1,),
        variant_ranks=(2,),
        memorisation_artists=1,
        stylize_size=64,
        base_images=32,
        base_steps=2,
        base_batch=8,
        base_warmup=1,
        lora_steps=2,
        lora_batch=4,
        gradient_draws=8,
        samples_per_lora=2,
        sample_steps=2,
        sweep_steps=(2,),
        sweep_guidance=(1.0, 3.0),
        sweep_samples=1,
    ),
    # Figure 1's five genres, five artists each, several LoRAs per artist on their own paintings.
    "paper": Profile(
        name="paper",
        training_images="paintings",
        n_artists=25,
        genres=("art_nouveau", "baroque", "post_impressionism", "renaissance", "ukiyo_e"),
        min_works=90,
        loras_per_artist=5,
        images_per_lora=15,
        real_pixels=False,
        objective="epsilon",  # Stable Diffusion 1.5's
        resolution=512,
        base_steps=0,
        lora_steps=1000,
        lora_batch=4,
        lora_lr=1e-4,
        rank=8,
        samples_per_lora=8,
        sweep_samples=8,
        encoders=("clip", "dino"),
        extra={
            "model_id": "stable-diffusion-v1-5/stable-diffusion-v1-5",
            "dataset": "artbench",
            "artbench_root": "artbench-10-imagefolder-split",
        },
    ),
}


def get_profile(name: str, **overrides) -> Profile:
    """A named profile, optionally with some fields replaced.

    Parameters
    ----------
    name : str
        A key of :data:`PROFILES` (``"default"``, ``"smoke"``, ``"paper"``).
    **overrides
        :class:`Profile` fields to replace, e.g. ``n_artists=2`` (an unknown field
        raises ``TypeError``).

    Returns
    -------
    Profile
        A new frozen profile; :data:`PROFILES` is unchanged.

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from {sorted(PROFILES)}")
    return replace(PROFILES[name], **overrides)
