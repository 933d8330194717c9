"""ProST text-to-video retrieval.

The torch-based API is imported lazily, so that torch-free consumers (the Triton python backend, the
tokenizer) can import `prost.tokenizer` and `prost.data.video` without paying for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ProstConfig",
    "ProstModel",
    "Similarity",
    "TextPrototypes",
    "VideoPrototypes",
    "create_model",
    "list_presets",
    "load_model",
    "save_model",
    "similarity",
    "tokenize",
]

_LAZY = {
    "ProstConfig": "prost.config",
    "ProstModel": "prost.model.prost",
    "TextPrototypes": "prost.model.prost",
    "VideoPrototypes": "prost.model.prost",
    "Similarity": "prost.model.similarity",
    "similarity": "prost.model.similarity",
    "create_model": "prost.factory",
    "list_presets": "prost.factory",
    "load_model": "prost.checkpoint",
    "save_model": "prost.checkpoint",
    "tokenize": "prost.tokenizer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prost' has no attribute {name!r}")
