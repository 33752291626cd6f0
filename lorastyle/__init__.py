"""lorastyle: LoRA weights as style descriptors.

A companion library to *A LoRA is Worth a Thousand Pictures* (Liu, Takikawa,
Jacobson; arXiv 2412.12048): read LoRA files of every common layout, turn them
into descriptors and embeddings, cluster, retrieve and compare them.
"""

__version__ = "0.1.0"
