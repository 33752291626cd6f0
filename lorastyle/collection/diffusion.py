"""Diffusion models for the collections: base training, LoRA training, sampling.

One code path serves two model kinds:

* :func:`tiny_model`: a pixel-space, label-conditioned diffusers
  ``UNet2DConditionModel`` with Stable Diffusion's module names (``attn1``,
  ``attn2``, ``ff.net.0.proj``, ``ff.net.2``, ``to_q/k/v/out.0``), small enough to
  train on a CPU (32 x 32 pixels, 1.66M parameters). Its "prompts" are indices
  into a learned table of condition embeddings (0 is the null condition used by
  classifier-free guidance).
* :func:`stable_diffusion_model`: Stable Diffusion 1.5 from a model id or
  folder (latents through its VAE, prompts through its CLIP text encoder), for
  the paper profile on a GPU.

Both are :class:`DiffusionModel` objects; :func:`train_base`, :func:`train_lora`
and :func:`generate` do not care which. A model's ``scheduler_config`` names its
training objective (:data:`OBJECTIVES`), and training, sampling and
:func:`loss_gradients` follow it:

* ``"epsilon"``: DDPM noise prediction, DDIM sampling (Stable Diffusion 1.5's
  objective; the paper profile);
* ``"flow"``: rectified flow. ``x_t = (1 - t) x0 + t e`` with ``t`` in [0, 1], the
  U-Net predicts the velocity ``v = e - x0`` at timestep ``1000 t``, and samples
  are drawn by Euler steps from ``t = 1`` to ``0``. The tiny model's objective: with
  the same U-Net, epsilon prediction samples grey noise after a CPU's worth of
  training while rectified flow draws its training images' palettes
  (``benchmarks/generator/recipe_study.py``).

LoRAs are trained with peft on
attention and feed-forward layers and returned as plain (A, B) factors keyed by
canonical module names, ready for :func:`lorastyle.io.formats.save_lora`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .seeding import seeded

__all__ = [
    "OBJECTIVES",
    "BaseRecipe",
    "held_loss",
    "DiffusionModel",
    "tiny_model",
    "stable_diffusion_model",
    "train_base",
    "train_lora",
    "generate",
    "LORA_TARGETS",
    "TINY_UNET_CONFIG",
    "TrainedLora",
    "loss_gradients",
    "gradient_draws",
    "lora_applied",
]

# The six module kinds a style LoRA adapts (attention projections and feed-forward).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")

#: Training objectives a model's ``scheduler_config["objective"]`` may name (a config without the key is epsilon).
OBJECTIVES = ("epsilon", "flow")
_TIME_SAMPLINGS = ("uniform", "logit_normal")
_LOSS_WEIGHTINGS = ("none", "min_snr")

TINY_UNET_CONFIG = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)


class _LabelEncoder(torch.nn.Module):
    """Condition index -> a short sequence of embeddings (the tiny model's 'text encoder')."""

    def __init__(self, n_labels: int, dim: int, tokens: int = 4):
        super().__init__()
        self.table = torch.nn.Embedding(n_labels, dim * tokens)
        self.dim, self.tokens = dim, tokens

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.table(labels).view(len(labels), self.tokens, self.dim)


@dataclass
class DiffusionModel:
    """A denoiser with the pieces around it.

    Attributes
    ----------
    unet : diffusers.UNet2DConditionModel
    scheduler_config : dict
        The noise schedule shared by training and sampling. Its ``"objective"`` (one of
        :data:`OBJECTIVES`; absent means ``"epsilon"``) says what the U-Net predicts; the
        other keys are a DDPM/DDIM schedule (epsilon) or, for ``"flow"``,
        ``num_train_timesteps``, ``time_sampling`` (``"uniform"`` or ``"logit_normal"``
        draws of ``t`` in training) and ``loss_weighting`` (``"none"`` or ``"min_snr"``).
    base : str
        Base family written into saved LoRAs (``tiny`` or ``sd1``).
    label_encoder : torch.nn.Module, optional
        Tiny model: condition index -> embeddings.
    text_encoder, tokenizer, vae : optional
        Stable Diffusion: CLIP text encoder and tokenizer, and the VAE.
    """

    unet: torch.nn.Module
    scheduler_config: dict
    base: str
    label_encoder: torch.nn.Module | None = None
    text_encoder: torch.nn.Module | None = None
    tokenizer: object | None = None
    vae: torch.nn.Module | None = None
    latent_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose from {list(OBJECTIVES)}")
        if self.objective == "flow":
            for key, allowed in (("time_sampling", _TIME_SAMPLINGS), ("loss_weighting", _LOSS_WEIGHTINGS)):
                if self.scheduler_config.get(key, allowed[0]) not in allowed:
                    raise ValueError(f"{key} must be one of {list(allowed)}, got {self.scheduler_config[key]!r}")

    @property
    def objective(self) -> str:
        """What the U-Net predicts: ``"epsilon"`` (noise) or ``"flow"`` (velocity ``e - x0``)."""
        return self.scheduler_config.get("objective", "epsilon")

    @property
    def device(self) -> torch.device:
        """Where the model's weights are: every tensor this module makes for it is made there."""
        return next(self.unet.parameters()).device

    def to(self, device: str | torch.device) -> DiffusionModel:
        """Move every part of the model to ``device`` (in place); return the model.

        Parameters
        ----------
        device : str or torch.device

        Returns
        -------
        DiffusionModel
        """
        for part in (self.unet, self.label_encoder, self.text_encoder, self.vae):
            if part is not None:
                part.to(device)
        return self

    @property
    def resolution(self) -> int:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        return self.unet.config.sample_size * factor

    def condition(self, prompts: Sequence) -> torch.Tensor:
        """Encoder hidden states for condition indices (tiny) or text prompts (SD); None/0/"" is null."""
        if self.label_encoder is not None:
            labels = torch.as_tensor([int(p or 0) for p in prompts], dtype=torch.long, device=self.device)
            return self.label_encoder(labels)
        tokens = self.tokenizer(
            [p or "" for p in prompts],
            padding="max_length",
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(self.device))[0]

    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (N, 3, H, W) -> the denoiser's space."""
        if self.vae is None:
            return images
        return self.vae.encode(images).latent_dist.mean * self.latent_scale

    def to_images(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return latents
        return self.vae.decode(latents / self.latent_scale).sample


def _scheduler_config(
    steps: int = 1000, objective: str = "epsilon", *, time_sampling: str = "uniform", loss_weighting: str = "none"
) -> dict:
    """A model's ``scheduler_config`` for an objective (see :class:`DiffusionModel`)."""
    if objective == "flow":
        return dict(
            objective="flow", num_train_timesteps=steps, time_sampling=time_sampling, loss_weighting=loss_weighting
        )
    return dict(
        objective=objective,
        num_train_timesteps=steps,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=True,
    )


def _ddpm_scheduler(model: DiffusionModel, kind: str = "ddpm"):
    """The diffusers scheduler of an epsilon model's schedule (``objective`` is ours, not diffusers')."""
    from diffusers import DDIMScheduler, DDPMScheduler

    config = {k: v for k, v in model.scheduler_config.items() if k != "objective"}
    return (DDIMScheduler if kind == "ddim" else DDPMScheduler)(**config)


def tiny_model(
    *,
    n_labels: int = 8,
    seed: int = 0,
    objective: str = "flow",
    time_sampling: str = "uniform",
    loss_weighting: str = "none",
) -> DiffusionModel:
    """A fresh tiny SD-architecture model (random weights; train it with :func:`train_base`).

    Parameters
    ----------
    n_labels : int, default=8
        Size of the condition table; label 0 is the null condition.
    seed : int, default=0
    objective : {"flow", "epsilon"}, default="flow"
        What the U-Net learns to predict (see :class:`DiffusionModel`).
    time_sampling : {"uniform", "logit_normal"}, default="uniform"
        Flow only: how training draws ``t`` (logit-normal puts more draws at mid ``t``).
    loss_weighting : {"none", "min_snr"}, default="none"
        Flow only: ``"min_snr"`` weights each draw's velocity loss by
        ``min((1 - t)^2, 5 t^2)``, min-SNR-5 weighting of the equivalent ``x0`` loss.

    Raises
    ------
    ValueError
        For an unknown objective, time sampling or loss weighting.
    """
    from diffusers import UNet2DConditionModel

    config = _scheduler_config(objective=objective, time_sampling=time_sampling, loss_weighting=loss_weighting)
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose from {list(OBJECTIVES)}")
    with seeded(seed):  # the caller's global RNG is left as it was
        unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
        enc = _LabelEncoder(n_labels, TINY_UNET_CONFIG["cross_attention_dim"])
    return DiffusionModel(unet=unet, scheduler_config=config, base="tiny", label_encoder=enc)


def stable_diffusion_model(
    model_id: str = "stable-diffusion-v1-5/stable-diffusion-v1-5",
    *,
    dtype=torch.float32,
    device: str = "cpu",
    components: dict | None = None,
) -> DiffusionModel:
    """Stable Diffusion 1.x as a :class:`DiffusionModel` (the paper profile).

    Parameters
    ----------
    model_id : str
        A Hugging Face model id or a local folder in the diffusers layout.
    dtype : torch.dtype, default=float32
    device : str, default="cpu"
    components : dict, optional
        Ready-made ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and
        ``scheduler_config`` (tests pass tiny random ones; nothing is downloaded).

    Raises
    ------
    RuntimeError
        When the weights are not available (no internet, no local copy), with
        instructions.
    """
    if components is None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            components = dict(
                unet=UNet2DConditionModel.from_pretrained(model_id, subfolder="unet", torch_dtype=dtype),
                vae=AutoencoderKL.from_pretrained(model_id, subfolder="vae", torch_dtype=dtype),
                text_encoder=CLIPTextModel.from_pretrained(model_id, subfolder="text_encoder", torch_dtype=dtype),
                tokenizer=CLIPTokenizer.from_pretrained(model_id, subfolder="tokenizer"),
                scheduler_config=dict(DDPMScheduler.from_pretrained(model_id, subfolder="scheduler").config),
            )
        except (OSError, ValueError) as exc:
            raise RuntimeError(
                f"cannot load Stable Diffusion from {model_id!r} ({exc}). The paper profile needs its weights: "
                "run once with internet access (they are cached by huggingface_hub), or pass a local folder "
                "in the diffusers layout."
            ) from None
    model = DiffusionModel(
        unet=components["unet"].to(device),
        scheduler_config=dict(components["scheduler_config"]),
        base="sd1",
        text_encoder=components["text_encoder"].to(device),
        tokenizer=components["tokenizer"],
        vae=components["vae"].to(device),
        latent_scale=float(getattr(components["vae"].config, "scaling_factor", 0.18215)),
    )
    for module in (model.vae, model.text_encoder):
        module.requires_grad_(False)
    return model


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def _noised(
    model: DiffusionModel, x0: torch.Tensor, noise: torch.Tensor, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The U-Net's input, timesteps, target and per-draw loss weight for clean ``x0``, noise and times.

    ``u`` holds integer DDPM timesteps (epsilon) or times ``t`` in [0, 1] (flow). The weight is
    None where every draw counts the same.
    """
    if model.objective == "flow":
        t = u.to(x0.dtype).view(-1, 1, 1, 1)
        noisy = (1 - t) * x0 + t * noise
        weight = None
        if model.scheduler_config.get("loss_weighting", "none") == "min_snr":
            # min-SNR-5 on the x0 loss: |x0 error|^2 = t^2 |v error|^2 and SNR = ((1 - t) / t)^2
            weight = torch.minimum((1 - u) ** 2, 5 * u**2).to(x0.dtype)
        return noisy, u * model.scheduler_config["num_train_timesteps"], noise - x0, weight
    sched = _ddpm_scheduler(model)
    return sched.add_noise(x0, noise, u), u, noise, None


def _draw_times(model: DiffusionModel, n: int, gen: torch.Generator) -> torch.Tensor:
    """Training times for ``n`` draws from the CPU generator: DDPM timesteps, or flow times in [0, 1]."""
    if model.objective == "flow":
        if model.scheduler_config.get("time_sampling", "uniform") == "logit_normal":
            return torch.sigmoid(torch.randn(n, generator=gen))
        return torch.rand(n, generator=gen)
    return torch.randint(0, model.scheduler_config["num_train_timesteps"], (n,), generator=gen)


def _denoising_loss(model: DiffusionModel, x0: torch.Tensor, cond: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # drawn by the CPU generator, then moved: the same numbers on every device
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    u = _draw_times(model, len(x0), gen).to(x0.device)
    noisy, timesteps, target, weight = _noised(model, x0, noise, u)
    pred = model.unet(noisy, timesteps, encoder_hidden_states=cond).sample
    per_draw = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    return per_draw.mean() if weight is None else (weight.float() * per_draw).mean()


@dataclass(frozen=True)
class BaseRecipe:
    """How :func:`train_base` trains, beyond steps, batch size and learning rate.

    The defaults are the tiny model's recipe (issue "A model that draws": its prototype and
    ``benchmarks/generator/recipe_study.py``); ``BaseRecipe.plain()`` is the constant-rate
    AdamW of the LoRAs, with none of the extras.

    Attributes
    ----------
    warmup_steps : int, default=100
        Steps of linear warm-up of the learning rate from 0.
    final_lr_ratio : float, default=0.1
        After warm-up the rate follows a cosine from ``lr`` down to ``final_lr_ratio * lr``
        at the last step (1 keeps it constant).
    clip_grad : float or None, default=1.0
        Largest gradient norm (None: no clipping).
    hflip : bool, default=True
        Mirror each drawn image left-right with probability 1/2.
    ema_decay : float or None, default=0.999
        Exponential moving average of the weights, with the usual warm-up
        (``min(decay, (1 + step) / (10 + step))``); the returned model holds the average.
        None keeps the last weights.
    autocast : bool, default=False
        Run the forward pass in bfloat16 (weights and optimiser stay float32).
    null_rate : float, default=0.1
        Share of draws trained with the null condition (classifier-free guidance needs it).
    """

    warmup_steps: int = 100
    final_lr_ratio: float = 0.1
    clip_grad: float | None = 1.0
    hflip: bool = True
    ema_decay: float | None = 0.999
    autocast: bool = False
    null_rate: float = 0.1

    @classmethod
    def plain(cls) -> BaseRecipe:
        """Constant learning rate, no clipping, flips or average: how LoRAs are trained."""
        return cls(warmup_steps=0, final_lr_ratio=1.0, clip_grad=None, hflip=False, ema_decay=None)

    def lr_at(self, step: int, steps: int, lr: float) -> float:
        """The learning rate of optimiser step ``step`` (1 to ``steps``)."""
        if step <= self.warmup_steps:
            return lr * step / self.warmup_steps
        span = max(steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return lr * (self.final_lr_ratio + (1 - self.final_lr_ratio) * 0.5 * (1 + np.cos(np.pi * progress)))

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _save_state(path, params, ema, opt, gen, step: int, losses: list[float], fingerprint: str) -> None:
    """Write a resumable training state (weights, average, Adam moments, generator) as safetensors."""
    import json

    from ..io.safetensors import write_safetensors

    tensors = {f"param.{i}": p.detach().cpu().numpy() for i, p in enumerate(params)}
    if ema is not None:
        tensors |= {f"ema.{i}": e.cpu().numpy() for i, e in enumerate(ema)}
    for i, p in enumerate(params):
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"adam.{i}.{key}"] = state[key].detach().cpu().numpy()
    tensors["generator"] = gen.get_state().numpy()
    meta = {"step": str(step), "losses": json.dumps([float(f"{x:.6g}") for x in losses]), "fingerprint": fingerprint}
    write_safetensors(path, tensors, meta)


def _load_state(path, params, ema, opt, gen, fingerprint: str) -> tuple[int, list[float]]:
    """Restore what :func:`_save_state` wrote; return (steps done, losses so far)."""
    import json

    from ..io.safetensors import read_safetensors

    tensors, meta = read_safetensors(path)
    if meta.get("fingerprint") != fingerprint:
        raise ValueError(f"{path}: a training state of another run (other settings); remove it to start again")
    step = int(meta["step"])
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(torch.from_numpy(tensors[f"param.{i}"].copy()))
            if ema is not None:
                ema[i].copy_(torch.from_numpy(tensors[f"ema.{i}"].copy()))
            if f"adam.{i}.exp_avg" in tensors:
                opt.state[p] = {
                    "step": torch.tensor(float(step)),
                    "exp_avg": torch.from_numpy(tensors[f"adam.{i}.exp_avg"].copy()).to(p.device),
                    "exp_avg_sq": torch.from_numpy(tensors[f"adam.{i}.exp_avg_sq"].copy()).to(p.device),
                }
    gen.set_state(torch.from_numpy(tensors["generator"].copy()))
    return step, json.loads(meta["losses"])


def _train(
    model: DiffusionModel,
    images: np.ndarray,
    labels: Sequence,
    params,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    desc: str,
    progress: bool,
    recipe: BaseRecipe | None = None,
    on_step: Callable[[int], None] | None = None,
    state_path=None,
    save_every: int = 200,
) -> list[float]:
    if len(images) == 0:
        raise ValueError("no training images")
    if len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    recipe = BaseRecipe.plain() if recipe is None else recipe
    params = list(params)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ema = [p.detach().clone() for p in params] if recipe.ema_decay is not None else None
    x_all = _to_tensor(images)
    labels = list(labels)
    losses: list[float] = []
    done = 0
    fingerprint = ""
    if state_path is not None:
        import hashlib
        import json
        from pathlib import Path

        state_path = Path(state_path)
        blob = json.dumps(
            [recipe.to_dict(), model.scheduler_config, steps, batch_size, lr, seed, len(images), len(params)],
            sort_keys=True,
        )
        fingerprint = hashlib.sha256(blob.encode() + np.ascontiguousarray(images).tobytes()).hexdigest()[:16]
        if state_path.exists():
            done, losses = _load_state(state_path, params, ema, opt, gen, fingerprint)
    model.unet.train()
    autocast = torch.autocast(device_type=model.device.type, dtype=torch.bfloat16, enabled=recipe.autocast)
    for step in tqdm(range(done + 1, steps + 1), desc=desc, disable=not progress, leave=False):
        idx = torch.randint(0, len(x_all), (min(batch_size, len(x_all)),), generator=gen)
        x = x_all[idx]
        if recipe.hflip:
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        with torch.no_grad():
            x0 = model.to_latents(x.to(model.device))
        # classifier-free guidance needs the null condition seen in training: drop some labels
        drop = torch.rand(len(idx), generator=gen) < recipe.null_rate
        batch_labels = [None if d else labels[i] for i, d in zip(idx.tolist(), drop.tolist())]
        if recipe.warmup_steps or recipe.final_lr_ratio != 1.0:
            for group in opt.param_groups:
                group["lr"] = recipe.lr_at(step, steps, lr)
        with autocast:
            cond = model.condition(batch_labels)
            loss = _denoising_loss(model, x0, cond, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(params, recipe.clip_grad)
        opt.step()
        if ema is not None:
            decay = min(recipe.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for e, p in zip(ema, params):
                    e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step)
        if state_path is not None and (step % save_every == 0 or step == steps):
            from ..io.atomic import atomic_path

            with atomic_path(state_path, suffix=".safetensors") as tmp:
                _save_state(tmp, params, ema, opt, gen, step, losses, fingerprint)
    if ema is not None:
        with torch.no_grad():
            for e, p in zip(ema, params):
                p.copy_(e)
    model.unet.eval()
    return losses


def train_base(
    model: DiffusionModel,
    images: np.ndarray,
    labels: Sequence[int],
    *,
    steps: int = 2000,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    recipe: BaseRecipe | None = None,
    state_path=None,
    save_every: int = 200,
    progress: bool = True,
) -> list[float]:
    """Pre-train the whole tiny model (U-Net and condition table) on images.

    Parameters
    ----------
    model : DiffusionModel
        Trained in place with its own objective; afterwards it holds the weights' moving
        average when ``recipe.ema_decay`` is set.
    images : ndarray of shape (n, H, W, 3), uint8, at the model's resolution
    labels : sequence of int
        Condition index per image (0 is the null condition).
    steps : int, default=2000
        Optimiser steps.
    batch_size : int, default=32
        Images per step, drawn with replacement.
    lr : float, default=1e-3
        Peak learning rate (AdamW, no weight decay).
    seed : int, default=0
        Batches, flips, dropped labels, noise and times.
    recipe : BaseRecipe, optional
        Warm-up, decay, clipping, flips, moving average, autocast. Default: ``BaseRecipe()``.
    state_path : path, optional
        A file where the full training state is kept every ``save_every`` steps and at the
        end: a call with the same arguments and an existing state continues from it, and
        ends with the same weights as an uninterrupted run.
    save_every : int, default=200
    progress : bool, default=True

    Returns
    -------
    list of float
        The loss at every step (those of an earlier, resumed run included).

    Raises
    ------
    ValueError
        For no images, a label count that differs from the image count, or a
        ``state_path`` left by a run with other settings.
    """
    params = list(model.unet.parameters())
    if model.label_encoder is not None:
        params += list(model.label_encoder.parameters())
    return _train(
        model,
        images,
        labels,
        params,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        desc="base",
        progress=progress,
        recipe=BaseRecipe() if recipe is None else recipe,
        state_path=state_path,
        save_every=save_every,
    )


def held_loss(
    model: DiffusionModel,
    images: np.ndarray,
    prompt,
    *,
    lora: TrainedLora | None = None,
    draws: int = 8,
    seed: int = 0,
) -> float:
    """The denoising loss on a fixed set of (image, time, noise) draws: how well a model fits images.

    Every image is noised ``draws`` times, at times spread evenly over the schedule (the
    midpoints of ``draws`` equal bins of [0, 1], or of the DDPM timesteps) with noise drawn
    from ``seed``; the same draws for every call with the same images and seed, so a LoRA's
    loss and the base model's (``lora=None``, the LoRA's B = 0) are compared on the same draws.

    Parameters
    ----------
    model : DiffusionModel
    images : ndarray of shape (n, H, W, 3), uint8
    prompt : int or str
        The condition, as in training.
    lora : TrainedLora, optional
        Applied for this call only.
    draws : int, default=8
        Times per image.
    seed : int, default=0

    Returns
    -------
    float
        The mean squared error of the U-Net's prediction (unweighted).

    Raises
    ------
    ValueError
        For ``draws`` < 1 or no images.
    """
    if draws < 1 or len(images) == 0:
        raise ValueError(f"held_loss needs images and draws >= 1, got {len(images)} images, draws={draws}")
    mid = (torch.arange(draws, dtype=torch.float64) + 0.5) / draws
    if model.objective == "flow":
        u = mid.float().repeat_interleave(len(images))
    else:
        u = (mid * model.scheduler_config["num_train_timesteps"]).long().repeat_interleave(len(images))
    with lora_applied(model, lora), torch.no_grad():
        x0 = model.to_latents(_to_tensor(images).to(model.device)).repeat(draws, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0.device)
        noisy, timesteps, target, _ = _noised(model, x0, noise, u.to(x0.device))
        cond = model.condition([prompt] * len(x0))
        pred = model.unet(noisy, timesteps, encoder_hidden_states=cond).sample
        return float(torch.nn.functional.mse_loss(pred.float(), target.float()))


@dataclass
class TrainedLora:
    """A LoRA fresh from :func:`train_lora`."""

    factors: dict[str, tuple[np.ndarray, np.ndarray]]  # canonical name -> (A, B)
    rank: int
    alpha: float
    losses: list[float]
    # step -> the factors after that many optimiser steps (the steps asked for with ``checkpoints``)
    checkpoints: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)


def train_lora(
    model: DiffusionModel,
    images: np.ndarray,
    prompt,
    *,
    rank: int = 4,
    alpha: float | None = None,
    steps: int = 100,
    batch_size: int = 12,
    lr: float = 1e-3,
    seed: int = 0,
    init_seed: int = 0,
    targets: Sequence[str] = LORA_TARGETS,
    progress: bool = False,
    checkpoints: Sequence[int] = (),
) -> TrainedLora:
    """Train a LoRA on the frozen model and return its factors.

    Parameters
    ----------
    model : DiffusionModel
        Left unchanged: the adapter is removed afterwards.
    images : ndarray of shape (n, H, W, 3), uint8
    prompt : int or str
        The condition used for every training image.
    rank : int, default=4
    alpha : float, optional
        Defaults to ``rank`` (scale 1).
    steps, batch_size, lr : training schedule.
    seed : int, default=0
        Noise, timesteps and batches.
    init_seed : int, default=0
        Seeds the random initialisation of A (B starts at zero). The paper's
        setup implies one shared seed across a collection.
    targets : sequence of str
        Module name suffixes to adapt.
    progress : bool, default=False
    checkpoints : sequence of int, default=()
        Steps (1 to ``steps``) after which the factors are also kept, in
        ``TrainedLora.checkpoints``: the factors after step k are those of the
        same call with ``steps=k``.

    Returns
    -------
    TrainedLora

    Raises
    ------
    ValueError
        For a checkpoint outside 1 to ``steps``.
    """
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    wanted = sorted({int(k) for k in checkpoints})
    if wanted and not 1 <= wanted[0] <= wanted[-1] <= steps:
        raise ValueError(f"checkpoints must lie between 1 and steps={steps}, got {list(checkpoints)}")
    alpha = float(rank if alpha is None else alpha)
    model.unet.requires_grad_(False)
    if model.label_encoder is not None:
        model.label_encoder.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets))
    with seeded(init_seed, model.device):  # peft draws A from the global RNG: seed it in a fork of it
        model.unet.add_adapter(config, adapter_name="style")
    saved: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}

    def keep(step: int) -> None:
        if step in wanted:
            saved[step] = _factors(get_peft_model_state_dict(model.unet, adapter_name="style"))

    try:
        params = [p for p in model.unet.parameters() if p.requires_grad]
        losses = _train(
            model,
            images,
            [prompt] * len(images),
            params,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            desc="lora",
            progress=progress,
            on_step=keep if wanted else None,
        )
        state = get_peft_model_state_dict(model.unet, adapter_name="style")
    finally:
        model.unet.unload_lora()  # removes the peft wrappers too, restoring the plain U-Net
    return TrainedLora(factors=_factors(state), rank=rank, alpha=alpha, losses=losses, checkpoints=saved)


def gradient_draws(n_images: int, draws: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (image, time) pairs of :func:`loss_gradients`: every image equally often, times stratified.

    Draw ``j`` uses image ``j mod n_images`` and the time ``(k + 1/2) / draws`` for the ``k``-th
    entry of a permutation of ``range(draws)`` seeded by ``seed``: the times cover [0, 1] evenly,
    as training's uniform draws do on average, with less variance.

    Parameters
    ----------
    n_images : int
    draws : int
    seed : int

    Returns
    -------
    image_index : ndarray of shape (draws,), dtype int
    times : ndarray of shape (draws,), dtype float64
        In (0, 1); an epsilon model uses ``times * num_train_timesteps`` (rounded down).

    Raises
    ------
    ValueError
        For ``n_images`` or ``draws`` below 1.
    """
    if n_images < 1 or draws < 1:
        raise ValueError(f"need n_images >= 1 and draws >= 1, got {n_images} and {draws}")
    order = np.random.default_rng(seed).permutation(draws)
    return np.arange(draws) % n_images, (order + 0.5) / draws


def loss_gradients(
    model: DiffusionModel,
    image_sets: dict[str, np.ndarray],
    prompt,
    *,
    draws: int = 480,
    seed: int = 0,
    chunk: int = 60,
    targets: Sequence[str] = LORA_TARGETS,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """The base model's denoising-loss gradient on each image set: a style descriptor with no training.

    For every set, the gradient of the mean denoising loss (the model's own objective) over
    ``draws`` (image, time, noise) draws of its images (:func:`gradient_draws`; the noise from
    ``seed``), with respect to the weights a LoRA adapts (``targets``), concatenated in
    module-name order. The default 480 draws are as many as a LoRA's training sees (60 steps of
    8), so that what training adds is measured against the untrained model at the same sample
    count. A LoRA's first optimiser step moves along this direction (projected onto its random
    A): what the base model already says about the images before any training. The draws are
    the same for every set of the same size, so sets differ by their images only.

    Parameters
    ----------
    model : DiffusionModel
        Left unchanged (no optimiser step; gradients are cleared afterwards).
    image_sets : dict of str to ndarray of shape (n, H, W, 3), uint8
        Set name (a LoRA id) -> its training images.
    prompt : int or str
        The condition used for every image, as in training.
    draws : int, default=480
        (image, time, noise) draws per set.
    seed : int, default=0
    chunk : int, default=60
        Draws per forward and backward pass (memory; the result does not depend on it beyond
        float rounding).
    targets : sequence of str, default=LORA_TARGETS
        Module name suffixes whose weight gradients are kept.
    progress : bool, default=False

    Returns
    -------
    dict of str to ndarray of shape (d,), dtype float32
        Set name -> gradient; ``d`` is the number of weights of the target modules.

    Raises
    ------
    ValueError
        For no target module, or ``draws`` or ``chunk`` below 1.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    weights = [
        (name, module.weight)
        for name, module in sorted(model.unet.named_modules())
        if any(name.endswith(t) for t in targets) and isinstance(module, torch.nn.Linear)
    ]
    if not weights:
        raise ValueError(f"no linear module of the model ends with any of {list(targets)}")
    was_training = model.unet.training
    was_trainable = [w.requires_grad for _, w in weights]
    model.unet.eval()
    for _, w in weights:  # train_lora leaves the base frozen: the gradient needs these weights live
        w.requires_grad_(True)
    out = {}
    try:
        for key in tqdm(sorted(image_sets), desc="loss gradients", disable=not progress):
            dtype = weights[0][1].dtype
            x_all = model.to_latents(_to_tensor(image_sets[key]).to(model.device, dtype))
            index, times = gradient_draws(len(x_all), draws, seed)
            noise_all = torch.randn((draws, *x_all.shape[1:]), generator=torch.Generator().manual_seed(seed))
            total = [torch.zeros_like(w) for _, w in weights]
            for start in range(0, draws, chunk):
                sl = slice(start, min(start + chunk, draws))
                x = x_all[torch.as_tensor(index[sl])]
                noise = noise_all[sl].to(x.device, dtype)
                if model.objective == "flow":
                    u = torch.as_tensor(times[sl], dtype=dtype)
                else:
                    u = torch.as_tensor(times[sl] * model.scheduler_config["num_train_timesteps"]).long()
                noisy, steps_in, target, _ = _noised(model, x, noise, u.to(x.device))
                cond = model.condition([prompt] * len(x))
                pred = model.unet(noisy, steps_in, encoder_hidden_states=cond).sample
                # the sum of per-draw mean losses, divided by draws below: the mean over all draws
                loss = ((pred - target) ** 2).mean(dim=(1, 2, 3)).sum() / draws
                for acc, g in zip(total, torch.autograd.grad(loss, [w for _, w in weights])):
                    acc += g
            out[key] = torch.cat([g.reshape(-1) for g in total]).detach().float().cpu().numpy()
    finally:
        model.unet.train(was_training)
        for (_, w), flag in zip(weights, was_trainable):
            w.requires_grad_(flag)
    return out


def _factors(state: dict[str, torch.Tensor]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """peft's adapter state dict -> canonical module name -> (A, B), float32 copies, sorted by name."""
    factors: dict[str, list] = {}
    for key, value in state.items():
        name, which = key.rsplit(".lora_", 1)
        slot = 0 if which.startswith("A") else 1
        factors.setdefault(f"unet.{name}", [None, None])[slot] = value.detach().float().numpy().copy()
    return {k: (a, b) for k, (a, b) in sorted(factors.items())}


@torch.no_grad()
def generate(
    model: DiffusionModel,
    n: int,
    prompt,
    *,
    steps: int = 25,
    guidance: float = 3.0,
    seed: int = 0,
    lora: TrainedLora | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """Sample images with classifier-free guidance, optionally through a LoRA.

    An epsilon model samples with DDIM; a flow model with Euler steps from ``t = 1`` to ``0``
    (as many U-Net calls per step).

    Parameters
    ----------
    model : DiffusionModel
    n : int
        Number of images.
    prompt : int or str
    steps : int, default=25
        Sampling steps T (DDIM or Euler).
    guidance : float, default=3.0
        Guidance scale w (1 means no guidance).
    seed : int, default=0
    lora : TrainedLora, optional
        Applied for this call only.
    batch_size : int, default=16

    Returns
    -------
    ndarray of shape (n, H, W, 3), uint8
    """
    if n < 1 or steps < 1:
        raise ValueError(f"n and steps must be positive, got n={n}, steps={steps}")
    flow = model.objective == "flow"
    if flow:
        times = torch.linspace(1.0, 0.0, steps + 1)
        scale = model.scheduler_config["num_train_timesteps"]
    else:
        sched = _ddpm_scheduler(model, "ddim")
        sched.set_timesteps(steps)
    with lora_applied(model, lora):
        gen = torch.Generator().manual_seed(seed)
        out = []
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            cfg = model.unet.config
            shape = (m, cfg.in_channels, cfg.sample_size, cfg.sample_size)
            x = torch.randn(shape, generator=gen).to(model.device)  # CPU draws: the same images on any device
            cond = model.condition([prompt] * m)
            null = model.condition([None] * m)

            def predict(x, t, cond=cond, null=null):
                if guidance == 1.0:
                    return model.unet(x, t, encoder_hidden_states=cond).sample
                both = model.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([null, cond])).sample
                pred_null, pred_cond = both.chunk(2)
                return pred_null + guidance * (pred_cond - pred_null)

            if flow:
                for t_now, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
                    x = x + (t_next - t_now) * predict(x, torch.tensor(t_now * scale, device=model.device))
            else:
                for t in sched.timesteps.to(model.device):
                    x = sched.step(predict(x, t), t, x).prev_sample
            img = model.to_images(x).clamp(-1, 1)
            out.append(((img + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(out)


@contextlib.contextmanager
def lora_applied(model: DiffusionModel, lora: TrainedLora | None) -> Iterator[None]:
    """Attach a LoRA to the model's U-Net for the ``with`` block, then detach it (None: nothing).

    Inside the block, :func:`generate` and :func:`held_loss` called with ``lora=None`` use it:
    sampling several settings and measuring the loss of one LoRA attaches it once.

    Parameters
    ----------
    model : DiffusionModel
    lora : TrainedLora or None
    """
    if lora is None:
        yield
        return
    _apply_lora(model, lora)
    try:
        yield
    finally:
        model.unet.unload_lora()


def _apply_lora(model: DiffusionModel, lora: TrainedLora) -> None:
    """Attach a trained LoRA's factors to the U-Net as the adapter 'sample'."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    targets = sorted({name.split(".", 1)[1] for name in lora.factors})
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=targets)
    model.unet.add_adapter(config, adapter_name="sample")
    state = {}
    for name, (A, B) in lora.factors.items():
        path = name.split(".", 1)[1]
        state[f"{path}.lora_A.weight"] = torch.from_numpy(np.array(A))  # a writable copy
        state[f"{path}.lora_B.weight"] = torch.from_numpy(np.array(B))
    set_peft_model_state_dict(model.unet, state, adapter_name="sample")
    model.unet.set_adapter("sample")
