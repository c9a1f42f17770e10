"""Data parallelism on CPU: 2 processes x 1 thread (torchrun, gloo, DDP) against 1 process x 2 threads, on the
step benchmark's tiny config, and the time the 2-process step spends in collectives.

Config: bench/step_bench.py's (student "small", teacher "small-4x", 8 prompts x 8 rollouts x 32 new tokens,
fp32, one optimizer step per rollout batch), with `sampling_streams: per_prompt` in both layouts (a run on
several processes needs it; with it both layouts sample the same rollouts). grpo and rlad (teacher scoring).

  1x2   `python bench/distributed_bench.py --worker ...` with OMP_NUM_THREADS=2, threads 2
  2x1   `python -m torch.distributed.run --standalone --nproc-per-node 2 bench/distributed_bench.py --worker ...`
        with OMP_NUM_THREADS=1, threads 1 per process: each rank generates, scores and backpropagates 4 of the
        8 prompts, DDP all-reduces the gradients, and the trainer's World reduces/gathers the step's metrics

Each run is rlad_core.trainer.train() unchanged; the worker only wraps, from outside, what the trainer calls:
  step window     rlad_core.trainer._examples_for_step (called once per step at its start, on every rank):
                  step k's window runs from its call to step k+1's, so it holds everything of the loop, the
                  logging and stop-request collectives included (`loop_s`; the trainer's own `time/step` stops
                  after the update)
  sync calls      torch.distributed.all_reduce / all_gather_object / broadcast_object_list / barrier / ... as
                  rlad_core.distributed's World calls them (metric and row-count reductions, gathers, the
                  stop broadcast), and DDP's per-forward buffer broadcast: wall time inside each call. That
                  includes waiting for the other rank to arrive (load imbalance), so each call is also matched
                  with the other rank's same call (collectives come in the same order on every rank): the
                  smaller of the two durations is the call's cost without waiting (`sync_transfer_s`)
  gradients       DDP's bucket all-reduce, through a comm hook equal to DDP's default (divide by the world
                  size, async all_reduce): `grad_inflight_s` = launch to completion, summed over buckets; it
                  overlaps the rest of backward. `grad_exposed_s` = end of the backward() call minus the launch
                  of its last bucket: the time the rank stays blocked after its gradients are all computed
  collectives_s   sync_s + grad_exposed_s (per rank, averaged over the ranks): the time the step loses to
                  collectives; `collectives_share` = collectives_s / loop_s, the figure the target (<= 10% at
                  2 processes) is judged on. Not counted: CPU that the gloo threads take from the ranks'
                  compute while a bucket is in flight (2 cores, 2 busy ranks), and DDP's copies of gradients
                  into its buckets during backward (compute, not communication)
  check           the same 2x1 runs again with only the step windows timed (no collective wrappers, DDP's
                  built-in all-reduce): their step time against the instrumented runs' is what measuring costs
                  (--no-plain-check skips them). A torch.profiler trace of a 2x1 run (ad hoc) lists gloo
                  all_reduce, all_gather and broadcast ops and nothing else collective: the wrappers miss no
                  kind of call

Reported: medians over steps 3..N-1 of every run (the last step's window would end in the final checkpoint),
pooled over --rounds rounds; a round runs every (method, layout) pair, in reverse order every other round
(ABBA), so that drift of a noisy machine hits all alike. Machine facts and load averages before/after go
into the JSON.

Usage:
  python bench/distributed_bench.py [--steps 12] [--rounds 4] [--no-plain-check] [--json docs/distributed_bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # step_bench, also when torchrun runs this file

LAYOUTS = {"1x2": (1, 2), "2x1": (2, 1)}  # name: (processes, threads per process)
FIRST_STEP = 3  # steps 1-2 are warm-up, as in step_bench.py
SUMMARY_KEYS = (
    "time/step",
    "time/generate",
    "time/score",
    "time/update",
    "loop_s",
    "sync_s",
    "sync_transfer_s",
    "grad_inflight_s",
    "grad_exposed_s",
    "collectives_s",
    "collectives_share",
    "collectives_share_without_wait",
    "collectives_share_no_overlap",
)


# ----- worker: one training run (one process, or one torchrun rank) with timed collectives ---------------


class Probe:
    """Wraps what the trainer calls (from outside, nothing in rlad_core changes) and records timestamps."""

    def __init__(self) -> None:
        self.starts: dict[int, float] = {}  # step -> its window's start
        self.sync: list[tuple[str, float, float]] = []  # (call site, start, end)
        self.buckets: list[tuple[float, float, int]] = []  # DDP gradient bucket: (launch, done, numel)
        self.backwards: list[tuple[float, float]] = []

    def install(self, *, collectives: bool = True) -> None:
        """Step windows always; with `collectives`, the collective calls, DDP's buckets and backward too."""
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        import rlad_core.trainer as trainer

        examples_for_step = trainer._examples_for_step

        def timed_examples(pool: Any, step: int, *args: Any, **kwargs: Any) -> Any:
            self.starts[step] = time.perf_counter()
            return examples_for_step(pool, step, *args, **kwargs)

        trainer._examples_for_step = timed_examples  # type: ignore[assignment]
        if not collectives:
            return

        for name in ("all_reduce", "all_gather", "all_gather_object", "broadcast", "broadcast_object_list"):
            setattr(dist, name, self._timed(name, getattr(dist, name)))
        dist.barrier = self._timed("barrier", dist.barrier)

        sync_buffers = DistributedDataParallel._sync_buffers

        def timed_sync_buffers(ddp: Any) -> None:
            t0 = time.perf_counter()
            sync_buffers(ddp)
            self.sync.append(("DDP buffer broadcast (forward)", t0, time.perf_counter()))

        DistributedDataParallel._sync_buffers = timed_sync_buffers  # type: ignore[method-assign]

        ddp_init = DistributedDataParallel.__init__
        all_reduce = dist.all_reduce.__wrapped__  # type: ignore[attr-defined]

        # = torch's default allreduce_hook, with timestamps; unannotated: DDP checks the annotations it finds
        def hook(state, bucket):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            buf = bucket.buffer()
            buf.div_(dist.get_world_size())
            fut = all_reduce(buf, async_op=True).get_future()

            def done(f: Any) -> Any:
                self.buckets.append((t0, time.perf_counter(), buf.numel()))
                return f.value()[0]

            return fut.then(done)

        def init(ddp: Any, *args: Any, **kwargs: Any) -> None:
            ddp_init(ddp, *args, **kwargs)
            ddp.register_comm_hook(None, hook)

        DistributedDataParallel.__init__ = init  # type: ignore[method-assign]

        backward = torch.autograd.backward

        def timed_backward(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = backward(*args, **kwargs)
            self.backwards.append((t0, time.perf_counter()))
            return out

        torch.autograd.backward = timed_backward  # type: ignore[assignment]

    def _timed(self, name: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("async_op"):
                return fn(*args, **kwargs)
            site = _call_site(name)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.sync.append((site, t0, time.perf_counter()))
            return out

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed


def _call_site(op: str) -> str:
    """`World.<method> in <trainer function>` for a collective the trainer makes through World."""
    frame = sys._getframe(2)
    method = None
    while frame is not None and frame.f_code.co_filename.endswith(os.path.join("rlad_core", "distributed.py")):
        if not frame.f_code.co_name.startswith("_"):
            method = frame.f_code.co_name
        frame = frame.f_back
    caller = frame.f_code.co_name if frame is not None else "?"
    return f"World.{method} in {caller}" if method else f"{op} in {caller}"


def worker(a: argparse.Namespace) -> None:
    import torch
    from step_bench import train_config

    from rlad_core.distributed import close_world
    from rlad_core.reporting import MemoryReporter
    from rlad_core.trainer import train

    torch.set_num_threads(a.threads)
    rank = int(os.environ.get("RANK", "0"))
    probe = Probe()
    probe.install(collectives=not a.plain)
    config = train_config(
        a.method,
        Path(a.student),
        Path(a.teacher),
        a.steps,
        Path(a.out),
        a.engine,
        threads=a.threads,
        sampling_streams="per_prompt",
    )
    rep = MemoryReporter()
    train(config, reporter=rep)
    close_world()
    if len(probe.starts) != a.steps:
        raise RuntimeError(
            f"{len(probe.starts)} step starts seen in {a.steps} steps: rlad_core.trainer._examples_for_step no "
            "longer runs once at the start of each step; fix: mark the step start elsewhere in Probe.install"
        )
    record = {
        "rank": rank,
        "threads": torch.get_num_threads(),
        "starts": probe.starts,
        "sync": probe.sync,
        "buckets": probe.buckets,
        "backwards": probe.backwards,
        "metrics": dict(rep.train_metrics()) if rank == 0 else {},
    }
    Path(a.record, f"rank{rank}.json").write_text(json.dumps(record))


# ----- analysis: per-step figures from the ranks' records ------------------------------------------------


def analyse(ranks: list[dict[str, Any]]) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Per measured step: the trainer's times (rank 0) and the collective figures (averaged over ranks); and
    the mean time per step of each collective call site."""
    for r in ranks:
        r["starts"] = {int(k): v for k, v in r["starts"].items()}
    calls = [r["sync"] for r in ranks]
    if len({len(c) for c in calls}) != 1 or any(c[i][0] != calls[0][i][0] for c in calls for i in range(len(c))):
        raise RuntimeError("the ranks' collective calls do not match one to one")
    no_wait = [min(c[i][2] - c[i][1] for c in calls) for i in range(len(calls[0]))]
    steps = [s for s in sorted(ranks[0]["starts"]) if s >= FIRST_STEP and s + 1 in ranks[0]["starts"]]
    metrics = {int(k): v for k, v in ranks[0]["metrics"].items()}
    rows, by_site = [], defaultdict(float)
    for step in steps:
        per_rank = []
        for rec in ranks:
            lo, hi = rec["starts"][step], rec["starts"][step + 1]
            mine = [(i, c) for i, c in enumerate(rec["sync"]) if lo <= c[1] < hi]
            buckets = [b for b in rec["buckets"] if lo <= b[0] < hi]
            exposed = 0.0
            for b0, b1 in rec["backwards"]:
                launched = [b[0] for b in buckets if b0 <= b[0] <= b1]
                if lo <= b0 < hi and launched:
                    exposed += b1 - max(launched)
            for _, (site, t0, t1) in mine:
                by_site[site] += (t1 - t0) / len(ranks) / len(steps)
            per_rank.append(
                {
                    "loop_s": hi - lo,
                    "sync_s": sum(t1 - t0 for _, (_, t0, t1) in mine),
                    "sync_transfer_s": sum(no_wait[i] for i, _ in mine),
                    "grad_inflight_s": sum(t1 - t0 for t0, t1, _ in buckets),
                    "grad_exposed_s": exposed,
                    "grad_buckets": len(buckets),
                }
            )
        row = {k: statistics.fmean(p[k] for p in per_rank) for k in per_rank[0]}
        row["collectives_s"] = row["sync_s"] + row["grad_exposed_s"]
        row["collectives_share"] = row["collectives_s"] / row["loop_s"]
        row["collectives_share_without_wait"] = (row["sync_transfer_s"] + row["grad_exposed_s"]) / row["loop_s"]
        row["collectives_share_no_overlap"] = (row["sync_s"] + row["grad_inflight_s"]) / row["loop_s"]
        m = metrics[step]
        row.update({k: m[k] for k in ("time/step", "time/generate", "time/score", "time/update")})
        row["response_length_mean"] = m["response_length_mean"]
        rows.append(row)
    return rows, dict(by_site)


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    out = {k: statistics.median(r[k] for r in rows) for k in (*SUMMARY_KEYS, "response_length_mean")}
    out["grad_buckets_per_step"] = statistics.median(r["grad_buckets"] for r in rows)
    out["steps_measured"] = len(rows)
    return out


# ----- driver -----------------------------------------------------------------------------------------------


def run_layout(
    layout: str, method: str, a: argparse.Namespace, models: tuple[Path, Path], work: Path, *, plain: bool = False
) -> Any:
    nproc, threads = LAYOUTS[layout]
    run_dir = Path(tempfile.mkdtemp(prefix=f"{method}-{layout}{'-plain' * plain}-", dir=work))
    args = [str(Path(__file__).resolve()), "--worker", "--method", method, "--threads", str(threads)]
    args += ["--plain"] if plain else []
    args += ["--student", str(models[0]), "--teacher", str(models[1]), "--steps", str(a.steps)]
    args += ["--engine", a.engine, "--out", str(run_dir / "run"), "--record", str(run_dir)]
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(launcher + args, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{layout} {method} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    ranks = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in range(nproc)]
    shutil.rmtree(run_dir)  # its final checkpoint (weights and AdamW state) is not needed
    print(f"  {method} {layout}{' plain' * plain}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return analyse(ranks)


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12, help="steps per run (1-2 warm-up, the last one not measured)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds of runs (every method x layout once per round)")
    ap.add_argument("--methods", default="grpo,rlad")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--method", "--student", "--teacher", "--out", "--record"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--no-plain-check",
        dest="plain_check",
        action="store_false",
        help="skip the uninstrumented 2x1 runs that measure what the timing wrappers cost",
    )
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return
    if a.steps < FIRST_STEP + 1:
        ap.error(f"--steps must be at least {FIRST_STEP + 1} (steps 1-2 are warm-up, the last is not measured)")

    from step_bench import build_models

    methods = a.methods.split(",")
    res: dict[str, Any] = {
        "machine": machine(),
        "load_average_before": list(os.getloadavg()),
        "steps": a.steps,
        "rounds": a.rounds,
        "engine": a.engine,
        "sampling_streams": "per_prompt",
        "layouts": {k: {"processes": n, "threads_per_process": t} for k, (n, t) in LAYOUTS.items()},
    }
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="rlad-dist-bench-"))
    models = build_models(work)
    runs = [(layout, False) for layout in LAYOUTS] + ([("2x1", True)] if a.plain_check else [])
    rows: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    sites: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for r in range(a.rounds):
        order = [(m, lay, plain) for m in methods for lay, plain in runs]
        for method, layout, plain in order if r % 2 == 0 else order[::-1]:
            got, by_site = run_layout(layout, method, a, models, work, plain=plain)
            key = layout + " plain" * plain
            rows[method, key] += got
            sites[method, key].append(by_site)
    res["load_average_after"] = list(os.getloadavg())
    shutil.rmtree(work)
    res["wall_s"] = time.perf_counter() - t_start

    for method in methods:
        per: dict[str, Any] = {}
        for layout in LAYOUTS:
            per[layout] = summarize(rows[method, layout])
            if layout != "1x2":
                names = sorted({k for d in sites[method, layout] for k in d})
                per[layout]["collectives_by_call_s"] = {
                    k: statistics.fmean(d.get(k, 0.0) for d in sites[method, layout]) for k in names
                }
        one, two = per["1x2"], per["2x1"]
        per["2x1_over_1x2"] = {
            "time/step": two["time/step"] / one["time/step"],
            "loop_s": two["loop_s"] / one["loop_s"],
            "time/generate": two["time/generate"] / one["time/generate"],
            "time/score": two["time/score"] / one["time/score"],
            "time/update": two["time/update"] / one["time/update"],
        }
        if a.plain_check:  # the same 2x1 runs without the collective wrappers: what measuring them costs
            plain = {k: statistics.median(r[k] for r in rows[method, "2x1 plain"]) for k in ("time/step", "loop_s")}
            per["2x1_uninstrumented"] = {**plain, "steps_measured": len(rows[method, "2x1 plain"])}
            per["2x1_instrumented_over_uninstrumented"] = {k: two[k] / v for k, v in plain.items()}
        per["target_collectives_share_max"] = 0.10
        per["target_met"] = two["collectives_share"] <= 0.10
        res[method] = per
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
