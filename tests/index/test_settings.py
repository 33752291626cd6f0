"""Index settings: one JSON form, equality, and what an old index's settings mean."""

import json

import numpy as np
import pytest

from lorastyle.descriptors import ModuleSelection
from lorastyle.index.settings import IndexSettings
from lorastyle.index.sketches import Sketcher
from lorastyle.io.formats import LoRA, build_module


def test_settings_survive_their_json_and_compare_by_value():
    a = IndexSettings("gram", Sketcher(dim=256), ModuleSelection(parts=["unet"], layers=["self_attention"]))
    again = IndexSettings.from_json(json.loads(json.dumps(a.to_json())))
    assert again == a and hash(again) == hash(a)
    assert again != IndexSettings("gram", Sketcher(dim=256))  # no selection
    assert again != IndexSettings("delta", Sketcher(dim=256), a.select)
    assert again != IndexSettings("gram", Sketcher(dim=512), a.select)
    assert IndexSettings("gram", Sketcher()) == IndexSettings("gram", Sketcher(), None)


def test_an_old_sketch_without_centre_is_read_as_not_centred():
    data = IndexSettings("gram", Sketcher()).to_json()
    del data["sketch"]["centre"]
    assert IndexSettings.from_json(data).sketcher.centre is False


@pytest.mark.parametrize(
    "data, error",
    [
        ({"descriptor": "pixels", "sketch": {}}, ValueError),
        ({"descriptor": "gram", "sketch": [1]}, ValueError),
        ({"descriptor": "gram", "sketch": {"dims": 3}}, TypeError),
        ({"descriptor": "gram", "sketch": {}, "select": {"colours": ["red"]}}, TypeError),
        ({"descriptor": "gram", "sketch": {}, "select": "unet"}, ValueError),
    ],
)
def test_settings_that_are_not_settings_are_refused(data, error):
    with pytest.raises(error):
        IndexSettings.from_json(data)


def test_the_selection_is_applied_in_one_place():
    rng = np.random.default_rng(0)
    names = [
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
    ]
    modules = {
        n: build_module(
            "x",
            n,
            n.split(".")[0],
            {
                "lora_down": rng.standard_normal((2, 8)).astype(np.float32),
                "lora_up": rng.standard_normal((8, 2)).astype(np.float32),
            },
        )
        for n in names
    }
    lora = LoRA(path="x", format="kohya", base="tiny", modules=modules, dtype="float32")
    IndexSettings("gram", Sketcher(), ModuleSelection(parts=["unet"])).selected(lora)
    assert list(lora.modules) == names[:1]
