"""The method comparison: win rate by hand, and compare_methods end to end on a tiny model (resumable)."""

from __future__ import annotations

import csv

import pytest

from open_rlhf.compare import CompareArguments, compare_methods, markdown_table, versus_control, win_rate
from tests.test_pipeline import METHOD_ARGS, TINY_STAGE


def test_win_rate_hand_computed():
    """Scores [1, 2, 3, 0] vs baseline [0, 2, 4, 0]: win, tie, loss, tie -> (1 + 0.5 + 0 + 0.5) / 4 = 0.5."""
    assert win_rate([1, 2, 3, 0], [0, 2, 4, 0]) == 0.5
    assert win_rate([2, 2], [1, 1]) == 1.0
    with pytest.raises(ValueError, match="equally long"):
        win_rate([1.0], [1.0, 2.0])


def test_versus_control_is_the_paired_test_against_the_control():
    """Method right on prompts 0-5, control on 0-1 and 6: 6/8 vs 3/8 -> +0.375; McNemar on 4 method-only and 1
    control-only discordant prompts: two-sided binomial p = 2 * P(X <= 1 | n 5) = 2 * 6/32 = 0.375."""
    method = {"accuracy": 6 / 8, "correct": [1, 1, 1, 1, 1, 1, 0, 0]}
    control = {"accuracy": 3 / 8, "correct": [1, 1, 0, 0, 0, 0, 1, 0]}
    out = versus_control(method, control)
    assert out["delta_vs_control"] == pytest.approx(0.375)
    assert out["p_vs_control"] == pytest.approx(0.375)
    assert -1 < out["control_ci_low"] < 0.375 < out["control_ci_high"] <= 1


def test_markdown_table_has_a_control_column_only_with_a_control():
    row = {"method": "dpo", "accuracy": 0.5, "accuracy_ci_low": 0.4, "accuracy_ci_high": 0.6,
           "accuracy_delta_vs_sft": 0.1, "delta_ci_low": 0.02, "delta_ci_high": 0.18, "p_vs_sft": 0.01,
           "fixed_vs_sft": 30, "broke_vs_sft": 4, "win_rate_vs_sft": 0.55, "kl_vs_sft": 1.2, "train_seconds": 300,
           "peak_rss_mb": 9000}
    plain = markdown_table([row])
    assert "vs control" not in plain and plain.splitlines()[2].count("|") == plain.splitlines()[0].count("|")
    with_control = markdown_table([row | {"delta_vs_control": -0.05, "control_ci_low": -0.1, "control_ci_high": 0.0,
                                          "p_vs_control": 0.049}, {**row, "method": "control"}])
    lines = with_control.splitlines()
    assert "vs control [95% CI], p" in lines[0]
    assert "| -0.050 [-0.100, +0.000], 0.049 |" in lines[2]
    assert len({line.count("|") for line in lines}) == 1  # every row has the header's columns


@pytest.mark.slow  # end to end over several methods (~1 min); make test-slow
def test_compare_methods_writes_csv_png_and_reuses_finished_work(tmp_path, tiny_model_dir, capsys):
    """Two methods (one offline, one online) from one tiny SFT policy and reward model; a rerun redoes nothing."""
    args = CompareArguments(
        methods=["simpo", "rloo"], run_name="cmp", runs_dir=str(tmp_path), model_name_or_path=str(tiny_model_dir),
        sft_args=f"--max_steps 1 {TINY_STAGE}", reward_args=f"--max_steps 1 {TINY_STAGE}",
        offline_args=METHOD_ARGS["simpo"], online_args=METHOD_ARGS["rloo"], eval_prompts=4, eval_max_new_tokens=8, eval_batch_size=4,
        curve_every=1, method_args="--curve_prompts 4 --curve_max_new_tokens 8 --curve_kl_prompts 2",
        control_args="--max_steps 2 --learning_rate 1e-3 --curve_prompts 4 --curve_max_new_tokens 8 --curve_kl_prompts 2")
    rows = compare_methods(args)
    run = tmp_path / "cmp"
    assert [r["method"] for r in rows] == ["sft", "control", "simpo", "rloo"]
    with open(run / "method_comparison.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == ["sft", "control", "simpo", "rloo"]
    control = rows[1]  # continued SFT from the shared SFT policy, scored like a method
    assert control["family"] == "control" and "train_sft.py" in control["command"]
    assert f"--model_name_or_path {run / 'sft'} " in control["command"] and "--max_steps 2" in control["command"]
    assert (run / "control" / "sft" / "learning_curve.jsonl").is_file()
    for row in rows[2:]:
        assert row["delta_vs_control"] == pytest.approx(row["accuracy"] - control["accuracy"])
        assert row["control_ci_low"] <= row["delta_vs_control"] <= row["control_ci_high"]
        assert 0 < row["p_vs_control"] <= 1
    for row in rows[1:]:
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["win_rate_vs_sft"] <= 1.0
        assert row["kl_vs_sft"] is not None and row["train_seconds"] > 0 and row["peak_rss_mb"] > 0
        assert row["accuracy_delta_vs_sft"] == pytest.approx(row["accuracy"] - rows[0]["accuracy"])
        assert (row["fixed_vs_sft"] - row["broke_vs_sft"]) / 4 == pytest.approx(row["accuracy_delta_vs_sft"])
        assert row["accuracy_ci_low"] <= row["accuracy"] <= row["accuracy_ci_high"] and 0 < row["p_vs_sft"] <= 1
        assert row["delta_ci_low"] <= row["accuracy_delta_vs_sft"] <= row["delta_ci_high"]
    assert (run / "method_comparison.png").stat().st_size > 5000
    assert (run / "learning_curves.png").stat().st_size > 5000  # both methods' curves, from --curve_every 1
    assert (run / "simpo" / "learning_curve.jsonl").is_file() and (run / "rloo" / "learning_curve.jsonl").is_file()
    assert "| simpo |" in (run / "method_comparison.md").read_text()
    for stage_dir in (run / "simpo", run / "rloo", run / "control" / "sft"):  # --save_steps 1 wrote checkpoints
        assert not list(stage_dir.glob("checkpoint-*")) and (stage_dir / "model.safetensors").is_file()
    assert capsys.readouterr().out.count("its checkpoints deleted") == 3

    capsys.readouterr()
    again = compare_methods(args)
    out = capsys.readouterr().out
    assert out.count("already evaluated") == 4 and out.count("already finished") >= 4
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]
