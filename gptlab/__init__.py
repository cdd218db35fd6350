"""gptlab: a workbench for small generative transformers."""

__version__ = "0.1.0"

from .api import LoadedModel, load  # noqa: E402


def train(cfg, corpus=None):
    """Train a GPT from a `gptlab.config.RunConfig` (the CLI's config objects); returns a TrainResult."""
    from .trainer import train as _train
    return _train(cfg, corpus)


__all__ = ["load", "train", "LoadedModel", "__version__"]
