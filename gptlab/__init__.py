"""gptlab: a workbench for small generative transformers."""

__version__ = "0.1.0"

from .api import LoadedModel, load  # noqa: E402

__all__ = ["load", "LoadedModel", "__version__"]
