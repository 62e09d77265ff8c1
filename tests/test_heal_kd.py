"Healing by distillation: the loss against its exact reference, the cached-start forward, the trained sets, the teacher left alone, kill -9 and resume."
import hashlib, math, multiprocessing as mp, os, random, signal, time

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from depthprune_nb.config import ConfigError
from depthprune_nb.parts import locate
from depthprune_nb.recover.heal import heal
from depthprune_nb.recover.kd import kd_loss, teacher_targets, states_entering, started_at
from depthprune_nb.surgery import delete_layers
from depthprune_nb.testing import save_tiny_model

SPAWN = mp.get_context("spawn")  # a fresh interpreter: a fork of a process with threads can hang on a lock one of them held


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.set_num_threads(1)  # the child of the resume test runs one thread: the parent matches it
    return save_tiny_model(tmp_path_factory.mktemp("m") / "l", family="llama", num_layers=6, init_std=0.3)


def load(d): return AutoModelForCausalLM.from_pretrained(d).eval()


def windows(vocab, n=6, T=32, seed=0):
    return [torch.randint(0, vocab, (1, T), generator=torch.Generator().manual_seed(seed + i)) for i in range(n)]


def weights_hash(model):
    h = hashlib.sha256()
    for n, t in sorted(model.state_dict().items()): h.update(n.encode()); h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_kd_loss_is_the_full_vocabulary_kl_and_top_k_stays_below_it(tiny_dir):
    teacher, ids = load(tiny_dir), windows(200, 1)[0]
    student = delete_layers(load(tiny_dir), [2, 3])
    with torch.no_grad(): t, s = teacher(ids).logits[0].double(), student(ids).logits[0].double()
    for tau in (1.0, 2.0):
        p, q = F.softmax(t / tau, -1), F.softmax(s / tau, -1)
        by_hand = (p * (p.log() - q.log())).sum(-1).mean() * tau ** 2   # the definition, in float64
        got = kd_loss(s.float(), teacher_targets(t.float(), tau), tau)
        assert abs(got.item() / by_hand.item() - 1) < 1e-6, (tau, got.item(), by_hand.item())
        errs = [1 - kd_loss(s.float(), teacher_targets(t.float(), tau, k), tau).item() / by_hand.item() for k in (4, 16, 64)]
        print(f"tau={tau}: top-k KL below the full KL by {[f'{e:.2%}' for e in errs]} for k=4, 16, 64")
        assert all(e >= -1e-6 for e in errs) and errs[0] >= errs[1] >= errs[2], errs  # bucketing never adds divergence
    V = t.shape[-1]   # k = V keeps everything: the full loss
    assert torch.equal(kd_loss(s.float(), teacher_targets(t.float(), 1.0, V)), kd_loss(s.float(), teacher_targets(t.float())))


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2", "gemma3_text", "falcon", "qwen2"])
def test_a_forward_started_from_cached_states_gives_the_full_forwards_logits(family, tmp_path):
    model = load(save_tiny_model(tmp_path / family, family=family, num_layers=5))
    parts, ws = locate(model), windows(model.config.vocab_size, 2, 20)
    with torch.no_grad(): full = [model(ids, use_cache=False).logits for ids in ws]
    for start in range(1, 5):
        states = states_entering(parts, ws, start)
        with torch.no_grad(), started_at(parts, start, ws[0]) as box:
            for ids, h, f in zip(ws, states, full):
                box["h"] = h
                assert torch.equal(model(ids, use_cache=False).logits, f), (family, start)
    with torch.no_grad(): assert torch.equal(model(ws[0], use_cache=False).logits, full[0])  # nothing left behind


def plain_kd_losses(student, teacher, ws, layers, steps, lr):
    "The loop the cache replaces: teacher forward every step, full student forward, only `layers` trained."
    parts = locate(student)
    for p in student.parameters(): p.requires_grad_(False)
    params = [p for j in layers for p in parts.layers[j].parameters()]
    for p in params: p.requires_grad_(True)
    opt, out = torch.optim.AdamW(params, lr=lr), []
    student.train()
    for step in range(steps):
        ids = ws[step % len(ws)]
        with torch.no_grad(): target = teacher_targets(teacher(ids, use_cache=False).logits[0], 1.0, 8)
        loss = kd_loss(student(ids, use_cache=False).logits[0], target, 1.0)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True); out.append(loss.item())
    return out


@pytest.mark.parametrize("train,kw", [("last_k", dict(last_k=2)), ("adjacent", dict(deleted=[2, 3]))])
def test_kd_trains_only_its_layers_as_a_plain_loop_would_and_never_touches_the_teacher(tiny_dir, train, kw):
    teacher, ws = load(tiny_dir), windows(200, 5)
    before = weights_hash(teacher)
    student = delete_layers(load(tiny_dir), [2, 3])
    start = {n: p.detach().clone() for n, p in student.named_parameters()}
    healed, info = heal(student, ws, steps=8, lr=1e-3, objective="kd", teacher=teacher, train=train, top_k=8,
                        heldout=1, eval_every=4, progress=False, **kw)
    assert weights_hash(teacher) == before and not teacher.training
    want = [2, 3] if train == "last_k" else [1, 2]   # 4 layers left; the cut sits between new layers 1 and 2
    assert info["trained_layers"] == want and info["tokens"] == 8 * 32 and info["windows"] == 4
    changed = {n for n, p in healed.named_parameters() if not torch.equal(p, start[n])}
    assert changed and all(any(f"layers.{j}." in n for j in want) for n in changed), sorted(changed)
    assert all(p.requires_grad for p in healed.parameters()) and not healed.training
    assert info["teacher_cache_mib"] > 0 and (info["state_cache_mib"] > 0) and len(info["held"]) == 3 and info["held"][0][0] == 0
    ref = plain_kd_losses(delete_layers(load(tiny_dir), [2, 3]), teacher, ws[:4], want, 8, 1e-3)
    assert max(abs(a - b) / b for a, b in zip(info["losses"], ref)) < 1e-5, (info["losses"], ref)
    assert info["losses"][-1] < info["losses"][0]


def test_compute_dtype_bfloat16_trains_the_same_layers_near_the_float32_curve_and_auto_keeps_tiny_models_in_float32(tiny_dir):
    teacher, ws = load(tiny_dir), windows(200, 5)
    kw = dict(steps=6, lr=1e-3, objective="kd", teacher=teacher, train="last_k", top_k=8, progress=False)
    _, f32 = heal(delete_layers(load(tiny_dir), [2, 3]), ws, compute_dtype=None, **kw)
    _, auto = heal(delete_layers(load(tiny_dir), [2, 3]), ws, **kw)   # the default: a tiny model's layers are below the probe's floor
    assert auto["compute_dtype"] == "float32" and auto["losses"] == f32["losses"], auto["compute_dtype_reason"]
    bf, info = heal(delete_layers(load(tiny_dir), [2, 3]), ws, compute_dtype="bfloat16", **kw)
    assert info["compute_dtype"] == "bfloat16" and info["compute_dtype_reason"]
    assert all(p.dtype == torch.float32 for p in bf.parameters())   # autocast: the weights stay float32, the products do not
    diffs = [abs(a - b) / b for a, b in zip(info["losses"], f32["losses"])]
    assert 0 < max(diffs) < 0.05, diffs                           # close to float32's curve, and not the float32 run itself
    with pytest.raises(ConfigError, match="compute_dtype='float16'.*'auto', 'bfloat16'"):
        heal(delete_layers(load(tiny_dir), [2, 3]), ws, compute_dtype="float16", **kw)


def test_kd_lora_and_the_mixed_objective_run_and_the_budget_is_in_tokens(tiny_dir):
    pytest.importorskip("peft")
    teacher, ws = load(tiny_dir), windows(200, 4)
    healed, info = heal(delete_layers(load(tiny_dir), [2, 3]), ws, tokens=100, lr=1e-2, objective="kd", teacher=teacher,
                        top_k=None, nll_weight=0.25, progress=False)
    assert info["steps"] == math.ceil(100 / 32) and info["trained_layers"] == "all (adapters)"
    assert not any("lora" in n for n, _ in healed.named_parameters())


def test_the_healed_model_saves_as_an_ordinary_checkpoint_with_the_same_logits(tiny_dir, tmp_path):
    teacher, ws = load(tiny_dir), windows(200, 3)
    healed, _ = heal(delete_layers(load(tiny_dir), [2, 3]), ws, steps=3, lr=1e-3, objective="kd", teacher=teacher,
                     train="last_k", progress=False)
    healed.save_pretrained(tmp_path / "h")
    back, loading = AutoModelForCausalLM.from_pretrained(tmp_path / "h", output_loading_info=True)
    assert not any(loading[k] for k in ("missing_keys", "unexpected_keys")), loading
    with torch.no_grad(): assert torch.equal(back.eval()(ws[0]).logits, healed(ws[0]).logits)
    assert back.config.num_hidden_layers == 4 and back.config.depthprune_healed["train"] == "last_k"


def test_bad_settings_are_refused_before_the_model_changes(tiny_dir, tmp_path):
    model, ws = delete_layers(load(tiny_dir), [2, 3]), windows(200, 3)
    h = weights_hash(model)
    cases = [(dict(objective="kd"), "pass teacher=<the unpruned model>"),
             (dict(objective="kl", teacher=model), "objective='kl' is invalid: give one of nll, kd"),
             (dict(objective="kd", teacher=model), "teacher is the model being healed"),
             (dict(train="all"), "train='all' is invalid: give one of lora, adjacent, last_k"),
             (dict(train="adjacent"), "pass deleted="),
             (dict(train="last_k", last_k=9), "last_k=9 is invalid"),
             (dict(steps=3, tokens=10), "give one budget, not both"),
             (dict(objective="kd", teacher=load(tiny_dir), top_k=0), "top_k=0 must be an integer >= 1"),
             (dict(train="last_k", heldout=3), "heldout=3 leaves no window to train on")]
    for kw, msg in cases:
        with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace("<", ".").replace(">", ".").replace("=", ".")):
            heal(model, ws, progress=False, **kw)
    tied = load(save_tiny_model(tmp_path / "g", family="gpt2", num_layers=4))
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    with pytest.raises(ConfigError, match="ties to its input embedding"):
        heal(tied, windows(tied.config.vocab_size, 2), train="last_k", train_head=True, progress=False)
    assert weights_hash(model) == h and not any(p.grad is not None for p in model.parameters())


# --- kill -9 and resume -------------------------------------------------------------------------
STEPS = 30


def run_heal(tiny_dir, folder, slow=0.0):
    if slow:  # the killed child only: a pause after each save, so that the parent can kill it at a step of its choosing
        import depthprune_nb.recover.heal as hm
        save = hm.save_heal_state
        def slowed(*a, **k): save(*a, **k); time.sleep(slow)
        hm.save_heal_state = slowed
    torch.set_num_threads(1)
    teacher = load(tiny_dir)
    return heal(delete_layers(load(tiny_dir), [2, 3]), windows(200, 5), steps=STEPS, lr=1e-3, objective="kd",
                teacher=teacher, train="last_k", top_k=8, heldout=1, eval_every=5, progress=False,
                checkpoint_dir=folder, checkpoint_every=1)


def saved_step(folder):
    p = folder / "heal_state.pt"
    return torch.load(p, weights_only=True)["step"] if p.exists() else 0


def test_a_heal_killed_at_a_random_step_resumes_to_the_uninterrupted_weights(tiny_dir, tmp_path):
    whole, info = run_heal(tiny_dir, tmp_path / "whole")
    at = random.Random(os.getpid()).randrange(3, STEPS - 5)
    p = SPAWN.Process(target=run_heal, args=(tiny_dir, tmp_path / "ck", 0.05)); p.start()
    deadline = time.monotonic() + 600
    try:
        while p.is_alive() and saved_step(tmp_path / "ck") < at:
            assert time.monotonic() < deadline, f"the healing child saved no step {at} in 10 minutes"
            time.sleep(0.005)
    finally:
        os.kill(p.pid, signal.SIGKILL); p.join(30)
    killed_at = saved_step(tmp_path / "ck")
    assert p.exitcode == -signal.SIGKILL and at <= killed_at < STEPS, (p.exitcode, at, killed_at)
    resumed, rinfo = run_heal(tiny_dir, tmp_path / "ck")
    assert rinfo["resumed_at"] == killed_at
    for (n, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{n} differs after a kill at step {killed_at} and resume"
    assert rinfo["losses"] == info["losses"] and rinfo["held"] == info["held"]


def test_a_checkpoint_of_another_heal_is_refused(tiny_dir, tmp_path):
    teacher, ws = load(tiny_dir), windows(200, 3)
    kw = dict(objective="kd", teacher=teacher, train="last_k", progress=False, checkpoint_dir=tmp_path, steps=2)
    heal(delete_layers(load(tiny_dir), [2, 3]), ws, lr=1e-3, **kw)
    with pytest.raises(ConfigError, match="holds the checkpoint of another heal"):
        heal(delete_layers(load(tiny_dir), [2, 3]), ws, lr=2e-3, **kw)


def test_self_text_is_the_teachers_greedy_continuation_cached_per_teacher(tiny_dir, tmp_path):
    from depthprune_nb.io.hub import load_tokenizer
    from depthprune_nb.recover.kd import heal_text, self_prompts
    teacher, tok = load(tiny_dir), load_tokenizer(tiny_dir)
    prompts = self_prompts(2)
    assert all(p.startswith("def ") and '"""' in p for p in prompts)
    text = heal_text("self", tok, teacher, prompts=prompts, max_new_tokens=6, cache_dir=tmp_path)
    assert text.startswith(prompts[0]) and prompts[1] in text and len(text) > sum(map(len, prompts))
    assert len(list((tmp_path / "self").glob("*.json"))) == 1
    assert heal_text("self", tok, teacher, prompts=prompts, max_new_tokens=6, cache_dir=tmp_path) == text  # read back
    other = load(tiny_dir)
    with torch.no_grad(): other.model.layers[0].mlp.down_proj.weight.mul_(2)
    heal_text("self", tok, other, prompts=prompts, max_new_tokens=6, cache_dir=tmp_path)
    assert len(list((tmp_path / "self").glob("*.json"))) == 2   # another teacher: its own continuations


def test_a_patch_starts_from_the_folded_linear_repair_and_trains_only_that_down_projection(tiny_dir):
    "train='patch': before any step the student is the repaired model of fit_linear_repair; then only mlp.down_proj of the layer before the cut moves."
    from depthprune_nb.recover.heal import init_patches
    from depthprune_nb.recover.repair import fit_linear_repair, temporarily_repaired
    teacher, ws = load(tiny_dir), windows(200, 6)
    before = weights_hash(teacher)
    student = delete_layers(load(tiny_dir), [2, 3])
    got = init_patches(student, locate(student), teacher, ws[:4], [2, 3])
    rep = fit_linear_repair(teacher, ws[:4], 2, 2)
    assert got == [dict(layer=1, path="mlp.down_proj", deleted=[2, 3], fit="linear repair", positions=rep.tokens,
                        unexplained=rep.unexplained)]
    with torch.no_grad(), temporarily_repaired(teacher, rep):
        torch.testing.assert_close(student(ws[5]).logits, teacher(ws[5]).logits, rtol=0, atol=0)
    assert weights_hash(teacher) == before  # the fit only read it; temporarily_repaired restored it
    again = init_patches(student, locate(student), teacher, ws[:4], [2, 3])  # already changed: kept, not fitted again
    assert again[0]["fit"].startswith("kept")

    student = delete_layers(load(tiny_dir), [2, 3])
    start = {n: p.detach().clone() for n, p in student.named_parameters()}
    healed, info = heal(student, ws, steps=6, lr=1e-3, objective="kd", teacher=teacher, train="patch", deleted=[2, 3],
                        top_k=None, heldout=1, eval_every=3, progress=False, repair_fit_windows=4)
    assert weights_hash(teacher) == before
    assert info["trained_layers"] == [1] and info["trained_modules"] == ["1.mlp.down_proj"]
    assert info["patches"][0]["fit"] == "linear repair" and info["patches"][0]["positions"] == rep.tokens
    changed = {n for n, p in healed.named_parameters() if not torch.equal(p, start[n])}
    assert changed == {"model.layers.1.mlp.down_proj.weight"}, changed
    assert info["trainable_params"] == healed.model.layers[1].mlp.down_proj.weight.numel()
    plain_kl = kd_loss(delete_layers(load(tiny_dir), [2, 3])(ws[5]).logits[0], teacher_targets(teacher(ws[5]).logits[0])).item()
    assert info["held"][0][1] < plain_kl      # the repair alone already beats plain deletion on the held-out window
    assert info["held"][-1][1] < info["held"][0][1] and info["losses"][-1] < info["losses"][0]


def test_a_patch_is_refused_where_it_cannot_start_or_fold(tiny_dir, tmp_path):
    teacher, ws = load(tiny_dir), windows(200, 4)
    student = delete_layers(load(tiny_dir), [2, 3])
    h = weights_hash(student)
    with pytest.raises(ConfigError, match="pass teacher=<the unpruned model>, or repair_init=False"):
        heal(student, ws, steps=2, train="patch", deleted=[2, 3], progress=False)
    with pytest.raises(ConfigError, match="no layer precedes that cut"):
        heal(delete_layers(load(tiny_dir), [0, 1]), ws, steps=2, objective="kd", teacher=teacher, train="patch", deleted=[0, 1], progress=False)
    gemma = save_tiny_model(tmp_path / "g", family="gemma3_text", num_layers=4)
    with pytest.raises(ConfigError, match="post_feedforward_layernorm"):
        heal(delete_layers(load(gemma), [2]), windows(200, 3), steps=2, objective="kd", teacher=load(gemma), train="patch",
             deleted=[2], progress=False)
    assert weights_hash(student) == h
    # without a fit: next-token loss on the down projection as it is
    healed, info = heal(student, ws, steps=2, lr=1e-3, train="patch", deleted=[2, 3], repair_init=False, progress=False)
    assert info["patches"] is None and info["trained_modules"] == ["1.mlp.down_proj"]


def test_the_states_at_the_lowest_trained_layer_come_from_the_teachers_forward_where_its_layers_below_are_the_students(tiny_dir, monkeypatch):
    "One forward less a window: the same losses as the states recomputed by the student; a teacher that differs below is not used for them."
    import depthprune_nb.recover.heal as H
    teacher, ws = load(tiny_dir), windows(200, 5)
    kw = dict(steps=6, lr=1e-3, objective="kd", teacher=teacher, train="adjacent", deleted=[3, 4], top_k=8, heldout=1, progress=False)
    _, shared = heal(delete_layers(load(tiny_dir), [3, 4]), ws, **kw)
    assert shared["states_from"] == "the teacher's forward" and shared["trained_layers"] == [2, 3]
    monkeypatch.setattr(H, "_same_below", lambda *a: None)
    _, own = heal(delete_layers(load(tiny_dir), [3, 4]), ws, **kw)
    assert own["states_from"] == "a forward of the layers below"
    assert own["losses"] == shared["losses"] and own["held"] == shared["held"]
    monkeypatch.undo()
    other = load(tiny_dir)
    with torch.no_grad(): other.model.layers[1].mlp.up_proj.weight.mul_(1.01)  # the student's layer 1 is not this teacher's
    assert H._same_below(delete_layers(load(tiny_dir), [3, 4]), other, locate(delete_layers(load(tiny_dir), [3, 4])), 2) is None
    assert H._same_below(delete_layers(load(tiny_dir), [3, 4]), other, locate(delete_layers(load(tiny_dir), [3, 4])), 1) is not None


def test_adjacent_layers_can_start_from_the_folded_repair_too(tiny_dir):
    "repair_init=True with adjacent: the step-0 held-out KL is the repaired model's, as the patch's; the two layers at the cut train."
    teacher, ws = load(tiny_dir), windows(200, 6)
    kw = dict(steps=3, lr=1e-3, objective="kd", teacher=teacher, deleted=[2, 3], top_k=None, heldout=1, progress=False)
    _, patch = heal(delete_layers(load(tiny_dir), [2, 3]), ws, train="patch", **kw)
    _, adj = heal(delete_layers(load(tiny_dir), [2, 3]), ws, train="adjacent", repair_init=True, **kw)
    _, plain = heal(delete_layers(load(tiny_dir), [2, 3]), ws, train="adjacent", **kw)
    assert adj["held"][0] == patch["held"][0] != plain["held"][0]
    assert adj["patches"] == patch["patches"] and "patches" not in plain and adj["trained_layers"] == [1, 2]
    with pytest.raises(ConfigError, match="train='last_k' does not"):
        heal(delete_layers(load(tiny_dir), [2, 3]), ws, train="last_k", repair_init=True, **kw)
