"""The sidecar files LoRA managers write next to ``NAME.safetensors``, read safely, with one precedence rule.

Each sidecar is written here in the layout its manager writes (checked in the manager's code):

* AUTOMATIC1111 ``NAME.json``: stable-diffusion-webui extensions-builtin/Lora/ui_edit_user_metadata.py
  ``save_lora_user_metadata`` sets ``description``, ``sd version``, ``activation text``, ``preferred weight``,
  ``negative text``, ``notes``; modules/ui_extra_networks_user_metadata.py ``write_user_metadata`` writes
  ``json.dump(metadata, file, indent=4, ensure_ascii=False)`` to ``splitext(filename)[0] + '.json'``, UTF-8.
* ComfyUI-Lora-Manager ``NAME.metadata.json``: willmiao/ComfyUI-Lora-Manager py/utils/models.py
  ``BaseModelMetadata`` / ``LoraMetadata`` (``file_name``, ``model_name``, ``file_path``, ``size``, ``modified``,
  ``sha256``, ``base_model``, ``preview_url``, ``preview_nsfw_level``, ``notes``, ``from_civitai``, ``civitai``,
  ``tags``, ``modelDescription``, ..., ``usage_tips`` a JSON string whose ``strength`` the UI uses as the weight),
  py/utils/sidecar_paths.py ``METADATA_SUFFIX = ".metadata.json"``.
* Civitai Helper ``NAME.civitai.info``: butaixianran/Stable-Diffusion-Webui-Civitai-Helper scripts/ch_lib/model.py
  ``write_model_info``: ``json.dumps(model_info, indent=4)`` of the Civitai API's model-version JSON (by hash).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import warnings

import numpy as np
import pytest

import lorastyle.io.sidecars as sidecars_module
from lorastyle.io.formats import save_lora
from lorastyle.io.metadata import describe_file, format_description
from lorastyle.io.sidecars import (
    HEADER,
    PRECEDENCE,
    describe_sidecars,
    read_sidecars,
    resolve_facts,
    sidecar_path,
)
from support import REAL_LORAS

NAME = "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q"

A1111 = {  # what the edit dialog saves (its slider's "Set to 0 to disable" is the unset weight)
    "description": "Soft watercolour washes",
    "sd version": "SDXL",
    "activation text": "wtrclr style, soft edges",
    "preferred weight": 0.7,
    "negative text": "photo, 3d",
    "notes": "best at 768 px\nsecond line",
}
SHA = "ab" * 32
LORA_MANAGER = {
    "file_name": "style",
    "model_name": "Watercolour Dreams",
    "file_path": "/models/loras/style.safetensors",
    "size": 1234,
    "modified": 1700000000.0,
    "sha256": SHA,
    "base_model": "Illustrious",
    "preview_url": "/models/loras/style.preview.webm",
    "preview_nsfw_level": 0,
    "notes": "from Lora Manager",
    "from_civitai": True,
    "civitai": {
        "id": 456,
        "modelId": 123,
        "name": "v2.0",
        "trainedWords": ["wtrclr", "watercolor"],
        "baseModel": "Illustrious",
    },
    "tags": ["style", "watercolor"],
    "modelDescription": "<p>A <b>watercolour</b> style &amp; more</p><p>Second paragraph</p>",
    "civitai_deleted": False,
    "favorite": False,
    "exclude": False,
    "db_checked": False,
    "last_checked_at": 0,
    "usage_tips": json.dumps({"strength": 0.8, "clip_strength": 1.0}),
}
CIVITAI = {  # the API's model-version JSON, trimmed to the keys that matter here plus some it carries
    "id": 789,
    "modelId": 321,
    "name": "v1.0",
    "createdAt": "2024-05-01T00:00:00.000Z",
    "baseModel": "Pony",
    "trainedWords": ["civ_word"],
    "description": "<p>Version notes</p>",
    "model": {"name": "Civitai Watercolour", "type": "LORA", "nsfw": False, "poi": False},
    "files": [{"name": "style.safetensors", "hashes": {"AutoV2": "ABCDEF0123", "SHA256": SHA.upper()}}],
    "images": [{"url": "https://image.civitai.com/x.jpeg", "nsfw": "None"}],
}


def write_lora(path, metadata=None):
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((2, 8)).astype(np.float32), rng.standard_normal((8, 2)).astype(np.float32)
    save_lora(path, {NAME: (A, B)}, alpha=2.0, base="tiny", metadata=metadata)
    return path


def write_a1111(lora, data=A1111):
    with open(os.path.splitext(lora)[0] + ".json", "w", encoding="utf8") as fh:
        json.dump(data, fh, indent=4, ensure_ascii=False)


def write_lora_manager(lora, data=LORA_MANAGER):
    with open(os.path.splitext(lora)[0] + ".metadata.json", "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False)


def write_civitai(lora, data=CIVITAI):
    with open(os.path.splitext(lora)[0] + ".civitai.info", "w") as fh:
        fh.write(json.dumps(data, indent=4))


def values(facts):
    return {k: (f["value"], f["source"]) for k, f in facts.items()}


# ---------------------------------------------------------------------------
# Each manager's file alone


def test_sidecar_paths_replace_the_suffix(tmp_path):
    lora = tmp_path / "my.style.safetensors"
    assert sidecar_path(lora, "a1111") == str(tmp_path / "my.style.json")
    assert sidecar_path(lora, "lora-manager") == str(tmp_path / "my.style.metadata.json")
    assert sidecar_path(lora, "civitai-helper") == str(tmp_path / "my.style.civitai.info")


def test_a1111_user_metadata(tmp_path):
    lora = write_lora(tmp_path / "style.safetensors")
    write_a1111(lora)
    (sc,) = read_sidecars(lora)
    assert (sc.kind, sc.path) == ("a1111", str(tmp_path / "style.json"))
    assert sc.facts == {
        "description": "Soft watercolour washes",
        "base_model_version": "SDXL",
        "trigger_words": ["wtrclr style, soft edges"],  # inserted into the prompt as written
        "preferred_weight": 0.7,
        "negative_text": "photo, 3d",
        "notes": "best at 768 px\nsecond line",
    }


def test_a1111_unset_values_are_left_out(tmp_path):
    lora = write_lora(tmp_path / "style.safetensors")
    # what the dialog saves when nothing was filled in: "Unknown" version, weight 0 ("Set to 0 to disable")
    write_a1111(lora, {"description": "", "sd version": "Unknown", "activation text": "", "preferred weight": 0.0,
                       "negative text": "", "notes": "kept"})  # fmt: skip
    (sc,) = read_sidecars(lora)
    assert sc.facts == {"notes": "kept"}


def test_lora_manager_metadata(tmp_path):
    lora = write_lora(tmp_path / "style.safetensors")
    write_lora_manager(lora)
    (sc,) = read_sidecars(lora)
    assert sc.kind == "lora-manager"
    assert sc.facts == {
        "title": "Watercolour Dreams (v2.0)",
        "base_model": "Illustrious",
        "trigger_words": ["wtrclr", "watercolor"],
        "preferred_weight": 0.8,  # usage_tips is a JSON string
        "tags": ["style", "watercolor"],
        "notes": "from Lora Manager",
        "description": "A watercolour style & more\nSecond paragraph",  # HTML to plain text
        "civitai_url": "https://civitai.com/models/123?modelVersionId=456",
        "sha256": SHA,
    }


def test_lora_manager_unknown_base_model_falls_back_to_its_civitai_copy(tmp_path):
    lora = write_lora(tmp_path / "style.safetensors")
    write_lora_manager(lora, {**LORA_MANAGER, "base_model": "Unknown", "civitai": {"baseModel": "NoobAI"}})
    (sc,) = read_sidecars(lora)
    assert sc.facts["base_model"] == "NoobAI"
    assert "civitai_url" not in sc.facts and "trigger_words" not in sc.facts


def test_civitai_helper_info(tmp_path):
    lora = write_lora(tmp_path / "style.safetensors")
    write_civitai(lora)
    (sc,) = read_sidecars(lora)
    assert sc.kind == "civitai-helper"
    assert sc.facts == {
        "title": "Civitai Watercolour (v1.0)",
        "base_model": "Pony",
        "trigger_words": ["civ_word"],
        "description": "Version notes",
        "civitai_url": "https://civitai.com/models/321?modelVersionId=789",
        "sha256": [SHA],  # Civitai writes it upper case
    }


# ---------------------------------------------------------------------------
# Precedence


def test_precedence_is_a1111_then_lora_manager_then_civitai_then_the_header(tmp_path):
    assert PRECEDENCE == ("a1111", "lora-manager", "civitai-helper", "header")
    lora = write_lora(
        tmp_path / "style.safetensors",
        {"modelspec.title": "header title", "ss_training_comment": "dimension is resized from 256 to 16;"},
    )
    write_a1111(lora)
    write_lora_manager(lora)
    write_civitai(lora)
    header = describe_file(lora, hashes=False)
    facts = resolve_facts(header, read_sidecars(lora))
    assert list(facts) == [
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
    ]
    assert values(facts) == {
        "title": ("Watercolour Dreams (v2.0)", "style.metadata.json"),  # A1111 keeps no title
        "trigger_words": (["wtrclr style, soft edges"], "style.json"),
        "base_model": ("Illustrious", "style.metadata.json"),  # A1111's "sd version" is a version, not a model
        "base_model_version": ("SDXL", "style.json"),
        "preferred_weight": (0.7, "style.json"),
        "negative_text": ("photo, 3d", "style.json"),
        "tags": (["style", "watercolor"], "style.metadata.json"),
        "notes": ("best at 768 px\nsecond line", "style.json"),
        "description": ("Soft watercolour washes", "style.json"),
        "comment": ("dimension is resized from 256 to 16;", HEADER),  # only the header has one
        "civitai_url": ("https://civitai.com/models/123?modelVersionId=456", "style.metadata.json"),
    }
    # without the two user-edited files, Civitai's page comes before the header
    os.unlink(tmp_path / "style.json")
    os.unlink(tmp_path / "style.metadata.json")
    facts = resolve_facts(header, read_sidecars(lora))
    assert facts["title"] == {"value": "Civitai Watercolour (v1.0)", "source": "style.civitai.info"}
    assert facts["base_model"] == {"value": "Pony", "source": "style.civitai.info"}
    # and with none, the header's own
    os.unlink(tmp_path / "style.civitai.info")
    facts = resolve_facts(header, read_sidecars(lora))
    assert facts["title"] == {"value": "header title", "source": HEADER}
    assert "base_model" not in facts


def test_header_trigger_words_are_strings_and_the_training_comment_never_one(tmp_path):
    lora = write_lora(
        tmp_path / "k.safetensors",
        {"modelspec.trigger_phrase": "mychar", "ss_training_comment": "licence: CC BY-NC"},
    )
    facts = resolve_facts(describe_file(lora, hashes=False), [])
    assert facts["trigger_words"] == {"value": ["mychar"], "source": HEADER}
    assert facts["comment"] == {"value": "licence: CC BY-NC", "source": HEADER}


def test_inspect_text_names_each_facts_source(tmp_path):
    lora = write_lora(tmp_path / "style.safetensors", {"modelspec.title": "header title"})
    write_lora_manager(lora)
    write_civitai(lora)
    info = describe_file(lora)
    info.update(describe_sidecars(lora, info, sha256=info["sha256"]))
    text = "\n".join(format_description(info))
    for line in (
        "  title           Watercolour Dreams (v2.0)  [style.metadata.json]",
        "  base model      Illustrious  [style.metadata.json]",
        "  trigger words   wtrclr, watercolor  [style.metadata.json]",
        "  weight          0.8 (preferred)  [style.metadata.json]",
        "  tags            style, watercolor  [style.metadata.json]",
        "  notes           from Lora Manager  [style.metadata.json]",
        "  description     A watercolour style & more ...  [style.metadata.json]",
        "  civitai         https://civitai.com/models/123?modelVersionId=456  [style.metadata.json]",
        "  sidecars        style.metadata.json, style.civitai.info",
    ):
        assert line in text.splitlines(), (line, text)
    # both sidecars name the sha256 "abab...", not this file's: they were written for another file
    file_sha = hashlib.sha256(lora.read_bytes()).hexdigest()
    assert info["sidecar_mismatch"] == [
        f"style.metadata.json names sha256 {SHA[:12]}..., not this file's {file_sha[:12]}...: it was written for "
        "another file (a re-saved or renamed copy?)",
        f"style.civitai.info names sha256 {SHA[:12]}..., not this file's {file_sha[:12]}...: it was written for "
        "another file (a re-saved or renamed copy?)",
    ]
    assert sum(line.startswith("  !! sidecar") for line in text.splitlines()) == 2


def test_a_sidecar_naming_this_files_hash_is_not_flagged(tmp_path):
    lora = write_lora(tmp_path / "style.safetensors")
    sha = hashlib.sha256(lora.read_bytes()).hexdigest()
    write_civitai(lora, {**CIVITAI, "files": [{"hashes": {"SHA256": sha.upper()}}]})
    assert describe_sidecars(lora, {}, sha256=sha)["sidecar_mismatch"] == []
    assert describe_sidecars(lora, {}, sha256=None)["sidecar_mismatch"] == []  # no hash computed: not checked


# ---------------------------------------------------------------------------
# Hostile sidecars: a warning naming the file, never an exception


def read_with_warnings(lora):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = read_sidecars(lora)
    return found, [str(w.message) for w in caught]


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2, 3]", "a JSON list, not an object"),
        (b'"text"', "a JSON str, not an object"),
        (b"\xff\xfe{}", "not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply"),
        (b'{"trainedWords": NaN}', "not valid JSON"),
    ],
)
def test_malformed_sidecars_are_warned_about(tmp_path, content, reason):
    lora = write_lora(tmp_path / "style.safetensors")
    (tmp_path / "style.civitai.info").write_bytes(content)
    found, messages = read_with_warnings(lora)
    assert found == []
    assert len(messages) == 1 and messages[0].startswith(f"{tmp_path / 'style.civitai.info'}: sidecar not read: ")
    assert reason in messages[0]


def test_wrong_types_are_skipped_one_value_at_a_time(tmp_path):
    lora = write_lora(tmp_path / "style.safetensors")
    write_civitai(
        lora,
        {"model": "not a dict", "name": 3, "trainedWords": "a string", "baseModel": ["x"], "files": 7, "modelId": True,
         "description": None, "extra": {"deep": [1, 2]}},
    )  # fmt: skip
    write_a1111(lora, {"preferred weight": "abc", "activation text": 5, "notes": "kept", "sd version": None})
    write_lora_manager(
        lora, {"usage_tips": "{bad json", "tags": [1, None, " tag ", "tag"], "civitai": [], "model_name": ""}
    )
    found, messages = read_with_warnings(lora)
    assert messages == []
    assert [(sc.kind, sc.facts) for sc in found] == [("a1111", {"notes": "kept"}), ("lora-manager", {"tags": ["tag"]})]


def test_an_unrelated_json_next_to_the_file_is_ignored(tmp_path):
    lora = write_lora(tmp_path / "style.safetensors")
    write_a1111(lora, {"learning_rate": 1e-4, "network_dim": 16})  # a training config, say
    assert read_with_warnings(lora) == ([], [])


def test_a_sidecar_over_the_size_limit_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(sidecars_module, "MAX_SIDECAR_BYTES", 100)
    lora = write_lora(tmp_path / "style.safetensors")
    write_civitai(lora, {**CIVITAI, "description": "x" * 200})
    found, messages = read_with_warnings(lora)
    assert found == []
    assert messages == [f"{tmp_path / 'style.civitai.info'}: sidecar not read: larger than 100 bytes"]


def test_a_fifo_or_a_folder_is_refused_without_blocking(tmp_path):
    lora = write_lora(tmp_path / "style.safetensors")
    os.mkfifo(tmp_path / "style.civitai.info")  # opening it to read without O_NONBLOCK would wait for a writer
    (tmp_path / "style.json").mkdir()

    def blocked(signum, frame):
        raise AssertionError("still reading after 30 s: blocked on the FIFO")

    old = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(30)
    try:
        found, messages = read_with_warnings(lora)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert found == []
    assert sorted(messages) == [
        f"{tmp_path / 'style.civitai.info'}: sidecar not read: not a regular file",
        f"{tmp_path / 'style.json'}: sidecar not read: not a regular file",
    ]


def test_no_sidecar_no_warning(tmp_path):
    lora = write_lora(tmp_path / "style.safetensors")
    assert read_with_warnings(lora) == ([], [])
    assert read_with_warnings(tmp_path / "missing" / "x.safetensors") == ([], [])


@pytest.mark.skipif(not REAL_LORAS.is_dir(), reason=f"real LoRA files not found at {REAL_LORAS}")
def test_a_real_kohya_files_comment_and_a_civitai_sidecar(tmp_path):
    """The LyCORIS author's LoKr: its ss_training_comment ("trigger word is ...") is a comment; a Civitai sidecar
    written beside a link to it gives the title, trigger words and base model, each named with its source."""
    real = next(REAL_LORAS.glob("lycoris_lokr_sd1_dim4__*.safetensors"))
    lora = tmp_path / "falcon.safetensors"
    os.symlink(real, lora)
    info = describe_file(lora)
    assert info["comment"] == "trigger word is smart falcon \\(umamusume\\)"
    assert info["comment"] not in [w["text"] for w in info["trigger_words"]]
    write_civitai(lora, {**CIVITAI, "files": [{"hashes": {"SHA256": info["sha256"].upper()}}]})
    info.update(describe_sidecars(lora, info, sha256=info["sha256"]))
    assert info["sidecar_mismatch"] == []
    assert values(info["facts"])["title"] == ("Civitai Watercolour (v1.0)", "falcon.civitai.info")
    assert values(info["facts"])["comment"] == ("trigger word is smart falcon \\(umamusume\\)", HEADER)
    text = format_description(info)
    assert "  base model      Pony  [falcon.civitai.info]" in text
