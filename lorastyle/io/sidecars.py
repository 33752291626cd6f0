"""What LoRA managers keep next to a LoRA file: the sidecar files, read safely, and one precedence rule.

For ``NAME.safetensors`` three managers write a JSON file beside it (each layout checked in the
manager's own code):

=====================  ====================  ==============================================================
sidecar                written by            keys read (fact)
=====================  ====================  ==============================================================
``NAME.json``          AUTOMATIC1111 /       ``description``, ``sd version`` (``SD1``, ``SD2``, ``SDXL``,
                       Forge, its Lora       ``SD3``; ``Unknown`` is ignored: base_model_version),
                       "edit metadata"       ``activation text`` (trigger_words), ``preferred weight``
                       dialog                (0 means unset: "Set to 0 to disable"), ``negative text``,
                                             ``notes``. stable-diffusion-webui extensions-builtin/Lora/
                                             ui_edit_user_metadata.py ``save_lora_user_metadata``;
                                             modules/extra_networks.py ``get_user_metadata`` reads
                                             ``splitext(filename)[0] + '.json'``;
                                             modules/ui_extra_networks_user_metadata.py writes it with
                                             ``json.dump(..., indent=4, ensure_ascii=False)``, UTF-8.
``NAME.metadata.json`` ComfyUI-Lora-Manager   ``model_name`` (title, with the version ``civitai.name``),
                       (willmiao)            ``base_model`` (``SD 1.5``, ``SDXL 1.0``, ``Pony``,
                                             ``Illustrious``, ``Flux.1 D`` ...; ``Unknown`` ignored),
                                             ``civitai`` (its copy of Civitai's model-version JSON:
                                             ``trainedWords``, ``baseModel``, ``id``, ``modelId``),
                                             ``tags``, ``notes``, ``modelDescription``, ``usage_tips``
                                             (a JSON *string*: ``strength`` is the preferred weight),
                                             ``preview_url``, ``sha256``. py/utils/models.py
                                             ``BaseModelMetadata``/``LoraMetadata``;
                                             py/utils/sidecar_paths.py ``METADATA_SUFFIX``, next to the
                                             file in the default "alongside" storage mode; the
                                             ``usage_tips`` keys from static/js (``strength``,
                                             ``strength_min``, ``strength_max``, ``clip_strength``).
``NAME.civitai.info``  Civitai Helper        the Civitai API's model-version JSON, as fetched by hash:
                       (butaixianran's       ``model.name`` and ``name`` (title: "model (version)"),
                       extension and its     ``trainedWords``, ``baseModel``, ``description`` (HTML),
                       forks)                ``model.tags`` when present, ``id``/``modelId``,
                                             ``files[].hashes.SHA256``. scripts/ch_lib/model.py
                                             ``write_model_info`` (``json.dumps(model_info, indent=4)``),
                                             suffix ``.civitai`` + ``.info``.
=====================  ====================  ==============================================================

**Precedence** (:data:`PRECEDENCE`, the only place it is decided): each fact is taken from the
first source that has it, in this order:

1. ``NAME.json``: what the user typed in AUTOMATIC1111's edit dialog;
2. ``NAME.metadata.json``: ComfyUI-Lora-Manager's record, the user's edits over its copy of Civitai;
3. ``NAME.civitai.info``: the model's Civitai page, as published;
4. the file's own header (``__metadata__``, see :mod:`lorastyle.io.metadata`): what the training
   script wrote, which is often a placeholder (an output name, the most frequent caption tags).

A source either has a fact or not; values are never mixed across sources (the trigger words of
one file come from one source). ``base_model`` is the model lineage (``Pony``, ``Illustrious``,
``ponyDiffusionV6XL.safetensors``); ``base_model_version`` the Stable Diffusion version a source
names (``SDXL``, ``sdxl_base_v1-0``). ``comment`` (kohya's ``ss_training_comment``: free text such
as "dimension is resized from 256 to 16;" or a licence) comes from the header only and is never a
trigger word.

Reading is hostile-input safe: a sidecar must be a regular file (a FIFO is opened non-blocking and
refused, never waited on) of at most :data:`MAX_SIDECAR_BYTES`, UTF-8 JSON; a malformed file,
wrong types or absurd values are skipped with a :class:`UserWarning` naming the file and the
reason, never an exception. Nothing is executed or unpickled; HTML descriptions become plain text.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "SIDECARS",
    "PRECEDENCE",
    "FACTS",
    "HEADER",
    "MAX_SIDECAR_BYTES",
    "Sidecar",
    "sidecar_path",
    "read_sidecars",
    "resolve_facts",
    "file_facts",
    "describe_sidecars",
    "PREVIEW_SUFFIXES",
    "VIDEO_PREVIEW_SUFFIXES",
    "find_preview",
]

#: Sidecar kinds and the suffix that replaces ``.safetensors`` (or any suffix) of the LoRA file.
SIDECARS = {
    "a1111": ".json",
    "lora-manager": ".metadata.json",
    "civitai-helper": ".civitai.info",
}
#: The source of a fact wins over every later one; ``header`` is the LoRA file's own metadata.
HEADER = "header"
PRECEDENCE = ("a1111", "lora-manager", "civitai-helper", HEADER)
#: Preview images looked for next to ``NAME.safetensors``, in this order (the first that exists is used):
#: AUTOMATIC1111/Forge's extra-networks page looks, for each of png, jpg, jpeg, webp, gif, for
#: ``NAME.EXT`` and ``NAME.preview.EXT``; its "replace preview" button and the Civitai Helper extension
#: write ``NAME.preview.png``, so the ``.preview.`` name is tried first for each extension.
PREVIEW_SUFFIXES = tuple(f"{mid}.{ext}" for ext in ("png", "jpg", "jpeg", "webp", "gif") for mid in (".preview", ""))
#: Preview videos (Civitai's animated previews, which the Civitai Helper extension and ComfyUI-Lora-Manager
#: save as ``NAME.preview.mp4`` or ``.webm``), looked for when there is no preview image.
VIDEO_PREVIEW_SUFFIXES = tuple(f"{mid}.{ext}" for ext in ("mp4", "webm") for mid in (".preview", ""))
#: The facts, in the order they are shown.
FACTS = (
    "title",
    "trigger_words",
    "base_model",
    "base_model_version",
    "preferred_weight",
    "negative_text",
    "tags",
    "notes",
    "description",
    "comment",
    "civitai_url",
)
#: A larger sidecar is not read (Civitai's model-version JSON with its image list is a few tens of kB).
MAX_SIDECAR_BYTES = 8 << 20
_MAX_TEXT = 2000  # characters kept of a description or notes
_MAX_WORD = 200  # ... of a title, a trigger word or a tag
_MAX_WORDS = 50  # trigger words or tags kept
_UNSET = {"", "unknown", "none"}


@dataclass(frozen=True)
class Sidecar:
    """One sidecar file that was found and read.

    Attributes
    ----------
    kind : str
        A key of :data:`SIDECARS`.
    path : str
        The sidecar file.
    facts : dict
        The facts it gives (keys of :data:`FACTS`, plus ``sha256`` when it names the LoRA file's hash).
    """

    kind: str
    path: str
    facts: dict = field(default_factory=dict)


def sidecar_path(path: str | os.PathLike, kind: str) -> str:
    """Where a manager keeps its sidecar of a LoRA file: ``NAME`` + the kind's suffix.

    Parameters
    ----------
    path : str or path-like
        The LoRA file (``NAME.safetensors``).
    kind : str
        A key of :data:`SIDECARS`.

    Returns
    -------
    str

    Raises
    ------
    KeyError
        For an unknown kind.
    """
    return os.path.splitext(os.fspath(path))[0] + SIDECARS[kind]


# ---------------------------------------------------------------------------
# Reading


def _warn(path: str, reason: str) -> None:
    warnings.warn(f"{path}: sidecar not read: {reason}", UserWarning, stacklevel=4)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _read_json(path: str):
    """The JSON value of a sidecar file; None when absent or unusable (with a warning for the latter)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)  # non-blocking: a FIFO opens at once (and is refused below)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        _warn(path, f"cannot open it: {exc.strerror or exc}")
        return None
    raw, reason = b"", None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            reason = "not a regular file"
        elif st.st_size > MAX_SIDECAR_BYTES:
            reason = f"larger than {MAX_SIDECAR_BYTES} bytes"
        else:
            with os.fdopen(fd, "rb", closefd=False) as fh:
                raw = fh.read(MAX_SIDECAR_BYTES + 1)
    except OSError as exc:
        reason = f"cannot read it: {exc.strerror or exc}"
    finally:
        os.close(fd)
    if reason:
        _warn(path, reason)
        return None
    if len(raw) > MAX_SIDECAR_BYTES:
        _warn(path, f"larger than {MAX_SIDECAR_BYTES} bytes")
        return None
    try:
        return json.loads(raw.decode("utf-8-sig"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        _warn(path, "not UTF-8 text")
    except RecursionError:
        _warn(path, "JSON nested too deeply")
    except ValueError as exc:
        _warn(path, f"not valid JSON ({exc})")
    return None


def _text(value, limit: int = _MAX_WORD) -> str | None:
    """A non-empty, stripped string (at most ``limit`` characters), or None (also for "Unknown")."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if value.lower() in _UNSET:
        return None
    return value[:limit]


def _plain(value, limit: int = _MAX_TEXT) -> str | None:
    """Plain text of an HTML description (Civitai's are HTML): tags dropped, entities decoded."""
    if not isinstance(value, str):
        return None
    text = re.sub(r"<(br|/p|/div|/li|/h\d)\b[^>]*>", "\n", value[: 20 * limit], flags=re.I)
    text = html.unescape(re.sub(r"<[^>]*>", "", text))
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return _text("\n".join(line for line in lines if line), limit)


def _words(value) -> list[str] | None:
    """A list of distinct non-empty strings (at most 50, each at most 200 characters), or None."""
    if not isinstance(value, list):
        return None
    words = [w for w in (_text(v) for v in value) if w]
    words = list(dict.fromkeys(words))[:_MAX_WORDS]
    return words or None


def _weight(value) -> float | None:
    """A finite, non-zero weight from a number or a numeric string (bools are not numbers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value == 0 or abs(value) > 1e6:
        return None
    return float(value)


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _sha256(value) -> str | None:
    if isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{64}", value.strip()):
        return value.strip().lower()
    return None


def _civitai_url(version: dict) -> str | None:
    model_id, version_id = version.get("modelId"), version.get("id")
    ok = lambda x: isinstance(x, int) and not isinstance(x, bool) and x > 0  # noqa: E731
    if ok(model_id):
        return f"https://civitai.com/models/{model_id}" + (f"?modelVersionId={version_id}" if ok(version_id) else "")
    return None


def _title(model_name, version_name) -> str | None:
    name = _text(model_name)
    if not name:
        return None
    version = _text(version_name)
    return f"{name} ({version})"[:_MAX_WORD] if version else name


def _a1111(data: dict) -> dict:
    words = _text(data.get("activation text"), _MAX_TEXT)
    return {
        "description": _plain(data.get("description")),
        "base_model_version": _text(data.get("sd version")),
        "trigger_words": [words] if words else None,
        "preferred_weight": _weight(data.get("preferred weight")),
        "negative_text": _text(data.get("negative text"), _MAX_TEXT),
        "notes": _text(data.get("notes"), _MAX_TEXT),
    }


def _usage_tips(value) -> dict:
    """Lora-Manager's ``usage_tips``: a JSON string (``"{\\"strength\\": 0.8}"``); a dict is taken too."""
    if isinstance(value, str) and len(value) <= 10_000:
        try:
            value = json.loads(value, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            return {}
    return _dict(value)


def _lora_manager(data: dict) -> dict:
    civitai = _dict(data.get("civitai"))
    return {
        "title": _title(data.get("model_name"), civitai.get("name")),
        "base_model": _text(data.get("base_model")) or _text(civitai.get("baseModel")),
        "trigger_words": _words(civitai.get("trainedWords")),
        "preferred_weight": _weight(_usage_tips(data.get("usage_tips")).get("strength")),
        "tags": _words(data.get("tags")),
        "notes": _text(data.get("notes"), _MAX_TEXT),
        "description": _plain(data.get("modelDescription")),
        "civitai_url": _civitai_url(civitai),
        "sha256": _sha256(data.get("sha256")),
    }


def _civitai_helper(data: dict) -> dict:
    model = _dict(data.get("model"))
    files = data.get("files") if isinstance(data.get("files"), list) else []
    hashes = [h for h in (_sha256(_dict(_dict(f).get("hashes")).get("SHA256")) for f in files) if h]
    return {
        "title": _title(model.get("name"), data.get("name")),
        "base_model": _text(data.get("baseModel")),
        "trigger_words": _words(data.get("trainedWords")),
        "tags": _words(model.get("tags")),
        "description": _plain(data.get("description")),
        "civitai_url": _civitai_url(data),
        "sha256": hashes or None,
    }


_READERS = {"a1111": _a1111, "lora-manager": _lora_manager, "civitai-helper": _civitai_helper}


def read_sidecars(path: str | os.PathLike) -> list[Sidecar]:
    """The sidecar files of a LoRA file that exist and give at least one fact, in :data:`PRECEDENCE` order.

    Parameters
    ----------
    path : str or path-like
        The LoRA file (``NAME.safetensors``); it need not exist.

    Returns
    -------
    list of Sidecar
        Only the facts a sidecar gives (None values dropped).

    Warns
    -----
    UserWarning
        For a sidecar that exists but cannot be used (not a regular file, too large, not UTF-8 JSON,
        not a JSON object), naming it and the reason. A sidecar with none of its manager's keys (for
        example another tool's ``NAME.json``) is left out silently.
    """
    found = []
    for kind in PRECEDENCE:
        if kind == HEADER:
            continue
        where = sidecar_path(path, kind)
        data = _read_json(where)
        if data is None:
            continue
        if not isinstance(data, dict):
            _warn(where, f"a JSON {type(data).__name__}, not an object")
            continue
        facts = {k: v for k, v in _READERS[kind](data).items() if v is not None}
        if facts:
            found.append(Sidecar(kind=kind, path=where, facts=facts))
    return found


# ---------------------------------------------------------------------------
# Precedence


def _header_value(fact: str, value):
    """A header fact in the sidecars' form: trigger words as strings (describe_file gives dicts)."""
    if fact == "trigger_words" and isinstance(value, list):
        words = [w.get("text") if isinstance(w, dict) else w for w in value]
        return [w for w in words if isinstance(w, str) and w] or None
    return value if value not in (None, "", [], {}) else None


def resolve_facts(header: Mapping, sidecars: list[Sidecar]) -> dict[str, dict]:
    """Each fact from the first source that has it (:data:`PRECEDENCE`), with that source.

    Parameters
    ----------
    header : mapping
        The LoRA file's own facts: keys of :data:`FACTS` (what
        :func:`lorastyle.io.metadata.describe_file` returns, or an index record's ``info``);
        ``trigger_words`` as strings or as ``{"text": ...}`` dicts.
    sidecars : list of Sidecar
        From :func:`read_sidecars`.

    Returns
    -------
    dict
        ``{fact: {"value": value, "source": name}}`` for every fact some source has, in
        :data:`FACTS` order; ``source`` is the sidecar's file name (``NAME.civitai.info``) or
        ``"header"``.
    """
    rank = {kind: i for i, kind in enumerate(PRECEDENCE)}
    ordered = sorted(sidecars, key=lambda s: rank.get(s.kind, len(rank)))
    out = {}
    for fact in FACTS:
        for sc in ordered:
            if sc.facts.get(fact) is not None:
                out[fact] = {"value": sc.facts[fact], "source": os.path.basename(sc.path)}
                break
        else:
            value = _header_value(fact, header.get(fact))
            if value is not None:
                out[fact] = {"value": value, "source": HEADER}
    return out


def file_facts(path: str | os.PathLike, header: Mapping) -> dict[str, dict]:
    """:func:`resolve_facts` of a LoRA file's header facts and its sidecars, read now.

    Parameters
    ----------
    path : str or path-like
        The LoRA file.
    header : mapping
        Its own facts (see :func:`resolve_facts`).

    Returns
    -------
    dict
        As :func:`resolve_facts`.
    """
    return resolve_facts(header, read_sidecars(path))


def describe_sidecars(path: str | os.PathLike, header: Mapping, sha256: str | None = None) -> dict:
    """What ``lorastyle inspect`` adds to a file's description: its sidecars and the resolved facts.

    Parameters
    ----------
    path : str or path-like
        The LoRA file.
    header : mapping
        Its own facts (see :func:`resolve_facts`).
    sha256 : str, optional
        The file's sha256, when computed: a sidecar that names another hash is reported.

    Returns
    -------
    dict
        ``facts`` (:func:`resolve_facts`), ``sidecars`` (one ``{"kind", "path", "facts"}`` per
        sidecar read, in precedence order) and ``sidecar_mismatch`` (sentences, one per sidecar whose
        stored sha256 is not ``sha256``: it was written for another file, a renamed or re-saved copy).
    """
    sidecars = read_sidecars(path)
    mismatch = []
    for sc in sidecars:
        stored = sc.facts.get("sha256")
        names = [stored] if isinstance(stored, str) else list(stored or [])
        if sha256 and names and sha256.lower() not in names:
            mismatch.append(
                f"{os.path.basename(sc.path)} names sha256 {names[0][:12]}..., not this file's {sha256[:12]}...: "
                "it was written for another file (a re-saved or renamed copy?)"
            )
    return {
        "facts": resolve_facts(header, sidecars),
        "sidecars": [{"kind": sc.kind, "path": sc.path, "facts": sc.facts} for sc in sidecars],
        "sidecar_mismatch": mismatch,
    }


def find_preview(path: str | os.PathLike, suffixes: tuple[str, ...] = PREVIEW_SUFFIXES) -> str | None:
    """The preview image a LoRA manager keeps next to a LoRA file, or None.

    Tries ``NAME`` + each of :data:`PREVIEW_SUFFIXES` (``NAME.preview.png``, ``NAME.png``,
    ``NAME.preview.jpg``, ... for ``NAME.safetensors``) and returns the first regular file.

    Parameters
    ----------
    path : str or path-like
        The LoRA file.
    suffixes : tuple of str, default=PREVIEW_SUFFIXES
        :data:`VIDEO_PREVIEW_SUFFIXES` finds a preview video instead.

    Returns
    -------
    str or None
    """
    stem = os.path.splitext(os.fspath(path))[0]
    for suffix in suffixes:
        candidate = stem + suffix
        if os.path.isfile(candidate):
            return candidate
    return None
