"""What a LoRA file is, from its header alone: the data behind ``lorastyle inspect``.

:func:`describe_file` reads a safetensors header (names, shapes, dtypes, ``__metadata__``), the
bytes of the scalar ``alpha`` tensors and nothing else of the tensor data; with ``hashes=True`` it
adds one streamed pass over the file that updates every hash from the same chunks. Layout, base
family, parts, module count, ranks, alphas and dtype come from the code :func:`load_lora` runs
(:func:`lorastyle.io.formats.read_layout`, :func:`~lorastyle.io.formats.module_shape`, its base
detection and, for Flux, :func:`lorastyle.io.flux.canonical_flux_modules`), so they equal
``load_lora(path).summary()`` (ranks of full-factor LoKr aside, see :func:`~lorastyle.io.formats.module_shape`).

Where each field comes from (trainer, file of its source that writes or defines it):

=========================  ===========================================================================
field                      metadata keys, in the order they are tried
=========================  ===========================================================================
``title``                  ``modelspec.title`` (Stability-AI/ModelSpec README.md; kohya-ss/sd-scripts
                           library/sai_model_spec.py; Nerogar/OneTrainer modules/util/modelSpec/ModelSpec.py),
                           ``ss_output_name`` (sd-scripts train_network.py), ``name`` (ostris/ai-toolkit
                           toolkit/metadata.py, its ``[name]`` placeholder ignored)
``description``            ``modelspec.description``; ``author``: ``modelspec.author``
``trigger_words``          ``modelspec.trigger_phrase``, then the 10 most frequent tags of ``ss_tag_frequency``
                           (sd-scripts: JSON ``{dataset dir: {tag: count}}``, counts summed over dirs)
``comment``                ``ss_training_comment`` (sd-scripts ``--training_comment``: "will not be updated
                           after training"): free text, never trigger words; sd-scripts networks/resize_lora.py
                           writes "dimension is resized from 256 to 16; ..." there, authors put licences there
``base_model``             ``ss_sd_model_name`` (sd-scripts), ``ss_base_model`` (ai-toolkit
                           ``add_base_model_info_to_meta``), ``base_model_name`` of ``ot_config``
                           (OneTrainer modules/modelSaver/mixin/DtypeModelSaverMixin.py, TrainConfig)
``base_model_version``     ``ss_base_model_version`` (sd-scripts ``sd_v1``, ``sdxl_base_v1-0``, ``flux1``;
                           ai-toolkit ``sd_1.5`` / ``sd_2.1`` / ``sdxl_1.0``; OneTrainer ``sdxl_``),
                           ``modelspec.architecture`` (``stable-diffusion-v1/lora``, ``flux-1-dev/lora``)
``base_mismatch``          those two and ``ss_v2 == "True"`` (AUTOMATIC1111 extensions-builtin/Lora/
                           network.py ``detect_version``) against the family the weights show. ai-toolkit
                           writes ``sd_1.5`` for every model that is neither SD2 nor SDXL, Flux included.
``training``               ``ss_steps``/``ss_epoch`` (sd-scripts, at save) or ai-toolkit's ``training_info``
                           (``{"step", "epoch"}``, jobs/process/BaseSDTrainProcess.py); ``ss_num_epochs``,
                           ``ss_max_train_steps``, ``ss_resolution`` (``"(768, 768)"``: width, height),
                           ``ss_learning_rate``, ``ss_unet_lr``, ``ss_text_encoder_lr``,
                           ``ss_num_train_images`` (sd-scripts: "includes repeating"), the ``img_count``
                           sum of ``ss_dataset_dirs`` (distinct images), ``ss_optimizer``;
                           ``modelspec.resolution``; OneTrainer ``ot_config``: ``epochs``,
                           ``learning_rate``, ``resolution``, ``batch_size``
``network``                ``ss_network_module``, ``ss_network_dim``, ``ss_network_alpha``,
                           ``ss_network_args`` (JSON; LyCORIS puts ``algo``, ``conv_dim`` ... there)
``trainer``                ``ss_*`` keys (sd-scripts), ``software`` (ai-toolkit), ``ot_revision`` /
                           ``ot_config`` (OneTrainer), cloneofsimo's layout, ``lorastyle.base`` (ours)
``textual_inversion_       cloneofsimo/lora lora_diffusion/lora.py: a tensor named like the token whose
tokens``                   metadata value is ``"<embed>"`` (``EMBED_FLAG``); AUTOMATIC1111 extensions-builtin/
                           Lora/networks.py ``load_network``: ``bundle_emb.<name>.<vector>`` (kohya, OneTrainer)
``kind``                   from tensor names and shapes (see :func:`adapter_kind`)
=========================  ===========================================================================

Hashes (one pass over the file; lowercase hex, as AUTOMATIC1111 writes them; Civitai matches them
without regard to case):

* ``sha256``: of the whole file (AUTOMATIC1111 modules/hashes.py ``calculate_sha256``).
* ``autov2``: ``sha256[:10]``, AUTOMATIC1111's checkpoint short hash and Civitai's AutoV2
  (civitai/model-scanner orchestrator/ModelScanner/Tasks/HashTask.cs).
* ``autov1``: ``sha256(file[0x100000:0x110000])[:8]``, AUTOMATIC1111's old ``model_hash``; None for a
  file under 2 MiB, as Civitai's scanner (HashTask.cs ``ComputeAutoV1Hash``) leaves it.
* ``tensor_sha256``: sha256 of the bytes after the header (offset ``8 + N`` to the end of the file),
  kohya's ``addnet_hash_safetensors`` (sd-scripts library/train_util.py), which
  ``precalculate_safetensors_hashes`` stores as ``sshs_model_hash``, and AUTOMATIC1111 uses for LoRAs
  (extensions-builtin/Lora/network.py: ``sshs_model_hash`` or ``sha256(..., use_addnet_hash=True)``).
  It leaves out the header, so editing the metadata does not change it; the ModelSpec
  ``modelspec.hash_sha256`` is defined on the same bytes ("all tensor content (ie excluding the
  header section)", ``0x`` prefix).
* ``autov3``: ``tensor_sha256[:12]``: AUTOMATIC1111's LoRA short hash (``shorthash = hash[0:12]``)
  and Civitai's AutoV3 ("SHA256 of the file with safetensors header metadata stripped", stored at
  12 characters: civitai/civitai docs/image-resource-hash-matching.md, ``normalizeScanHashes``).

``kohya_model_hash`` (only when the file stores ``sshs_model_hash``) says whether the stored value is
``tensor_sha256``: kohya hashes the data section of ``safetensors.torch.save(tensors, ss_metadata)``,
which is this file's data section unless a later tool rewrote the tensors. A stored value equal to
:data:`EMPTY_SHA256` (the sha256 of no bytes at all, which ai-toolkit files carry) is a placeholder,
not a hash of any tensor data: it is reported as such (``"placeholder": True``, ``"matches": None``).
``sshs_legacy_hash`` (``addnet_hash_legacy``: 64 KiB at offset 1 MiB of that in-memory file, whose
header held only the ``ss_`` keys) depends on that header and cannot be recomputed from this file; it
is not reported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import LoraFormatError
from .flux import canonical_flux_modules
from .formats import LoraModule, ParsedHeader, _detect_base, module_shape, parse_header
from .safetensors import _decode
from .sidecars import HEADER, resolve_facts

__all__ = ["describe_file", "format_description", "adapter_kind", "HASH_CHUNK", "EMPTY_SHA256"]

SUMMARY_KEYS = ("format", "base", "parts", "n_modules", "ranks", "alphas", "dtype")
HASH_CHUNK = 4 << 20  # bytes per read of the hash pass
_AUTOV1_AT, _AUTOV1_LEN = 0x100000, 0x10000
_AUTOV1_MIN_SIZE = 0x100000 * 2  # Civitai: no AutoV1 below 2 MiB
EMBED_FLAG = "<embed>"  # cloneofsimo/lora lora_diffusion/lora.py
MAX_TAGS = 10
#: sha256 of empty input: a stored "hash" of this value is a placeholder, not a hash of the file
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


# ---------------------------------------------------------------------------
# Reading metadata values (all strings; kohya writes str(value), so None is "None")


def _text(metadata: dict[str, str], key: str) -> str | None:
    value = metadata.get(key)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if value and value != "None" else None


def _number(value) -> int | float | None:
    """A finite int or float from a metadata string or JSON value; None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    value = value.strip()
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _json(metadata: dict[str, str], key: str):
    value = metadata.get(key)
    if not isinstance(value, str) or not value:
        return None
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return None


def _resolution(value) -> str | None:
    """``"WxH"`` from kohya's ``"(768, 768)"`` / ``"512"``, ModelSpec's ``"1024x1024"``, OneTrainer's ``"512"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    sides = re.findall(r"\d+", value)
    if len(sides) == 1:
        sides *= 2
    return "x".join(str(int(s)) for s in sides) if len(sides) == 2 else None


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------------------
# Fields


def _title(metadata: dict[str, str]) -> str | None:
    for key in ("modelspec.title", "ss_output_name"):
        title = _text(metadata, key)
        if title:
            return title
    name = _text(metadata, "name")  # ai-toolkit
    return name if name and name != "[name]" else None


def _top_tags(metadata: dict[str, str]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for tags in _dict(_json(metadata, "ss_tag_frequency")).values():
        for tag, count in _dict(tags).items():
            count = _number(count)
            if isinstance(tag, str) and tag.strip() and isinstance(count, int) and count > 0:
                counts[tag.strip()] = counts.get(tag.strip(), 0) + count
    order = {tag: i for i, tag in enumerate(counts)}
    return sorted(counts.items(), key=lambda kv: (-kv[1], order[kv[0]]))[:MAX_TAGS]


def _trigger_words(metadata: dict[str, str]) -> list[dict]:
    words = []
    text = _text(metadata, "modelspec.trigger_phrase")
    if text:
        words.append({"text": text, "source": "modelspec.trigger_phrase"})
    words += [{"text": tag, "source": "ss_tag_frequency", "count": n} for tag, n in _top_tags(metadata)]
    return words


def _family_claimed(value: str) -> str | None:
    """The base family a metadata string names (kohya, ai-toolkit, OneTrainer, ModelSpec spellings)."""
    v = value.strip().lower()
    if "sdxl" in v or "stable-diffusion-xl" in v:
        return "sdxl"
    if "flux" in v or v.startswith("chroma"):
        return "flux"
    if v.startswith(("sd3", "sd_3", "stable-diffusion-3")):
        return "sd3"
    if v.startswith("lumina"):
        return "lumina"
    if re.match(r"^(sd_?v?2|stable-diffusion-v2|v2)([^0-9]|$)", v):
        return "sd2"
    if re.match(r"^(sd_?v?1|stable-diffusion-v1|v1)([^0-9]|$)", v):
        return "sd1"
    return None


def _base_claims(metadata: dict[str, str]) -> list[tuple[str, str, str]]:
    """(key, value, family) for every metadata key that names a base family."""
    claims = []
    for key in ("ss_base_model_version", "modelspec.architecture"):
        value = _text(metadata, key)
        family = _family_claimed(value) if value else None
        if family:
            claims.append((key, value, family))
    if _text(metadata, "ss_v2") == "True":
        claims.append(("ss_v2", "True", "sd2"))
    return claims


def _base_mismatch(metadata: dict[str, str], weights_base: str) -> str | None:
    if weights_base not in ("sd1", "sd2", "sdxl", "flux"):
        return None  # nothing the weights show to contradict
    wrong = [(k, v, f) for k, v, f in _base_claims(metadata) if f != weights_base]
    if not wrong:
        return None
    said = "; ".join(f"{k} says {v!r} ({f})" for k, v, f in wrong)
    return f"{said}, but the weights are {weights_base}"


def _base_model(metadata: dict[str, str], ot_config: dict) -> str | None:
    for key in ("ss_sd_model_name", "ss_base_model"):
        name = _text(metadata, key)
        if name:
            return name
    name = ot_config.get("base_model_name")
    return name.strip() if isinstance(name, str) and name.strip() else None


def _training(metadata: dict[str, str], ot_config: dict) -> dict:
    info = _dict(_json(metadata, "training_info"))  # ai-toolkit
    training = {
        "steps": _number(metadata.get("ss_steps")) if "ss_steps" in metadata else _number(info.get("step")),
        "epoch": _number(metadata.get("ss_epoch")) if "ss_epoch" in metadata else _number(info.get("epoch")),
        "num_epochs": _number(metadata.get("ss_num_epochs")) or _number(ot_config.get("epochs")),
        "max_steps": _number(metadata.get("ss_max_train_steps")),
        "resolution": _resolution(metadata.get("ss_resolution"))
        or _resolution(metadata.get("modelspec.resolution"))
        or _resolution(ot_config.get("resolution")),
        "learning_rate": _number(metadata.get("ss_learning_rate")) or _number(ot_config.get("learning_rate")),
        "unet_lr": _number(metadata.get("ss_unet_lr")),
        "text_encoder_lr": _number(metadata.get("ss_text_encoder_lr")),
        "num_train_images": _number(metadata.get("ss_num_train_images")),
        "num_images": None,
        "batch_size": _number(metadata.get("ss_total_batch_size")) or _number(ot_config.get("batch_size")),
        "optimizer": _text(metadata, "ss_optimizer"),
    }
    dirs = _dict(_json(metadata, "ss_dataset_dirs"))
    counts = [_number(_dict(d).get("img_count")) for d in dirs.values()]
    if counts and all(isinstance(c, int) for c in counts):
        training["num_images"] = sum(counts)
    return {k: v for k, v in training.items() if v is not None}


def _network(metadata: dict[str, str]) -> dict:
    network = {
        "module": _text(metadata, "ss_network_module"),
        "dim": _number(metadata.get("ss_network_dim")),
        "alpha": _number(metadata.get("ss_network_alpha")),
        "args": _json(metadata, "ss_network_args"),
    }
    if not isinstance(network["args"], dict) or not network["args"]:
        network["args"] = None
    return {k: v for k, v in network.items() if v is not None}


def _trainer(metadata: dict[str, str], layout: str) -> str | None:
    software = _dict(_json(metadata, "software"))
    if str(software.get("name", "")).lower() == "ai-toolkit":
        return "ostris/ai-toolkit"
    if any(k in metadata for k in ("ot_revision", "ot_branch", "ot_config")):
        return "Nerogar/OneTrainer"
    if any(k.startswith("ss_") for k in metadata):
        return "kohya-ss/sd-scripts"
    if layout == "cloneofsimo":
        return "cloneofsimo/lora"
    if "lorastyle.base" in metadata:
        return "lorastyle"
    return None


def _textual_inversion_tokens(keys, metadata: dict[str, str]) -> list[str]:
    tokens = []
    for key in keys:
        if metadata.get(key) == EMBED_FLAG:  # cloneofsimo: the tensor is named like its token
            tokens.append(key)
        elif key.startswith("bundle_emb."):
            name = key.split(".")[1]
            if name:
                tokens.append(name)
    return list(dict.fromkeys(tokens))


def _is_control_lora(keys) -> bool:
    """BFL's Flux control LoRAs (FLUX.1-Canny/Depth-dev-lora), as ComfyUI comfy/lora_convert.py tells them.

    ``img_in.lora_A.weight`` (a LoRA on the patch embedding, whose in-features double to take the
    control image; its factors are full rank) with the ``single_blocks.0.norm.key_norm.scale`` norm
    weights they also set.
    """
    return "img_in.lora_A.weight" in keys and "single_blocks.0.norm.key_norm.scale" in keys


def adapter_kind(layout: str, shapes: dict[str, object], keys, network: dict) -> str:
    """One of ``LoRA``, ``LoCon``, ``LoKr``, ``LoHa``, ``DoRA``, ``Control-LoRA``, from names and shapes.

    ``LoCon`` is a LoRA with convolution layers beyond 1x1 (kohya ``conv_dim``, LyCORIS ``algo=locon``;
    SD 1.x's 1x1 ``proj_in``/``proj_out`` are plain LoRA); ``DoRA`` a LoRA with magnitude vectors
    (``dora_scale``: OneTrainer, LyCORIS; ``lora_magnitude_vector``: PEFT, diffusers). LoKr and LoHa
    keep their name with DoRA's magnitudes (LyCORIS ``dora_wd``).

    Parameters
    ----------
    layout : str
        The file's layout (:data:`lorastyle.io.formats.LAYOUTS`).
    shapes : dict
        Tensor name to shape.
    keys : iterable of str
        Every tensor name of the file.
    network : dict
        What the metadata says of the network (``algo`` of LyCORIS's ``ss_network_args``).

    Returns
    -------
    str
    """
    if _is_control_lora(keys):
        return "Control-LoRA"
    kinds = {s.kind for s in shapes.values()}
    if "lokr" in kinds:
        return "LoKr"
    if "loha" in kinds:
        return "LoHa"
    if layout == "kohya-dora" or any(k.endswith(".dora_scale") or ".lora_magnitude_vector" in k for k in keys):
        return "DoRA"
    args = network.get("args") or {}
    if any(any(d > 1 for d in s.kernel) for s in shapes.values()) or str(args.get("algo", "")).lower() == "locon":
        return "LoCon"
    return "LoRA"


# ---------------------------------------------------------------------------
# Tensor bytes: the alphas only


def _read_alphas(path: str, entries: dict, data_start: int, keys: list[str], data=None) -> dict[str, float]:
    """The scalar alpha tensors (float32-rounded, as load_lora reads them), one seek and read each.

    From ``data`` (the file's bytes) when given, without opening the file.
    """
    alphas = {}
    spans = sorted((entries[k][2], k) for k in keys)
    try:
        with open(path, "rb") if data is None else contextlib.nullcontext() as fh:
            for begin, key in spans:
                dtype, shape, begin, end = entries[key]
                if data is None:
                    fh.seek(data_start + begin)
                    raw = fh.read(end - begin)
                else:
                    raw = bytes(data[data_start + begin : data_start + end])
                if len(raw) != end - begin:
                    raise LoraFormatError(path, f"truncated tensor data: {key!r} (file changed while reading?)")
                with np.errstate(over="ignore"):
                    arr = _decode(memoryview(raw), dtype, shape).astype(np.float32)
                if arr.size != 1:
                    continue  # reported by the module check below, with the module's name
                if not np.all(np.isfinite(arr)):
                    raise LoraFormatError(path, f"tensor {key!r} holds NaN or Inf values (or values beyond float32)")
                alphas[key] = float(arr.reshape(-1)[0])
    except OSError as exc:
        raise LoraFormatError(path, f"cannot read file: {exc.strerror or exc}") from None
    return alphas


def _hash_pass(path: str, data_start: int, size: int) -> dict:
    """sha256 of the file, of its data section and of AutoV1's 64 KiB, from one read of the file."""
    whole, tensors, v1 = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    pos = 0
    try:
        # hashlib lets go of the GIL on large updates: the whole-file hash of a chunk runs in a second
        # thread while this one hashes the same chunk's tensor bytes (two cores: half the time)
        with open(path, "rb", buffering=0) as fh, ThreadPoolExecutor(max_workers=1) as pool:
            while True:
                n = fh.readinto(buf)
                if not n:
                    break
                chunk = view[:n]
                done = pool.submit(whole.update, chunk)
                if pos + n > data_start:
                    tensors.update(chunk[max(data_start - pos, 0) :])
                a, b = max(_AUTOV1_AT - pos, 0), min(_AUTOV1_AT + _AUTOV1_LEN - pos, n)
                if a < b:
                    v1.update(chunk[a:b])
                done.result()  # before the next read overwrites the buffer
                pos += n
    except OSError as exc:
        raise LoraFormatError(path, f"cannot read file: {exc.strerror or exc}") from None
    if pos != size:
        raise LoraFormatError(path, f"file changed while being hashed ({size} bytes, then {pos})")
    sha = whole.hexdigest()
    tensor_sha = tensors.hexdigest()
    return {
        "sha256": sha,
        "autov1": v1.hexdigest()[:8] if size >= _AUTOV1_MIN_SIZE else None,
        "autov2": sha[:10],
        "autov3": tensor_sha[:12],
        "tensor_sha256": tensor_sha,
    }


def _stored_hash(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip().lower()
    return value.removeprefix("0x")


# ---------------------------------------------------------------------------


def _flux_names(path: str, modules: dict[str, tuple]) -> dict[str, str]:
    """{final name: header name} after load_lora's Flux renaming, run on shape-only stand-in modules.

    The stand-ins hold zero-stride arrays (:func:`numpy.broadcast_to` of one zero) of the stored
    shapes: :func:`lorastyle.io.flux.canonical_flux_modules` decides names, splits and clashes from
    shapes, so it runs unchanged without any tensor byte. A split module keeps at least one of its
    source's factor arrays (the same object), which tells where it came from.
    """
    zero = np.zeros((), np.float32)
    stand_ins = {}
    for name, (part, kind, shape, roles, rank, alpha) in modules.items():
        factors = {r: np.broadcast_to(zero, s) for r, s in roles.items() if r not in ("alpha", "dora_scale")}
        stand_ins[name] = LoraModule(
            name=name,
            part=part,
            kind=kind,
            rank=rank,
            alpha=alpha,
            scale=1.0,
            factors=factors,
            out_features=shape[0],
            in_features=shape[1],
        )
    origin = {id(arr): name for name, m in stand_ins.items() for arr in m.factors.values()}
    return {
        new: next(origin[id(arr)] for arr in m.factors.values() if id(arr) in origin)
        for new, m in canonical_flux_modules(stand_ins, path).items()
    }


def describe_file(
    path: str | os.PathLike,
    *,
    hashes: bool = True,
    data: bytes | memoryview | None = None,
    _header: ParsedHeader | None = None,
) -> dict:
    """Describe a LoRA file from its header: what ``lorastyle inspect`` prints.

    Parameters
    ----------
    path : str or path-like
        A ``.safetensors`` LoRA file (pickles are refused, never unpickled).
    hashes : bool, default=True
        Read the whole file once for ``sha256``, ``autov1``, ``autov2``, ``autov3``, ``tensor_sha256``
        (see the module docstring). False reads only the header and the alpha tensors, and leaves
        those keys None.
    data : bytes, optional
        The file's bytes, already read (the index reads each file once): the file is not opened.

    Returns
    -------
    dict
        ``format``, ``base``, ``parts``, ``n_modules``, ``ranks``, ``alphas``, ``dtype`` (the keys and
        meanings of :meth:`LoRA.summary`, except ``ranks`` of full-factor LoKr, see
        :func:`lorastyle.io.formats.module_shape`), then ``kind``, ``title``, ``description``,
        ``author``, ``trigger_words`` (list of ``{"text", "source"[, "count"]}``), ``comment`` (kohya's
        ``ss_training_comment``), ``base_model``,
        ``base_model_version``, ``base_mismatch`` (None or a sentence), ``training``, ``network``,
        ``trainer``, ``textual_inversion_tokens``, ``n_tensors``, ``file_size``, the hashes, and
        ``kohya_model_hash`` ``{"stored", "recomputed", "matches"}`` /  ``modelspec_hash`` (same form)
        only when the file stores ``sshs_model_hash`` / ``modelspec.hash_sha256`` (with
        ``"placeholder": True`` and ``matches`` None when the stored value is :data:`EMPTY_SHA256`).
        The header's facts only: the sidecar files of LoRA managers are read by
        :mod:`lorastyle.io.sidecars`.

    Raises
    ------
    LoraFormatError
        As :func:`load_lora` for a malformed header, an unknown layout, factors whose shapes do not
        fit, a non-float factor or a NaN/Inf alpha. Tensor values other than alphas are not read, so
        NaN weights are not found here (``lorastyle inspect --check`` loads them).
    """
    path = os.fspath(path)
    # _header: as in load_lora
    parsed = _header if _header is not None else parse_header(path, data=data)
    entries, metadata, data_start, layout = parsed.entries, parsed.metadata, parsed.data_start, parsed.layout

    alpha_keys = [k for roles in layout.modules.values() for r, k in roles.items() if r == "alpha" and k in entries]
    alphas = {**_read_alphas(path, entries, data_start, alpha_keys, data), **layout.metadata_alphas}
    header: dict[str, tuple] = {}  # name: (part, kind, shape, role shapes, rank, alpha)
    shapes = {}
    for (part, mpath), roles in layout.modules.items():
        name = f"{part}.{mpath}"
        role_shapes = {role: tuple(entries[key][1]) if key in entries else () for role, key in roles.items()}
        shapes[name] = module_shape(path, name, role_shapes)
        if "alpha" in roles and math.prod(role_shapes["alpha"]) != 1:
            raise LoraFormatError(path, f"module {name}: alpha has shape {role_shapes['alpha']}, expected a scalar")
        alpha = alphas.get(roles["alpha"]) if "alpha" in roles else None
        s = shapes[name]
        header[name] = (part, s.kind, s.shape, role_shapes, s.rank, alpha)
    header = dict(sorted(header.items()))

    dims, base = parsed.dims, parsed.base
    final = {name: name for name in header}
    if base == "flux":  # as load_lora: BFL names become diffusers', fused projections split
        final = _flux_names(path, header)
    modules = [header[origin] for origin in final.values()]
    parts = sorted({part for part, _ in (name.split(".", 1) for name in final)})

    keys = sorted(entries)
    ot_config = _dict(_json(metadata, "ot_config"))
    network = _network(metadata)
    info: dict = {
        "format": layout.format,
        "base": base,
        "parts": parts,
        "n_modules": len(final),
        "ranks": sorted({m[4] for m in modules}),
        "alphas": sorted({m[5] for m in modules if m[5] is not None}),
        "dtype": layout.dtype,
        "path": path,
        "kind": adapter_kind(layout.format, shapes, keys, network),
        "title": _title(metadata),
        "description": _text(metadata, "modelspec.description"),
        "author": _text(metadata, "modelspec.author"),
        "trigger_words": _trigger_words(metadata),
        "comment": _text(metadata, "ss_training_comment"),
        "base_model": _base_model(metadata, ot_config),
        "base_model_version": _text(metadata, "ss_base_model_version") or _text(metadata, "modelspec.architecture"),
        "base_mismatch": _base_mismatch(metadata, _detect_base(dims, {})),
        "training": _training(metadata, ot_config),
        "network": network,
        "trainer": _trainer(metadata, layout.format),
        "textual_inversion_tokens": _textual_inversion_tokens(layout.extras, metadata),
        "n_tensors": len(entries),
    }
    try:
        info["file_size"] = len(data) if data is not None else os.stat(path).st_size
    except OSError as exc:
        raise LoraFormatError(path, f"cannot read file: {exc.strerror or exc}") from None
    if hashes:
        info.update(_hash_pass(path, data_start, info["file_size"]))
    else:
        info.update(dict.fromkeys(("sha256", "autov1", "autov2", "autov3", "tensor_sha256")))
    for field, key in (("kohya_model_hash", "sshs_model_hash"), ("modelspec_hash", "modelspec.hash_sha256")):
        stored = _stored_hash(_text(metadata, key))
        if stored:
            recomputed = info["tensor_sha256"]
            placeholder = stored == EMPTY_SHA256
            info[field] = {
                "stored": stored,
                "recomputed": recomputed,
                "matches": None if recomputed is None or placeholder else stored == recomputed,
            }
            if placeholder:
                info[field]["placeholder"] = True
    return info


# ---------------------------------------------------------------------------
# Text


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"


def _g(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _first_line(text: str) -> str:
    lines = str(text).strip().splitlines() or [""]
    return lines[0] + (" ..." if len(lines) > 1 else "")


def format_description(info: dict) -> list[str]:
    """The lines ``lorastyle inspect`` prints for :func:`describe_file`'s dict (first: the path).

    The facts people look for (title, trigger words, base model, preferred weight, tags, notes,
    comment, description) end with their source in brackets: a sidecar file's name or ``header``
    (the file's own metadata), as :func:`lorastyle.io.sidecars.resolve_facts` chose them.

    Parameters
    ----------
    info : dict
        What :func:`describe_file` returned, optionally with the keys of
        :func:`lorastyle.io.sidecars.describe_sidecars` (``facts``, ``sidecars``,
        ``sidecar_mismatch``); without them the header's facts are shown.

    Returns
    -------
    list of str
    """
    lines = [info["path"]]
    facts = info.get("facts")
    if facts is None:
        facts = resolve_facts(info, [])

    def row(label: str, value) -> None:
        if value not in (None, "", [], {}):
            lines.append(f"  {label:15s} {value}")

    def fact(label: str, name: str, show=str, header_key: str = "") -> None:
        f = facts.get(name)
        if f:
            source = f"{HEADER} {header_key}" if f["source"] == HEADER and header_key else f["source"]
            row(label, f"{show(f['value'])}  [{source}]")

    fact("title", "title")
    row("kind", info["kind"])
    row("base", info["base"])
    fact("base model", "base_model")
    fact("base version", "base_model_version")
    if info["base_mismatch"]:
        lines.append(f"  {'!! mismatch':15s} {info['base_mismatch']}")
    row("trainer", info["trainer"])
    words = facts.get("trigger_words")
    if words and words["source"] == HEADER:  # with their keys and caption-tag counts
        for i, word in enumerate(info["trigger_words"]):
            count = f" ({word['count']})" if "count" in word else ""
            first_tag = "count" in word and (i == 0 or "count" not in info["trigger_words"][i - 1])
            source = f"  [{HEADER} {word['source']}]" if "count" not in word or first_tag else ""
            row("trigger words" if i == 0 else "", f"{word['text']}{count}{source}")
    else:
        fact("trigger words", "trigger_words", ", ".join)
    fact("weight", "preferred_weight", lambda w: f"{w:g} (preferred)")
    fact("negative", "negative_text", _first_line)
    fact("tags", "tags", ", ".join)
    fact("notes", "notes", _first_line)
    fact("comment", "comment", _first_line, "ss_training_comment")
    t = info["training"]
    done = []
    if "steps" in t:
        done.append(f"{t['steps']} steps")
    if "epoch" in t or "num_epochs" in t:
        of = f" of {t['num_epochs']}" if "num_epochs" in t and "epoch" in t else ""
        done.append(f"epoch {t['epoch']}{of}" if "epoch" in t else f"{t['num_epochs']} epochs")
    if "resolution" in t:
        done.append(t["resolution"])
    if "learning_rate" in t:
        done.append(f"lr {_g(t['learning_rate'])}")
    if "num_images" in t or "num_train_images" in t:
        images = f"{t['num_images']} images" if "num_images" in t else ""
        repeats = f"{t['num_train_images']} with repeats" if "num_train_images" in t else ""
        done.append(f"{images} ({repeats})" if images and repeats else images or repeats)
    row("training", ", ".join(done))
    row("optimizer", t.get("optimizer"))
    n = info["network"]
    if n:
        args = ", ".join(f"{k}={v}" for k, v in (n.get("args") or {}).items())
        text = " ".join(
            s
            for s in (
                n.get("module"),
                f"dim {_g(n['dim'])}" if "dim" in n else "",
                f"alpha {_g(n['alpha'])}" if "alpha" in n else "",
                f"({args})" if args else "",
            )
            if s
        )
        row("network", text)
    row("TI tokens", ", ".join(info["textual_inversion_tokens"]))
    fact("description", "description", _first_line)
    row("author", info["author"])
    fact("civitai", "civitai_url")
    row("sidecars", ", ".join(os.path.basename(sc["path"]) for sc in info.get("sidecars", [])))
    for sentence in info.get("sidecar_mismatch", []):
        lines.append(f"  {'!! sidecar':15s} {sentence}")
    for key in SUMMARY_KEYS:
        if key == "base":
            continue  # above, with the metadata's claims
        value = info[key]
        row(key, ", ".join(_g(v) for v in value) if isinstance(value, list) else value)
    row("tensors", info["n_tensors"])
    row("size", _size(info["file_size"]))
    row("sha256", info["sha256"])
    row("AutoV1", info["autov1"])
    row("AutoV2", info["autov2"])
    row("AutoV3", f"{info['autov3']} (sha256 of the tensor data: {info['tensor_sha256']})" if info["autov3"] else None)
    for field, label in (("kohya_model_hash", "sshs_model_hash"), ("modelspec_hash", "modelspec hash")):
        if field in info:
            h = info[field]
            verdict = {True: "matches the tensor data", False: "does NOT match the tensor data", None: "not checked"}
            if h.get("placeholder"):
                row(label, f"{h['stored']} (a placeholder: the sha256 of empty input, not a hash of this file)")
            else:
                row(label, f"{h['stored']} ({verdict[h['matches']]})")
    return lines
