"""Inference: sampling, generation loops, decoding for every family."""
