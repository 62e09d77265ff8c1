"""The reference tutorial's command line, served by depthprune_nb.

    python main_depth_pruning.py --model_dir=facebook/opt-125m --delete_layer_num 2 --save_dir out/
    python main_depth_pruning.py --model_dir=/path/to/Llama-2-7b-chat-hf --multi_gpu

Same flags as the `depthprune` console script (`depthprune --help`).
"""
import sys

from depthprune_nb.cli.prune import main

if __name__ == "__main__":
    sys.exit(main())
