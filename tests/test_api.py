"The top-level API: every name `__all__` promises resolves, and importing the package loads none of the optional extras."
import subprocess, sys

import depthprune_nb


def test_every_public_name_resolves():
    missing = [n for n in depthprune_nb.__all__ if not hasattr(depthprune_nb, n)]
    assert not missing, f"in __all__ but not importable from depthprune_nb: {missing}"
    assert len(set(depthprune_nb.__all__)) == len(depthprune_nb.__all__), "a name is listed twice"


def test_the_reference_api_and_the_task_api_are_at_the_top():
    for name in ("Config", "LayerImportancePruneConfig", "ModelPruner", "get_wikitext_dataset",   # the reference's
                 "evaluate_tasks", "run_humaneval", "check_completion", "gguf_path", "load_real_model"):
        assert name in depthprune_nb.__all__, name


def test_importing_the_package_loads_no_optional_extra():
    code = "import sys, depthprune_nb; print(sorted(m for m in ('lm_eval', 'peft', 'ipywidgets') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stdout
