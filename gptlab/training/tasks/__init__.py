"""One task per training objective: causal LM, masked LM, classification, seq2seq."""
