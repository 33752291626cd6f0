"""``lorastyle duplicates --script``: a reviewable shell script, run here with ``sh`` on a temporary folder.

The folder holds one update under three names (a byte copy and a float16 conversion, in a folder
with a space and names with quotes), its sidecar and preview files, a half-strength near-duplicate,
unrelated files and a text file. After the script runs, the kept file and everything else are
byte for byte where they were; only the copies (and their own sidecars) moved, or, with ``--link``,
were replaced by hard links to the kept file.
"""

import hashlib
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from lorastyle.cli import main
from lorastyle.io.formats import save_lora

P = "unet.down_blocks.0.attentions.0.transformer_blocks.0."
SHAPES = {P + "attn1.to_q": (32, 32), P + "attn2.to_k": (32, 24), P + "ff.net.2": (32, 64)}
KEPT = """o'k "x".safetensors"""
COPIES = ["sub dir/copy 1.safetensors", """sub dir/it's "a" copy.safetensors""", "sub dir/new\nline.safetensors"]
COPY_SIDECARS = ["sub dir/copy 1.png"]  # moves with its copy
OTHERS = [
    """o'k "x".civitai.info""",  # the kept file's sidecar: stays
    "half.safetensors",  # a near-duplicate (same direction, strength x0.5): never touched
    "u0.safetensors",
    "u1.safetensors",
    "u2.safetensors",
    "notes.txt",
]

pytestmark = pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")


def factors(rng, rank=4):
    return {
        n: (
            (0.3 * rng.standard_normal((rank, i))).astype(np.float32),
            (0.3 * rng.standard_normal((o, rank))).astype(np.float32),
        )
        for n, (o, i) in SHAPES.items()
    }


def _tree(root) -> dict:
    """Every file under root: relative path -> sha256 of its bytes."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "my loras"
    (root / "sub dir").mkdir(parents=True)
    rng = np.random.default_rng(0)
    a = factors(rng)
    save_lora(root / KEPT, a, alpha=4.0, base="tiny")
    (root / """o'k "x".civitai.info""").write_text(json.dumps({"model": {"name": "X"}, "trainedWords": ["x"]}))
    shutil.copy(root / KEPT, root / COPIES[0])
    save_lora(root / COPIES[1], a, alpha=4.0, base="tiny", layout="diffusers-peft", dtype=np.float16)
    shutil.copy(root / KEPT, root / COPIES[2])
    (root / COPY_SIDECARS[0]).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    save_lora(root / "half.safetensors", {n: (A, 0.5 * B) for n, (A, B) in a.items()}, alpha=4.0, base="tiny")
    for i in range(3):
        save_lora(root / f"u{i}.safetensors", factors(rng), alpha=4.0, base="tiny")
    (root / "notes.txt").write_text("not a LoRA")
    return root


def _write(folder, tmp_path, capsys, *options):
    script = tmp_path / "tidy.sh"
    to = tmp_path / "set aside"
    assert main(["duplicates", str(folder), "--script", str(script), "--to", str(to), *options]) == 0
    err = capsys.readouterr().err
    assert f"wrote {script}: sets aside 3 copies into {to}" in err
    assert not to.exists()  # written, never run
    return script, to


def _run(script) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60)


def test_the_script_moves_the_copies_and_touches_nothing_else(folder, tmp_path, capsys):
    before = _tree(folder)
    script, to = _write(folder, tmp_path, capsys)
    text = script.read_text()
    assert "\nset -eu\n" in text and text.startswith("#!/bin/sh\n")
    # not "identical files": one is a conversion; copy 1's preview counts 1, the kept file's 2 facts 2
    assert f"# same weights, tiny: keep {folder / KEPT}; why: most metadata: 2 against 1, counting " in text
    assert "half.safetensors" not in text and "u0.safetensors" not in text  # only same-weights copies
    run = _run(script)
    assert run.returncode == 0, run.stderr
    moved = COPIES + COPY_SIDECARS
    assert _tree(folder) == {k: v for k, v in before.items() if k not in moved}
    assert _tree(to) == {k: before[k] for k in moved}  # under their paths relative to the folder
    again = _run(script)  # a second run finds nothing to do and changes nothing
    assert again.returncode == 0 and again.stdout.count("left alone (already gone)") == 3
    assert _tree(to) == {k: before[k] for k in moved}


def test_with_link_every_path_stays_a_hard_link_to_the_kept_file(folder, tmp_path, capsys):
    before = _tree(folder)
    script, to = _write(folder, tmp_path, capsys, "--link")
    run = _run(script)
    assert run.returncode == 0, run.stderr
    kept = os.stat(folder / KEPT)
    for name in COPIES:
        assert os.stat(folder / name).st_ino == kept.st_ino
    assert _tree(folder) == {k: (before[KEPT] if k in COPIES else v) for k, v in before.items()}
    assert _tree(to) == {k: before[k] for k in COPIES}  # the originals, kept until the user deletes them
    assert not list(folder.rglob("*.lorastyle-link"))


def test_the_script_stops_when_the_kept_file_is_gone_and_leaves_changed_copies(folder, tmp_path, capsys):
    script, to = _write(folder, tmp_path, capsys)
    with open(folder / COPIES[0], "ab") as fh:
        fh.write(b"\0")  # its size changed since it was indexed: left alone
    run = _run(script)
    assert (
        run.returncode == 0
        and f"left alone (its size changed since it was indexed): {folder / COPIES[0]}" in run.stdout
    )
    assert (folder / COPIES[0]).exists() and not (to / COPIES[0]).exists()
    assert not (to / COPY_SIDECARS[0]).exists()  # a copy left alone keeps its sidecar
    assert (to / COPIES[1]).exists()
    script2, to2 = tmp_path / "again.sh", tmp_path / "aside2"
    capsys.readouterr()
    assert main(["duplicates", str(folder), "--script", str(script2), "--to", str(to2)]) == 0
    os.remove(folder / KEPT)
    now = _tree(folder)
    run = _run(script2)
    assert run.returncode != 0 and "is gone: stopping before its copies" in run.stderr
    assert _tree(folder) == now and not to2.exists()


def test_script_options_are_checked(folder, tmp_path, capsys):
    assert main(["duplicates", str(folder), "--to", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == "error: --to: only with --script PATH (see lorastyle duplicates --help)\n"
    assert main(["duplicates", str(folder), "--link"]) == 2
    assert capsys.readouterr().err.startswith("error: --link: only with --script PATH")
    assert main(["duplicates", str(folder), "--script", str(tmp_path / "no" / "such" / "s.sh")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'no' / 'such' / 's.sh'}: cannot write the script: its folder does not exist\n"
    assert main(["duplicates", str(folder), "--script", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path}: cannot write the script: it is a folder\n"
