"""run_eval.py --rlhf on tiny models and the real held-out sets: every number in the table is the metric function
applied to the saved responses and scores; bad RLHF flags fail before anything loads."""

from __future__ import annotations

import csv
import json

import pytest

from open_rlhf import metrics
from open_rlhf.run_eval import main
from tests.conftest import save_tiny_model


@pytest.fixture(scope="module")
def second_model_and_reward_model(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("rlhf-models")
    save_tiny_model(folder / "policy_b", tokenizer, seed=5)
    save_tiny_model(folder / "rm", tokenizer, seed=6, reward=True)
    return folder / "policy_b", folder / "rm"


def test_rlhf_metrics_table_matches_the_metric_functions(tiny_model_dir, second_model_and_reward_model,
                                                         shared_data_dir, tmp_path):
    policy_b, rm = second_model_and_reward_model
    out = main(["--model", str(tiny_model_dir), "--model", str(policy_b), "--rlhf", "--reward_model", str(rm),
                "--data_dir", str(shared_data_dir), "--rlhf_sets", "builtin,self_instruct", "--rlhf_prompts", "5",
                "--max_new_tokens", "10", "--output_dir", str(tmp_path / "out")])
    saved = json.loads((out / "rlhf.json").read_text())
    assert saved["baseline"] == str(policy_b)  # the last --model by default
    rows = {(r["set"], r["model"], r["metric"]): r for r in csv.DictReader((out / "rlhf.csv").open())}
    for set_name in ("builtin", "self_instruct"):
        a, b = saved["sets"][set_name][str(tiny_model_dir)], saved["sets"][set_name][str(policy_b)]
        assert len(a["responses"]) == len(b["responses"]) == 5
        expected = metrics.win_rate(a["scores"], b["scores"])
        assert float(rows[(set_name, str(tiny_model_dir), "win_rate")]["value"]) == pytest.approx(expected["win_rate"])
        assert (a["wins"], a["ties"], a["losses"]) == (expected["wins"], expected["ties"], expected["losses"])
        assert a["reward"] == pytest.approx(sum(a["scores"]) / 5)
        assert a["distinct_1"] == pytest.approx(metrics.distinct_n(a["responses"], 1))
        assert b["kl_to_baseline"] == 0.0 and (set_name, str(policy_b), "win_rate") not in rows
    assert 0.0 <= saved["sets"]["builtin"][str(tiny_model_dir)]["accuracy"] <= 1.0
    assert saved["sets"]["self_instruct"][str(tiny_model_dir)]["perplexity"] > 1.0  # a random model: high
    text = (out / "rlhf.md").read_text()
    assert "## builtin (5 prompts)" in text and "## self_instruct (5 prompts)" in text
    assert (out / "rlhf.png").stat().st_size > 1000


def test_pairwise_metrics_win_rate_and_length_control():
    """A beats B on 3 of 4 prompts (scores 2>1, 3>1, 1<2, 5>4): win rate 0.75 = metrics.win_rate; the longer answer
    wins each time, so the length-controlled win rate is below the raw one."""
    from open_rlhf.rlhf_eval import pairwise_metrics

    a = {"scores": [2.0, 3.0, 1.0, 5.0], "response_chars": [120, 150, 40, 200]}
    b = {"scores": [1.0, 1.0, 2.0, 4.0], "response_chars": [60, 70, 90, 100]}
    out = pairwise_metrics(a, b)
    assert (out["wins"], out["ties"], out["losses"]) == (3, 0, 1) and out["win_rate"] == 0.75
    assert out["lc_win_rate"] == pytest.approx(metrics.length_controlled_win_rate(
        [1, 1, 0, 1], a["response_chars"], b["response_chars"])["length_controlled_win_rate"])
    assert out["lc_win_rate"] < 0.75
    assert pairwise_metrics({"response_chars": [1]}, {"response_chars": [2]}) == {}  # no reward model: no win rate


@pytest.mark.parametrize("argv, message", [
    (["--rlhf", "--rlhf_sets", "builtin", "--model", "default", "--baseline", "runs/x/sft"], "--baseline runs/x/sft is not one of"),
    (["--rlhf", "--rlhf_sets", "builtin,alpaca"], "unknown set(s) alpaca"),
    (["--rlhf", "--rlhf_sets", "mt_bench", "--data_dir", "{empty}"], "mt_bench/question.jsonl"),
    (["--rlhf", "--rlhf_sets", "builtin", "--reward_model", "runs/none/reward"], "does not exist"),
    (["--rlhf", "--rlhf_prompts", "0"], "--rlhf_prompts must be > 0"),
])
def test_bad_rlhf_flags(argv, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(empty=tmp_path / "empty") for a in argv] + ["--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()
