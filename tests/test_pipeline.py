"""run_pipeline end to end on a tiny model: stages chain, the report and plots appear, finished stages skip."""

from __future__ import annotations

import json

import pytest

from open_rlhf.pipeline import PipelineArguments, run_pipeline, stage_plan

TINY_STAGE = "--per_device_train_batch_size 2 --max_train_samples 16 --save_steps 1 --logging_steps 1"


def tiny_args(tmp_path, model, method="ppo"):
    return PipelineArguments(
        run_name="tiny", runs_dir=str(tmp_path), method=method, model_name_or_path=str(model),
        sft_args=f"--max_steps 2 {TINY_STAGE}", reward_args=f"--max_steps 2 {TINY_STAGE}",
        dpo_args=f"--max_steps 2 {TINY_STAGE}",
        ppo_args=f"--max_steps 1 {TINY_STAGE} --gradient_accumulation_steps 1 --response_length 8",
        eval_prompts=4, eval_pairs=4, eval_max_new_tokens=8, eval_batch_size=4, report_samples=2)


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
    args = tiny_args(tmp_path, tiny_model_dir)
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
    assert out.count("already finished") == 3 and "evaluation: already done" in out
    assert {p: p.stat().st_mtime_ns for p in run.glob("*/model.safetensors")} == mtimes


def test_dpo_pipeline_reports_without_a_reward_model(tmp_path, tiny_model_dir):
    """--method dpo: SFT -> DPO; the report compares base, SFT and DPO by accuracy and KL (no reward model)."""
    args = tiny_args(tmp_path, tiny_model_dir, method="dpo")
    args.eval_base_model = False
    text = run_pipeline(args).read_text()
    results = json.loads((tmp_path / "tiny" / "eval" / "results.json").read_text())
    assert set(results["policies"]) == {"sft", "dpo"} and results["reward_model"] is None
    assert results["policies"]["dpo"]["reward_score"] is None and "dpo" in results["kl_vs_sft"]
    assert "| dpo |" in text and "Reward model" not in text
