"""Checkpoint kind "classifier": `gptlab.checkpoint.build_model` imports `gptlab.<kind>` to find a
kind's builder; the classifier is built by the encoder family, which registers it on import."""

from .encoder import KIND_CLASSIFIER, classify, predict  # noqa: F401  (registers the kind)
