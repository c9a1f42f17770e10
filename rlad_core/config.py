"""The job's configuration: one validated, JSON/YAML-serialisable object.

`TrainConfig` is what `rlad train CONFIG.yaml` reads and what the REST API accepts as a job spec. Every field
has a one-line description with its unit or the paper's symbol (shared/RLAD.md). Validation happens here,
before any model is loaded, and every error names the field, the value and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

# The choices of the method, each defined once; rlad_core.losses imports them (this module stays torch-free).
Method = Literal["rlad", "grpo", "kdrl", "opd", "sft"]
Aggregation = Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]
KLEstimator = Literal["k1", "k2", "k3"]
TeacherClampGrad = Literal["stop", "straight-through"]
StdKind = Literal["population", "unbiased"]
AdvantageScale = Literal["group", "none"]
SamplingStreams = Literal["auto", "batch", "per_prompt"]
Strategy = Literal["ddp", "fsdp"]
TeacherSharding = Literal["replicate", "shard"]
METHODS: tuple[str, ...] = get_args(Method)
TEACHER_METHODS: tuple[str, ...] = ("rlad", "kdrl", "opd")  # sft needs one only with sft_source="teacher"


class _Strict(BaseModel):
    # no inf/nan anywhere: JSON's 1e999 parses as inf and would only fail (or silently train nothing) at run time
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _printable(v: str) -> str:
    bad = next((c for c in v if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ValueError(f"contains the control character {bad!r}; fix: remove it (names and paths are plain text)")
    return v


Text = Annotated[str, AfterValidator(_printable)]
MAX_STEPS = 10_000_000  # (ours) a bound that every store's step columns hold


class LoraSpec(_Strict):
    """(ours) A LoRA student (peft): only the adapters train; the teacher is untouched. The checkpoint holds the
    adapter (and, with merge_lora_on_save, the merged weights in merged/)."""

    r: int = Field(default=16, ge=1, le=4096, description="adapter rank")
    alpha: float = Field(default=32.0, gt=0, le=1e6, description="scale numerator: the delta is (alpha / r) B A")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout on the adapter input (train_dropout only)")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        max_length=64,
        description="the student's linear layers that get adapters (names of modules)",
    )


class Resources(_Strict):
    """(ours) Where a job runs: `nodes` machines x `gpus_per_node` processes, one per GPU on CUDA (gloo
    processes on CPU). One process by default; more run the trainer under torchrun (data parallel)."""

    nodes: int = Field(default=1, ge=1, le=64, description="machines the job runs on (gang-scheduled workers)")
    gpus_per_node: int = Field(
        default=1, ge=1, le=64, description="trainer processes per machine: one per GPU (gloo processes on CPU)"
    )

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


# ---------------------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------------------


class KnightsKnavesTaskConfig(_Strict):
    """Knights-and-Knaves logic puzzles; difficulty = number of people (the paper's PPL2..PPL8)."""

    name: Literal["knights_knaves"] = "knights_knaves"
    n_people: list[int] = Field(default=[2, 3, 4, 5], description="puzzle sizes to generate (2..8)")
    reasoning: bool = Field(
        default=True,
        description="reference solutions carry a check line per speaker before the "
        "answer line (false: the answer line only)",
    )
    prompt_style: Literal["english", "compact"] = Field(
        default="english",
        description="english: the Logic-RL wording; compact: names A, B, ... and statements in "
        "symbols (A: B=knave & A=knight), about a fifth of the characters (ours)",
    )

    @field_validator("n_people")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if not v or any(n < 2 or n > 8 for n in v):
            raise ValueError(f"{v} is not a non-empty list of sizes in 2..8; fix: e.g. [2, 3, 4, 5]")
        return sorted(set(v))


class ArithmeticTaskConfig(_Strict):
    """Step-by-step multi-digit addition and multiplication; difficulty = level."""

    name: Literal["arithmetic"] = "arithmetic"
    levels: list[int] = Field(
        default=[1, 2], description="difficulty levels to generate (see rlad_core.tasks.arithmetic)"
    )

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        if not v or any(n < 1 or n > 5 for n in v):
            raise ValueError(f"{v} is not a non-empty list of levels in 1..5; fix: e.g. [1, 2]")
        return sorted(set(v))


class JsonlTaskConfig(_Strict):
    """A user dataset: JSONL lines {"prompt", "answer"[, "difficulty"]}, answers compared with math-verify."""

    name: Literal["jsonl"] = "jsonl"
    path: Text = Field(
        max_length=1000, description="path of the JSONL file (or an uploaded dataset resolved by the service)"
    )
    eval_fraction: float = Field(default=0.1, gt=0.0, lt=1.0, description="share of lines held out for evaluation")


TaskConfig = Annotated[KnightsKnavesTaskConfig | ArithmeticTaskConfig | JsonlTaskConfig, Field(discriminator="name")]


# ---------------------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------------------


class TrainConfig(_Strict):
    """One distillation/RL job. Defaults follow the paper where it gives a value (RLAD.md), else are marked (ours)."""

    # --- what to train ----------------------------------------------------------------------------------
    name: Text | None = Field(default=None, max_length=200, description="human-readable job name")
    method: Method = Field(default="rlad", description="rlad (TRRD) | grpo | kdrl | opd | sft (offline distillation)")
    student: Text = Field(
        min_length=1, max_length=1000, description="student model: Hugging Face id or local directory"
    )
    teacher: Text | None = Field(
        default=None,
        max_length=1000,
        description="teacher model (same tokenizer as the student); needed by rlad, kdrl, opd and sft with "
        "sft_source='teacher'",
    )
    reference: Text | None = Field(
        default=None,
        max_length=1000,
        description="frozen reference for the beta-KL penalty; default: the student's initial weights",
    )
    task: TaskConfig = Field(default_factory=ArithmeticTaskConfig, description="the verifiable-reward task")
    use_chat_template: bool = Field(
        default=True, description="wrap prompts in the tokenizer's chat template when it has one"
    )

    # --- rollouts -----------------------------------------------------------------------------------------
    steps: int = Field(default=100, ge=1, le=MAX_STEPS, description="training steps (one rollout batch each)")
    batch_size: int = Field(default=64, ge=1, le=1 << 20, description="responses per step, B = P x G")
    group_size: int = Field(default=8, le=1 << 16, description="responses per prompt, G (paper: 8)")
    max_new_tokens: int = Field(default=64, ge=1, le=1 << 20, description="longest completion, in tokens")
    temperature: float = Field(
        default=1.0, gt=0.0, description="sampling temperature (also applied to every scoring pass)"
    )
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    engine: Literal["auto", "fast", "hf", "vllm"] = Field(
        default="auto", description="rollout engine; auto = fast when the architecture is supported, else hf"
    )
    sampling_streams: SamplingStreams = Field(
        default="auto",
        description=(
            "(ours) the rollouts' random numbers: batch = one stream for the whole batch (as HF generate draws); "
            "per_prompt = one stream per sampled row, seeded by (seed, step, row), so the rollouts are the same "
            "however the prompts are split over processes (needs engine fast or vllm); auto = per_prompt when "
            "the run has more than one process, else batch"
        ),
    )
    train_pool_size: int = Field(
        default=4096,
        ge=1,
        le=1 << 27,
        description="(ours) training prompts generated or read up front; steps cycle through it in seeded epochs",
    )

    # --- the update -----------------------------------------------------------------------------------------
    inner_epochs: int = Field(default=1, ge=1, le=1000, description="mu: passes over each rollout batch")
    mini_batch_size: int | None = Field(
        default=None, ge=1, description="responses per optimizer step (default: batch_size)"
    )
    micro_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="responses per forward/backward, gradients accumulated (default: mini_batch_size)",
    )
    train_dropout: bool = Field(
        default=False,
        description="(ours) dropout on (train mode) during the update; false: the student is in eval mode "
        "throughout, so the policy updated is the one that sampled and was scored",
    )
    lr: float = Field(default=1e-6, gt=0.0, description="AdamW learning rate (paper: 1e-6)")
    weight_decay: float = Field(default=0.0, ge=0.0, description="AdamW weight decay")
    adam_betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        default=(0.9, 0.999), description="AdamW betas, each in [0, 1)"
    )
    grad_clip: float | None = Field(default=1.0, gt=0.0, description="max global gradient norm; null disables clipping")
    warmup_steps: int = Field(default=0, ge=0, le=MAX_STEPS, description="linear LR warm-up, in training steps")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        default="constant", description="LR after warm-up, per training step"
    )
    min_lr_ratio: float = Field(
        default=0.0, ge=0.0, le=1.0, description="final LR / lr for linear and cosine schedules"
    )

    # --- the loss (RLAD.md) -------------------------------------------------------------------------------------
    alpha: float = Field(
        default=0.5, description="TRRD mixing weight of the old-student ratio (paper: 0.5; 1.0 = GRPO)"
    )
    eps_low: float = Field(default=0.2, description="lower clip range, epsilon_low (paper: 0.20)")
    eps_high: float = Field(default=0.28, description="upper clip range, epsilon_high (paper: 0.28)")
    teacher_clamp: float | None = Field(
        default=1.0, gt=0.0, description="c, clamp of log(pi_S/pi_T) inside the TRRD ratio (paper: 1); null disables it"
    )
    teacher_clamp_grad: TeacherClampGrad = Field(
        default="stop",
        description="(ours) gradient of the clamped teacher term: stop (plain clamp, none outside [-c, c]) | "
        "straight-through (clamped value, gradient as if unclamped)",
    )
    aggregation: Aggregation = Field(
        default="seq-mean-token-mean",
        description="how per-token losses are reduced (paper: seq-mean-token-mean); seq-mean-token-sum-norm "
        "divides by B x max_new_tokens",
    )
    beta: float = Field(default=0.0, ge=0.0, description="weight of the KL penalty to the reference (paper: not used)")
    ref_kl_estimator: KLEstimator = Field(
        default="k3", description="(ours) estimator of the reference KL penalty: k1 | k2 | k3 (see RLAD.md, kdrl)"
    )
    kdrl_coef: float = Field(default=0.002, ge=0.0, description="KDRL: gamma, weight of the teacher KL penalty")
    kdrl_coef_final: float | None = Field(
        default=None, ge=0.0, description="KDRL: if set, gamma is annealed linearly to this value over the run"
    )
    kdrl_estimator: KLEstimator = Field(default="k2", description="KDRL: KL estimator")
    adv_eps: float = Field(default=1e-6, ge=0.0, description="(ours) epsilon added to the group std")
    adv_std: StdKind = Field(default="population", description="group std kind (paper: population)")
    adv_scale: AdvantageScale = Field(
        default="group", description="divide by the group std (group) or only centre (none, Dr.GRPO)"
    )

    # --- offline distillation (method = sft) ------------------------------------------------------------------
    sft_source: Literal["teacher", "reference"] = Field(
        default="teacher", description="traces from teacher samples, or the task's reference solutions"
    )
    sft_filter: Literal["correct", "none"] = Field(
        default="correct", description="keep only traces the verifier accepts (reject sampling), or all"
    )

    # --- evaluation, checkpoints, run ---------------------------------------------------------------------
    eval_every: int = Field(
        default=25,
        ge=0,
        le=MAX_STEPS,
        description="evaluate every k steps (and before the first and after the last); 0 disables",
    )
    eval_size: int = Field(default=64, ge=1, le=1 << 20, description="held-out prompts per evaluation")
    eval_pass_k: int = Field(
        default=4, ge=1, le=1024, description="samples per prompt for pass@k (at the training temperature)"
    )
    checkpoint_every: int = Field(
        default=50,
        ge=0,
        le=MAX_STEPS,
        description="save a checkpoint every k steps (and at the end); 0 = only at the end",
    )
    keep_checkpoints: int | None = Field(
        default=None, ge=1, le=MAX_STEPS, description="keep only the newest k checkpoints; null keeps all"
    )
    log_samples: int = Field(
        default=4, ge=0, le=1024, description="sample rollouts (prompt, completion, reward) reported per step"
    )
    max_consecutive_nonfinite: int = Field(
        default=3, ge=1, le=MAX_STEPS, description="fail the run after this many consecutive skipped (non-finite) steps"
    )
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="seeds data order, sampling and initialisation")
    output_dir: Text | None = Field(
        default=None, max_length=1000, description="where metrics and checkpoints go (default: runs/<name or method>)"
    )
    lora: LoraSpec | None = Field(default=None, description="(ours) train LoRA adapters instead of every weight")
    merge_lora_on_save: bool = Field(
        default=False,
        description="(ours) with lora: each checkpoint also holds the merged weights (merged/, a plain model)",
    )
    resources: Resources = Field(
        default_factory=Resources,
        description=(
            "(ours) nodes x gpus_per_node trainer processes (torchrun); `rlad train --nproc` overrides "
            "gpus_per_node on one machine"
        ),
    )
    strategy: Strategy = Field(
        default="ddp",
        description=(
            "(ours) data parallelism over processes (rlad train --nproc, a job's resources): ddp = a full "
            "replica of the student per process; fsdp = FSDP2, parameters, gradients and optimizer state "
            "sharded per decoder layer (whole weights only while sampling, evaluating and saving)"
        ),
    )
    teacher_sharding: TeacherSharding = Field(
        default="replicate",
        description=(
            "(ours) with strategy fsdp: replicate = a full teacher (and reference) per process, in inference "
            "mode, scored without communication; shard = sharded like the student, gathered layer by layer "
            "while scoring (less memory, more communication)"
        ),
    )
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = Field(
        default="float32",
        description=(
            "model weights and compute dtype (float64: for exactness checks). bfloat16/float16: the student "
            "samples, scores and trains in it while AdamW updates fp32 master weights with fp32 moments (with "
            "strategy fsdp the fp32 shards are the masters, cast for compute, gradients reduced in fp32)"
        ),
    )
    device: str = Field(default="auto", max_length=16, description="auto | cpu | cuda | cuda:N | mps")
    teacher_dtype: Literal["float32", "bfloat16", "float16", "float64"] | None = Field(
        default=None,
        description="the teacher's (and reference's) weights dtype; default: dtype (scoring runs its log-softmax "
        "in fp32 either way)",
    )
    teacher_device: str | None = Field(
        default=None,
        max_length=16,
        description=(
            "where the teacher (and reference) run, in inference mode: default the student's device; cpu "
            "offloads them (no accelerator memory, slower scoring); cuda:N another GPU of a one-process run"
        ),
    )
    threads: int | None = Field(default=None, ge=1, le=4096, description="torch CPU threads (default: torch's choice)")
    memory_check: bool = Field(
        default=True,
        description=(
            "(ours) refuse to start when the run's memory estimate (weights, gradients, AdamW, the rollouts' KV "
            "cache, the update's activations and logits; printed in the started event) exceeds the device's "
            "free memory; false: try anyway"
        ),
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description=(
            "recompute the student's decoder layers in the backward instead of keeping their activations "
            "(Hugging Face gradient checkpointing, non-reentrant): less memory in the update, about one more "
            "forward of time; sampling and scoring are unaffected"
        ),
    )
    logprob_vocab_chunk: int | Literal["auto"] | None = Field(
        default="auto",
        description=(
            "(ours) compute sampled-token log-probs from the last hidden states, applying the output head this "
            "many vocabulary entries at a time (fp32 log-sum-exp over the chunks, recomputed in the backward), "
            "so (B, T, V) fp32 logits never exist; null = one (B, T, V) tensor; auto = 32768 when the vocabulary "
            "exceeds 65536 entries (Qwen: 151936), else null. Not with strategy fsdp (auto resolves to null)"
        ),
    )

    # --- checks --------------------------------------------------------------------------------------------------
    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        if v < 2:
            raise ValueError(
                f"group_size is {v}; GRPO needs at least 2 responses per prompt to compare; "
                "fix: set group_size >= 2 (paper: 8)"
            )
        return v

    @field_validator("device", "teacher_device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]{1,3})?", v):
            raise ValueError(f"{v!r} is not a device; fix: use auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps")
        return v

    @field_validator("resources")
    @classmethod
    def _resources(cls, v: Resources, info: ValidationInfo) -> Resources:
        """A run on several processes splits whole prompts over them and samples per prompt."""
        n, d = v.world_size, info.data
        if n == 1 or not {"batch_size", "group_size", "method", "sft_source", "sampling_streams"} <= d.keys():
            return v  # one process, or an earlier field already failed (its own error says so)
        prompts = d["batch_size"] if d["method"] == "sft" and d["sft_source"] == "reference" else None
        prompts = prompts or d["batch_size"] // d["group_size"]
        if prompts % n:
            raise ValueError(
                f"{prompts} prompts a step cannot be split over {n} processes ({v.nodes} node(s) x "
                f"{v.gpus_per_node}; whole prompts per process); fix: a batch_size of group_size x a multiple "
                f"of {n}, or fewer processes"
            )
        if d["sampling_streams"] == "batch":
            raise ValueError(
                f"a run on {n} processes samples per prompt (batch streams depend on how the batch is split); "
                "fix: set sampling_streams to per_prompt or auto"
            )
        return v

    @field_validator("logprob_vocab_chunk", mode="before")
    @classmethod
    def _vocab_chunk_form(cls, v: Any) -> Any:
        if v is None or v == "auto" or (isinstance(v, int) and not isinstance(v, bool)):
            return v
        raise ValueError(f"{v!r} is not a chunk size; fix: a number of vocabulary entries (e.g. 32768), auto or null")

    @field_validator("logprob_vocab_chunk")
    @classmethod
    def _vocab_chunk(cls, v: int | str | None, info: ValidationInfo) -> int | str | None:
        if isinstance(v, int) and not 1 <= v <= 1 << 24:
            raise ValueError(f"{v} is not a chunk size; fix: a number of vocabulary entries, e.g. 32768, or auto")
        if isinstance(v, int) and info.data.get("strategy") == "fsdp":
            raise ValueError(
                "the chunked output head reads the whole head weight, which strategy fsdp keeps sharded; "
                "fix: set logprob_vocab_chunk to auto or null with fsdp"
            )
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(
                f"alpha is {v}; it must lie in [0, 1] (1.0 = GRPO, paper: 0.5); fix: choose a value in [0, 1]"
            )
        return v

    @field_validator("eps_low", "eps_high")
    @classmethod
    def _eps(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"clip range is {v}; it must be >= 0; fix: e.g. eps_low 0.2, eps_high 0.28")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.batch_size % self.group_size:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by group_size {self.group_size}; "
                f"fix: use a multiple of {self.group_size}, "
                f"e.g. {self.group_size * max(1, self.batch_size // self.group_size)}"
            )
        if self.eps_low >= 1.0:
            raise ValueError(
                f"eps_low is {self.eps_low}; 1 - eps_low must stay positive; fix: use a value below 1 (paper: 0.2)"
            )
        mini = self.resolved_mini_batch_size
        if self.batch_size % mini:
            raise ValueError(
                f"mini_batch_size {mini} does not divide batch_size {self.batch_size}; "
                f"fix: pick a divisor of {self.batch_size}"
            )
        if mini % self.resolved_micro_batch_size:
            raise ValueError(
                f"micro_batch_size {self.resolved_micro_batch_size} does not divide mini_batch_size {mini}; "
                f"fix: pick a divisor of {mini}"
            )
        if self.needs_teacher and not self.teacher:
            fix = "set teacher to a model with the student's tokenizer"
            if self.method == "sft":
                fix += ", or use sft_source: reference"
            raise ValueError(f"method {self.method!r} needs a teacher but teacher is not set; fix: {fix}")
        if self.lora is not None and self.strategy == "fsdp":
            raise ValueError(
                "lora with strategy fsdp is not supported yet; fix: use strategy ddp (the adapters are small)"
            )
        if self.lora is not None and self.engine == "vllm":
            raise ValueError("lora with engine vllm is not supported yet; fix: use engine fast or hf")
        if self.teacher_device not in (None, "auto") and self.teacher_sharding == "shard":
            raise ValueError(
                "teacher_device and teacher_sharding shard both place the teacher; fix: drop teacher_device, or "
                "use teacher_sharding replicate"
            )
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} exceeds steps {self.steps}; fix: lower warmup_steps")
        return self

    # --- derived values -------------------------------------------------------------------------------------
    @property
    def num_prompts(self) -> int:
        """P, prompts per step."""
        return self.batch_size // self.group_size

    @property
    def prompts_per_step(self) -> int:
        """Prompts a step reads: P, or B for sft on reference solutions (one trace per prompt)."""
        if self.method == "sft" and self.sft_source == "reference":
            return self.batch_size
        return self.num_prompts

    @property
    def resolved_mini_batch_size(self) -> int:
        return self.mini_batch_size or self.batch_size

    @property
    def resolved_micro_batch_size(self) -> int:
        return self.micro_batch_size or self.resolved_mini_batch_size

    @property
    def needs_teacher(self) -> bool:
        return self.method in TEACHER_METHODS or (self.method == "sft" and self.sft_source == "teacher")

    @property
    def needs_old_logp(self) -> bool:
        """Whether the policy changes between sampling and some update, so pi_old must be scored separately.

        With one optimizer step per rollout batch, pi_S = pi_old at every micro-batch and `logp.detach()`
        is pi_old exactly, which saves a forward pass over the batch.
        """
        return self.inner_epochs > 1 or self.resolved_mini_batch_size < self.batch_size

    @property
    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / (self.name or self.method))

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ---------------------------------------------------------------------------------------------------------
# Loading with readable errors
# ---------------------------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """An invalid job config; `errors` lists (field, message) pairs, already worded with the fix."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        lines = "\n".join(f"  {field}: {msg}" for field, msg in errors)
        super().__init__(f"invalid config ({len(errors)} error{'s' * (len(errors) != 1)}):\n{lines}")


def describe_validation_error(exc: ValidationError) -> list[tuple[str, str]]:
    """Pydantic errors as (dotted field path, message) pairs, without pydantic's boilerplate."""
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(config)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field; fix: remove it or check its spelling against the documented fields"
        elif err["type"] == "missing":
            msg = "required field is missing; fix: add it"
        elif err["type"] == "union_tag_invalid":
            msg = f"unknown task {err['input'].get('name')!r}" if isinstance(err.get("input"), dict) else msg
            msg += "; fix: use one of 'knights_knaves', 'arithmetic', 'jsonl'"
        out.append((loc, msg))
    return out


def parse_config(data: dict[str, Any]) -> TrainConfig:
    """Validate a plain dict as a `TrainConfig`, raising `ConfigError` with field-by-field messages."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML (or JSON) config file, apply dotted `overrides` ({"task.levels": [1]}), validate."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError([("(file)", f"{p} does not exist; fix: pass the path of a YAML config")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([("(file)", f"{p} is not valid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise ConfigError([("(file)", f"{p} must hold a mapping of config fields, got {type(data).__name__}")])
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return parse_config(data)
