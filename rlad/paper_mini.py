"""`rlad bench paper-mini`: the paper's comparison (arXiv 2602.22495, Table 1; alpha ablation: Table 5) in
miniature, on CPU, with models the project builds itself. The set-up, the lab notes (which models and
prompt styles were tried, the hyperparameter budget) and the results are in docs/paper-mini/README.md.

1. Models (cached under the work directory, keyed by their recipe): per task a tiny teacher SFT-trained on
   the task's reference solutions and a smaller student, briefly SFT-warmed so that its accuracy is low but
   not zero (RL needs some reward signal). `TaskSetup` takes any task.
2. Runs: from the same student start, on the same prompts (the seed fixes the prompt stream and the
   held-out set) and with the same number of student updates: every method of `METHODS`, sft on
   reject-sampled teacher traces (`sft_source: teacher`), for each seed of the preset.
3. Evaluation on the held-out set by difficulty (the paper's PPL2..PPLn columns): greedy accuracy, pass@k.
4. Output (`out`): `results.json` (every number), `tables.md` (the paper's layouts, mean and spread over
   seeds), `curves-<task>.png` (reward and held-out accuracy against step), `ablation-<task>.png`.
5. Alpha ablation on one task (Knights-and-Knaves, as in the paper).

Every method runs with ONE shared configuration (`Preset.shared`) and the paper's defaults for its own
coefficients; nothing is tuned per method. `via_api`: every run is submitted as a job to a running service
(the dashboard's compare page then shows them side by side); models must be readable by the workers.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

METHODS = ("grpo", "kdrl", "rlad", "opd", "sft")  # every method of rlad_core.config, in the paper's table order


@dataclass(frozen=True)
class TaskSetup:
    key: str  # short name in file names and tables
    task: dict[str, Any]  # TrainConfig.task
    column: str  # difficulty column prefix: PPL (people) or L (level)
    teacher: tuple[str, int]  # (tiny model size, SFT steps on reference traces)
    student: tuple[str, int]
    max_new_tokens: int
    warmup_sft: dict[str, Any] = field(default_factory=lambda: dict(WARMUP_SFT))  # the models' SFT recipe


@dataclass(frozen=True)
class Preset:
    name: str
    tasks: tuple[TaskSetup, ...]
    seeds: tuple[int, ...]
    steps: int  # student updates per run, the same for every method
    shared: dict[str, Any]  # one configuration for every method (see the module docstring)
    alphas: tuple[float, ...]
    ablation_task: str
    ablation_seeds: tuple[int, ...]
    methods: tuple[str, ...] = METHODS
    max_positions: int = 768


WARMUP_SFT = {"batch_size": 64, "group_size": 8, "lr": 3e-3, "warmup_steps": 5, "lr_schedule": "constant"}
ARITH = {"name": "arithmetic", "levels": [1, 2, 3]}
# Knights-and-Knaves at the sizes a character-level tiny teacher can learn on a CPU: compact prompts (names A, B,
# ... and symbolic statements, a fifth of the English prompt's characters) and answer-only solutions.
KK = {"name": "knights_knaves", "n_people": [2, 3, 4], "reasoning": False, "prompt_style": "compact"}
KK_SFT = {**WARMUP_SFT, "warmup_steps": 20, "lr_schedule": "cosine", "min_lr_ratio": 0.1}
SHARED = {
    "batch_size": 64,
    "group_size": 8,
    "lr": 3e-4,
    "warmup_steps": 2,
    "lr_schedule": "constant",
    "temperature": 1.0,
    "eval_size": 64,
    "eval_pass_k": 4,
    "log_samples": 2,
    "checkpoint_every": 0,
}

PRESETS: dict[str, Preset] = {
    "full": Preset(  # about 38 minutes from an empty work directory on 2 cores
        name="full",
        tasks=(
            TaskSetup("kk", KK, "PPL", ("mini", 1200), ("micro", 300), 48, KK_SFT),
            TaskSetup("arith", ARITH, "L", ("mini", 1000), ("micro", 300), 32),
        ),
        seeds=(0, 1, 2),
        steps=100,
        shared={**SHARED, "eval_every": 10, "eval_size": 128},
        alphas=(0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
        ablation_task="kk",
        ablation_seeds=(0, 1, 2),
    ),
    "quick": Preset(  # Knights-and-Knaves with 2 and 3 people, a shorter teacher warm-up, one seed
        name="quick",
        tasks=(TaskSetup("kk", {**KK, "n_people": [2, 3]}, "PPL", ("mini", 500), ("micro", 100), 40, KK_SFT),),
        seeds=(0,),
        steps=60,
        shared={**SHARED, "eval_every": 10},
        alphas=(0.1, 0.5, 1.0),
        ablation_task="kk",
        ablation_seeds=(0,),
    ),
    "tiny": Preset(  # the test's preset: the whole pipeline in about a minute, numbers meaningless
        name="tiny",
        tasks=(
            TaskSetup("kk", {**KK, "n_people": [2, 3]}, "PPL", ("micro", 4), ("micro", 2), 40, KK_SFT),
            TaskSetup("arith", {"name": "arithmetic", "levels": [1, 2]}, "L", ("micro", 4), ("micro", 2), 8),
        ),
        seeds=(0, 1),
        steps=2,
        shared={**SHARED, "batch_size": 8, "group_size": 4, "eval_every": 1, "eval_size": 4},
        alphas=(0.5, 1.0),
        ablation_task="kk",
        ablation_seeds=(0,),
        max_positions=192,
    ),
}


@dataclass
class Run:
    task: str
    method: str
    seed: int
    alpha: float | None = None
    curves: dict[str, list[list[float]]] = field(default_factory=dict)  # key -> [[step, value], ...]
    final: dict[str, float] = field(default_factory=dict)  # eval/* at the last step
    seconds: float = 0.0
    job_id: str | None = None

    @property
    def name(self) -> str:
        return f"{self.task}-{self.method}" + (f"-a{self.alpha:g}" if self.alpha is not None else "") + f"-s{self.seed}"


# ----- models -----------------------------------------------------------------------------------------------
def build_models(preset: Preset, setup: TaskSetup, workdir: Path, log: Callable[[str], Any]) -> dict[str, Any]:
    """(teacher, student) SFT-warmed on reference traces, cached; with their held-out accuracy."""
    from rlad_core.checkpoint import latest_checkpoint
    from rlad_core.config import TrainConfig
    from rlad_core.models import TINY_SIZES, save_tiny_model
    from rlad_core.reporting import ConsoleReporter, JsonlReporter, MultiReporter
    from rlad_core.trainer import train

    out: dict[str, Any] = {}
    for role, seed in (("teacher", 1), ("student", 0)):
        size, steps = getattr(setup, role)
        recipe = {
            "task": setup.task,
            "size": size,
            "max_positions": preset.max_positions,
            "seed": seed,
            "eval_size": preset.shared["eval_size"],
            "max_new_tokens": setup.max_new_tokens,
            **setup.warmup_sft,
            "warmup_steps": min(setup.warmup_sft["warmup_steps"], steps),
        }
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
        run_dir = workdir / "models" / setup.key / f"{role}-{size}-sft{steps}-{digest}"
        done = latest_checkpoint(run_dir / "checkpoints")
        made_by = run_dir / "recipe.json"
        if (
            done is None
            or done.name != f"step-{steps}"
            or not made_by.exists()
            or json.loads(made_by.read_text()) != recipe
        ):
            log(f"{setup.key}: {role}: a tiny '{size}' model, {steps} SFT steps on reference solutions")
            shutil.rmtree(run_dir, ignore_errors=True)  # what an interrupted build of this recipe left
            init = save_tiny_model(
                run_dir / "init", replace(TINY_SIZES[size], max_position_embeddings=preset.max_positions), seed=seed
            )
            sft = {
                k: recipe[k]
                for k in ("batch_size", "group_size", "lr", "warmup_steps", "lr_schedule", "min_lr_ratio")
                if k in recipe
            }
            config = TrainConfig(
                name=f"{setup.key}-{role}-sft",
                method="sft",
                sft_source="reference",
                student=str(init),
                task=setup.task,
                steps=steps,
                **sft,
                max_new_tokens=setup.max_new_tokens,
                eval_every=steps,
                eval_size=preset.shared["eval_size"],
                checkpoint_every=0,
                log_samples=0,
                seed=seed,
                output_dir=str(run_dir),
            )
            reporter = MultiReporter(
                ConsoleReporter(steps, description=f"{setup.key} {role} SFT"), JsonlReporter(run_dir)
            )
            try:
                result = train(config, reporter=reporter)
            finally:
                reporter.close()
            (run_dir / "eval.json").write_text(json.dumps(result.eval_after))
            made_by.write_text(json.dumps(recipe))
            done = result.checkpoint
        else:
            log(f"{setup.key}: {role}: reusing {done}")
        out[role] = done
        out[f"{role}_recipe"] = recipe
        out[f"{role}_eval"] = json.loads((run_dir / "eval.json").read_text())
    return out


# ----- runs -------------------------------------------------------------------------------------------------
def run_spec(
    preset: Preset, setup: TaskSetup, models: dict[str, Any], method: str, seed: int, alpha: float | None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        **preset.shared,
        "method": method,
        "student": str(Path(models["student"]).resolve()),
        "teacher": str(Path(models["teacher"]).resolve()),
        "task": setup.task,
        "steps": preset.steps,
        "seed": seed,
        "max_new_tokens": setup.max_new_tokens,
    }
    if method == "rlad":
        spec["alpha"] = 0.5 if alpha is None else alpha
    if method == "sft":
        spec["sft_source"] = "teacher"  # reject-sampled teacher traces (offline distillation)
    return spec


def _collect(run: Run, rows: list[tuple[int, dict[str, float]]]) -> Run:
    curves: dict[str, list[list[float]]] = {}
    for step, values in rows:
        for k, v in values.items():
            if (k == "reward_mean" or k.startswith("eval/")) and v is not None and math.isfinite(v):
                curves.setdefault(k, []).append([step, v])
    run.curves = curves
    last = max((pts[-1][0] for k, pts in curves.items() if k.startswith("eval/")), default=None)
    run.final = {k: pts[-1][1] for k, pts in curves.items() if k.startswith("eval/") and pts[-1][0] == last}
    return run


def run_local(spec: dict[str, Any], run: Run, run_dir: Path) -> Run:
    from rlad_core.config import TrainConfig
    from rlad_core.reporting import ConsoleReporter, JsonlReporter, MemoryReporter, MultiReporter
    from rlad_core.trainer import train

    config = TrainConfig(**spec, name=run.name, output_dir=str(run_dir))
    memory = MemoryReporter()
    reporter = MultiReporter(ConsoleReporter(config.steps, description=run.name), JsonlReporter(run_dir), memory)
    t = time.perf_counter()
    try:
        train(config, reporter=reporter)
    finally:
        reporter.close()
    run.seconds = time.perf_counter() - t
    return _collect(run, memory.metric_rows)


def run_via_api(spec: dict[str, Any], run: Run, url: str, api_key: str | None) -> Run:
    from rlad.client import Client, resolve_api_key

    with Client(url, api_key=api_key or resolve_api_key(), timeout=60) as client:
        t = time.perf_counter()
        job = client.submit({**spec, "name": run.name}, idempotency_key=f"paper-mini-{run.name}-{time.time_ns()}")
        run.job_id = job["id"]
        done = client.wait(job["id"])
        run.seconds = time.perf_counter() - t
        if done["status"] != "succeeded":
            raise RuntimeError(f"{run.name}: job {job['id']} ended {done['status']}: {done.get('error_message')}")
        data = client.metrics(job["id"], max_points=10_000)
    rows: dict[int, dict[str, float]] = {}
    for s in data["series"]:
        for step, v in zip(s["steps"], s["values"], strict=True):
            if v is not None:
                rows.setdefault(step, {})[s["key"]] = v
    return _collect(run, sorted(rows.items()))


# ----- the suite --------------------------------------------------------------------------------------------
def run_suite(
    preset: Preset,
    workdir: Path,
    out: Path,
    *,
    via_api: str | None = None,
    api_key: str | None = None,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "preset": asdict(preset),
        "via_api": via_api,
        "hyperparameters": {
            "shared": preset.shared,
            "tried": "one configuration for every method; nothing tuned per method",
            "method_defaults": {
                "rlad": "alpha 0.5, teacher clamp c=1",
                "kdrl": "k2 estimator, coefficient 0.002",
                "opd": "per-token advantage teacher_logp - old_logp",
                "sft": "reject-sampled teacher traces",
                "clip": "eps_low 0.2, eps_high 0.28",
            },
        },
        "models": {},
        "runs": [],
    }
    for setup in preset.tasks:
        models = build_models(preset, setup, workdir, log)
        results["models"][setup.key] = {
            "teacher": str(models["teacher"]),
            "student": str(models["student"]),
            "teacher_eval": models["teacher_eval"],
            "student_eval": models["student_eval"],
        }
        plan = [(m, s, None) for s in preset.seeds for m in preset.methods]
        if setup.key == preset.ablation_task:
            plan += [("rlad", s, a) for s in preset.ablation_seeds for a in preset.alphas if a != 0.5]
        for method, seed, alpha in plan:
            run = Run(setup.key, method, seed, alpha)
            run_dir = workdir / "runs" / run.name
            cached = run_dir / "run.json"
            spec = run_spec(preset, setup, models, method, seed, alpha)
            made_from = {role: models[f"{role}_recipe"] for role in ("teacher", "student")}
            stored = json.loads(cached.read_text()) if cached.exists() else {}
            if stored.pop("spec", None) == spec and stored.pop("models", None) == made_from:
                log(f"{run.name}: reusing {cached}")
                results["reused"] = results.get("reused", 0) + 1
                run = Run(**stored)
            else:
                log(f"{run.name}: {preset.steps} steps")
                run = run_via_api(spec, run, via_api, api_key) if via_api else run_local(spec, run, run_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
                cached.write_text(json.dumps({**asdict(run), "spec": spec, "models": made_from}))
            results["runs"].append(asdict(run))
    results["seconds"] = time.perf_counter() - started  # this invocation (reused runs cost nothing)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "tables.md").write_text(tables(results))
    plots(results, out)
    return results


# ----- report -----------------------------------------------------------------------------------------------
def _mean_spread(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def _difficulties(results: dict[str, Any], task: str) -> list[int]:
    keys = {k for r in results["runs"] if r["task"] == task for k in r["final"] if k.startswith("eval/accuracy/d")}
    return sorted(int(k.rsplit("/d", 1)[1]) for k in keys)


def _table(
    results: dict[str, Any],
    task: str,
    rows: list[tuple[str, list[dict]]],
    metric: str,
    column: str,
    first: str = "Method",
) -> list[str]:
    diffs = _difficulties(results, task)
    head = [first] + [f"{column}{d}" for d in diffs] + ["Avg"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, runs in rows:
        cells = [
            _mean_spread([r["final"][f"eval/{metric}/d{d}"] for r in runs if f"eval/{metric}/d{d}" in r["final"]])
            for d in diffs
        ]
        cells.append(_mean_spread([r["final"][f"eval/{metric}"] for r in runs if f"eval/{metric}" in r["final"]]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _ablation(results: dict[str, Any], task: str) -> list[tuple[float, list[dict]]]:
    """(alpha, its rlad runs on the ablation seeds) for every alpha; alpha 0.5 is the main table's rlad run."""
    preset = results["preset"]
    return [
        (
            a,
            [
                r
                for r in results["runs"]
                if r["task"] == task
                and r["method"] == "rlad"
                and (r["alpha"] == a or (a == 0.5 and r["alpha"] is None))
                and r["seed"] in preset["ablation_seeds"]
            ],
        )
        for a in sorted(set(preset["alphas"]) | {0.5})
    ]


def tables(results: dict[str, Any]) -> str:
    preset = results["preset"]
    k = preset["shared"]["eval_pass_k"]
    out = [
        f"# Paper in miniature: preset `{preset['name']}`",
        "",
        f"Held-out accuracy (%) by difficulty after {preset['steps']} student updates, mean ± standard deviation "
        f"over seeds {list(preset['seeds'])}; every method from the same SFT-warmed student, the same prompts and "
        f"one shared configuration. The runs took {sum(r['seconds'] for r in results['runs']) / 60:.1f} min "
        f"together (model warm-up not counted).",
        "",
    ]
    for setup in preset["tasks"]:
        task, column = setup["key"], setup["column"]
        runs = [r for r in results["runs"] if r["task"] == task]
        models = results["models"][task]
        by_method = [(m, [r for r in runs if r["method"] == m and r["alpha"] is None]) for m in preset["methods"]]
        # the start: each seed's step-0 evaluation (before any update, on that seed's held-out set); the
        # teacher: its warm-up evaluation (a held-out draw of its own)
        first = preset["methods"][0]
        starts = [
            {"final": {k: pts[0][1] for k, pts in r["curves"].items() if k.startswith("eval/") and pts[0][0] == 0}}
            for r in runs
            if r["method"] == first and r["alpha"] is None
        ]
        start = [("student (start)", starts), ("teacher", [{"final": models["teacher_eval"]}])]
        options = ", ".join(f"{k} {v}" for k, v in setup["task"].items() if k != "name")
        out += [f"## {task}: {setup['task']['name']} ({options})", "", "Greedy accuracy (Table 1 layout):", ""]
        out += _table(results, task, start + by_method, "accuracy", column) + [""]
        out += [f"pass@{k}:", ""] + _table(results, task, start + by_method, f"pass@{k}", column) + [""]
        if task == preset["ablation_task"]:
            rows = [(f"alpha {a:g}" + (" (= GRPO)" if a == 1.0 else ""), rs) for a, rs in _ablation(results, task)]
            out += [f"Alpha ablation (Table 5 layout), seeds {list(preset['ablation_seeds'])}:", ""]
            out += _table(results, task, rows, "accuracy", column, first="alpha") + [""]
        out += reading(results, task, column) + [""]
    return "\n".join(out)


def _verdict(a: list[float], b: list[float]) -> str:
    """Whether mean(a) > mean(b) by more than one standard deviation of each (the only claim the seeds allow)."""
    if len(a) < 2 or len(b) < 2:
        return "one seed, no spread to judge the gap by"
    if statistics.mean(a) - statistics.stdev(a) > statistics.mean(b) + statistics.stdev(b):
        return "beyond one standard deviation"
    return "within the seeds' spread, not separable"


def reading(results: dict[str, Any], task: str, column: str) -> list[str]:
    """Which method is ahead where, and the paper's claim (rlad above grpo and kdrl) per column, each with whether
    the gap is larger than the seeds' spread (no claims beyond)."""
    runs = [r for r in results["runs"] if r["task"] == task and r["alpha"] is None]
    methods = results["preset"]["methods"]
    k = results["preset"]["shared"]["eval_pass_k"]
    lines = ["Reading (computed):", ""]
    claim = []
    for d in _difficulties(results, task) + [None]:
        where = f"{column}{d}" if d is not None else "average"
        for metric in ("accuracy", f"pass@{k}"):
            key = f"eval/{metric}" + (f"/d{d}" if d is not None else "")
            vals = {m: [r["final"][key] for r in runs if r["method"] == m and key in r["final"]] for m in methods}
            vals = {m: v for m, v in vals.items() if v}
            if metric == "accuracy" and len(vals) > 1:
                ranked = sorted(vals, key=lambda m: -statistics.mean(vals[m]))
                best, second = ranked[0], ranked[1]
                mb, m2 = statistics.mean(vals[best]), statistics.mean(vals[second])
                if mb - m2 < 1e-9:
                    tied = [m for m in ranked if abs(statistics.mean(vals[m]) - mb) < 1e-9]
                    lines.append(f"- {where}: {', '.join(tied)} tied at {100 * mb:.1f}%.")
                else:
                    lines.append(
                        f"- {where}: best {best} {100 * mb:.1f}%, next {second} {100 * m2:.1f}%: "
                        f"gap {_verdict(vals[best], vals[second])}."
                    )
            if "rlad" not in vals:
                continue
            label = "greedy" if metric == "accuracy" else metric
            for rival in ("grpo", "kdrl"):
                if rival not in vals:
                    continue
                a, b = statistics.mean(vals["rlad"]), statistics.mean(vals[rival])
                if abs(a - b) < 1e-9:
                    verdict = "equal"
                elif a > b:
                    verdict = f"rlad ahead, {_verdict(vals['rlad'], vals[rival])}"
                else:
                    verdict = f"rlad behind, {_verdict(vals[rival], vals['rlad'])}"
                claim.append(f"- {where} {label}: rlad {100 * a:.1f}% vs {rival} {100 * b:.1f}%: {verdict}.")
    if claim:
        lines += ["", "The paper's claim, rlad above grpo and kdrl:", ""] + claim
    return lines


def plots(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    preset = results["preset"]
    colors = dict(zip(METHODS, ["#0b5cad", "#c2410c", "#15803d", "#7c3aed", "#b91c1c"], strict=True))
    for setup in preset["tasks"]:
        task = setup["key"]
        runs = [r for r in results["runs"] if r["task"] == task and r["alpha"] is None]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
        for ax, key, title in (
            (axes[0], "reward_mean", "training reward (mean over rollouts; sft has none)"),
            (axes[1], "eval/accuracy", "held-out greedy accuracy (band: ± sd over seeds)"),
        ):
            for m in preset["methods"]:
                series = [dict(r["curves"][key]) for r in runs if r["method"] == m and r["curves"].get(key)]
                if not series:
                    continue
                steps = sorted({x for s in series for x in s})
                at = [[s[x] for s in series if x in s] for x in steps]
                mean = [statistics.mean(v) for v in at]
                ax.plot(
                    steps,
                    mean,
                    label=f"{m} (n={len(series)})",
                    color=colors[m],
                    marker="o" if len(steps) < 30 else None,
                )
                if key != "reward_mean" and len(series) > 1:  # the seeds' spread (reward is too noisy to shade)
                    sd = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in at]
                    ax.fill_between(
                        steps,
                        [max(0.0, a - b) for a, b in zip(mean, sd, strict=True)],
                        [min(1.0, a + b) for a, b in zip(mean, sd, strict=True)],
                        color=colors[m],
                        alpha=0.12,
                        lw=0,
                    )
            ax.set_xlabel("student update (step)")
            ax.set_ylabel("reward" if key == "reward_mean" else "accuracy (fraction)")
            ax.set_title(f"{task}: {title}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.savefig(out / f"curves-{task}.png", dpi=110)
        plt.close(fig)
        if task == preset["ablation_task"]:
            fig, ax = plt.subplots(figsize=(5.5, 4), constrained_layout=True)
            alphas, means, sds = [], [], []
            for a, rs in _ablation(results, task):
                vals = [r["final"]["eval/accuracy"] for r in rs if "eval/accuracy" in r["final"]]
                if vals:
                    alphas.append(a)
                    means.append(statistics.mean(vals))
                    sds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
                    ax.scatter([a] * len(vals), vals, color="#15803d", alpha=0.35, s=14, lw=0)
            ax.errorbar(
                alphas,
                means,
                yerr=sds,
                marker="o",
                color="#15803d",
                capsize=3,
                label="mean ± sd over seeds (dots: seeds)",
            )
            ax.legend(fontsize=8)
            ax.set_xlabel("alpha (1.0 = GRPO)")
            ax.set_ylabel("held-out greedy accuracy (fraction)")
            ax.set_title(f"{task}: RLAD alpha ablation")
            ax.grid(alpha=0.3)
            fig.savefig(out / f"ablation-{task}.png", dpi=110)
            plt.close(fig)
