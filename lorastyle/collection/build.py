"""Build a LoRA collection end to end: base model, LoRAs, samples, features, manifest.

``make data`` runs :func:`build_collection` with the ``default`` profile into
``data/``; the ``smoke`` profile runs the same code in seconds inside the tests.
Every stage is resumable: a LoRA file, a sample set or a feature vector that
already exists for the same specification is not computed again, so an
interrupted build continues where it stopped.

Layout of the output folder::

    plan.json                  every LoRA's specification (training images: content, box, style)
    base.safetensors           the pre-trained tiny model (U-Net + condition table)
    loras/<collection>/<id>.safetensors   LoRAs, diffusers/PEFT layout, metadata inside
    losses.json                loss curves (base and every LoRA)
    features/<encoder>.npz     per-LoRA mean features: train/<id> and gen/<T>-<w>/<id>
    samples.npz                every sampled LoRA's samples at the default setting (key: its id), the base
                               model's (``base``) and 256 of its training crops (``base_train``): the
                               fidelity gate's inputs (lorastyle.book.fidelity), read without torch
    held_losses.json           per LoRA, the loss on fixed draws of its training images with B = 0 and trained
    manifest.csv               file, sha256, artist, genre, painting (the three levels of truth), collection,
                               seeds, rank, training images
    cache/                     rendered training images and samples (not committed)
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..io.atomic import atomic_path, atomic_write
from ..io.formats import load_lora, save_lora
from ..io.safetensors import read_safetensors, write_safetensors
from .plan import Artwork, LoraSpec, plan_collection
from .profiles import Profile

__all__ = [
    "build_collection",
    "source_artworks",
    "artbench_sources",
    "render_training_images",
    "load_base",
    "save_base",
    "base_recipe",
    "isometric_coordinates",
    "write_images",
    "read_images",
    "write_gradient_features",
    "write_fidelity_inputs",
    "sample_settings",
    "main",
]

CONDITION = 1  # the tiny model's generic "a painting" condition; 0 is the null condition
# Collections sampled over the sweep of T and w as well as at the default setting: the index (main) and
# the unseen queries (held-out) of retrieval scenario S4, drawn alike
SWEPT_COLLECTIONS = ("main", "heldout")


def _write_json(path: Path, obj, **kwargs) -> None:
    """Write JSON atomically: an interrupted build never leaves a half-written file to resume from."""
    atomic_write(path, json.dumps(obj, **kwargs))


def _save_npy(path: Path, array: np.ndarray) -> None:
    """np.save, atomically: a killed build leaves no truncated cache file for the resumed one to read."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array, allow_pickle=False)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def source_artworks(
    profile: Profile,
) -> tuple[list[Artwork], dict[str, str], list[Artwork], list[Artwork], Callable[[str], np.ndarray]]:
    """The default profile's sources.

    The Met paintings of :func:`lorastyle.collection.datasets.met_paintings`, split
    three ways: style references, content, and the base model's pre-training pool;
    plus the photos of :func:`lorastyle.collection.datasets.content_images` as content.

    Parameters
    ----------
    profile : Profile
        Uses ``min_works`` (works an artist needs to be a style reference) and ``seed``
        (the split of the other hands' paintings).

    Returns
    -------
    paintings : list of Artwork
        Paintings (id ``met-<object id>``) of artists that have a genre and at least
        ``profile.min_works`` Met paintings (style references), sorted by id.
    genres : dict of str to str
        Artist -> genre, for every artist of ``artist_genres.csv``.
    content : list of Artwork
        Photos (id ``photo-<name>``, artist None) and paintings by other hands (artist
        None): content for stylisation.
    base_pool : list of Artwork
        Paintings used only to pre-train the base model (never in a LoRA): the first
        ``len(others) // 2 - 10`` of a seeded permutation of the other hands' paintings;
        the rest are content.
    load : callable
        Artwork id -> RGB uint8 image of shape (height, width, 3), read once and then cached.
    """
    from .datasets import artist_genres, content_images, met_paintings

    genres = {a: g.genre for a, g in artist_genres().items()}
    met = {f"met-{p.object_id}": p for p in met_paintings()}
    photos = content_images()
    counts: dict[str, int] = {}
    for p in met.values():
        counts[p.artist] = counts.get(p.artist, 0) + 1
    is_style = {k: p.artist in genres and counts[p.artist] >= profile.min_works for k, p in met.items()}
    paintings = [Artwork(k, p.artist, p.height, p.width) for k, p in sorted(met.items()) if is_style[k]]
    others = sorted(k for k in met if not is_style[k])
    # Half of the other hands' paintings pre-train the base, half are content: the base never saw a LoRA's image.
    rng = np.random.default_rng(profile.seed)
    order = rng.permutation(len(others))
    base_ids = sorted(others[i] for i in order[: len(others) // 2 - 10])
    content_ids = sorted(others[i] for i in order[len(others) // 2 - 10 :])
    content = [Artwork(k, None, met[k].height, met[k].width) for k in content_ids]
    content += [Artwork(f"photo-{name}", None, *img.shape[:2]) for name, img in sorted(photos.items())]
    base_pool = [Artwork(k, None, met[k].height, met[k].width) for k in base_ids]
    cache: dict[str, np.ndarray] = {}

    def load(art_id: str) -> np.ndarray:
        if art_id not in cache:
            cache[art_id] = photos[art_id[6:]] if art_id.startswith("photo-") else met[art_id].load_image()
        return cache[art_id]

    return paintings, genres, content, base_pool, load


def artbench_sources(root: str | os.PathLike) -> tuple[list[Artwork], dict[str, str], Callable[[str], np.ndarray]]:
    """The paper profile's sources: a local ArtBench-10 copy (artist -> the style most of their images have).

    Parameters
    ----------
    root : str or path
        The ArtBench-10 ImageFolder copy (see
        :func:`lorastyle.collection.datasets.artbench_paintings`).

    Returns
    -------
    paintings : list of Artwork
        One per image, sorted by id: the image's path relative to ``root`` (e.g.
        ``train/baroque/<file>.jpg``), its artist and its size in pixels.
    genres : dict of str to str
        Artist -> the ArtBench style most of their images have.
    load : callable
        Artwork id -> RGB uint8 image of shape (height, width, 3), read from disk at each call.
    """
    from collections import Counter

    from .datasets import artbench_paintings, load_image

    images = artbench_paintings(root)
    styles: dict[str, Counter] = {}
    for im in images:
        styles.setdefault(im.artist, Counter())[im.style] += 1
    genres = {a: c.most_common(1)[0][0] for a, c in styles.items()}
    paths = {str(im.path.relative_to(root)): im for im in images}
    paintings = []
    for key, im in sorted(paths.items()):
        with Image.open(im.path) as img:  # the header only
            width, height = img.size
        paintings.append(Artwork(key, im.artist, height, width))
    return paintings, genres, lambda key: load_image(paths[key].path)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS))


def render_training_images(
    spec: LoraSpec,
    load: Callable[[str], np.ndarray],
    profile: Profile,
    stylizer=None,
    style_vectors: dict | None = None,
) -> np.ndarray:
    """The training images of one LoRA, rendered at ``profile.resolution``.

    Stylised images: the content crop at ``stylize_size``, rendered in the style
    painting's style by Magenta's network, then downsampled. Real-pixel images:
    the crop itself, downsampled.

    Parameters
    ----------
    spec : LoraSpec
        The LoRA; each of ``spec.images`` gives a content id, a square crop box
        ``(x0, y0, x1, y1)`` in pixels, and a style painting id or None.
    load : callable
        Artwork id -> RGB uint8 image of shape (height, width, 3).
    profile : Profile
        Uses ``resolution`` (side of the returned images) and ``stylize_size`` (side
        at which crops are stylised).
    stylizer : MagentaStyleEncoder, optional
        Needed when any image has a style.
    style_vectors : dict of str to ndarray, optional
        Cache of style vectors by painting id, filled in place (reuse one dict across
        LoRAs). None passes the style painting itself to the stylizer each time.

    Returns
    -------
    ndarray of shape (len(spec.images), profile.resolution, profile.resolution, 3), dtype uint8
        Resized with Lanczos filtering, in the order of ``spec.images``.
    """
    out = []
    for im in spec.images:
        x0, y0, x1, y1 = im.box
        crop = load(im.content)[y0:y1, x0:x1]
        if im.style is not None:
            if style_vectors is not None and im.style not in style_vectors:
                style_vectors[im.style] = stylizer.style_vector(load(im.style))
            style = style_vectors[im.style] if style_vectors is not None else load(im.style)
            crop = stylizer.stylize(_resize(crop, profile.stylize_size), style)
        out.append(_resize(crop, profile.resolution))
    return np.stack(out)


def save_base(model, path: Path, training: dict | None = None) -> None:
    """Write the tiny model's weights as safetensors (never a pickle).

    Parameters
    ----------
    model : DiffusionModel
        The tiny model, with a ``label_encoder``; its tensors are written as
        ``unet.<name>`` and ``label_encoder.<name>``, with metadata
        ``lorastyle.model`` (``"tiny"``), ``lorastyle.objective`` and
        ``lorastyle.scheduler`` (its ``scheduler_config`` as JSON).
    path : Path
        The ``.safetensors`` file to write.
    training : dict, optional
        How it was trained (images, steps, batch, learning rate, recipe), written as
        ``lorastyle.training`` (JSON).
    """
    tensors = {f"unet.{k}": v.detach().cpu().numpy() for k, v in model.unet.state_dict().items()}
    tensors.update(
        {f"label_encoder.{k}": v.detach().cpu().numpy() for k, v in model.label_encoder.state_dict().items()}
    )
    meta = {
        "lorastyle.model": "tiny",
        "lorastyle.objective": model.objective,
        "lorastyle.scheduler": json.dumps(model.scheduler_config, sort_keys=True),
    }
    if training is not None:
        meta["lorastyle.training"] = json.dumps(training, sort_keys=True)
    write_safetensors(path, tensors, meta)


def load_base(path: Path, n_labels: int = 8):
    """Read a tiny model written by :func:`save_base`.

    Parameters
    ----------
    path : Path
        A ``.safetensors`` file written by :func:`save_base`. A file without
        ``lorastyle.scheduler`` (collections v1 and v2) is an epsilon model.
    n_labels : int, default=8
        Size of the condition table; must match the saved model's.

    Returns
    -------
    DiffusionModel
        A :func:`lorastyle.collection.diffusion.tiny_model` with the saved weights and
        schedule, its U-Net in eval mode.

    Raises
    ------
    ValueError
        For a file that names an unknown objective.
    """
    import torch

    from .diffusion import DiffusionModel, tiny_model

    tensors, meta = read_safetensors(path)
    model = tiny_model(n_labels=n_labels)
    config = json.loads(meta["lorastyle.scheduler"]) if "lorastyle.scheduler" in meta else None
    if config is None:
        from .diffusion import _scheduler_config

        config = _scheduler_config(objective="epsilon")
    model = DiffusionModel(unet=model.unet, scheduler_config=config, base=model.base, label_encoder=model.label_encoder)
    for prefix, module in (("unet.", model.unet), ("label_encoder.", model.label_encoder)):
        state = {k[len(prefix) :]: torch.from_numpy(v.copy()) for k, v in tensors.items() if k.startswith(prefix)}
        module.load_state_dict(state)
    model.unet.eval()
    return model


def _spec_hash(spec: LoraSpec, profile: Profile, base_sha256: str) -> str:
    """What a LoRA file must have been made from to be reused: its spec, the schedule, and the base model."""
    blob = json.dumps(
        [
            spec.to_dict(),
            profile.lora_steps,
            profile.lora_batch,
            profile.lora_lr,
            profile.resolution,
            profile.stylize_size,
            base_sha256,
        ],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _lora_path(out: Path, spec: LoraSpec) -> Path:
    return out / "loras" / spec.collection / f"{spec.id}.safetensors"


def _base_images(profile: Profile, base_pool, load) -> np.ndarray:
    """The base model's ``profile.base_images`` pre-training crops, spread over the base pool's paintings."""
    from .datasets import painting_crops

    per = -(-profile.base_images // len(base_pool))
    images = np.concatenate(
        [
            painting_crops(load(a.id), per, profile.resolution, scale=(0.3, 1.0), random_state=profile.seed + i)[0]
            for i, a in enumerate(base_pool)
        ]
    )
    return images[: profile.base_images]


def base_recipe(profile: Profile):
    """The :class:`~lorastyle.collection.diffusion.BaseRecipe` a profile's base model is trained with.

    Parameters
    ----------
    profile : Profile
        Uses ``base_warmup`` and ``base_ema``; the other settings are the recipe's defaults.

    Returns
    -------
    BaseRecipe
    """
    from .diffusion import BaseRecipe

    return BaseRecipe(warmup_steps=profile.base_warmup, ema_decay=profile.base_ema)


def _train_base(out: Path, profile: Profile, base_pool, load, losses: dict, device: str = "cpu"):
    from .diffusion import tiny_model, train_base

    path = out / "base.safetensors"
    if path.exists():
        return load_base(path).to(device)
    _log(f"base: {profile.base_images} crops of {len(base_pool)} paintings, {profile.base_steps} steps")
    images = _base_images(profile, base_pool, load)
    model = tiny_model(
        seed=profile.seed,
        objective=profile.objective,
        time_sampling=profile.time_sampling,
        loss_weighting=profile.loss_weighting,
    ).to(device)
    recipe = base_recipe(profile)
    # kept every 200 steps: an interrupted build resumes the base where it stopped
    state = out / "cache" / "base-state.safetensors"
    losses["base"] = train_base(
        model,
        images,
        [CONDITION] * len(images),
        steps=profile.base_steps,
        batch_size=profile.base_batch,
        lr=profile.base_lr,
        seed=profile.seed,
        recipe=recipe,
        state_path=state,
    )
    training = dict(
        images=len(images),
        steps=profile.base_steps,
        batch=profile.base_batch,
        lr=profile.base_lr,
        seed=profile.seed,
        recipe=recipe.to_dict(),
    )
    save_base(model, path, training)
    return model


@contextlib.contextmanager
def _torch_threads(n: int):
    """torch on at least ``n`` threads inside the block, as it was after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(n, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _lora_schedule(spec: LoraSpec, profile: Profile) -> dict:
    """The keyword arguments of :func:`lorastyle.collection.diffusion.train_lora` for one LoRA."""
    return dict(
        rank=spec.rank,
        alpha=spec.rank,
        steps=profile.lora_steps,
        batch_size=profile.lora_batch,
        lr=profile.lora_lr,
        seed=spec.seed,
        init_seed=spec.init_seed,
    )


_WORKER_MODEL = None  # the base model of a training worker process (set by _start_worker, in that process only)


def _start_worker(base_path: str) -> None:
    import torch

    global _WORKER_MODEL
    torch.set_num_threads(1)
    _WORKER_MODEL = load_base(Path(base_path))


def _gradient_in_worker(images: np.ndarray, draws: int) -> np.ndarray:
    from .diffusion import loss_gradients

    return loss_gradients(_WORKER_MODEL, {"set": images}, CONDITION, draws=draws)["set"]


def _train_in_worker(images: np.ndarray, condition, schedule: dict):
    from .diffusion import train_lora

    return train_lora(_WORKER_MODEL, images, condition, **schedule)


def _train_loras(todo, train_images, model, profile: Profile, condition, *, jobs: int, base_path: Path):
    """Train the LoRAs of ``todo`` ((spec, key) pairs); yield their TrainedLora in the order of ``todo``."""
    from .diffusion import train_lora

    if jobs == 1 or len(todo) < 2:
        for spec, _ in todo:
            yield train_lora(model, train_images[spec.id], condition, **_lora_schedule(spec, profile))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a forked torch with threads already started can deadlock
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(str(base_path),)) as pool:
        futures = [
            pool.submit(_train_in_worker, train_images[spec.id], condition, _lora_schedule(spec, profile))
            for spec, _ in todo
        ]
        for future in futures:
            yield future.result()


def _lora_for_sampling(path: Path):
    """A LoRA file of the collection as the TrainedLora that :func:`generate` applies."""
    from .diffusion import TrainedLora

    loaded = load_lora(path)
    rank = loaded.ranks[0]
    scale = next(iter(loaded.modules.values())).scale
    return TrainedLora(
        factors={n: (m.down, m.up) for n, m in loaded.modules.items()}, rank=rank, alpha=scale * rank, losses=[]
    )


def _sample_one(model, path: Path, settings, seed: int, condition, images: np.ndarray) -> tuple[dict, list]:
    """A LoRA's samples at each setting, and its held loss with B = 0 and trained (the LoRA attached once)."""
    from .diffusion import generate, held_loss, lora_applied

    base_loss = held_loss(model, images, condition, seed=0)
    with lora_applied(model, _lora_for_sampling(path)):
        samples = {(T, w, k): generate(model, k, condition, steps=T, guidance=w, seed=seed) for T, w, k in settings}
        trained_loss = held_loss(model, images, condition, seed=0)
    return samples, [float(f"{base_loss:.6g}"), float(f"{trained_loss:.6g}")]


def _sample_in_worker(path: str, settings, seed: int, condition, images: np.ndarray) -> tuple[dict, list]:
    return _sample_one(_WORKER_MODEL, Path(path), settings, seed, condition, images)


def _sample_loras(todo, out: Path, model, condition, train_images, *, jobs: int, base_path: Path):
    """Sample the LoRAs of ``todo`` ((spec, settings) pairs); yield ({setting: images}, held losses) in order.

    A LoRA's samples at a setting depend on its file, the setting and its seed only: one process or
    several give the same images up to float rounding.
    """
    if jobs == 1 or len(todo) < 2:
        for spec, settings in todo:
            yield _sample_one(model, _lora_path(out, spec), settings, spec.seed, condition, train_images[spec.id])
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(str(base_path),)) as pool:
        futures = [
            pool.submit(
                _sample_in_worker, str(_lora_path(out, spec)), settings, spec.seed, condition, train_images[spec.id]
            )
            for spec, settings in todo
        ]
        for future in futures:
            yield future.result()


def sample_settings(profile: Profile) -> tuple[tuple, set]:
    """The sampling settings (T, w, images) of a profile: the default, and the sweep around it.

    The sweep moves one factor at a time from the default: every T of ``sweep_steps`` at the
    default guidance, every w of ``sweep_guidance`` at the default T, each with ``sweep_samples``
    images.

    Parameters
    ----------
    profile : Profile

    Returns
    -------
    default : tuple of (int, float, int)
    sweep : set of tuple of (int, float, int)
    """
    default = (profile.sample_steps, profile.sample_guidance, profile.samples_per_lora)
    k = profile.sweep_samples
    sweep = {(T, profile.sample_guidance, k) for T in profile.sweep_steps}
    sweep |= {(profile.sample_steps, w, k) for w in profile.sweep_guidance}
    return default, sweep


def build_collection(
    profile: Profile,
    out: str | os.PathLike,
    *,
    model=None,
    encoders: dict | None = None,
    stylizer=None,
    progress: bool = True,
    device: str = "cpu",
    jobs: int = 1,
) -> dict:
    """Run every stage of the pipeline; skip what is already done.

    Parameters
    ----------
    profile : Profile
    out : path
        Output folder (created).
    model : DiffusionModel, optional
        A ready model (no base training). Default: the tiny model, pre-trained
        here, or for a profile with ``extra["model_id"]`` that Stable Diffusion.
    encoders : dict of str to ImageEncoder, optional
        Defaults to :func:`lorastyle.collection.features.get_encoder` for ``profile.encoders``.
    stylizer : MagentaStyleEncoder, optional
        Defaults to the Magenta encoder.
    progress : bool, default=True
    device : str, default="cpu"
        Where the diffusion model trains and samples (``cuda`` on a GPU machine). Random numbers
        are drawn on the CPU and moved, so the draws do not depend on the device.
    jobs : int, default=1
        LoRAs trained at once, each in its own process on one thread (CPU, tiny model only):
        the tiny model's small batches keep one core busy at best, so two jobs on two cores
        train about twice as many LoRAs per hour. The weights equal those of ``jobs=1`` up to
        float rounding (the thread count changes the order of sums).

    Returns
    -------
    dict
        Seconds spent per stage and counts (also written to ``out/build_log.json``).
    """
    from tqdm.auto import tqdm

    from .diffusion import generate
    from .features import MagentaStyleEncoder, get_encoder, mean_features

    out = Path(out)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    if jobs > 1 and (model is not None or "model_id" in profile.extra or device != "cpu"):
        raise ValueError("jobs > 1 trains the tiny model on CPU processes; pass jobs=1 with a given model or device")
    (out / "cache").mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    if profile.extra.get("dataset") == "artbench":
        paintings, genres, load = artbench_sources(profile.extra["artbench_root"])
        content, base_pool = [], []
    else:
        paintings, genres, content, base_pool, load = source_artworks(profile)
    from .datasets import painting_ensembles

    ensembles = painting_ensembles() if profile.extra.get("dataset") != "artbench" else {}
    specs = plan_collection(paintings, genres, content, profile, ensembles)
    _write_json(out / "plan.json", {"profile": profile.name, "loras": [s.to_dict() for s in specs]})
    losses_path = out / "losses.json"
    losses = json.loads(losses_path.read_text()) if losses_path.exists() else {}

    t = time.perf_counter()
    from ..io.hashes import file_sha256

    if model is None and "model_id" in profile.extra:
        from .diffusion import stable_diffusion_model

        model = stable_diffusion_model(profile.extra["model_id"], device=device)
    if model is None:
        with _torch_threads(jobs):  # one model: its steps use every core the LoRA jobs will
            model = _train_base(out, profile, base_pool, load, losses, device)
        _write_json(losses_path, losses)
        base_sha256 = file_sha256(out / "base.safetensors")
    else:  # a given model: identify it by its weights' checksum
        digest = hashlib.sha256()
        for k, v in sorted(model.unet.state_dict().items()):
            digest.update(k.encode() + v.detach().cpu().float().numpy().tobytes())
        base_sha256 = digest.hexdigest()
    timing["base_s"] = time.perf_counter() - t
    condition = CONDITION if model.label_encoder is not None else "a painting"
    if stylizer is None and any(im.style for s in specs for im in s.images):
        stylizer = MagentaStyleEncoder()
    style_vectors: dict = {}
    train_images: dict[str, np.ndarray] = {}
    t = time.perf_counter()
    todo = []
    for spec in tqdm(specs, desc="training images", disable=not progress):
        cache = out / "cache" / "train" / f"{spec.id}.npy"
        if cache.exists():
            train_images[spec.id] = np.load(cache, allow_pickle=False)
        else:
            train_images[spec.id] = render_training_images(spec, load, profile, stylizer, style_vectors)
            cache.parent.mkdir(parents=True, exist_ok=True)
            _save_npy(cache, train_images[spec.id])
        path = _lora_path(out, spec)
        key = _spec_hash(spec, profile, base_sha256)
        if not (path.exists() and load_lora(path).metadata.get("lorastyle.spec") == key):
            todo.append((spec, key))
    trained = 0
    runs = _train_loras(todo, train_images, model, profile, condition, jobs=jobs, base_path=out / "base.safetensors")
    for (spec, key), result in tqdm(zip(todo, runs), desc="loras", total=len(todo), disable=not progress):
        path = _lora_path(out, spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "artist": spec.artist,
            "genre": spec.genre,
            "collection": spec.collection,
            "id": spec.id,
            "seed": str(spec.seed),
            "init_seed": str(spec.init_seed),
            "rank": str(spec.rank),
            "training_images": json.dumps([[im.content, list(im.box), im.style] for im in spec.images]),
            "lorastyle.spec": key,
        }
        save_lora(path, result.factors, alpha=result.alpha, base=model.base, metadata=meta)
        losses[spec.id] = result.losses
        _write_json(losses_path, losses)
        trained += 1
    timing["loras_s"] = time.perf_counter() - t

    # Samples: every LoRA at the default (T, w). Main and held-out LoRAs (the index and the unseen
    # queries of retrieval scenario S4) also over the sweep of T and w, so that both sides are drawn alike.
    t = time.perf_counter()
    default, sweep = sample_settings(profile)

    def sample_cache(setting, spec) -> Path:
        T, w, k = setting
        return out / "cache" / "samples" / f"T{T}-w{w:g}-k{k}" / f"{spec.id}.npy"

    wanted = {spec.id: sorted({default} | (sweep if spec.collection in SWEPT_COLLECTIONS else set())) for spec in specs}
    held_path = out / "held_losses.json"
    held = json.loads(held_path.read_text()) if held_path.exists() else {}
    to_sample = [(spec, [s for s in wanted[spec.id] if not sample_cache(s, spec).exists()]) for spec in specs]
    to_sample = [(spec, settings) for spec, settings in to_sample if settings or spec.id not in held]
    drawn = _sample_loras(to_sample, out, model, condition, train_images, jobs=jobs, base_path=out / "base.safetensors")
    for (spec, settings), (by_setting, losses_of_lora) in tqdm(
        zip(to_sample, drawn), desc="samples", total=len(to_sample), disable=not progress
    ):
        for setting in settings:
            sample_cache(setting, spec).parent.mkdir(parents=True, exist_ok=True)
            _save_npy(sample_cache(setting, spec), by_setting[setting])
        held[spec.id] = losses_of_lora
        _write_json(held_path, held)
    generated: dict[tuple, dict[str, np.ndarray]] = {}
    for spec in specs:
        for setting in wanted[spec.id]:
            generated.setdefault(setting, {})[spec.id] = np.load(sample_cache(setting, spec), allow_pickle=False)
    timing["samples_s"] = time.perf_counter() - t

    # Features: per-LoRA mean of training images and of each sample setting.
    t = time.perf_counter()
    encoders = encoders or {name: get_encoder(name) for name in profile.encoders}
    (out / "features").mkdir(exist_ok=True)
    for name, enc in encoders.items():
        arrays = {}
        for item, feat in mean_features(
            enc, train_images, cache_dir=out / "cache" / "features", progress=progress
        ).items():
            arrays[f"train/{item}"] = feat
        for (T, w, k), by_id in sorted(generated.items()):
            for item, feat in mean_features(
                enc, by_id, cache_dir=out / "cache" / "features", progress=progress
            ).items():
                arrays[f"gen/T{T}-w{w:g}-k{k}/{item}"] = feat
        with atomic_path(out / "features" / f"{name}.npz", suffix=".npz") as tmp:
            np.savez(tmp, **isometric_coordinates(arrays))
    timing["features_s"] = time.perf_counter() - t
    # the base model's own samples: the reference row of the sample grids (lorastyle.book.figures)
    base_samples = generate(
        model,
        profile.samples_per_lora,
        condition,
        steps=profile.sample_steps,
        guidance=profile.sample_guidance,
        seed=profile.seed,
    )
    write_images(out / "images.npz", train_images, {}, base_samples)  # samples go to samples.npz
    t = time.perf_counter()
    no_crops = np.zeros((0, *base_samples.shape[1:]), np.uint8)  # a given model's data is not ours to show
    write_fidelity_inputs(
        out,
        profile,
        model,
        samples=generated[default],
        base_samples=base_samples,
        train_images=train_images,
        base_train=_base_images(profile, base_pool, load) if base_pool else no_crops,
        progress=progress,
    )
    timing["fidelity_s"] = time.perf_counter() - t
    if model.label_encoder is not None:  # the tiny model (SD's attention weights alone are ~10^8 numbers per LoRA)
        t = time.perf_counter()
        write_gradient_features(
            out,
            model,
            train_images,
            draws=profile.gradient_draws,
            jobs=jobs if device == "cpu" else 1,
            progress=progress,
        )
        timing["gradients_s"] = time.perf_counter() - t
    _write_manifest(out, specs)
    # six significant digits: float32 losses written as float64 would take three times the space
    _write_json(out / "losses.json", {k: [float(f"{v:.6g}") for v in curve] for k, curve in losses.items()})
    timing["total_s"] = time.perf_counter() - t0
    log = {"profile": profile.name, "n_loras": len(specs), "trained_now": trained, **timing}
    _write_json(out / "build_log.json", log, indent=1)
    return log


def write_gradient_features(
    out: str | os.PathLike,
    model=None,
    train_images: dict[str, np.ndarray] | None = None,
    *,
    draws: int = 480,
    jobs: int = 1,
    progress: bool = True,
) -> Path:
    """Write ``features/base_gradient.npz``: the base model's loss gradient on every LoRA's training images.

    The zero-training baseline of the book (:func:`lorastyle.collection.diffusion.loss_gradients`):
    keys ``train/<id>`` like the image encoders' features, in the basis of their span
    (:func:`isometric_coordinates`), so the book reads it without torch.

    Parameters
    ----------
    out : path
        A built collection folder.
    model : DiffusionModel, optional
        Default: ``out/base.safetensors``.
    train_images : dict of str to ndarray, optional
        LoRA id -> training images. Default: the ``train/<id>`` arrays of ``out/images.npz``.
    draws : int, default=480
        (image, time, noise) draws per training set, as many as a LoRA's training sees.
    jobs : int, default=1
        Processes (one thread each) over the training sets; the model is then read from
        ``out/base.safetensors``. The gradients equal one process's up to float rounding.
    progress : bool, default=True

    Returns
    -------
    Path
        The file written.
    """
    from .diffusion import loss_gradients

    out = Path(out)
    model = load_base(out / "base.safetensors") if model is None else model
    if train_images is None:
        train_images = read_images(out / "images.npz", "train")
    # retrained copies and variants share their images (and so their gradient): compute each set once
    digest = {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).digest() for k, v in sorted(train_images.items())}
    first: dict[bytes, str] = {}
    for key, d in digest.items():
        first.setdefault(d, key)
    sets = {k: train_images[k] for k in first.values()}
    if jobs > 1 and len(sets) > 1:  # the tiny model on CPU processes, one thread each, as LoRA training
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from tqdm.auto import tqdm

        context = multiprocessing.get_context("spawn")
        base_path = str(out / "base.safetensors")
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(base_path,)) as pool:
            futures = {k: pool.submit(_gradient_in_worker, v, draws) for k, v in sets.items()}
            by_set = {k: f.result() for k, f in tqdm(futures.items(), desc="loss gradients", disable=not progress)}
    else:
        by_set = loss_gradients(model, sets, CONDITION, draws=draws, progress=progress)
    grads = {k: by_set[first[d]] for k, d in digest.items()}
    path = out / "features" / "base_gradient.npz"
    path.parent.mkdir(exist_ok=True)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **isometric_coordinates({f"train/{k}": v for k, v in grads.items()}))
    return path


def write_fidelity_inputs(
    out: str | os.PathLike,
    profile: Profile,
    model=None,
    *,
    samples: dict[str, np.ndarray] | None = None,
    base_samples: np.ndarray | None = None,
    train_images: dict[str, np.ndarray] | None = None,
    base_train: np.ndarray | None = None,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Write ``samples.npz`` and ``held_losses.json``: what the generator-fidelity gate reads.

    ``samples.npz`` holds every LoRA's samples at the default setting (key: the LoRA's id), the
    base model's samples (``base``) and 256 of the base model's training crops spread over its
    paintings (``base_train``). ``held_losses.json`` holds, per LoRA id, the loss on fixed draws
    of its training images (:func:`lorastyle.collection.diffusion.held_loss`, seed 0) with B = 0
    and with the trained LoRA; ids already there are not computed again.

    Parameters
    ----------
    out : path
        A built collection folder.
    profile : Profile
        Its profile (the base crops are drawn as the build drew them).
    model : DiffusionModel, optional
        Default: ``out/base.safetensors``.
    samples, base_samples, train_images : optional
        Default: the samples of ``out/samples.npz`` where it exists, else the ``gen/<id>`` arrays of
        ``out/images.npz``; its ``base`` and ``train/<id>`` arrays.
    base_train : ndarray of shape (n, H, W, 3), optional
        The base model's training crops. Default: drawn again from the profile's sources (none
        for a given model, such as Stable Diffusion).
    progress : bool, default=True

    Returns
    -------
    (Path, Path)
        The two files written.
    """
    from tqdm.auto import tqdm

    from .diffusion import held_loss

    out = Path(out)
    model = load_base(out / "base.safetensors") if model is None else model
    if samples is None and (out / "samples.npz").exists():
        with np.load(out / "samples.npz", allow_pickle=False) as data:
            samples = {k: data[k] for k in data.files if k not in ("base", "base_train")}
    if samples is None:  # a collection v2 as built: its samples are in images.npz
        samples = read_images(out / "images.npz", "gen")
    if base_samples is None:
        with np.load(out / "images.npz", allow_pickle=False) as data:
            base_samples = data["base"]
    if train_images is None:
        train_images = read_images(out / "images.npz", "train")
    if base_train is None:
        _, _, _, base_pool, load = source_artworks(profile)
        base_train = _base_images(profile, base_pool, load)
    crops = np.asarray(base_train, dtype=np.uint8).reshape(-1, *base_samples.shape[1:])
    arrays = {i: np.asarray(v, dtype=np.uint8) for i, v in sorted(samples.items())}
    arrays["base"] = np.asarray(base_samples, dtype=np.uint8)
    arrays["base_train"] = crops[:: max(len(crops) // 256, 1)][:256]
    samples_path = out / "samples.npz"
    with atomic_path(samples_path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)

    losses_path = out / "held_losses.json"
    held = json.loads(losses_path.read_text()) if losses_path.exists() else {}
    condition = CONDITION if model.label_encoder is not None else "a painting"
    base_loss: dict[bytes, float] = {}
    paths = sorted((out / "loras").glob("*/*.safetensors"))
    for path in tqdm(paths, desc="held losses", disable=not progress):
        lora_id = path.stem
        if lora_id in held or lora_id not in train_images:
            continue
        images = train_images[lora_id]
        lora = _lora_for_sampling(path)
        key = hashlib.sha256(np.ascontiguousarray(images).tobytes()).digest()
        if key not in base_loss:
            base_loss[key] = held_loss(model, images, condition, seed=0)
        held[lora_id] = [
            float(f"{base_loss[key]:.6g}"),
            float(f"{held_loss(model, images, condition, lora=lora, seed=0):.6g}"),
        ]
        _write_json(losses_path, held)
    _write_json(losses_path, held)
    return samples_path, losses_path


def isometric_coordinates(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same vectors in an orthonormal basis of their span, when that is shorter.

    VGG Gram features have 43,232 dimensions but a collection has a few hundred
    vectors: written in an orthonormal basis of their span (``X = C Q^T`` with
    ``Q`` from a QR decomposition), every inner product, distance, cosine and PCA
    among them is unchanged, and the file is 60 times smaller. Vectors are
    returned as given when their dimension is no larger than their number.

    Parameters
    ----------
    arrays : dict of str to ndarray
        Vectors of one encoder, all of the same size (each is flattened).

    Returns
    -------
    dict of str to ndarray of shape (len(arrays),), dtype float32
        The same keys, each vector's coordinates ``C`` in the basis; or ``arrays``
        itself, unchanged, when the vectors' dimension is at most ``len(arrays)``.
    """
    keys = sorted(arrays)
    X = np.stack([np.asarray(arrays[k], dtype=np.float64).ravel() for k in keys])
    if X.shape[1] <= X.shape[0]:
        return arrays
    _, R = np.linalg.qr(X.T)  # X^T = Q R, so X = R^T Q^T and X X^T = R^T R
    coords = R.T.astype(np.float32)
    return {k: coords[i] for i, k in enumerate(keys)}


def write_images(
    path: Path, train_images: dict[str, np.ndarray], samples: dict[str, np.ndarray], base_samples: np.ndarray
) -> None:
    """Every LoRA's training images and default-setting samples as one compressed uint8 file.

    Small enough to commit (about 17 MB for the default collection), so the book draws
    its image grids and the memorisation check without the rendering cache.
    Keys are ``train/<id>``, ``gen/<id>`` and ``base`` (the base model's samples, no LoRA).
    A set of training images shared by several LoRAs (a retrained copy, a stranger's copy,
    a variant) is stored once, under its first id; the ``same_images`` array of
    ``(id, stored id)`` rows says where the others' are. Read with :func:`read_images`.

    Parameters
    ----------
    path : Path
        The ``.npz`` file to write (atomically).
    train_images : dict of str to ndarray of shape (n_images, H, W, 3)
        LoRA id -> its training images.
    samples : dict of str to ndarray of shape (k, H, W, 3)
        LoRA id -> its samples at the default setting. The build passes none: from collection
        v3 on, samples live in ``samples.npz`` (:func:`write_fidelity_inputs`).
    base_samples : ndarray of shape (k, H, W, 3)
        The base model's samples at the default setting.
    """
    arrays, stored, same = {}, {}, []
    for i, v in sorted(train_images.items()):
        v = np.ascontiguousarray(v, dtype=np.uint8)
        key = hashlib.sha256(v.tobytes() + repr(v.shape).encode()).digest()
        if key in stored:
            same.append((i, stored[key]))
        else:
            stored[key] = i
            arrays[f"train/{i}"] = v
    arrays |= {f"gen/{i}": np.asarray(v, dtype=np.uint8) for i, v in sorted(samples.items())}
    arrays["base"] = np.asarray(base_samples, dtype=np.uint8)
    arrays["same_images"] = np.array(same, dtype=str).reshape(-1, 2)
    with atomic_path(path, suffix=".npz") as tmp:  # np.savez adds .npz to names without it
        np.savez_compressed(tmp, **arrays)


def read_images(path: str | os.PathLike, kind: str = "train", ids: list[str] | None = None) -> dict[str, np.ndarray]:
    """The ``kind`` images of a file written by :func:`write_images`, shared sets expanded.

    Parameters
    ----------
    path : path
        An ``images.npz`` file.
    kind : {"train", "gen"}, default="train"
    ids : list of str, optional
        The LoRA ids wanted (``KeyError`` for one that has no such images). Default: all.

    Returns
    -------
    dict of str to ndarray of shape (n_images, H, W, 3), dtype uint8
    """
    if kind not in ("train", "gen"):
        raise ValueError(f"kind must be 'train' or 'gen', not {kind!r}")
    with np.load(path, allow_pickle=False) as data:
        stored = {k[len(kind) + 1 :]: k for k in data.files if k.startswith(f"{kind}/")}
        if kind == "train" and "same_images" in data.files:  # files before shared sets were stored once lack it
            stored |= {i: f"train/{holder}" for i, holder in data["same_images"]}
        wanted = sorted(stored) if ids is None else list(ids)
        missing = [i for i in wanted if i not in stored]
        if missing:
            raise KeyError(f"{path}: no {kind} images for {', '.join(missing[:5])}")
        return {i: data[stored[i]] for i in wanted}


def _write_manifest(out: Path, specs: list[LoraSpec]) -> None:
    from ..io.hashes import file_sha256

    rows = []
    for spec in specs:
        path = _lora_path(out, spec)
        rows.append(
            {
                "file": str(path.relative_to(out)),
                "sha256": file_sha256(path),
                "id": spec.id,
                "artist": spec.artist,
                "genre": spec.genre,
                "painting": spec.painting or "",
                "collection": spec.collection,
                "seed": spec.seed,
                "init_seed": spec.init_seed,
                "rank": spec.rank,
                "n_images": len(spec.images),
                "training_images": ";".join(
                    f"{im.content}@{','.join(map(str, im.box))}~{im.style or ''}" for im in spec.images
                ),
            }
        )
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "manifest.csv", text.getvalue())


def main(argv: list[str] | None = None) -> int:
    """``python -m lorastyle.collection.build --profile default --out data``: build or resume a collection."""
    import argparse

    from .profiles import PROFILES, get_profile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--profile", default="default", choices=sorted(PROFILES))
    parser.add_argument("--out", default="data")
    parser.add_argument("--artbench", help="paper profile: the local ArtBench-10 ImageFolder copy")
    parser.add_argument("--model-id", help="paper profile: a Stable Diffusion 1.x model id or folder")
    parser.add_argument("--device", default="cpu", help="where the model trains and samples (default: cpu)")
    parser.add_argument("--jobs", type=int, default=1, help="LoRAs trained at once, one process each (CPU; default 1)")
    parser.add_argument(
        "--fidelity-only",
        action="store_true",
        help="only (re)write samples.npz and held_losses.json (the fidelity gate's inputs) of the collection in --out",
    )
    parser.add_argument(
        "--gradients-only",
        action="store_true",
        help="only (re)write features/base_gradient.npz of the collection already in --out",
    )
    args = parser.parse_args(argv)
    if args.gradients_only:
        _log(f"wrote {write_gradient_features(args.out)}")
        return 0
    if args.fidelity_only:
        _log("wrote {} and {}".format(*write_fidelity_inputs(args.out, get_profile(args.profile))))
        return 0
    profile = get_profile(args.profile)
    extra = dict(profile.extra)
    if args.artbench:
        extra["artbench_root"] = args.artbench
    if args.model_id:
        extra["model_id"] = args.model_id
    log = build_collection(get_profile(args.profile, extra=extra), args.out, device=args.device, jobs=args.jobs)
    _log(json.dumps(log))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
