__version__ = "0.1.0"

# The public API, importable from the top level as the reference tutorial's code reads.
from .config import Config, ConfigError, LayerImportanceConfig, LayerImportancePruneConfig
from .data import get_wikitext_dataset, get_calib_eval_datasets, split_windows
from .parts import FieldError, ModelParts, locate
from .ppl import perplexity
from .result import PruneResult, layer_range
from .search import reference_search, evaluate_result
from .angular import angular_distance_proxy
from .surgery import delete_layers, temporarily_deleted
from .engine import approx_search, fast_search
from .pruner import ModelPruner, layer_importance, save_pruned
from .angular import angular_search
from .block_influence import block_influence, block_influence_search
from .sleb import sleb_search
from .heal import heal  # needs `pip install peft` only when called
from .plots import plot_heatmap, plot_proxy, sweep  # also adds PruneResult.plot
from .gguf import find_gguf, load_model_and_tokenizer, smollm2_gguf_path, write_pruned_gguf
from .plan import plan_search
from .distributed import distributed_search
from .checkpoint import SearchCheckpoint


def __getattr__(name):  # the explorer imports ipywidgets: loaded on first use, not with the package
    if name in ("explore", "PruneExplorer"):
        from . import explorer
        return getattr(explorer, name)
    raise AttributeError(f"module 'depthprune_nb' has no attribute {name!r}")
