"""Paths and helpers shared by the test files (importable as ``support``: tests/ is on pytest's path)."""

from __future__ import annotations

import json
import os
import shutil
import string
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Real LoRA files made by other people, beside the checkout (never copied into it); tests skip without them.
REAL_LORAS = Path(os.environ.get("LORASTYLE_REAL_LORAS", ROOT.parent / "shared" / "real-loras"))
KEY_LAYOUTS = REAL_LORAS / "key-layouts"
DATA = ROOT / "data"


def tiny_sd_components(tmp_path):
    """Random SD-1.5-shaped components from configs, with a tokenizer made here: nothing downloaded."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from lorastyle.collection.diffusion import _scheduler_config

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return dict(
            tokenizer=CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=8),
            text_encoder=CLIPTextModel(
                CLIPTextConfig(
                    vocab_size=len(vocab),
                    hidden_size=32,
                    intermediate_size=37,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    max_position_embeddings=8,
                    bos_token_id=0,
                    eos_token_id=1,
                    pad_token_id=1,
                )
            ),
            vae=AutoencoderKL(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2,
                block_out_channels=(8, 16),
                latent_channels=4,
                norm_num_groups=4,
                sample_size=32,
            ),
            unet=UNet2DConditionModel(
                sample_size=16,
                in_channels=4,
                out_channels=4,
                block_out_channels=(16, 32),
                layers_per_block=1,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32,
                attention_head_dim=4,
                norm_num_groups=8,
            ),
            scheduler_config=_scheduler_config(),
        )


# Debian's browser and driver (.ci/run installs them); tests that need them skip without
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def chromium_driver():
    """A headless Chromium driven by selenium (Debian's chromium and chromium-driver), with no background
    network traffic; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    return driver


def index_of_format(tensors: dict, meta: dict, fmt: str) -> tuple[dict, dict]:
    """An index file's parts written as format 2 or 3 did: every record's JSON in the header.

    Parameters
    ----------
    tensors, meta : what ``read_safetensors`` returns for an index of the current format.
    fmt : {"lorastyle-index-2", "lorastyle-index-3"}
    """
    import numpy as np

    tensors = dict(tensors)
    groups = []
    for gi, g in enumerate(json.loads(meta["groups"])):
        blob = tensors.pop(f"g{gi}/records").tobytes()
        offsets = tensors.pop(f"g{gi}/record_offsets")
        rows = [json.loads(blob[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
        groups.append({k: v for k, v in g.items() if k != "n"} | {"records": rows})
    tensors = {k: np.asarray(v) for k, v in tensors.items()}
    return tensors, {**meta, "groups": json.dumps(groups), "format": fmt}
