"""gptlab: a workbench for small generative transformers.

`import gptlab` is light: torch is imported only when a model is loaded or trained, so the
data package and the renderers work without it.
"""

__version__ = "0.1.0"


def load(path, device=None, dtype=None, **kwargs):
    """Load a gptlab model folder (config.json + model.safetensors + tokenizer.json) -> LoadedModel.
    See `gptlab.api.load` for dtype and max_params."""
    from gptlab.api import load as _load
    return _load(path, device, dtype, **kwargs)


def train(cfg, corpus=None):
    """Train a GPT from a `gptlab.training.config.RunConfig` (the CLI's config objects); returns a TrainResult."""
    from gptlab.training.tasks.causal_lm import train as _train
    return _train(cfg, corpus)


def __getattr__(name):
    if name == "LoadedModel":
        from gptlab.api import LoadedModel
        return LoadedModel
    raise AttributeError(f"module 'gptlab' has no attribute {name!r}")


__all__ = ["load", "train", "LoadedModel", "__version__"]
