"""Number formats for inference weights, by the names `gptlab.load`, the CLI and the server accept.

Torch-free, so the CLI and the server settings share one list without loading the model code
(api.DTYPES maps the names, and their long spellings, to torch dtypes).
"""

DTYPE_NAMES = ("fp32", "bf16", "fp16", "int8")
DTYPE_HELP = ("weights for inference: fp32 (default, exact probabilities); bf16 or fp16 (half the bytes: "
              "faster batched sampling; fp16 on GPUs only); int8 (int8 output layer: fastest sampling of "
              "one text at a time on a CPU)")
