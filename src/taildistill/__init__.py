"""taildistill: knowledge distillation on long-tailed (class-imbalanced) data.

The public API (``taildistill.load_config``, ``build_data``, ``build_model``, ``build_method``,
``fit``, ``evaluate``, ``register_method`` / ``register_model`` / ``register_source``, ...) lives in
:mod:`taildistill.api` and is loaded on first use, so the command line starts without it.
"""
import importlib

from .version import __version__

# the names of taildistill.api.__all__ (a test keeps the two equal); anything else is looked up
# normally, so probing the package for other attributes never imports the API
API = frozenset({
    "load_config", "build_config", "dump_config", "ExperimentConfig", "build_data", "DataBundle", "build_model",
    "wrap_model", "build_student", "load_teacher", "build_method", "assemble", "Experiment", "fit", "resume", "Trainer",
    "evaluate", "summary", "write_run_report", "write_comparison", "register_method", "register_model",
    "register_source", "Method", "MethodOutput", "Batch", "BatchRequest", "SupervisedParams", "Criterion",
    "METHODS", "MODELS", "CRITERIA", "SOURCES",
})


def __getattr__(name: str):
    if name in API:
        return getattr(importlib.import_module("taildistill.api"), name)
    raise AttributeError(f"module 'taildistill' has no attribute '{name}'")


def __dir__():
    return sorted([*globals(), *API])
