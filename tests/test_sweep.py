"""The hyperparameter sweep (open_rlhf.sweep): the grid, its errors, the YAML preset, and a tiny sweep end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from trl import TrlParser

from open_rlhf import outputs
from open_rlhf.errors import ConfigError, OutputDirError, parse_config
from open_rlhf.sweep import (
    SweepArguments,
    markdown_summary,
    paired_comparison,
    point_flags,
    run_sweep,
    summarize,
)
from tests.test_pipeline import METHOD_ARGS, TINY_STAGE

REPO = Path(__file__).resolve().parents[1]


def test_grid_is_the_product_of_a_methods_items_times_seeds():
    args = SweepArguments(grid=["dpo.learning_rate=1e-6,1e-5", "dpo.beta=0.1,0.5,1", "grpo.max_steps=24"],
                          methods=["kto"], seeds=[0, 1])
    points = args.points()
    assert len(points) == (1 + 2 * 3 + 1) * 2  # kto's preset, dpo 2 x 3, grpo 1; two seeds each
    assert points[0] == {"name": "kto-s0", "method": "kto", "seed": 0, "params": {}}
    dpo = [p for p in points if p["method"] == "dpo"]
    assert {(p["params"]["learning_rate"], p["params"]["beta"], p["seed"]) for p in dpo} == {
        (lr, b, s) for lr in ("1e-6", "1e-5") for b in ("0.1", "0.5", "1") for s in (0, 1)}
    assert len({p["name"] for p in points}) == len(points)  # every point has its own folder
    flags = point_flags(dpo[0], "--max_steps 2", curve_every=5)
    assert flags == "--max_steps 2 --learning_rate 1e-6 --beta 0.1 --curve_every 5 --seed 0"  # grid after common


@pytest.mark.parametrize("grid, message", [
    (["dpo.learning_rate"], "METHOD.PARAM=V1"),
    (["dpo.beta="], "METHOD.PARAM=V1"),
    (["dpo.beta=,"], "no values"),
    (["sft2.beta=1"], "unknown method"),
    (["ppo2.beta=1"], "sft \\(continued SFT, the control\\)"),
    ([], "needs --grid"),
])
def test_bad_grids_are_clear_errors(grid, message):
    with pytest.raises(ConfigError, match=message):
        SweepArguments(grid=grid)


def test_the_preset_parses(tmp_path):
    (args,) = parse_config(TrlParser((SweepArguments,)), ["--config", str(REPO / "config/sweep/default.yaml")])
    points = args.points()
    assert [p["method"] for p in points] == ["kto", "grpo", "dpo"] and args.eval_prompts == 256
    assert point_flags(points[-1]) == "--dataset_name runs/pairs/sft-k4.jsonl --seed 0"


def test_summary_averages_seeds_and_counts_significant_ones():
    rows = [{"status": "done", "method": "dpo", "params": "{}", "accuracy": a, "accuracy_delta_vs_sft": d,
             "p_vs_sft": p, "kl_vs_sft": 0.5} for a, d, p in ((0.5, 0.1, 0.01), (0.3, -0.1, 0.2))]
    rows.append({"status": "failed", "method": "dpo", "params": "{}", "point": "x", "error": "boom"})
    (s,) = summarize(rows)
    assert s["seeds"] == 2 and s["accuracy"] == pytest.approx(0.4) and s["accuracy_delta_vs_sft"] == pytest.approx(0)
    assert (s["min_delta"], s["max_delta"], s["significant_seeds"]) == (-0.1, 0.1, 1)


def test_continued_sft_is_the_control_family():
    points = SweepArguments(grid=["sft.max_steps=20,60", "kto.beta=0.1"], seeds=[0]).points()
    assert [(p["method"], p["params"]) for p in points] == [
        ("sft", {"max_steps": "20"}), ("sft", {"max_steps": "60"}), ("kto", {"beta": "0.1"})]
    assert point_flags(points[0], "--logging_steps 1", curve_every=10) == (
        "--logging_steps 1 --max_steps 20 --curve_every 10 --seed 0")


def test_reward_models_are_a_point_family_with_their_own_summary():
    points = SweepArguments(grid=["reward.learning_rate=3e-5,1e-4"], seeds=[0, 1]).points()
    assert [(p["method"], p["params"]["learning_rate"], p["seed"]) for p in points] == [
        ("reward", "3e-5", 0), ("reward", "3e-5", 1), ("reward", "1e-4", 0), ("reward", "1e-4", 1)]
    rows = [{"status": "done", "method": "reward", "params": '{"learning_rate": "3e-5"}', "accuracy": a,
             "accuracy_ci_low": lo, "mean_margin": m} for a, lo, m in ((0.8, 0.75, 1.0), (0.7, 0.64, 0.5))]
    rows.append({"status": "done", "method": "dpo", "params": "{}", "accuracy": 0.5, "accuracy_delta_vs_sft": 0.1,
                 "p_vs_sft": 0.01, "kl_vs_sft": 0.5})
    summary = {s["method"]: s for s in summarize(rows)}
    assert summary["reward"]["accuracy"] == pytest.approx(0.75) and summary["reward"]["ci_low"] == 0.64
    assert summary["reward"]["mean_margin"] == pytest.approx(0.75) and "accuracy_delta_vs_sft" not in summary["reward"]
    md = markdown_summary(rows)
    assert "| dpo | `{}` | 1 | 0.500 | +0.100" in md
    assert '| `{"learning_rate": "3e-5"}` | 2 | 0.750 | 0.640 | +0.750 |' in md
    assert markdown_summary(rows[:2]).startswith("| reward model |")  # a reward-only sweep: no empty policy table


def _point(folder: Path, correct: list[int], eval_prompts: int = 4) -> Path:
    """A finished point folder as the sweep leaves it: ``evaluation.json`` beside its sweep's ``sweep.json``."""
    folder.mkdir(parents=True)
    (folder.parent / "sweep.json").write_text(json.dumps({"rl_dataset": "builtin", "eval_prompts": eval_prompts,
                                                          "eval_max_new_tokens": 96, "split_seed": 42}))
    (folder / "evaluation.json").write_text(json.dumps({"correct": correct, "accuracy": sum(correct) / len(correct)}))
    return folder


def test_versus_compares_two_points_paired(tmp_path, capsys):
    """A method against a control from another sweep folder: both accuracies, the paired difference with its
    interval, McNemar on the discordant prompts (3 fixed, 1 broken here), and the CLI's summary line."""
    a = _point(tmp_path / "kto" / "kto-s1", [1, 1, 1, 1, 0, 0])
    b = _point(tmp_path / "control" / "sft-s1", [0, 0, 0, 1, 1, 0])
    r = paired_comparison(a, b)
    assert (r["accuracy_a"], r["accuracy_b"]) == (pytest.approx(4 / 6), pytest.approx(2 / 6))
    assert r["delta"] == pytest.approx(2 / 6) and r["delta_ci_low"] <= r["delta"] <= r["delta_ci_high"]
    assert (r["fixed"], r["broke"], r["prompts"]) == (3, 1, 6)
    assert r["p_value"] == pytest.approx(0.625)  # 2 * P(Binomial(4, 1/2) <= 1) = 2 * 5/16
    from open_rlhf.sweep import sweep_main

    sweep_main(["--versus", str(a), str(b)])
    out = capsys.readouterr().out
    assert "A - B: +0.333" in out and "McNemar p 0.625, A fixed 3 / broke 1 of 6 prompts" in out
    # a sweep evaluated on other prompts, a point without its evaluation, a third folder: clear errors
    other = _point(tmp_path / "other" / "p", [1, 0, 1, 0, 1, 0], eval_prompts=6)
    with pytest.raises(ConfigError, match="other prompts.*eval_prompts"):
        paired_comparison(a, other)
    (tmp_path / "kto" / "old").mkdir()
    with pytest.raises(ConfigError, match="no evaluation.json"):
        paired_comparison(tmp_path / "kto" / "old", b)
    with pytest.raises(ConfigError, match="two point folders"):
        SweepArguments(versus=[str(a), str(b), str(other)])


def test_sampled_writes_pass_at_k_of_a_points_policy_once(tmp_path, tiny_model_dir, capsys):
    """--sampled on a finished point: k samples on each of its sweep's held-out prompts from the point's own policy
    folder, summarised against the greedy evaluation the sweep kept, written beside it, and read back (not redrawn)
    by a second call. A point whose model was removed is a clear error."""
    import shutil

    from open_rlhf.sweep import sampled_point, sweep_main

    point = _point(tmp_path / "sw" / "grpo-s1", [1, 0, 0, 1])
    (point / "result.json").write_text(json.dumps({"method": "grpo"}))
    shutil.copytree(tiny_model_dir, point / "grpo")
    sweep_main(["--sampled", str(point), "--sampled_k", "2", "--sampled_temperature", "1.0"])
    assert "greedy 0.500, sampled (T 1) " in capsys.readouterr().out  # the kept greedy evaluation: 2 of 4
    out = point / "sampled-k2-t1.json"
    r = json.loads(out.read_text())
    assert (r["k"], r["prompts"], r["policy"]) == (2, 4, str(point / "grpo"))
    assert len(r["sampled_correct"]) == 4 and all(len(row) == 2 for row in r["sampled_correct"])
    assert r["pass_at_k"] >= r["sampled_accuracy"] and r["greedy_accuracy"] == 0.5
    out.write_text(json.dumps({**r, "pass_at_k": 0.123}))  # a second call reads the file back
    assert sampled_point(point, 2, 1.0)["pass_at_k"] == 0.123
    shutil.rmtree(point / "grpo")
    with pytest.raises(ConfigError, match="holds no model"):
        sampled_point(point, 3, 1.0)
    with pytest.raises(ConfigError, match="sampled_k >= 1"):
        SweepArguments(sampled=[str(point)], sampled_k=0)


def test_only_a_finished_stage_loses_its_checkpoints(tmp_path):
    stage = tmp_path / "dpo"
    (stage / "checkpoint-20").mkdir(parents=True)
    (stage / "checkpoint-20" / "optimizer.pt").write_bytes(b"x" * 1000)
    (stage / "incomplete-checkpoint-40").mkdir()  # a killed save, moved aside: never deleted
    (stage / "model.safetensors").write_bytes(b"y" * 10)
    with pytest.raises(OutputDirError, match="no finished stage"):  # a stopped stage resumes from them
        outputs.remove_checkpoints(stage)
    assert (stage / "checkpoint-20" / "optimizer.pt").is_file()
    (stage / outputs.COMPLETE_MARKER).write_text("{}")
    assert outputs.remove_checkpoints(stage) == 1000
    assert sorted(p.name for p in stage.iterdir()) == [
        "incomplete-checkpoint-40", "model.safetensors", outputs.COMPLETE_MARKER]


@pytest.mark.slow  # trains an SFT policy, a reward model and two DPO points (~1 min); make test-slow
def test_tiny_sweep_end_to_end_resumes_and_guards_its_settings(tmp_path, tiny_model_dir, capsys):
    args = SweepArguments(grid=["dpo.learning_rate=1e-3,1e-2", "reward.learning_rate=1e-3", "sft.learning_rate=1e-3"],
                          eval_pairs=6,
                          run_name="sw", runs_dir=str(tmp_path),
                          model_name_or_path=str(tiny_model_dir), sft_args=f"--max_steps 1 {TINY_STAGE}",
                          reward_args=f"--max_steps 1 {TINY_STAGE}", method_args=METHOD_ARGS["dpo"],
                          eval_prompts=4, eval_max_new_tokens=8, eval_batch_size=4, curve_every=1)
    rows = run_sweep(args)
    assert [r["point"] for r in rows][:2] == ["dpo-learning_rate1e-3-s0", "dpo-learning_rate1e-2-s0"]
    control = rows.pop()  # continued SFT from the shared SFT policy, with the same paired test as a method
    assert control["method"] == "sft" and control["family"] == "control" and control["status"] == "done"
    assert f"--model_name_or_path {tmp_path / 'sw' / 'sft'} " in control["command"]
    assert "train_sft.py" in control["command"] and "--learning_rate 1e-3" in control["command"]
    assert 0 < control["p_vs_sft"] <= 1 and control["delta_ci_low"] <= control["accuracy_delta_vs_sft"]
    assert control["kl_vs_sft"] is not None
    reward = rows.pop()  # a reward model from the SFT policy, scored on the pairs its stage held out
    assert reward["method"] == "reward" and reward["eval_pairs"] == 6 and "--eval_size 6" in reward["command"]
    assert reward["accuracy_ci_low"] <= reward["accuracy"] <= reward["accuracy_ci_high"]
    assert f"--model_name_or_path {tmp_path / 'sw' / 'sft'} " in reward["command"]  # the shared SFT policy
    for r in rows:
        assert r["status"] == "done" and 0 <= r["accuracy"] <= 1 and 0 < r["p_vs_sft"] <= 1
        assert r["delta_ci_low"] <= r["accuracy_delta_vs_sft"] <= r["delta_ci_high"]
        assert "--learning_rate " + r["learning_rate"] in r["command"] and "--seed 0" in r["command"]
    with open(tmp_path / "sw" / "sweep.csv") as f:
        assert [(r["method"], r["learning_rate"]) for r in csv.DictReader(f)] == [
            ("dpo", "1e-3"), ("dpo", "1e-2"), ("reward", "1e-3"), ("sft", "1e-3")]
    md = (tmp_path / "sw" / "sweep.md").read_text()
    assert "| dpo |" in md and '| `{"learning_rate": "1e-3"}` | 1 |' in md  # the reward models' own table
    assert (tmp_path / "sw" / "learning_curves.png").stat().st_size > 0  # both points' curves, one figure
    for r in (*rows, reward, control):  # a finished point keeps its model, not its checkpoints (--save_steps 1)
        stage_dir = tmp_path / "sw" / r["point"] / r["method"]
        assert (stage_dir / "model.safetensors").is_file() and not list(stage_dir.glob("checkpoint-*"))

    # every point keeps its per-prompt evaluation: a point against the sweep's SFT policy is its row's paired test
    sweep_dir = tmp_path / "sw"
    versus_sft = paired_comparison(sweep_dir / rows[0]["point"], sweep_dir)
    assert versus_sft["delta"] == pytest.approx(rows[0]["accuracy_delta_vs_sft"])
    assert versus_sft["p_value"] == rows[0]["p_vs_sft"] and versus_sft["fixed"] == rows[0]["fixed_vs_sft"]
    versus_control = paired_comparison(sweep_dir / rows[0]["point"], sweep_dir / control["point"])
    assert versus_control["delta"] == pytest.approx(rows[0]["accuracy"] - control["accuracy"])

    capsys.readouterr()
    again = run_sweep(args)
    assert capsys.readouterr().out.count("already done") == 4
    assert [r["accuracy"] for r in again[:2]] == [r["accuracy"] for r in rows]
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["eval_prompts"] == 4
    args.grid = ["dpo.learning_rate=1e-2"]  # a narrower grid keeps the folder's other points in its CSV
    assert [r["point"] for r in run_sweep(args)] == ["dpo-learning_rate1e-2-s0"]
    with open(tmp_path / "sw" / "sweep.csv") as f:
        assert [(r["method"], r["learning_rate"]) for r in csv.DictReader(f)] == [
            ("dpo", "1e-2"), ("dpo", "1e-3"), ("reward", "1e-3"), ("sft", "1e-3")]
    args.eval_prompts = 8
    with pytest.raises(ConfigError, match="other settings"):
        run_sweep(args)


def test_gsm8k_preset_evaluates_on_test_questions_while_training_on_train(shared_data_dir, tiny_model_dir, tmp_path):
    """``eval_dataset`` (config/sweep/gsm8k.yaml): the SFT and RL stages read GSM8K's train split, and the policies
    are scored on 256 questions of its test split, none of which any stage trains on."""
    from open_rlhf.compare import FromSFT

    (args,) = parse_config(TrlParser((SweepArguments,)), ["--config", str(REPO / "config/sweep/gsm8k.yaml")])
    assert args.eval_dataset.endswith("gsm8k/test.jsonl") and args.rl_dataset.endswith("gsm8k/train.jsonl")
    assert args.eval_prompts == 256 and [p["method"] for p in args.points()] == ["grpo"]
    gsm8k = shared_data_dir / "gsm8k"
    args.rl_dataset, args.sft_dataset, args.eval_dataset = (str(gsm8k / "train.jsonl"), str(gsm8k / "train.jsonl"),
                                                            str(gsm8k / "test.jsonl"))
    assert args.pipeline_args("grpo").eval_dataset == args.eval_dataset  # the pipeline run is evaluated on it too
    args.runs_dir, args.sft_model_path, args.reward_model_path = str(tmp_path), str(tiny_model_dir), str(tiny_model_dir)
    start = FromSFT(args, sft_cache=tmp_path / "sft.json")  # both models given: nothing is trained

    def questions(name):
        with open(gsm8k / name) as f:
            return {json.loads(line)["question"] for line in f}

    test, train = questions("test.jsonl"), questions("train.jsonl")
    asked = [next(m["content"] for m in p if m["role"] == "user") for p in start.prompts]
    assert len(asked) == len(start.answers) == 256
    assert all(any(q in a for q in test) for a in asked) and not any(q in a for a in asked for q in train)
