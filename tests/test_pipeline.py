"""run_pipeline end to end on a tiny model: stages chain, the report and plots appear, finished stages skip."""

from __future__ import annotations

import dataclasses
import json
import shlex

import pytest

from open_rlhf.pipeline import (
    PipelineArguments,
    run_pipeline,
    stage_fingerprint,
    stage_plan,
    stale_stage_reason,
)

TINY_STAGE = "--per_device_train_batch_size 2 --max_train_samples 16 --save_steps 1 --logging_steps 1"
PPO_ARGS = f"--max_steps 1 {TINY_STAGE} --gradient_accumulation_steps 1 --response_length 8"
ONLINE_ARGS = f"--max_steps 1 {TINY_STAGE} --gradient_accumulation_steps 1 --max_completion_length 8 --num_generations 2"
METHOD_ARGS = {"ppo": PPO_ARGS, "rlvr": PPO_ARGS, "reinforce_pp": PPO_ARGS, "grpo": ONLINE_ARGS,
               "rloo": ONLINE_ARGS, **{m: f"--max_steps 2 {TINY_STAGE}" for m in ("dpo", "ipo", "kto", "orpo", "simpo")}}


def tiny_args(tmp_path, model, method="ppo", gate=False):
    """A pipeline on a tiny model with 1-2 step stages; the gate (tested in test_gate.py) only where asked."""
    return PipelineArguments(
        run_name="tiny", runs_dir=str(tmp_path), method=method, model_name_or_path=str(model),
        sft_args=f"--max_steps 2 {TINY_STAGE}", reward_args=f"--max_steps 2 {TINY_STAGE}",
        method_args=METHOD_ARGS[method],
        eval_prompts=4, eval_pairs=4, eval_max_new_tokens=8, eval_batch_size=4, report_samples=2, gate_prompts=4,
        gate=gate)


def test_stage_plan_chains_outputs(tmp_path):
    args = PipelineArguments(runs_dir=str(tmp_path), run_name="r")
    plan = dict(stage_plan(args))
    assert list(plan) == ["sft", "reward", "ppo"]
    assert plan["reward"][plan["reward"].index("--model_name_or_path") + 1] == str(tmp_path / "r" / "sft")
    assert plan["ppo"][plan["ppo"].index("--reward_model_path") + 1] == str(tmp_path / "r" / "reward")
    dpo = dict(stage_plan(PipelineArguments(runs_dir=str(tmp_path), method="dpo")))
    assert list(dpo) == ["sft", "dpo"]
    with pytest.raises(ValueError, match="--method"):
        PipelineArguments(method="ppo2")


def test_pipeline_runs_reports_and_skips_finished_stages(tmp_path, tiny_model_dir, capsys):
    args = tiny_args(tmp_path, tiny_model_dir, gate=True)
    report = run_pipeline(args)
    run = tmp_path / "tiny"
    text = report.read_text()
    for png in ("training_curves.png", "policy_comparison.png", "reward_margins.png"):
        assert (run / png).stat().st_size > 1000 and png in text
    results = json.loads((run / "eval" / "results.json").read_text())
    assert set(results["policies"]) == {"base", "sft", "ppo"}
    assert 0.0 <= results["policies"]["ppo"]["accuracy"] <= 1.0
    assert results["reward_model"]["accuracy"] is not None and len(results["samples"]) == 2
    assert "| sft |" in text and "| ppo |" in text

    mtimes = {p: p.stat().st_mtime_ns for p in run.glob("*/model.safetensors")}
    capsys.readouterr()
    run_pipeline(args)  # everything finished: nothing is retrained or overwritten
    out = capsys.readouterr().out
    assert out.count("already finished") == 3 and "evaluation: already done" in out and "WARNING" not in out
    assert {p: p.stat().st_mtime_ns for p in run.glob("*/model.safetensors")} == mtimes

    # other flags for the finished PPO stage: reused (nothing lost), but the run says so and how to retrain
    run_pipeline(dataclasses.replace(args, method_args=args.method_args + " --learning_rate 1e-4"))
    out = capsys.readouterr().out
    assert "WARNING stage ppo: its command line changed since it ran" in out and f"move {run / 'ppo'} away" in out
    assert "WARNING stage sft" not in out
    assert {p: p.stat().st_mtime_ns for p in run.glob("*/model.safetensors")} == mtimes


def test_a_finished_stage_whose_preset_changed_is_named(tmp_path):
    """The state records the preset's SHA-256; an edited preset (same path, same flags) or other flags are named."""
    config = tmp_path / "dpo.yaml"
    config.write_text("learning_rate: 1.0e-6\n")
    command = ["/venv/python", "/repo/scripts/train_dpo.py", "--config", str(config), "--max_steps", "20"]
    entry = {"command": shlex.join(command), **stage_fingerprint(command)}
    assert len(entry["config_sha256"]) == 64
    assert stale_stage_reason(entry, ["/other/python", "/clone/scripts/train_dpo.py", *command[2:]]) is None
    config.write_text("learning_rate: 2.0e-5\n")
    assert stale_stage_reason(entry, command) == f"its preset {config} changed"
    assert stale_stage_reason(entry, command[:-1] + ["60"]) == (
        f"its command line changed and its preset {config} changed")
    assert stale_stage_reason({}, command) is None  # a state written before the record: nothing to compare


@pytest.mark.slow  # test_gate.py runs SFT -> DPO -> report end to end in the default run
def test_dpo_pipeline_reports_without_a_reward_model(tmp_path, tiny_model_dir):
    """--method dpo: SFT -> DPO; the report compares base, SFT and DPO by accuracy and KL (no reward model)."""
    args = tiny_args(tmp_path, tiny_model_dir, method="dpo")
    args.eval_base_model = False
    text = run_pipeline(args).read_text()
    results = json.loads((tmp_path / "tiny" / "eval" / "results.json").read_text())
    assert set(results["policies"]) == {"sft", "dpo"} and results["reward_model"] is None
    assert results["policies"]["dpo"]["reward_score"] is None and "dpo" in results["kl_vs_sft"]
    assert "| dpo |" in text and "Reward model" not in text


def test_every_method_has_a_plan_with_its_preset_and_reward(tmp_path):
    """--method picks the last stage; RL methods get their reward spec, 'model' resolves to the run's reward model."""
    from open_rlhf.pipeline import METHODS

    for method, spec in METHODS.items():
        plan = dict(stage_plan(PipelineArguments(runs_dir=str(tmp_path), run_name="r", method=method)))
        command = plan[method]
        assert command[1].endswith(spec.script) and command[command.index("--config") + 1] == spec.config
        assert command[command.index("--model_name_or_path") + 1] == str(tmp_path / "r" / "sft")
        assert ("--reward" in command) == (spec.reward is not None)
        assert ("reward" in plan) == (spec.reward == "model")
    plan = dict(stage_plan(PipelineArguments(runs_dir=str(tmp_path), run_name="r", method="grpo",
                                             reward="0.5*model,math", sft_model_path="/m/sft")))
    assert list(plan) == ["reward", "grpo"]  # a given SFT policy skips the SFT stage
    grpo = plan["grpo"]
    assert grpo[grpo.index("--reward") + 1] == f"0.5*model:{tmp_path / 'r' / 'reward'},math"
    assert grpo[grpo.index("--model_name_or_path") + 1] == "/m/sft"
    plan = dict(stage_plan(PipelineArguments(runs_dir=str(tmp_path), method="ppo", reward_model_path="/m/rm")))
    assert list(plan) == ["sft", "ppo"] and plan["ppo"][plan["ppo"].index("--reward") + 1] == "model:/m/rm"
    with pytest.raises(ValueError, match="--reward is for RL methods"):
        PipelineArguments(method="dpo", reward="math")


@pytest.mark.slow  # each method's stage has its own fast test (test_method_scripts.py); this chains it end to end
@pytest.mark.parametrize("method", ["grpo", "kto", "reinforce_pp"])
def test_method_pipeline_trains_and_reports(tmp_path, tiny_model_dir, method):
    """--method <m> on a tiny model: SFT -> <m> (verifiable reward for RL methods, no reward model), report."""
    args = tiny_args(tmp_path, tiny_model_dir, method=method)
    args.eval_base_model = False
    text = run_pipeline(args).read_text()
    results = json.loads((tmp_path / "tiny" / "eval" / "results.json").read_text())
    assert set(results["policies"]) == {"sft", method} and results["reward_model"] is None
    assert method in results["kl_vs_sft"] and f"| {method} |" in text
    assert not (tmp_path / "tiny" / "reward").exists()
