"""Reading and writing LoRA files: safetensors, module naming, every common layout (numpy only).

* :mod:`lorastyle.io.safetensors`: a strict, pickle-free safetensors reader and writer;
* :mod:`lorastyle.io.naming`: module names of every layout mapped to diffusers paths;
* :mod:`lorastyle.io.formats`: :func:`load_lora` and :func:`save_lora`;
* :mod:`lorastyle.io.flux`: Flux modules of every layout in diffusers naming;
* :mod:`lorastyle.io.atomic`: atomic replacement of files.
"""

from .formats import BASE_FAMILIES, LORA_SUFFIXES, LoRA, LoraModule, load_lora, save_lora
from .safetensors import read_safetensors, read_safetensors_header, write_safetensors

__all__ = [
    "BASE_FAMILIES",
    "LORA_SUFFIXES",
    "LoRA",
    "LoraModule",
    "load_lora",
    "save_lora",
    "read_safetensors",
    "read_safetensors_header",
    "write_safetensors",
]
