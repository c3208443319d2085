"""metalab: meta-learning ("learning to learn") on PyTorch.

The public API (:mod:`metalab.api`)::

    import metalab

    cfg = metalab.load_config("configs/omniglot/protonet-cpu.yaml", ["train.steps=200"])
    metalab.train(cfg, "runs/pn", data_dir="../shared/data")
    metalab.evaluate("runs/pn")                       # {"accuracy": ..., "ci95": ..., ...}
    metalab.compare(["runs/pn", "runs/maml"], "cmp")  # same episodes, paired differences
    metalab.predict("runs/pn", "my_support_dir", ["query.png"])
    learner, cfg, state = metalab.load_learner("runs/pn")

Names are imported on first use, so ``import metalab`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "load_config",
    "train",
    "evaluate",
    "compare",
    "predict",
    "load_learner",
    "build_learner",
    "Config",
    "MetaLearner",
    "Episode",
    "MetalabError",
    "__version__",
]

_WHERE = {
    "load_config": "metalab.api",
    "train": "metalab.api",
    "evaluate": "metalab.api",
    "compare": "metalab.api",
    "predict": "metalab.api",
    "load_learner": "metalab.api",
    "build_learner": "metalab.engine.build",
    "Config": "metalab.config",
    "MetaLearner": "metalab.algorithms.base",
    "Episode": "metalab.tasks.episodes",
    "MetalabError": "metalab.errors",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'metalab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
