"""Classifying texts with a trained encoder: class probabilities, accuracy, top labels."""

from __future__ import annotations

from pathlib import Path

import torch

from gptlab.checkpoint import load_checkpoint, read_config
from gptlab.data import normalize_text
from gptlab.data.texts import encode_texts
from gptlab.data.tokenizer import Tokenizer
from gptlab.errors import UserError
from gptlab.model.encoder import Classifier
from gptlab.model.padding import pad_batch

KIND_ENCODER, KIND_CLASSIFIER = "encoder", "classifier"


@torch.no_grad()
def predict_ids(model: Classifier, seqs: list[list[int]], pad_id: int, batch_size: int = 256) -> torch.Tensor:
    """Class probabilities (N, K)."""
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(seqs), batch_size):
        ids, key_mask = pad_batch(seqs[i:i + batch_size], pad_id)
        out.append(model(ids.to(dev), key_mask_BxT=key_mask.to(dev)).logits.float().softmax(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, model.head.out_features)


def accuracy(model: Classifier, seqs: list[list[int]], labels: list[int], pad_id: int) -> float:
    if not seqs:
        return float("nan")
    pred = predict_ids(model, seqs, pad_id).argmax(-1)
    return float((pred == torch.tensor(labels)).float().mean())


def load_encoder(path: str | Path, device: str = "cpu", kinds=(KIND_ENCODER, KIND_CLASSIFIER)):
    """(model, tokenizer, config) from an encoder or classifier folder; other kinds are refused."""
    cfg = read_config(path, make="gptlab encoder pretrain" if kinds == (KIND_ENCODER,) else "gptlab encoder classify")
    if cfg.get("kind") not in kinds:
        want = " or ".join(repr(k) for k in kinds)
        raise UserError(f"{path} holds a {cfg.get('kind')!r} model where {want} is needed: make one with "
                        "`gptlab encoder pretrain` / `gptlab encoder classify`")
    return load_checkpoint(path, device)


def predict(model: Classifier, tok: Tokenizer, config: dict, texts: list[str], top: int = 1) -> list[list[tuple[str, float]]]:
    """The top labels with probabilities for each text (normalised as the training rows were)."""
    c = config["classifier"]
    if c.get("normalize", True):
        texts = [normalize_text(s) for s in texts]
    probs = predict_ids(model, encode_texts(tok, texts, model.cfg.context_length), tok.pad_id)
    p, k = probs.topk(min(top, probs.shape[-1]), dim=-1)
    return [[(c["labels"][j], float(q)) for q, j in zip(pr.tolist(), kr.tolist())] for pr, kr in zip(p, k)]
