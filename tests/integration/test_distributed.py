"""One job on several processes: `rlad train --nproc 2` (torchrun, a real gloo process group; DDP and FSDP2)
against the same config on one process. With per-prompt sampling streams both see the same rollouts, so the
metrics and the updated weights must agree, and a checkpoint resumes on another number of processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from rlad_core.config import ConfigError, parse_config
from rlad_core.distributed import World
from rlad_core.trainer import _check_world
from tests.conftest import warm_spec

# the step's own clock, not the run's numbers
TIMING = ("time/", "tokens_per_s", "time")
# weighted means of per-micro-batch means: they depend on how rows fall into micro-batches, which differs
# between 1 and 2 processes once a mini-batch's rows are shuffled across ranks (the loss and gradient do not)
PER_MICRO = ("clip_frac_low", "clip_frac_high", "ratio_mean", "teacher_gap", "entropy", "kl_ref")


def _train(tmp_path: Path, name: str, spec: dict, nproc: int, resume: Path | None = None) -> Path:
    out = tmp_path / name
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({**spec, "output_dir": str(out)}))
    done = subprocess.run(
        [sys.executable, "-m", "rlad.cli", "train", str(cfg), "--quiet", f"--nproc={nproc}"]
        + ([f"--resume={resume}"] if resume else []),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _spec(warm_dirs, method: str, **extra) -> dict:
    return warm_spec(
        warm_dirs,
        method=method,
        max_new_tokens=12,
        sampling_streams="per_prompt",
        engine="fast",
        threads=1,
        dtype="float64",  # float32 rounding, amplified by AdamW's first steps, would hide a real mismatch
        **extra,
    )


@pytest.mark.parametrize(
    ("method", "layout"),
    [
        ("grpo", {"micro_batch_size": 8}),  # one mini-batch; 1 process: micro-batches = the ranks' halves
        ("rlad", {"micro_batch_size": 8}),
        # shuffled mini-batches; the output head applied in vocabulary chunks (through DDP's forward)
        ("rlad", {"mini_batch_size": 8, "micro_batch_size": 4, "inner_epochs": 2, "logprob_vocab_chunk": 7}),
        ("grpo", {"micro_batch_size": 8, "strategy": "fsdp"}),
        ("rlad", {"micro_batch_size": 8, "strategy": "fsdp", "teacher_sharding": "shard"}),
        ("rlad", {"mini_batch_size": 8, "micro_batch_size": 4, "inner_epochs": 2, "strategy": "fsdp"}),
    ],
    ids=[
        "ddp-grpo",
        "ddp-rlad",
        "ddp-rlad-minibatches-vocab-chunks",
        "fsdp-grpo",
        "fsdp-rlad-sharded-teacher",
        "fsdp-rlad-mb",
    ],
)
def test_two_processes_match_one_process(tmp_path, warm_dirs, method, layout):
    spec = _spec(warm_dirs, method, **layout)
    one = _train(tmp_path, "one", {**spec, "strategy": "ddp"}, nproc=1)
    two = _train(tmp_path, "two", spec, nproc=2)

    m1, m2 = _metrics(one), _metrics(two)
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [1, 2, 3]
    skip = TIMING + (PER_MICRO if "mini_batch_size" in layout else ())
    for a, b in zip(m1, m2, strict=True):
        keys = {k for k in a if not k.startswith(skip)}
        assert keys == {k for k in b if not k.startswith(skip)}
        for k in sorted(keys):
            assert b[k] == pytest.approx(a[k], rel=1e-9, abs=1e-12), (a["step"], k)
    assert any(r["reward_std"] > 0 for r in m1) and any(r["grad_norm"] > 0 for r in m1)  # a real update

    w1 = load_file(one / "checkpoints" / "step-3" / "model.safetensors")
    w2 = load_file(two / "checkpoints" / "step-3" / "model.safetensors")
    start = load_file(Path(warm_dirs["student"]) / "model.safetensors")
    assert w1.keys() == w2.keys()
    moved = max(float((w1[k] - start[k]).abs().max()) for k in w1)
    assert moved > 1e-3  # the weights did move
    for k in w1:
        assert float((w1[k] - w2[k]).abs().max()) <= 1e-9, k
    # one writer: rank 0's files only
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_evaluation_is_split_over_processes_and_matches_one_process(tmp_path, warm_dirs, strategy):
    """7 eval examples over 2 processes (blocks of 4 and 3): the eval metrics at step 0 and at the last step, and
    the eval samples, are those of 1 process, and rank 0 reports each evaluation once."""
    spec = _spec(warm_dirs, "grpo", micro_batch_size=8, steps=2, eval_every=2, eval_size=7, eval_pass_k=4)
    one = _train(tmp_path, "one", {**spec, "strategy": "ddp"}, nproc=1)
    two = _train(tmp_path, "two", {**spec, "strategy": strategy}, nproc=2)

    def evals(out: Path) -> dict[int, dict]:
        return {r["step"]: r for r in _metrics(out) if "eval/n" in r}

    e1, e2 = evals(one), evals(two)
    assert sorted(e1) == sorted(e2) == [0, 2]
    for step in (0, 2):
        keys = {k for k in e1[step] if k.startswith("eval/")}
        assert keys == {k for k in e2[step] if k.startswith("eval/")}
        for k in sorted(keys):
            assert e2[step][k] == pytest.approx(e1[step][k], rel=1e-9, abs=1e-12), (step, k)
        assert e1[step]["eval/n"] == 7.0
    # the samples really vary: some example has a correct sample and some has none
    assert any(0.0 < e["eval/pass@4"] < 1.0 for e in e1.values())

    def reported(out: Path) -> tuple[list, list]:
        events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
        samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        return (
            [e["step"] for e in events if e["kind"] == "eval_completed"],
            [(r["step"], r["prompt"], r["completion"]) for r in samples if r.get("eval")],
        )

    assert reported(two) == reported(one)
    assert reported(one)[0] == [0, 2]


def test_a_checkpoint_resumes_on_another_number_of_processes(tmp_path, warm_dirs):
    """1 process -> 2 (DDP), 2 (FSDP: the optimizer state in DCP shards) -> 1, and 1 -> 2 (FSDP: the whole
    optimizer state sharded on load): steps 3 and 4 after the resume are those of the uninterrupted run."""
    spec = _spec(warm_dirs, "rlad", micro_batch_size=8, steps=4, checkpoint_every=2)
    whole = _metrics(_train(tmp_path, "whole", spec, nproc=1))
    sharded = _train(tmp_path, "sharded", {**spec, "strategy": "fsdp"}, nproc=2)
    step2, whole_step2 = sharded / "checkpoints" / "step-2", tmp_path / "whole" / "checkpoints" / "step-2"
    manifest = json.loads((step2 / "manifest.json").read_text())["files"]
    # each rank wrote its own shards (torch.distributed.checkpoint), covered by the manifest like every file
    assert {"optimizer/.metadata", "optimizer/__0_0.distcp", "optimizer/__1_0.distcp"} <= set(manifest)
    assert "model.safetensors" in manifest  # the weights users download stay whole
    runs = {
        "1->2 ddp": _train(tmp_path, "ddp2", spec, nproc=2, resume=whole_step2),
        "2 fsdp->1": _train(tmp_path, "one", spec, nproc=1, resume=step2),
        "1->2 fsdp": _train(
            tmp_path,
            "fsdp2",
            {**spec, "strategy": "fsdp"},
            nproc=2,
            resume=tmp_path / "whole" / "checkpoints" / "step-2",
        ),
    }
    for name, out in runs.items():
        resumed = _metrics(out)
        assert [r["step"] for r in resumed] == [3, 4], name
        for a, b in zip(whole[2:], resumed, strict=True):
            for k in a:
                if not k.startswith(TIMING):
                    assert b[k] == pytest.approx(a[k], rel=1e-9, abs=1e-12), (name, a["step"], k)


def test_a_bf16_student_under_fsdp_keeps_fp32_shards_as_masters_and_resumes_exactly(tmp_path, warm_dirs):
    """strategy fsdp + dtype bfloat16: the shards are fp32 (the masters AdamW updates), compute is bf16. The
    checkpoint's Hugging Face weights are the masters rounded to bf16, the masters ride in the trainer state,
    and a resume from them (on 2 FSDP processes, or on 1) continues the run."""
    import torch

    from rlad_core.checkpoint import load_trainer_state

    spec = _spec(warm_dirs, "grpo", micro_batch_size=8, steps=4, checkpoint_every=2, strategy="fsdp")
    spec["dtype"] = "bfloat16"
    straight = _train(tmp_path, "straight", spec, nproc=2)
    step2 = straight / "checkpoints" / "step-2"
    weights = load_file(step2 / "model.safetensors")
    masters = load_trainer_state(step2)["master_weights"]
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}
    assert masters and {m.dtype for m in masters} == {torch.float32}
    assert any(not torch.equal(m, m.bfloat16().float()) for m in masters)  # fp32 values bf16 cannot hold
    assert sum(m.numel() for m in masters) == sum(w.numel() for w in weights.values())
    assert {tuple(m.shape) for m in masters} == {tuple(w.shape) for w in weights.values()}
    assert all(any(torch.equal(m.bfloat16(), w) for w in weights.values()) for m in masters)
    one = {**spec, "strategy": "ddp"}
    one_step2 = _train(tmp_path, "straight-one", one, nproc=1) / "checkpoints" / "step-2"  # fp32 masters too
    runs = {  # name: (the uninterrupted run, the resumed one)
        "2 fsdp -> 2 fsdp": (straight, _train(tmp_path, "fsdp-fsdp", spec, nproc=2, resume=step2)),
        "2 fsdp -> 1": (straight, _train(tmp_path, "fsdp-one", one, nproc=1, resume=step2)),
        "1 -> 2 fsdp": (tmp_path / "straight-one", _train(tmp_path, "one-fsdp", spec, nproc=2, resume=one_step2)),
    }
    for name, (uninterrupted, out) in runs.items():
        whole, resumed = _metrics(uninterrupted), _metrics(out)
        assert [r["step"] for r in resumed] == [3, 4], name
        # on the same number of processes the resume is exact; across 1 and 2 processes the bf16 gradients are
        # summed in another order, so only the first step after the resume (the same weights and rollouts) is
        # close, and bf16 rounding makes the runs drift apart after it
        pairs = zip(whole[2:], resumed, strict=True) if name == "2 fsdp -> 2 fsdp" else [(whole[2], resumed[0])]
        tol = 1e-9 if name == "2 fsdp -> 2 fsdp" else 1e-2
        for a, b in pairs:
            for k in ("loss", "reward_mean", "grad_norm"):
                assert b[k] == pytest.approx(a[k], rel=tol, abs=tol), (name, a["step"], k)


def test_blocks_cover_the_items_in_rank_order_uneven_ones_when_asked():
    assert [World(rank=r, size=2).block(8) for r in range(2)] == [range(0, 4), range(4, 8)]
    with pytest.raises(ValueError):
        World(rank=0, size=2).block(7)
    assert [World(rank=r, size=3).block(7, even=False) for r in range(3)] == [range(0, 3), range(3, 5), range(5, 7)]
    assert [World(rank=r, size=3).block(2, even=False) for r in range(3)] == [range(0, 1), range(1, 2), range(2, 2)]
    assert World().block(7, even=False) == range(7)


def test_a_config_several_processes_cannot_split_is_refused_naming_the_field(warm_dirs):
    spec = _spec(warm_dirs, "rlad", batch_size=12, group_size=4)  # 3 prompts a step
    with pytest.raises(ConfigError) as info:
        _check_world(parse_config(spec), World(rank=0, size=2), per_row_streams=True)
    assert info.value.errors[0][0] == "batch_size"
    with pytest.raises(ConfigError) as info:
        _check_world(parse_config(_spec(warm_dirs, "rlad")), World(rank=0, size=2), per_row_streams=False)
    assert info.value.errors[0][0] == "sampling_streams"
