"""The capability gate: hand-computed decisions, and a deliberately broken stage rolled back in a real pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

from open_rlhf.gate import CapabilityThresholds, decide, describe, nonfinite_logs
from open_rlhf.pipeline import PipelineArguments, final_policy, run_pipeline, stage_plan
from tests.test_pipeline import tiny_args


def test_decide_hand_computed():
    """accuracy 0.40 -> 0.28 is a drop of 0.12 > 0.10: fail; EOS 0.90 -> 0.75 (-0.15 >= -0.20): pass;
    KL 12.5 > 10: fail; arc_easy 0.50 -> 0.45 (-0.05): pass."""
    before = {"accuracy": 0.40, "eos_rate": 0.90, "benchmarks": {"arc_easy_local": 0.50}}
    after = {"accuracy": 0.28, "eos_rate": 0.75, "kl_to_input": 12.5, "benchmarks": {"arc_easy_local": 0.45},
             "health": []}
    rows = {r["check"]: r for r in decide(before, after, CapabilityThresholds())}
    assert math.isclose(rows["task accuracy"]["change"], -0.12) and not rows["task accuracy"]["passed"]
    assert math.isclose(rows["EOS rate"]["change"], -0.15) and rows["EOS rate"]["passed"]
    assert rows["KL to input (nats/seq)"]["after"] == 12.5 and not rows["KL to input (nats/seq)"]["passed"]
    assert math.isclose(rows["lm-eval arc_easy_local"]["change"], -0.05) and rows["lm-eval arc_easy_local"]["passed"]
    assert rows["finite loss and weights"]["passed"]
    # exactly at the limit passes; SFT skips KL; None turns a check off
    edge = decide({"accuracy": 0.5}, {"accuracy": 0.4, "kl_to_input": 99.0, "health": []},
                  CapabilityThresholds(max_accuracy_drop=0.1), check_kl=False)
    assert [r["check"] for r in edge] == ["finite loss and weights", "task accuracy"] and all(r["passed"] for r in edge)
    off = decide({"accuracy": 0.9}, {"accuracy": 0.0, "health": []}, CapabilityThresholds(max_accuracy_drop=None))
    assert all(r["passed"] for r in off)


def test_nonfinite_training_is_a_failure():
    history = [{"step": 1, "loss": 1.2, "grad_norm": 0.5}, {"step": 2, "loss": 0.9, "grad_norm": float("nan")},
               {"step": 3, "loss": float("inf")}, {"step": 3, "train_runtime": float("nan")}]
    assert nonfinite_logs(history) == ["grad_norm=nan at step 2", "loss=inf at step 3"]
    rows = decide({"accuracy": 0.1}, {"accuracy": 0.1, "health": nonfinite_logs(history)}, CapabilityThresholds())
    assert not rows[0]["passed"] and "grad_norm=nan" in rows[0]["after"]


def test_rejected_sft_rolls_later_stages_back_to_the_base_model(tmp_path):
    """When the gate rejects SFT, the reward model and the method start from the base model, which is also the
    final policy; an accepted method stage becomes the final policy."""
    base = str(tmp_path / "base")
    Path(base).mkdir()
    args = PipelineArguments(runs_dir=str(tmp_path), run_name="r", model_name_or_path=base)
    state = {"gate": {"sft": {"accepted": False, "input": base, "output": str(tmp_path / "r" / "sft")}}}
    plan = dict(stage_plan(args, state))
    for stage in ("reward", "ppo"):
        assert plan[stage][plan[stage].index("--model_name_or_path") + 1] == base
    assert final_policy(args, state) == base
    state["gate"]["ppo"] = {"accepted": True, "input": base, "output": str(tmp_path / "r" / "ppo")}
    assert final_policy(args, state) == str(tmp_path / "r" / "ppo")
    args.gate = False
    assert final_policy(args, {}) == str(tmp_path / "r" / "ppo")


def test_gate_rolls_back_a_broken_stage(tmp_path, tiny_model_dir, shared_data_dir):
    """DPO with a constant learning rate of 1e30 and no clipping ends with non-finite gradients, weights or logits: the gate rejects it,
    the final policy stays the SFT policy, the DPO output is kept, and the report says what failed."""
    args = tiny_args(tmp_path, tiny_model_dir, method="dpo", gate=True)
    args.method_args += " --max_steps 3 --learning_rate 1e30 --lr_scheduler_type constant --warmup_steps 0 --max_grad_norm 0"
    args.eval_base_model = False
    args.gate_prompts, args.gate_tasks, args.gate_task_limit, args.data_dir = 4, "arc_easy", 4, str(shared_data_dir)
    report = run_pipeline(args)
    run = tmp_path / "tiny"
    state = json.loads((run / "pipeline_state.json").read_text())
    assert state["gate"]["sft"]["accepted"], describe(state["gate"]["sft"])
    assert "arc_easy_local" in state["gate"]["sft"]["after"]["benchmarks"]
    dpo = state["gate"]["dpo"]
    assert not dpo["accepted"] and dpo["input"] == str(run / "sft")
    failed = [c for c in dpo["checks"] if not c["passed"]]
    assert failed[0]["check"] == "finite loss and weights" and "non-finite" in failed[0]["after"]
    assert state["final_policy"] == str(run / "sft")
    assert (run / "dpo" / "model.safetensors").is_file()  # kept, never deleted
    text = report.read_text()
    assert "## Capability gate" in text and "**FAIL**" in text and "**rejected**" in text
    assert f"Final policy of the pipeline: **`{run / 'sft'}`**" in text and "dpo (rejected by the gate)" in text

    args.evaluate = False  # a re-run reuses the recorded verdicts and returns the final policy
    assert run_pipeline(args) == Path(run / "sft")
