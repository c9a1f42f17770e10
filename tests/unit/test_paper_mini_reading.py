"""The computed reading of `rlad bench paper-mini`: which gaps it calls separable, on hand-made results."""

from __future__ import annotations

from rlad.paper_mini import reading


def _results(finals: dict[str, list[tuple[float, float]]]) -> dict:
    """finals: method -> per seed (accuracy on difficulty 2, pass@4 on difficulty 2)."""
    runs = [
        {
            "task": "kk",
            "method": m,
            "seed": seed,
            "alpha": None,
            "final": {"eval/accuracy/d2": acc, "eval/accuracy": acc, "eval/pass@4/d2": p, "eval/pass@4": p},
        }
        for m, per_seed in finals.items()
        for seed, (acc, p) in enumerate(per_seed)
    ]
    return {"preset": {"methods": list(finals), "shared": {"eval_pass_k": 4}}, "runs": runs}


def test_a_gap_larger_than_both_spreads_is_called_beyond_one_standard_deviation() -> None:
    lines = reading(
        _results(
            {
                "grpo": [(0.10, 0.3), (0.12, 0.3), (0.11, 0.3)],
                "kdrl": [(0.20, 0.3), (0.40, 0.3), (0.30, 0.3)],
                "rlad": [(0.50, 0.3), (0.52, 0.3), (0.51, 0.3)],
            }
        ),
        "kk",
        "PPL",
    )
    assert "- PPL2: best rlad 51.0%, next kdrl 30.0%: gap beyond one standard deviation." in lines
    assert "- PPL2 greedy: rlad 51.0% vs grpo 11.0%: rlad ahead, beyond one standard deviation." in lines
    assert "- PPL2 pass@4: rlad 30.0% vs kdrl 30.0%: equal." in lines


def test_overlapping_seeds_are_not_separable_and_a_deficit_is_reported_as_such() -> None:
    lines = reading(
        _results(
            {"grpo": [(0.0, 0.5), (0.6, 0.1)], "kdrl": [(0.2, 0.2), (0.3, 0.2)], "rlad": [(0.05, 0.1), (0.06, 0.1)]}
        ),
        "kk",
        "PPL",
    )
    assert "- PPL2: best grpo 30.0%, next kdrl 25.0%: gap within the seeds' spread, not separable." in lines
    assert "- PPL2 greedy: rlad 5.5% vs kdrl 25.0%: rlad behind, beyond one standard deviation." in lines
    assert "- PPL2 pass@4: rlad 10.0% vs grpo 30.0%: rlad behind, within the seeds' spread, not separable." in lines


def test_one_seed_claims_nothing_and_ties_are_named() -> None:
    lines = reading(_results({"grpo": [(0.25, 0.5)], "kdrl": [(0.25, 0.5)], "rlad": [(0.5, 0.5)]}), "kk", "PPL")
    assert "- PPL2 greedy: rlad 50.0% vs grpo 25.0%: rlad ahead, one seed, no spread to judge the gap by." in lines
    lines = reading(_results({"grpo": [(0.25, 0.5)], "kdrl": [(0.25, 0.5)]}), "kk", "PPL")
    assert "- PPL2: grpo, kdrl tied at 25.0%." in lines
    assert not any("rlad" in line for line in lines)  # no claim about a method that did not run


def test_the_suite_runs_every_method_the_config_knows() -> None:
    from rlad.paper_mini import METHODS
    from rlad_core.config import METHODS as CONFIG_METHODS

    assert sorted(METHODS) == sorted(CONFIG_METHODS)
