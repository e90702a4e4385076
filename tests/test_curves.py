"""Learning curves (open_rlhf.curves): the callback inside a TRL trainer and inside our PPO, the file format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from open_rlhf.curves import CURVE_FILE, CURVE_PLOT, moving_mean, plot_curves, read_curve, training_reward
from open_rlhf.errors import ConfigError
from tests.test_scripts import COMMON, run

CURVE = ["--curve_every", "1", "--curve_prompts", "4", "--curve_kl_prompts", "2", "--curve_max_new_tokens", "8"]


def test_read_curve_keeps_the_last_point_of_a_step_and_names_a_bad_line(tmp_path):
    path = tmp_path / CURVE_FILE
    path.write_text("\n".join(json.dumps(p) for p in [{"step": 2, "accuracy": 0.5}, {"step": 0, "accuracy": 0.1},
                                                       {"step": 2, "accuracy": 0.75}]) + "\n")
    assert [(p["step"], p["accuracy"]) for p in read_curve(path)] == [(0, 0.1), (2, 0.75)]
    path.write_text('{"step": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"line 2"):
        read_curve(path)


def test_plot_has_one_panel_per_metric_present(tmp_path):
    out = plot_curves({"a": [{"step": 0, "accuracy": 0.2, "ci_low": 0.1, "ci_high": 0.3, "kl": 0.0},
                             {"step": 5, "accuracy": 0.4, "ci_low": 0.3, "ci_high": 0.5, "kl": 0.2}]},
                      tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _png_width(path) -> int:
    return int.from_bytes(Path(path).read_bytes()[16:20], "big")  # IHDR width


def test_training_reward_is_read_from_the_trainers_log_and_drawn_smoothed(tmp_path):
    assert moving_mean([1.0, 0.0, 2.0, 4.0], 2) == [1.0, 0.5, 1.0, 3.0]
    grpo, ppo, dpo = (tmp_path / n for n in ("grpo", "ppo", "dpo"))
    for folder, records in ((grpo, [{"step": 1, "reward": 0.25}, {"step": 2, "loss": 1.0}, {"step": 3, "reward": 0.5}]),
                            (ppo, [{"step": 1, "objective/scores": -1.5}]),
                            (dpo, [{"step": 5, "rewards/margins": 0.3}])):
        folder.mkdir()
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert training_reward(grpo) == [(1, 0.25), (3, 0.5)]
    assert training_reward(ppo) == [(1, -1.5)]
    assert training_reward(dpo) == [] and training_reward(tmp_path / "none") == []
    old_ppo = tmp_path / "old_ppo"  # a PPO run from before metrics.jsonl: its trainer_state.json's log history
    old_ppo.mkdir()
    (old_ppo / "trainer_state.json").write_text(json.dumps({"log_history": [
        {"step": 1, "objective/scores": 0.5}, {"step": 2, "objective/scores": 0.75}]}))
    assert training_reward(old_ppo) == [(1, 0.5), (2, 0.75)]
    curve = {"grpo": [{"step": 0, "accuracy": 0.2, "kl": 0.0}, {"step": 3, "accuracy": 0.3, "kl": 0.1}]}
    without = plot_curves(curve, tmp_path / "a.png")
    with_reward = plot_curves(curve, tmp_path / "b.png", rewards={"grpo": training_reward(grpo)})
    assert _png_width(with_reward) > 1.4 * _png_width(without)  # a third panel beside accuracy and KL
    assert _png_width(plot_curves(curve, tmp_path / "c.png", rewards={"dpo": []})) == _png_width(without)


def _check_curve(out, steps):
    points = read_curve(out / CURVE_FILE)
    assert [p["step"] for p in points] == steps
    for p in points:
        assert 0 <= p["accuracy"] <= 1 and p["ci_low"] <= p["accuracy"] <= p["ci_high"] and p["prompts"] == 4
    # at step 0 the policy is its reference (the same weights; a trainer's own attention / dtype settings can move
    # the log-probabilities by ~1e-4 nats, a trained policy's KL is ~0.3 here)
    assert points[0]["kl"] == pytest.approx(0.0, abs=1e-2)
    assert abs(points[-1]["kl"]) > 1e-6  # trained at lr 1e-2: the policy moved
    assert (out / CURVE_PLOT).read_bytes()[:4] == b"\x89PNG"


def test_dpo_stage_writes_a_learning_curve(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    run("dpo", ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--max_steps", "2",
                *COMMON, "--learning_rate", "1e-2", *CURVE])
    _check_curve(out, [0, 1, 2])


def test_ppo_stage_writes_a_learning_curve(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    run("ppo", ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--max_steps", "2",
                "--advantage_estimator", "reinforce_pp", "--reward", "length:5", "--response_length", "8",
                "--gradient_accumulation_steps", "1", *COMMON, "--learning_rate", "1e-2", *CURVE])
    _check_curve(out, [0, 1, 2])


def test_a_scorer_stage_refuses_a_learning_curve(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="not a policy"):
        run("reward", ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "rm"),
                       "--max_steps", "1", *COMMON, *CURVE])


def test_a_curve_point_runs_the_policy_without_accelerates_autocast(tiny_model_dir):
    """accelerate's bf16 wraps forward in autocast; a curve point measures the plain forward, as the reference is."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from open_rlhf.curves import _plain_forward
    from open_rlhf.models import load_causal_lm

    policy, reference = load_causal_lm(str(tiny_model_dir)), load_causal_lm(str(tiny_model_dir))
    ids = torch.arange(3, 40).unsqueeze(0)
    # an earlier test's trainer may have set the process-wide state to fp32 (on CPUs without native bf16)
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        policy = Accelerator(mixed_precision="bf16", cpu=True).prepare_model(policy)
        with torch.no_grad():
            expected = reference(input_ids=ids).logits
            assert not torch.equal(policy(input_ids=ids).logits, expected)  # the autocast wrapper rounds to bf16
            with _plain_forward(policy):
                assert torch.equal(policy(input_ids=ids).logits, expected)
            assert not torch.equal(policy(input_ids=ids).logits, expected)  # restored for training
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
