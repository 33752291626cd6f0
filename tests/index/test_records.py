"""One codec of a record for the index file and the cache: a round trip, and hostile rows refused."""

import json

import numpy as np
import pytest

from lorastyle.index.records import read_record, record_from_row, record_row
from lorastyle.index.sketches import Sketcher
from lorastyle.io.formats import save_lora

MODULES = {
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (16, 16),
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": (12, 12),
}


@pytest.fixture
def record(tmp_path):
    rng = np.random.default_rng(0)
    fs = {
        n: (rng.standard_normal((4, i)).astype(np.float32), rng.standard_normal((o, 4)).astype(np.float32))
        for n, (o, i) in MODULES.items()
    }
    save_lora(tmp_path / "a.safetensors", fs, alpha=2.0, base="tiny", metadata={"modelspec.title": "A"})
    return read_record(tmp_path / "a.safetensors", sketcher=Sketcher(dim=256), descriptor="concat")


def arrays(record):
    return dict(
        layout=record.layout, sketches=dict(record.sketches), module_norms=record.module_norms, init=record.init
    )


def test_a_record_survives_its_row_and_arrays(record):
    row = json.loads(json.dumps(record_row(record)))  # what a file holds
    again = record_from_row(row, **arrays(record))
    for name in (
        "path",
        "sha256",
        "identity",
        "format",
        "base",
        "dtype",
        "parts",
        "ranks",
        "alphas",
        "scales",
        "n_modules",
        "norms",
        "info",
    ):
        assert getattr(again, name) == getattr(record, name), name
    assert record.scales == [0.5] and record.info["title"] == "A"
    np.testing.assert_array_equal(again.init, record.init)


@pytest.mark.parametrize(
    "change, what",
    [
        (lambda row, a: row.update(sha256="x"), "sha256"),
        (lambda row, a: row.update(parts=["unet"]), "parts"),
        (lambda row, a: row["norms"].update(unet=float("nan")), "norms"),
        (lambda row, a: row["norms"].update(unet=-1.0), "norms"),
        (lambda row, a: row.update(n_modules=5), "module norms"),
        (lambda row, a: row.update(scales=["inf"]), "scales"),
        (lambda row, a: a["sketches"].update(unet=a["sketches"]["unet"].astype(np.float32)), "sketches"),
        (lambda row, a: a["sketches"].update(unet=np.full(256, np.inf, np.float16)), "sketches"),
    ],
)
def test_a_hostile_row_is_refused_with_what_is_wrong(record, change, what):
    row, a = json.loads(json.dumps(record_row(record))), arrays(record)
    change(row, a)
    with pytest.raises(ValueError, match=f"a record's {what}"):
        record_from_row(row, **a)


def test_a_row_of_an_older_index_without_scales_is_read(record):
    row = record_row(record)
    del row["scales"]
    assert record_from_row(row, **arrays(record)).scales is None


def test_a_file_read_for_the_index_has_its_header_interpreted_once(tmp_path, monkeypatch):
    """One read, one header: its modules grouped once and its base family detected once, for both readers.

    ``load_lora`` (the factors) and ``describe_file`` (title, trigger words) each interpreted the header
    on their own before: two module groupings and two shape scans per file indexed.
    """
    import lorastyle.io.formats as formats

    rng = np.random.default_rng(1)
    fs = {n: (rng.standard_normal((4, i)), rng.standard_normal((o, 4))) for n, (o, i) in MODULES.items()}
    save_lora(tmp_path / "b.safetensors", fs, alpha=2.0, base="tiny", metadata={"modelspec.title": "B"})
    calls = {"read_layout": 0, "header_dims": 0}
    for name in calls:
        original = getattr(formats, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(formats, name, counted)
    record = read_record(tmp_path / "b.safetensors", sketcher=Sketcher(dim=256), descriptor="gram")
    assert record.base == "tiny" and record.info["title"] == "B"  # both readers did their work
    assert calls == {"read_layout": 1, "header_dims": 1}
