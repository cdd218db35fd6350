"""gptlab's models. This package imports only torch: no files, network or tokenizers here."""

from gptlab.model.config import PRESETS, ModelConfig, book, fast, gpt2, small, tiny
from gptlab.model.encoder import ENCODER_PRESETS, Classifier, ClassifierOutput, Encoder, EncoderOutput
from gptlab.model.gpt import GPT, IGNORE_INDEX, ModelOutput, token_nll, token_nlls
from gptlab.model.layers import MLP, Attention, Block, KVCache, build_mask
from gptlab.model.seq2seq import SEQ2SEQ_PRESETS, Seq2Seq, Seq2SeqConfig, Seq2SeqOutput

__all__ = [
    "PRESETS", "ModelConfig", "book", "small", "fast", "tiny", "gpt2", "GPT", "IGNORE_INDEX", "ModelOutput",
    "token_nll", "token_nlls", "Attention", "Block", "MLP", "KVCache", "build_mask",
    "ENCODER_PRESETS", "Classifier", "ClassifierOutput", "Encoder", "EncoderOutput",
    "SEQ2SEQ_PRESETS", "Seq2Seq", "Seq2SeqConfig", "Seq2SeqOutput",
]
