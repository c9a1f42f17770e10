"""User datasets: a JSONL file of prompts and answers, graded with math-verify.

File format: one JSON object per line, `{"prompt": str, "answer": str}` plus an optional integer
`"difficulty"` (>= 0, default 0). Blank lines are skipped; other fields are kept in `Example.meta["extra"]`.
Every problem is reported as a `DatasetError` (a `ValueError`) naming the file, the 1-based line and the fix:
invalid JSON or UTF-8, a line that is not an object, a missing or non-string prompt/answer, an empty prompt or
answer, an answer spanning several lines, a difficulty that is not a non-negative integer, or a file without
examples. `validate_jsonl_lines` applies the same checks to lines of an HTTP upload.

Splits: the distinct prompts are shuffled with `random.Random(f"jsonl:{seed}")`; the last
`max(1, round(eval_fraction * prompts))` of them (none when there is only one) form the eval split and the rest
the train split, so no prompt -- not even one repeated on several lines -- is in both. `examples(n, seed, split)`
returns the split's lines in a seeded order; when n exceeds the split, it cycles through the split again, each
pass in a fresh seeded order. The eval split of a one-prompt file is empty, and asking it for examples raises
a `DatasetError`.

Answer extraction from a completion, first match wins:
    1. the content of the last `\\boxed{...}` (nested braces allowed);
    2. the text after the last `ANSWER:` (any case) up to the end of its line;
    3. the number after the last `#` marker (`#82`, `#### 72`);
    4. the last number in the text (`-3`, `2.5`, `1/2`, `1,000`).
A trailing period and surrounding `$` are dropped. *formatted* iff an answer was extracted.

Comparison: the gold answer decides the kind. A gold answer with a plain word (two or more letters that are not
a LaTeX command, other than `sqrt`/`inf`/`infinity`) is a string answer, compared case- and
whitespace-insensitively (`\\text{...}` unwrapped). Otherwise both sides are parsed as LaTeX math with
`math_verify.parse` and compared with `math_verify.verify` (so `1/2`, `0.5` and `\\frac{1}{2}` agree); when
either side cannot be parsed the string comparison decides. Identical answers always match.

Timeouts: math-verify's own timeout uses SIGALRM, which only works in the main thread. In the main thread its
`parsing_timeout` / `timeout_seconds` are set to `timeout_s`; in any other thread they are disabled and the
comparison runs in a daemon helper thread that the caller waits on for at most `timeout_s` seconds, after which
the string comparison decides. Scoring therefore works from any thread and never blocks longer than about
`timeout_s`.

Reference completion (`solution`): `ANSWER: <answer>`. Reward: `CORRECT_REWARD` = 1.0 when correct,
`INCORRECT_REWARD` = 0.0 otherwise.
"""

from __future__ import annotations

import functools
import json
import random
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rlad_core.tasks.base import Example, Score, Split, check_request

CORRECT_REWARD: float = 1.0
INCORRECT_REWARD: float = 0.0
DEFAULT_EVAL_FRACTION: float = 0.1
DEFAULT_TIMEOUT_S: int = 5

#: Answers longer than this are not handed to the math parser (sympy can take very long on huge inputs).
MAX_MATH_CHARS = 500

_SCHEMA_HINT = 'each line must be a JSON object with string fields "prompt" and "answer"'
_ANSWER_MARKER = re.compile(r"answer[ \t]*:[ \t]*([^\n]*)", re.IGNORECASE)
_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?"
_HASH_MARKER = re.compile(rf"#+[ \t]*({_NUMBER})")
_LAST_NUMBER = re.compile(_NUMBER)
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{2,}")
_MATH_WORDS = frozenset({"sqrt", "inf", "infinity"})
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm)\{([^{}]*)\}")

T = TypeVar("T")


class DatasetError(ValueError):
    """A dataset problem; `path` names the file (or upload) and `line` the 1-based line (None: whole file)."""

    def __init__(self, message: str, *, path: str, line: int | None = None) -> None:
        where = f"{path} line {line}" if line is not None else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


# --- loading ------------------------------------------------------------------------------------------------


def validate_jsonl_lines(lines: Iterable[str | bytes], *, source: str = "<upload>") -> list[Example]:
    """Parse and validate JSONL lines (e.g. of an HTTP upload) into examples; raise `DatasetError` on the first bad
    line.

    `source` is the name errors report. Each example's meta records its `line` and any `extra` fields.
    """
    examples: list[Example] = []
    for number, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(
                    f"not valid UTF-8 ({e.reason} at byte {e.start}); save the file as UTF-8", path=source, line=number
                ) from None
        if number == 1:
            raw = raw.removeprefix("\ufeff")  # a byte-order mark some editors write
        if not raw.strip():
            continue
        examples.append(_example_from_line(raw, source, number))
    if not examples:
        raise DatasetError(f"no examples; {_SCHEMA_HINT}, one per line", path=source)
    return examples


def _example_from_line(text: str, source: str, number: int) -> Example:
    def fail(problem: str) -> DatasetError:
        return DatasetError(f"{problem} ({_SCHEMA_HINT})", path=source, line=number)

    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise fail(f"invalid JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(record, dict):
        raise fail(f"expected a JSON object, got {_json_type(record)}")
    for key in ("prompt", "answer"):
        if key not in record:
            raise fail(f'missing field "{key}"')
        if not isinstance(record[key], str):
            raise fail(f'field "{key}" must be a string, got {_json_type(record[key])}')
    prompt, answer = record["prompt"], record["answer"]
    if not prompt.strip():
        raise fail('field "prompt" is empty')
    if not answer.strip():
        raise fail('field "answer" is empty')
    if "\n" in answer.strip() or "\r" in answer.strip():
        raise fail('field "answer" spans several lines; put the final answer alone on one line')
    difficulty = record.get("difficulty", 0)
    if isinstance(difficulty, bool) or not isinstance(difficulty, int) or difficulty < 0:
        raise DatasetError(
            f'field "difficulty" must be a non-negative integer, got {json.dumps(difficulty)}; omit it for 0',
            path=source,
            line=number,
        )
    extra = {k: v for k, v in record.items() if k not in ("prompt", "answer", "difficulty")}
    meta: dict[str, Any] = {"line": number, **({"extra": extra} if extra else {})}
    return Example(prompt=prompt, answer=answer.strip(), difficulty=difficulty, meta=meta)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def load_jsonl(path: str | Path) -> list[Example]:
    """Read and validate a JSONL dataset file (see the module docstring for the format)."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            return validate_jsonl_lines(f, source=source)
    except OSError as e:
        raise DatasetError(f"cannot read the file ({e.strerror}); check the path", path=source) from None


# --- answer extraction and comparison ------------------------------------------------------------------------


def extract_answer(completion: str) -> str | None:
    """The completion's final answer by the documented order (boxed, ANSWER:, # marker, last number), or None."""
    boxed = _last_boxed(completion)
    if boxed is not None and boxed.strip():
        return _clean(boxed)
    for match in reversed(list(_ANSWER_MARKER.finditer(completion))):
        if _clean(match[1]):
            return _clean(match[1])
    for pattern in (_HASH_MARKER, _LAST_NUMBER):
        matches = pattern.findall(completion)
        if matches:
            return _clean(matches[-1])
    return None


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
    return None  # unbalanced: the completion was cut off inside the box


def _clean(answer: str) -> str:
    answer = answer.strip()
    if answer.endswith(".") and not answer.endswith(".."):
        answer = answer[:-1].rstrip()
    if len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    return answer


def _loose(answer: str) -> str:
    """Case- and whitespace-insensitive form for string answers."""
    answer = _TEXT_WRAPPER.sub(r"\1", _clean(answer))
    return " ".join(answer.split()).casefold()


def is_string_answer(answer: str) -> bool:
    """Whether an answer contains plain words and is therefore compared as a string rather than as math."""
    words = _WORD.findall(_LATEX_COMMAND.sub(" ", answer))
    return any(w.lower() not in _MATH_WORDS for w in words) or bool(_TEXT_WRAPPER.search(answer))


def answers_match(predicted: str, gold: str, *, timeout_s: int = DEFAULT_TIMEOUT_S) -> bool:
    """Whether `predicted` states the same answer as `gold` (see the module docstring); safe from any thread."""
    if " ".join(_clean(predicted).split()) == " ".join(_clean(gold).split()):
        return True
    if is_string_answer(gold):
        return _loose(predicted) == _loose(gold)
    if threading.current_thread() is threading.main_thread():
        return _math_match(predicted, gold, timeout_s)
    verdict = _run_with_deadline(lambda: _math_match(predicted, gold, None), timeout_s)
    return verdict if verdict is not None else _loose(predicted) == _loose(gold)


def _run_with_deadline(fn: Callable[[], T], timeout_s: float) -> T | None:
    """fn() in a daemon thread, or None if it has not finished after `timeout_s` (the thread is abandoned)."""
    result: list[T] = []
    worker = threading.Thread(target=lambda: result.append(fn()), name="rlad-math-verify", daemon=True)
    worker.start()
    worker.join(timeout_s)
    return result[0] if result else None


def _math_match(predicted: str, gold: str, timeout_s: int | None) -> bool:
    from math_verify import verify

    gold_parsed, predicted_parsed = _parse_math(gold, timeout_s), _parse_math(predicted, timeout_s)
    if not gold_parsed or not predicted_parsed:
        return _loose(predicted) == _loose(gold)
    try:
        return bool(verify(list(gold_parsed), list(predicted_parsed), timeout_seconds=timeout_s))
    except Exception:  # math-verify reports most failures as False; anything else is not a match either
        return False


@functools.lru_cache(maxsize=8192)  # gold answers are parsed once per group of completions
def _parse_math(answer: str, timeout_s: int | None) -> tuple[Any, ...]:
    from math_verify import parse

    answer = _clean(answer)
    if not answer or len(answer) > MAX_MATH_CHARS:
        return ()
    try:
        return tuple(parse(f"${answer}$", parsing_timeout=timeout_s))
    except Exception:
        return ()


# --- the task -------------------------------------------------------------------------------------------------


class JsonlTask:
    """A user's JSONL dataset as a task; see the module docstring for the format, splits and grading.

    Options:
        path: the JSONL file; it is read and validated when the task is created.
        eval_fraction: share of distinct prompts held out for the eval split (default 0.1; at least one
            prompt when the file has two or more).
        correct_reward: reward of a correct answer (default 1.0).
        incorrect_reward: reward of anything else (default 0.0).
        timeout_s: seconds one answer comparison may take before it counts as a string comparison (default 5).
        examples: already validated examples (e.g. from `validate_jsonl_lines` on an upload) to use instead of
            reading `path`; `path` then only names the source in messages.
    """

    name = "jsonl"

    def __init__(
        self,
        path: str | Path,
        *,
        eval_fraction: float = DEFAULT_EVAL_FRACTION,
        correct_reward: float = CORRECT_REWARD,
        incorrect_reward: float = INCORRECT_REWARD,
        timeout_s: int = DEFAULT_TIMEOUT_S,
        examples: Sequence[Example] | None = None,
    ) -> None:
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"eval_fraction={eval_fraction} must be strictly between 0 and 1, e.g. 0.1")
        if not isinstance(timeout_s, int) or timeout_s < 1:
            raise ValueError(f"timeout_s={timeout_s} must be a whole number of seconds >= 1 (SIGALRM's resolution)")
        self.path = str(path)
        self.eval_fraction = eval_fraction
        self.correct_reward, self.incorrect_reward = correct_reward, incorrect_reward
        self.timeout_s = timeout_s
        if examples is not None and not examples:
            raise DatasetError(f"no examples; {_SCHEMA_HINT}, one per line", path=self.path)
        self._all = list(examples) if examples is not None else load_jsonl(path)

    @property
    def difficulties(self) -> tuple[int, ...]:
        return tuple(sorted({e.difficulty for e in self._all}))

    def __len__(self) -> int:
        return len(self._all)

    def split(self, seed: int, split: Split) -> list[Example]:
        """All lines of one split, in file order (see the module docstring for how prompts are assigned)."""
        check_request(0, split)
        prompts = list(dict.fromkeys(e.prompt for e in self._all))
        random.Random(f"jsonl:{seed}").shuffle(prompts)
        n_eval = max(1, round(self.eval_fraction * len(prompts))) if len(prompts) >= 2 else 0
        eval_prompts = set(prompts[len(prompts) - n_eval :])
        return [e for e in self._all if (e.prompt in eval_prompts) == (split == "eval")]

    def examples(self, n: int, *, seed: int, split: Split = "train") -> list[Example]:
        """`n` lines of the split in seeded order, cycling with a fresh seeded order per pass when n is larger."""
        check_request(n, split)
        pool = self.split(seed, split)
        if n and not pool:
            raise DatasetError(
                f"the {split} split is empty because the dataset has a single distinct prompt; "
                "add at least one more line",
                path=self.path,
            )
        out: list[Example] = []
        for cycle in range(-(-n // len(pool)) if pool else 0):
            order = list(pool)
            random.Random(f"jsonl:{seed}:{split}:{cycle}").shuffle(order)
            out += order[: n - len(out)]
        return out

    def score(self, completion: str, example: Example) -> Score:
        predicted = extract_answer(completion)
        if predicted is None:
            return Score(reward=self.incorrect_reward, correct=False, formatted=False)
        correct = answers_match(predicted, example.answer, timeout_s=self.timeout_s)
        return Score(reward=self.correct_reward if correct else self.incorrect_reward, correct=correct, formatted=True)

    def solution(self, example: Example) -> str:
        return f"ANSWER: {example.answer}"
