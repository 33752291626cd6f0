"""The tiny model and the SD 1.5 code path: LoRA training, saving, sampling."""

import numpy as np
import pytest
import torch

from lorastyle.collection.diffusion import (
    LORA_TARGETS,
    _apply_lora,
    generate,
    held_loss,
    loss_gradients,
    stable_diffusion_model,
    tiny_model,
    train_base,
    train_lora,
)
from lorastyle.io.formats import load_lora, save_lora
from support import tiny_sd_components


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(2)
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def lora(model, images):
    return train_lora(model, images, 1, rank=4, alpha=2.0, steps=4, batch_size=6, seed=0, init_seed=0)


def test_training_a_lora_changes_only_lora_weights(model, images):
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    trained = train_lora(model, images, 1, steps=3, batch_size=6)
    after = model.unet.state_dict()
    assert after.keys() == before.keys()  # no adapter layers left behind
    assert all(torch.equal(before[k], after[k]) for k in before)
    # B starts at zero and moved; every targeted module kind is adapted
    assert all(np.abs(B).max() > 0 for _, B in trained.factors.values())
    kinds = {next(t for t in LORA_TARGETS if name.endswith(t)) for name in trained.factors}
    assert kinds == set(LORA_TARGETS)


def test_base_training_changes_the_base(images):
    m = tiny_model(seed=1)
    before = {k: v.clone() for k, v in m.unet.state_dict().items()}
    losses = train_base(m, images, [1] * len(images), steps=2, batch_size=4, progress=False)
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert any(not torch.equal(before[k], v) for k, v in m.unet.state_dict().items())


def test_training_is_deterministic_and_init_seed_matters(model, images, lora):
    again = train_lora(model, images, 1, rank=4, alpha=2.0, steps=4, batch_size=6, seed=0, init_seed=0)
    other = train_lora(model, images, 1, rank=4, alpha=2.0, steps=4, batch_size=6, seed=0, init_seed=1)
    name = next(iter(lora.factors))
    assert np.array_equal(lora.factors[name][0], again.factors[name][0])
    assert np.array_equal(lora.factors[name][1], again.factors[name][1])
    assert not np.allclose(lora.factors[name][0], other.factors[name][0])


@pytest.mark.parametrize("layout", ["diffusers-peft", "kohya"])
def test_saved_lora_loads_back_and_matches_peft(model, lora, layout, tmp_path):
    """The file's delta-W (via load_lora) equals what peft adds to the layer's output."""
    path = tmp_path / f"lora-{layout}.safetensors"
    save_lora(path, lora.factors, alpha=lora.alpha, layout=layout, base="tiny", metadata={"artist": "test"})
    loaded = load_lora(path)
    assert loaded.format == layout and loaded.base == "tiny" and loaded.ranks == [4]
    assert loaded.metadata["artist"] == "test"
    assert list(loaded.modules) == list(lora.factors)
    _apply_lora(model, lora)
    try:
        for name in list(lora.factors)[::7]:
            layer = model.unet.get_submodule(name.split(".", 1)[1])
            x = torch.randn(3, layer.in_features)
            with torch.no_grad():
                added = (layer(x) - layer.base_layer(x)).numpy()
            expected = x.numpy() @ loaded.modules[name].delta().T
            np.testing.assert_allclose(added, expected, rtol=1e-4, atol=1e-6)
            assert loaded.modules[name].scale == pytest.approx(0.5)  # alpha 2 / rank 4
    finally:
        model.unet.unload_lora()


def test_generate_is_deterministic_and_uses_the_lora(model, lora):
    a = generate(model, 3, 1, steps=4, guidance=3.0, seed=5, lora=lora)
    b = generate(model, 3, 1, steps=4, guidance=3.0, seed=5, lora=lora)
    plain = generate(model, 3, 1, steps=4, guidance=3.0, seed=5)
    unguided = generate(model, 3, 1, steps=4, guidance=1.0, seed=5, lora=lora)
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, plain)
    assert not np.array_equal(a, unguided)
    assert "base_layer" not in "".join(model.unet.state_dict())  # the LoRA was detached again


def test_generate_validates(model):
    with pytest.raises(ValueError, match="n and steps must be positive"):
        generate(model, 0, 1)


def test_stable_diffusion_path_with_tiny_components(tmp_path, images):
    """The SD 1.5 code path (VAE latents, CLIP prompts) trains, saves and samples."""
    sd = stable_diffusion_model(components=tiny_sd_components(tmp_path))
    assert sd.resolution == 32 and sd.base == "sd1"
    trained = train_lora(sd, images[:4], "a painting", steps=2, batch_size=2)
    assert trained.factors and all(name.startswith("unet.") for name in trained.factors)
    out = generate(sd, 2, "a painting", steps=2, guidance=3.0, lora=trained)
    assert out.shape == (2, 32, 32, 3)
    path = tmp_path / "sd.safetensors"
    save_lora(path, trained.factors, alpha=trained.alpha, layout="kohya")
    assert load_lora(path).format == "kohya"


def test_stable_diffusion_without_weights_says_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="run once with internet access"):
        stable_diffusion_model(str(tmp_path / "no-such-model"))


def test_checkpoints_are_the_factors_of_shorter_runs(model, images):
    kwargs = dict(rank=2, alpha=4.0, batch_size=6, lr=2e-3, seed=3, init_seed=5)
    full = train_lora(model, images, 1, steps=5, checkpoints=(2, 5), **kwargs)
    short = train_lora(model, images, 1, steps=2, **kwargs)
    assert sorted(full.checkpoints) == [2, 5] and short.checkpoints == {}
    assert list(full.checkpoints[2]) == list(full.factors)
    for name, (A, B) in full.factors.items():
        assert np.array_equal(full.checkpoints[5][name][0], A) and np.array_equal(full.checkpoints[5][name][1], B)
        assert np.array_equal(full.checkpoints[2][name][0], short.factors[name][0])
        assert np.array_equal(full.checkpoints[2][name][1], short.factors[name][1])
    assert any(not np.array_equal(full.checkpoints[2][n][1], B) for n, (_, B) in full.factors.items())
    assert full.losses[:2] == short.losses


@pytest.mark.parametrize("bad", [(0,), (6,), (2, 9)])
def test_checkpoints_outside_the_run_are_refused(model, images, bad):
    with pytest.raises(ValueError, match="checkpoints"):
        train_lora(model, images, 1, steps=5, checkpoints=bad)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_every_tensor_the_sd_path_makes_is_on_the_model_device(tmp_path, images, device):
    """Training and sampling through Stable Diffusion's path with a device: every input the U-Net, the VAE
    and the text encoder see is on that device (on a GPU machine, run with device cuda)."""
    sd = stable_diffusion_model(components=tiny_sd_components(tmp_path), device=device)
    seen = []

    def spy(module, args, kwargs):
        for x in [*args, *kwargs.values()]:
            if isinstance(x, torch.Tensor):
                seen.append((type(module).__name__, x.device))

    hooks = [m.register_forward_pre_hook(spy, with_kwargs=True) for m in (sd.unet, sd.vae, sd.text_encoder)]
    try:
        trained = train_lora(sd, images[:4], "a painting", steps=2, batch_size=2)
        generate(sd, 2, "a painting", steps=2, guidance=3.0, lora=trained)
    finally:
        for h in hooks:
            h.remove()
    assert {name for name, _ in seen} >= {"UNet2DConditionModel", "CLIPTextModel"}
    assert {d for _, d in seen} == {sd.device}
    assert sd.device.type == device


def test_seeding_leaves_the_callers_random_state_alone():
    """tiny_model and train_lora seed torch in a fork of its RNG: the caller's next draw is unchanged."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_model(seed=5)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("objective", ["epsilon", "flow"])
def test_loss_gradients_match_finite_differences(images, objective):
    """The gradient of the written-out loss, checked by central differences in float64."""
    from diffusers import DDPMScheduler

    m = tiny_model(seed=1, objective=objective)
    m.unet.double()
    m.label_encoder.double()
    m.unet.requires_grad_(False)  # as train_lora leaves it: the gradients must not depend on it
    before = {k: v.clone() for k, v in m.unet.state_dict().items()}
    sets = {"a": images[:3], "b": images[3:5]}
    grads = loss_gradients(m, sets, 1, draws=5, chunk=2, seed=4)  # chunks of 2: the sum over chunks is checked too
    assert all(torch.equal(v, m.unet.state_dict()[k]) for k, v in before.items())  # the model is unchanged
    assert all(p.grad is None and not p.requires_grad for p in m.unet.parameters())
    linear = sorted(
        (n, mod) for n, mod in m.unet.named_modules() if n.endswith(LORA_TARGETS) and isinstance(mod, torch.nn.Linear)
    )
    sizes = [mod.weight.numel() for _, mod in linear]
    assert {k: g.shape for k, g in grads.items()} == {"a": (sum(sizes),), "b": (sum(sizes),)}

    def loss(imgs):  # the definition: mean loss over 5 draws, image j mod n at a stratified time, noise from the seed
        x0 = torch.from_numpy(imgs).permute(0, 3, 1, 2).double() / 127.5 - 1
        order = np.random.default_rng(4).permutation(5)
        times = torch.from_numpy((order + 0.5) / 5)
        x = x0[torch.arange(5) % len(x0)]
        noise = torch.randn((5, *x0.shape[1:]), generator=torch.Generator().manual_seed(4)).double()
        cond = m.condition([1] * 5)
        with torch.no_grad():
            if objective == "epsilon":
                sched = DDPMScheduler(**{k: v for k, v in m.scheduler_config.items() if k != "objective"})
                ts = (times * 1000).long()
                pred = m.unet(sched.add_noise(x, noise, ts), ts, encoder_hidden_states=cond).sample
                return torch.nn.functional.mse_loss(pred, noise).item()
            t = times.view(-1, 1, 1, 1)  # rectified flow: x_t = (1 - t) x0 + t e, target e - x0
            pred = m.unet((1 - t) * x + t * noise, times * 1000, encoder_hidden_states=cond).sample
            return torch.nn.functional.mse_loss(pred, noise - x).item()

    rng = np.random.default_rng(0)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    for which in (0, len(linear) - 1):  # an attention projection and a feed-forward layer
        name, mod = linear[which]
        D = torch.from_numpy(rng.standard_normal(tuple(mod.weight.shape)))
        eps = 1e-4
        with torch.no_grad():
            mod.weight += eps * D
            up = loss(sets["a"])
            mod.weight -= 2 * eps * D
            down = loss(sets["a"])
            mod.weight += eps * D
        g = grads["a"][offsets[which] : offsets[which + 1]]
        np.testing.assert_allclose((up - down) / (2 * eps), float(g @ D.numpy().ravel()), rtol=1e-5)
    assert not np.allclose(grads["a"], grads["b"])
    with pytest.raises(ValueError, match="no linear module"):
        loss_gradients(m, sets, 1, targets=("nothing",))


def test_a_resumed_base_run_ends_where_an_uninterrupted_one_does(images, tmp_path):
    """Training state kept every 2 steps: 3 steps, then a call for 5 from the state, equals 5 in one go."""
    from lorastyle.collection.diffusion import BaseRecipe

    recipe = BaseRecipe(warmup_steps=2)
    straight = tiny_model(seed=2)
    losses = train_base(straight, images, [1] * 12, steps=5, batch_size=4, recipe=recipe, progress=False)
    state = tmp_path / "state.safetensors"
    resumed = tiny_model(seed=2)
    first = train_base(resumed, images, [1] * 12, steps=3, batch_size=4, recipe=recipe, progress=False)
    # a run of 3 is another run (its cosine ends earlier): a 5-step run killed in its third step instead
    interrupted = tiny_model(seed=2)
    calls = []

    class Stop(Exception):
        pass

    import lorastyle.collection.diffusion as diffusion

    original = diffusion._denoising_loss

    def loss_then_stop(*args):
        calls.append(len(calls) + 1)
        if len(calls) == 3:
            raise Stop
        return original(*args)

    diffusion._denoising_loss = loss_then_stop
    try:
        with pytest.raises(Stop):
            train_base(
                interrupted,
                images,
                [1] * 12,
                steps=5,
                batch_size=4,
                recipe=recipe,
                state_path=state,
                save_every=2,
                progress=False,
            )
    finally:
        diffusion._denoising_loss = original
    assert calls == [1, 2, 3] and state.exists()
    again = tiny_model(seed=2)
    resumed_losses = train_base(
        again, images, [1] * 12, steps=5, batch_size=4, recipe=recipe, state_path=state, save_every=2, progress=False
    )
    assert resumed_losses == pytest.approx(losses, rel=1e-5)  # the state keeps 6 significant digits
    for (k, a), b in zip(straight.unet.state_dict().items(), again.unet.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=k)
    assert len(first) == 3
    with pytest.raises(ValueError, match="another run"):
        train_base(
            tiny_model(seed=2), images, [1] * 12, steps=6, batch_size=4, recipe=recipe, state_path=state, progress=False
        )


def test_base_recipe_learning_rate_schedule():
    from lorastyle.collection.diffusion import BaseRecipe

    r = BaseRecipe(warmup_steps=10, final_lr_ratio=0.1)
    assert r.lr_at(5, 110, 1.0) == pytest.approx(0.5)
    assert r.lr_at(10, 110, 1.0) == pytest.approx(1.0)
    assert r.lr_at(60, 110, 1.0) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine
    assert r.lr_at(110, 110, 1.0) == pytest.approx(0.1)
    assert BaseRecipe.plain().lr_at(7, 10, 0.3) == pytest.approx(0.3)


def test_ema_holds_the_average_of_the_weights(images):
    """With decay d the returned weights are the recursive average (warm-up included), not the last weights."""
    from lorastyle.collection.diffusion import BaseRecipe

    recipe = BaseRecipe(warmup_steps=0, final_lr_ratio=1.0, clip_grad=None, hflip=False, ema_decay=0.5)
    m = tiny_model(seed=3)
    init = [p.detach().clone() for p in m.unet.parameters()]
    plain = tiny_model(seed=3)
    train_base(plain, images, [1] * 12, steps=1, batch_size=4, recipe=BaseRecipe.plain(), progress=False)
    train_base(m, images, [1] * 12, steps=1, batch_size=4, recipe=recipe, progress=False)
    d = min(0.5, 2 / 11)  # the warm-up of step 1
    for p0, p1, avg in zip(init, plain.unet.parameters(), m.unet.parameters()):
        torch.testing.assert_close(avg, d * p0 + (1 - d) * p1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("objective", ["epsilon", "flow"])
def test_held_loss_falls_when_a_lora_fits_its_images(images, objective):
    """held_loss is the written-out loss on fixed draws; a LoRA trained on the images lowers it."""
    m = tiny_model(seed=4, objective=objective)
    train_base(m, images, [1] * 12, steps=3, batch_size=4, progress=False)
    base = held_loss(m, images[:4], 1, draws=4, seed=1)
    assert base == held_loss(m, images[:4], 1, draws=4, seed=1)  # fixed draws
    assert base != held_loss(m, images[:4], 1, draws=4, seed=2)
    lora = train_lora(m, images[:4], 1, steps=15, batch_size=4, lr=1e-2, seed=0)
    assert held_loss(m, images[:4], 1, lora=lora, draws=4, seed=1) < base
    if objective == "flow":  # the definition, written out at the midpoints t = 1/8, 3/8, 5/8, 7/8
        x0 = torch.from_numpy(images[:4]).permute(0, 3, 1, 2).float() / 127.5 - 1
        x0 = x0.repeat(4, 1, 1, 1)
        t = torch.tensor([0.125, 0.375, 0.625, 0.875]).repeat_interleave(4)
        e = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            pred = m.unet(
                (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * e,
                t * 1000,
                encoder_hidden_states=m.condition([1] * 16),
            ).sample
        assert base == pytest.approx(torch.nn.functional.mse_loss(pred, e - x0).item(), rel=1e-5)
    with pytest.raises(ValueError, match="draws"):
        held_loss(m, images[:4], 1, draws=0)


def test_flow_sampling_is_euler_on_the_velocity():
    """generate() of a flow model equals Euler steps x <- x + (t_next - t) v(x, 1000 t), written out."""
    m = tiny_model(seed=5, objective="flow")
    out = generate(m, 2, 1, steps=3, guidance=1.0, seed=7)
    x = torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(7))
    ts = [1.0, 2 / 3, 1 / 3, 0.0]
    with torch.no_grad():
        for a, b in zip(ts[:-1], ts[1:]):
            x = x + (b - a) * m.unet(x, torch.tensor(a * 1000), encoder_hidden_states=m.condition([1, 1])).sample
    expected = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_unknown_objectives_are_refused():
    with pytest.raises(ValueError, match="unknown objective"):
        tiny_model(objective="score")
    with pytest.raises(ValueError, match="time_sampling"):
        tiny_model(time_sampling="cosine")


def test_gradient_draws_cover_every_image_and_every_time_bin():
    from lorastyle.collection.diffusion import gradient_draws

    index, times = gradient_draws(12, 480, seed=3)
    assert np.bincount(index).tolist() == [40] * 12  # each image 40 times
    assert np.bincount((times * 480).astype(int), minlength=480).tolist() == [1] * 480  # one draw per time bin
    again = gradient_draws(12, 480, seed=3)
    assert np.array_equal(again[1], times) and not np.array_equal(gradient_draws(12, 480, seed=4)[1], times)
    with pytest.raises(ValueError, match="draws"):
        gradient_draws(3, 0, seed=0)
