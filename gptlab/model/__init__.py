"""gptlab's models. This package imports only torch: no files, network or tokenizers here."""

from .config import PRESETS, ModelConfig, book, gpt2, small, tiny
from .gpt import GPT, IGNORE_INDEX, ModelOutput, token_nll
from .layers import MLP, Attention, Block, KVCache, build_mask

__all__ = [
    "PRESETS", "ModelConfig", "book", "small", "tiny", "gpt2", "GPT", "IGNORE_INDEX", "ModelOutput",
    "token_nll", "Attention", "Block", "MLP", "KVCache", "build_mask",
]
