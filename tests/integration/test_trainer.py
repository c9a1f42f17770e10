"""The training loop end to end on real tiny transformers models: every method, resume, failure handling."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlad_core.checkpoint import list_checkpoints, verify_checkpoint
from rlad_core.config import parse_config
from rlad_core.reporting import MemoryReporter
from rlad_core.trainer import NonFiniteError, train
from tests.conftest import warm_spec

TIMING_KEYS = ("time/", "tokens_per_s")


def config(tmp_path, warm_dirs, **overrides):
    return parse_config(warm_spec(warm_dirs, **{"output_dir": str(tmp_path / "run"), "log_samples": 2, **overrides}))


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def without_timing(rows):
    return {s: {k: v for k, v in m.items() if not k.startswith(TIMING_KEYS)} for s, m in rows.items()}


@pytest.mark.parametrize("method", ["rlad", "grpo", "kdrl", "opd", "sft"])
def test_three_steps_of_every_method_change_every_parameter(tmp_path, warm_dirs, method):
    extra = {"sft_filter": "none"} if method == "sft" else {}
    rep = MemoryReporter()
    result = train(config(tmp_path, warm_dirs, method=method, **extra), reporter=rep)
    steps = rep.train_metrics()
    assert sorted(steps) == [1, 2, 3]
    for m in steps.values():
        assert math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])
    assert result.skipped_steps == 0 and result.checkpoint is not None
    before, after = weights(warm_dirs["student"]), weights(result.checkpoint)
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == [], f"{method}: parameters that did not change: {unchanged}"


def test_step_metrics_cover_the_spec(tmp_path, warm_dirs):
    rep = MemoryReporter()
    train(config(tmp_path, warm_dirs, steps=1, eval_every=1, eval_size=8, eval_pass_k=2), reporter=rep)
    m = rep.train_metrics()[1]
    required = {
        "reward_mean",
        "accuracy",
        "frac_zero_std_groups",
        "loss",
        "ratio_mean",
        "ratio_min",
        "ratio_max",
        "clip_frac_low",
        "clip_frac_high",
        "teacher_gap",
        "entropy",
        "response_length_mean",
        "response_length_max",
        "grad_norm",
        "lr",
        "tokens_per_s",
        "time/generate",
        "time/score",
        "time/update",
    }
    assert required <= set(m), required - set(m)
    evals = [v for s, v in rep.metric_rows if "eval/accuracy" in v]
    assert [s for s, v in rep.metric_rows if "eval/accuracy" in v] == [0, 1]
    assert {"eval/accuracy/d1", "eval/pass@2", "eval/pass@2/d1", "eval/reward_mean"} <= set(evals[0])
    kinds = [k for k, _ in rep.events]
    assert kinds[0] == "started" and "eval_completed" in kinds and kinds[-1] == "finished"
    assert rep.sample_rows and {"prompt", "completion", "reward", "correct"} <= set(rep.sample_rows[0][1][0])


def test_first_inner_step_ratio_is_not_one_with_a_teacher(tmp_path, warm_dirs):
    # at pi_S = pi_old the TRRD ratio is (pi_old / pi_T)^(1 - alpha): away from 1 wherever the models differ
    rep = MemoryReporter()
    train(config(tmp_path, warm_dirs, steps=1), reporter=rep)
    m = rep.train_metrics()[1]
    assert m["ratio_min"] < 0.999 or m["ratio_max"] > 1.001
    rep_grpo = MemoryReporter()
    train(config(tmp_path, warm_dirs, steps=1, method="grpo"), reporter=rep_grpo)
    g = rep_grpo.train_metrics()[1]
    assert g["ratio_min"] == pytest.approx(1.0) and g["ratio_max"] == pytest.approx(1.0)
    assert g["clip_frac_low"] == 0.0 and g["clip_frac_high"] == 0.0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bfloat16: the fp32 masters are resumed too
def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(tmp_path, warm_dirs, dtype):
    common = {
        "dtype": dtype,
        "steps": 4,
        "checkpoint_every": 2,
        "inner_epochs": 2,
        "mini_batch_size": 8,
        "micro_batch_size": 4,
        "lr_schedule": "cosine",
        "warmup_steps": 1,
    }
    full = MemoryReporter()
    train(config(tmp_path / "a", warm_dirs, **common), reporter=full)

    stopped = MemoryReporter(stop_after_step=2)  # asks to stop after step 2, like a cancel
    first = train(config(tmp_path / "b", warm_dirs, **common), reporter=stopped)
    assert first.stopped and first.step == 2
    resumed = MemoryReporter()
    result = train(config(tmp_path / "b", warm_dirs, **common), reporter=resumed, resume_from="auto")
    assert resumed.events[0][0] == "resumed" and sorted(resumed.train_metrics()) == [3, 4]
    expected = {s: v for s, v in without_timing(full.train_metrics()).items() if s > 2}
    assert without_timing(resumed.train_metrics()) == expected
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            weights(result.checkpoint).values(),
            weights(tmp_path / "a" / "run" / "checkpoints" / "step-4").values(),
            strict=True,
        )
    )


def test_non_finite_steps_are_skipped_then_fail_and_checkpoints_stay_intact(tmp_path, warm_dirs):
    good = train(config(tmp_path, warm_dirs, steps=2, checkpoint_every=1))
    assert [p.name for p in list_checkpoints(good.output_dir / "checkpoints")] == ["step-1", "step-2"]

    # a teacher whose output layer is NaN scores every token NaN -> the TRRD loss is NaN
    bad_teacher = tmp_path / "bad-teacher"
    AutoModelForCausalLM.from_pretrained(warm_dirs["teacher"]).save_pretrained(bad_teacher)
    AutoTokenizer.from_pretrained(warm_dirs["teacher"]).save_pretrained(bad_teacher)
    tensors = load_file(str(bad_teacher / "model.safetensors"))
    tensors = {k: (torch.full_like(v, float("nan")) if "norm" in k else v) for k, v in tensors.items()}
    save_file(tensors, str(bad_teacher / "model.safetensors"), metadata={"format": "pt"})

    rep = MemoryReporter()
    cfg = config(
        tmp_path, warm_dirs, steps=6, checkpoint_every=1, teacher=str(bad_teacher), max_consecutive_nonfinite=2
    )
    with pytest.raises(NonFiniteError, match="2 consecutive steps"):
        train(cfg, reporter=rep, resume_from="auto")
    assert [k for k, _ in rep.events].count("step_skipped") == 2
    assert rep.events[-1][0] == "failed" and "NonFiniteError" in rep.events[-1][1]["error"]
    ckpts = list_checkpoints(good.output_dir / "checkpoints")
    for p in ckpts:
        verify_checkpoint(p)
    # a skipped step never touches the weights
    step2, step3 = weights(ckpts[1]), weights(ckpts[2])
    assert [p.name for p in ckpts] == ["step-1", "step-2", "step-3"]
    assert all(torch.equal(step2[k], step3[k]) for k in step2)


def test_short_seeded_run_raises_the_reward(tmp_path, warm_dirs):
    # 8 training prompts, all of them in every step: RL alone must make the student answer them better
    # (seen here: mean reward of steps 1-6 about 0.40, of steps 19-24 about 0.65)
    rep = MemoryReporter()
    cfg = config(
        tmp_path,
        warm_dirs,
        method="grpo",
        steps=24,
        batch_size=64,
        group_size=8,
        lr=1e-3,
        max_new_tokens=12,
        train_pool_size=8,
        log_samples=0,
    )
    train(cfg, reporter=rep)
    rewards = [m["reward_mean"] for _, m in sorted(rep.train_metrics().items())]
    first, last = sum(rewards[:6]) / 6, sum(rewards[-6:]) / 6
    assert last > first + 0.15, rewards


def test_checkpoint_of_a_run_loads_and_generates(tmp_path, warm_dirs):
    result = train(config(tmp_path, warm_dirs, steps=1))
    model = AutoModelForCausalLM.from_pretrained(result.checkpoint)
    tok = AutoTokenizer.from_pretrained(result.checkpoint)
    enc = tok(["3+4="], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(text) > 0


def test_every_metric_a_checkpoint_covers_is_synced_before_the_checkpoint_is_written(tmp_path, warm_dirs):
    """A run killed right after writing a checkpoint resumes from it: the reporter must already have made the
    metrics of every step up to it durable (the service's reporter writes them to the database in sync)."""

    class Recorder(MemoryReporter):
        def __init__(self, root):
            super().__init__()
            self.root, self.syncs = root, []

        def sync(self):
            written = sorted(p.name for p in (self.root / "checkpoints").glob("step-*")) if self.root.exists() else []
            self.syncs.append((max((s for s, _ in self.metric_rows), default=0), written))

    rec = Recorder(tmp_path / "run")
    train(config(tmp_path, warm_dirs, steps=4, checkpoint_every=2), reporter=rec)
    # at each sync, the metrics of the step about to be saved are in, and that checkpoint is not written yet
    assert rec.syncs == [(2, []), (4, ["step-2"])]


def test_logged_lr_is_the_rate_of_that_steps_update(tmp_path, warm_dirs):
    # linear warm-up over 3 steps, lr 1e-2: the updates of steps 1, 2, 3 use 1/3, 2/3 and 3/3 of it
    rep = MemoryReporter()
    train(config(tmp_path, warm_dirs, method="grpo", warmup_steps=3, lr_schedule="linear"), reporter=rep)
    lrs = [m["lr"] for _, m in sorted(rep.train_metrics().items())]
    assert lrs == pytest.approx([1e-2 / 3, 2e-2 / 3, 1e-2])


@pytest.mark.parametrize("train_dropout", [False, True])
def test_student_is_scored_in_eval_mode_and_updated_in_the_configured_mode(
    tmp_path, warm_dirs, monkeypatch, train_dropout
):
    import rlad_core.trainer as trainer_module

    modes: dict[str, set[bool]] = {"score": set(), "update": set(), "generate": set()}
    students: list[torch.nn.Module] = []

    def spy(kind, fn):
        def wrapped(model, *args, **kwargs):
            if not students or model is students[0]:
                modes[kind].add(model.training)
            return fn(model, *args, **kwargs)

        return wrapped

    real_setup = trainer_module._setup

    def setup(*args, **kwargs):
        run = real_setup(*args, **kwargs)
        students.append(run.student)
        generate = run.engine.generate

        def spy_generate(*a, **k):
            modes["generate"].add(run.student.training)
            return generate(*a, **k)

        run.engine.generate = spy_generate
        return run

    monkeypatch.setattr(trainer_module, "_setup", setup)
    monkeypatch.setattr(trainer_module, "score_in_chunks", spy("score", trainer_module.score_in_chunks))
    monkeypatch.setattr(trainer_module, "completion_logprobs", spy("update", trainer_module.completion_logprobs))
    # inner_epochs 2: pi_old is scored separately, by score_in_chunks on the student
    train(config(tmp_path, warm_dirs, steps=2, inner_epochs=2, train_dropout=train_dropout))
    assert modes["score"] == {False} and modes["generate"] == {False}
    assert modes["update"] == {train_dropout}


@pytest.mark.parametrize("method", ["grpo", "rlad"])
def test_a_run_with_the_chunked_output_head_is_the_plain_run(tmp_path, warm_dirs, method):
    """float64, mini-batches (old policy scored separately) and a teacher: every metric and the trained weights
    equal those of the run that materialises the whole (B, T, V) logits."""
    from rlad_core.models import load_model

    runs = {}
    for chunk in (None, 7):
        rep = MemoryReporter()
        spec = warm_spec(
            warm_dirs,
            method=method,
            dtype="float64",
            mini_batch_size=8,
            logprob_vocab_chunk=chunk,
            checkpoint_every=3,
            output_dir=str(tmp_path / str(chunk)),
        )
        result = train(parse_config(spec), reporter=rep)
        runs[chunk] = (rep.train_metrics(), load_model(str(result.checkpoint), dtype="float64"))
    (plain, plain_model), (chunked, chunked_model) = runs[None], runs[7]
    for step, values in plain.items():
        for key, value in values.items():
            if not key.startswith("time/") and key != "tokens_per_s":  # wall-clock rates differ
                assert chunked[step][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (step, key)
    for (name, a), b in zip(plain_model.named_parameters(), chunked_model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=name)


def test_gradient_checkpointing_recomputes_the_layers_and_changes_nothing_else(tmp_path, warm_dirs):
    """float64 rlad: the same metrics and weights with and without it; with it, each decoder layer's attention
    runs twice per update forward (again in the backward's recompute), and stays in eval mode (no dropout)."""
    from rlad_core.models import load_model

    calls: list[bool] = []

    def count(module, _inputs):  # layers are recomputed through `forward`: their submodules' hooks fire again
        if type(module).__name__.endswith("Attention") and torch.is_grad_enabled():
            calls.append(module.training)

    runs = {}
    handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
    try:
        for ckpt in (False, True):
            calls.clear()
            rep = MemoryReporter()
            spec = warm_spec(
                warm_dirs,
                dtype="float64",
                gradient_checkpointing=ckpt,
                checkpoint_every=3,
                output_dir=str(tmp_path / str(ckpt)),
            )
            result = train(parse_config(spec), reporter=rep)
            runs[ckpt] = (rep.train_metrics(), load_model(str(result.checkpoint), dtype="float64"), len(calls))
    finally:
        handle.remove()
    (plain, plain_model, plain_calls), (ckpt, ckpt_model, ckpt_calls) = runs[False], runs[True]
    assert plain_calls > 0 and ckpt_calls == 2 * plain_calls and not any(calls)  # (calls: the checkpointed run)
    for step, values in plain.items():
        for key, value in values.items():
            if not key.startswith("time/") and key != "tokens_per_s":
                assert ckpt[step][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (step, key)
    for (name, a), b in zip(plain_model.named_parameters(), ckpt_model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("method", ["grpo", "rlad"])
def test_a_lora_run_trains_only_the_adapters_and_resumes_exactly(tmp_path, warm_dirs, method):
    """The checkpoint holds the adapter (and merged/ weights): the base weights under it are the student's,
    the adapters moved; it loads with transformers (adapter) and as a plain model (merged), which agree; a run
    stopped after step 2 and resumed gives the uninterrupted run's metrics and adapter."""
    from peft import PeftModel

    from rlad_core.models import load_model

    lora = {"r": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"]}
    common = {"method": method, "lora": lora, "steps": 4, "checkpoint_every": 2, "merge_lora_on_save": True}
    common |= {"lr": 5e-2, "mini_batch_size": 8}
    full = MemoryReporter()
    done = train(config(tmp_path / "a", warm_dirs, **common), reporter=full)
    step4 = done.checkpoint
    assert (step4 / "adapter_config.json").is_file() and not (step4 / "model.safetensors").exists()
    base = load_model(str(warm_dirs["student"]))
    trained = PeftModel.from_pretrained(load_model(str(warm_dirs["student"])), str(step4))
    names = dict(trained.named_parameters())
    for name, p in base.named_parameters():  # every base weight under the adapters is the student's
        key = next(k for k in names if k.endswith(name.replace(".weight", ".base_layer.weight")) or k.endswith(name))
        assert torch.equal(names[key], p), name
    assert any(float(p.abs().max()) > 0 for k, p in names.items() if "lora_B" in k)  # the adapters moved

    ids = torch.tensor([[5, 17, 23, 9, 31, 12]])
    via_adapter = AutoModelForCausalLM.from_pretrained(step4)  # transformers loads base + adapter (peft)
    merged = AutoModelForCausalLM.from_pretrained(step4 / "merged")
    torch.testing.assert_close(merged(ids).logits, via_adapter(ids).logits, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(merged(ids).logits, base(ids).logits)

    stopped = MemoryReporter(stop_after_step=2)
    train(config(tmp_path / "b", warm_dirs, **common), reporter=stopped)
    resumed = MemoryReporter()
    again = train(config(tmp_path / "b", warm_dirs, **common), reporter=resumed, resume_from="auto")
    expected = {s: v for s, v in without_timing(full.train_metrics()).items() if s > 2}
    assert without_timing(resumed.train_metrics()) == expected
    a = load_file(step4 / "adapter_model.safetensors")
    b = load_file(again.checkpoint / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
