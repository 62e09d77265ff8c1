"""The command line: `depthprune` (`prune`) and its task-evaluation options (`evaluation`)."""
from .prune import main, tiny_model_main, gguf_path_main
