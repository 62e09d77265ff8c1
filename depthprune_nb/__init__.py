__version__ = "0.1.0"

# The public API, importable from the top level as the reference tutorial's code reads, grouped by level.
# Entry points: search, prune, heal.
from .pruner import ModelPruner, layer_importance, search_each_n, save_pruned
from .engine.exact import fast_search
from .engine.approx import approx_search
from .engine.reference import reference_search, evaluate_result
from .recover.heal import heal  # needs `pip install peft` only when called
# Settings and results.
from .config import Config, LayerImportancePruneConfig, LayerImportanceConfig, EngineOptions
from .result import PruneResult, layer_range
# Scale: several processes, resumable searches, the cost before the run.
from .engine.distributed import distributed_search
from .engine.checkpoint import SearchCheckpoint
from .engine.plan import plan_search
# Criteria other than the window search.
from .criteria.angular import angular_search, angular_distance_proxy
from .criteria.block_influence import block_influence, block_influence_search
from .criteria.sleb import sleb_search
# Input and output: data, models, GGUF files, plots.
from .data import get_wikitext_dataset, get_calib_eval_datasets
from .calib import calib_eval_windows, calibration_text
from .ppl import perplexity
from .surgery import delete_layers, temporarily_deleted
from .io.gguf import find_gguf, smollm2_gguf_path, write_pruned_gguf
from .io.load import load_model_and_tokenizer
from .plots import plot_heatmap, plot_proxy  # also adds PruneResult.plot
from .io.models import gguf_path, load_real_model
from .io.registry import models_table
# Does the pruned model still work? Task accuracy (lm-eval, needs the [eval] extra only when called) and HumanEval.
from .eval.tasks import evaluate_tasks, rerank_by_tasks
from .eval.humaneval import run_humaneval, check_completion
# Errors.
from .config import ConfigError
from .parts import FieldError
from .io.hub import RemoteCodeError
from .io.gguf import GGUFError
from .pruner import SaveDirError
from .io.registry import ModelFileError
from .eval.tasks import TaskFileError
from .eval.sandbox import CodeExecutionRefused
# Lower-level pieces, kept importable from here for earlier code (their pages document them).
from .data import split_windows
from .parts import ModelParts, locate

__all__ = [
    # entry points
    "ModelPruner", "layer_importance", "search_each_n", "fast_search", "approx_search", "reference_search",
    "evaluate_result", "heal", "save_pruned",
    # settings and results
    "Config", "LayerImportancePruneConfig", "EngineOptions", "PruneResult", "layer_range",
    # criteria
    "angular_search", "angular_distance_proxy", "block_influence", "block_influence_search", "sleb_search",
    # I/O: data, models, GGUF files, plots, the interactive explorer (loaded on first use)
    "get_wikitext_dataset", "get_calib_eval_datasets", "calib_eval_windows", "calibration_text", "perplexity", "delete_layers", "temporarily_deleted",
    "find_gguf", "load_model_and_tokenizer", "smollm2_gguf_path", "write_pruned_gguf", "plot_heatmap", "plot_proxy",
    "explore", "gguf_path", "load_real_model", "models_table",
    # does it still work: tasks and code
    "evaluate_tasks", "rerank_by_tasks", "run_humaneval", "check_completion",
    # scale
    "distributed_search", "SearchCheckpoint", "plan_search",
    # errors
    "ConfigError", "FieldError", "RemoteCodeError", "GGUFError", "SaveDirError", "ModelFileError", "TaskFileError",
    "CodeExecutionRefused",
]


def __getattr__(name):  # the explorer imports ipywidgets: loaded on first use, not with the package
    if name in ("explore", "PruneExplorer"):
        from . import explorer
        return getattr(explorer, name)
    raise AttributeError(f"module 'depthprune_nb' has no attribute {name!r}")
