"""promptmlr: multi-label recognition with partial labels on a frozen CLIP.

The package-level API (imported on first use, so ``import promptmlr`` stays instant)::

    import promptmlr

    result = promptmlr.tune(dataset="synthetic", known=0.1, out="runs/quick")
    result.test_metrics["mAP"], result.run_dir, result.method
    promptmlr.evaluate("runs/quick").metrics
    promptmlr.predict(["photo.jpg"], prompts="runs/quick")
    promptmlr.complete("runs/quick", "completed.jsonl", precision=0.95)  # the labels, filled in
    promptmlr.zeroshot("voc2007", data_root="/data/voc", backbone="openclip:RN101:openai")
    promptmlr.load_prompts("runs/quick").method
    promptmlr.create_backbone("sandbox"), promptmlr.list_methods(), promptmlr.list_datasets()
    promptmlr.describe_config("dualcoop")   # every config key: value, default, allowed values, help
    promptmlr.list_registered()             # methods, datasets and backbones by name
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it
_API = {
    "tune": "promptmlr.api",
    "evaluate": "promptmlr.api",
    "predict": "promptmlr.api",
    "zeroshot": "promptmlr.api",
    "complete": "promptmlr.api",
    "load_prompts": "promptmlr.api",
    "export": "promptmlr.api",
    "describe_config": "promptmlr.api",
    "list_registered": "promptmlr.api",
    "TuneResult": "promptmlr.api",
    "EvalResult": "promptmlr.api",
    "LoadedPrompts": "promptmlr.api",
    "CompletionResult": "promptmlr.api",
    "PromptMLRError": "promptmlr.errors",
    "create_backbone": "promptmlr.backbones",
    "list_backbones": "promptmlr.backbones",
    "list_methods": "promptmlr.models",
    "list_datasets": "promptmlr.data",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """PEP 562: import the API's modules (torch, open_clip, ...) on first use of one of its names."""
    if name not in _API:
        raise AttributeError(f"module 'promptmlr' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
