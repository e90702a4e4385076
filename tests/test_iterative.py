"""Round-based self-improvement (open_rlhf.iterative) on a tiny model: every method's rounds build data, train,
pass the gate or are rolled back, resume, and publish the last accepted policy."""

from __future__ import annotations

import json

import pytest

from open_rlhf.curves import read_curve
from open_rlhf.errors import ConfigError
from open_rlhf.iterative import IterativeArguments, round_slice, run_rounds
from tests.test_scripts import changed, weights

TINY = "--per_device_train_batch_size 2 --max_steps 1 --report_to none --logging_steps 1 --save_steps 1 " \
       "--learning_rate 1e-2 --warmup_steps 0 --lr_scheduler_type constant"
CURVE = dict(curve_every=1, curve_prompts=4, curve_kl_prompts=2, curve_max_new_tokens=8)


def tiny_args(tmp_path, tiny_model_dir, method, **overrides):
    kwargs = dict(method=method, model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / method),
                  rounds=2, prompts_per_round=4, samples_per_prompt=2, max_new_tokens=8, batch_size=4,
                  eval_size=4, gate_prompts=4, stage_args=TINY, judge="length:5", rft_min_score=-1e9,
                  gate_max_accuracy_drop=1.0, gate_max_kl=1e6)  # a random model: the gate checks health only
    kwargs.update(overrides)
    return IterativeArguments(**kwargs)


def test_round_slices_walk_the_training_split_and_wrap():
    rows = list(range(10))
    assert round_slice(rows, 1, 4) == [0, 1, 2, 3] and round_slice(rows, 3, 4) == [8, 9, 0, 1]
    assert round_slice(rows, 1, 20) == list(range(10))


def test_bad_options_are_clear_errors():
    with pytest.raises(ConfigError, match="--method"):
        IterativeArguments(method="spinning")
    with pytest.raises(ConfigError, match="samples_per_prompt"):
        IterativeArguments(method="iterative_dpo", samples_per_prompt=1)
    with pytest.raises(ConfigError, match="--curve_every"):
        IterativeArguments(method="spin", curve_every=-1)
    assert IterativeArguments(method="rft", reward="math").judge == "math"  # the pipeline's --reward is the judge


# ~30-40 s each; make test-slow. The default run trains SPIN's rounds in the gate test below.
@pytest.mark.slow
@pytest.mark.parametrize("method", ["spin", "iterative_dpo", "rft", "step_dpo"])
def test_every_method_runs_its_rounds_and_publishes_the_policy(tmp_path, tiny_model_dir, method, capsys):
    args = tiny_args(tmp_path, tiny_model_dir, method)
    state = run_rounds(args)
    out = tmp_path / method
    assert sorted(state["rounds"]) == ["1", "2"] and all(r["accepted"] for r in state["rounds"].values())
    for r in ("1", "2"):
        rows = [json.loads(line) for line in (out / f"round{r}" / "data.jsonl").read_text().splitlines()]
        assert rows and (out / f"round{r}" / "policy" / "training_complete.json").is_file()
        if method == "rft":
            assert set(rows[0]) == {"prompt", "completion"}
        else:
            assert {"prompt", "chosen", "rejected"} <= set(rows[0]) and rows[0]["chosen"] != rows[0]["rejected"]
    assert state["rounds"]["2"]["start"] == str(out / "round1" / "policy")  # round 2 starts from round 1
    marker = json.loads((out / "training_complete.json").read_text())
    assert marker["policy"] == str(out / "round2" / "policy") and marker["accepted_rounds"] == 2
    assert not changed(weights(out), weights(out / "round2" / "policy"))  # the published policy is round 2's
    assert changed(weights(tiny_model_dir), weights(out))


def test_a_regressing_round_is_rolled_back_and_the_run_resumes(tmp_path, tiny_model_dir, capsys):
    # a KL bound no training step can meet: round 1 is rejected, the loop stops, the start policy is published
    args = tiny_args(tmp_path, tiny_model_dir, "spin", gate_max_kl=1e-9, **CURVE)
    state = run_rounds(args)
    assert list(state["rounds"]) == ["1"] and state["rounds"]["1"]["accepted"] is False
    out = tmp_path / "spin"
    # the learning curve: the start (KL 0 to itself) and the rolled-back round's policy (a Monte-Carlo KL on 2
    # prompts: nonzero, of either sign), at its optimizer step
    curve = read_curve(out / "learning_curve.jsonl")
    assert [p["step"] for p in curve] == [0, 1] and curve[0]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert abs(curve[1]["kl"]) > 1e-3 and all(p["prompts"] == 4 for p in curve)
    assert (out / "learning_curve.png").stat().st_size > 0
    assert (out / "round1" / "policy" / "model.safetensors").is_file()  # kept on disk, not used
    assert not changed(weights(tiny_model_dir), weights(out)) and state["policy"] == str(tiny_model_dir)
    with pytest.raises(Exception, match="already holds a finished run"):
        run_rounds(args)  # a finished run is never overwritten


@pytest.mark.slow  # ~30 s; kept out of the default run's 12-minute budget (AVX2 CPUs)
def test_a_stopped_run_resumes_without_redoing_finished_rounds(tmp_path, tiny_model_dir, capsys):
    args = tiny_args(tmp_path, tiny_model_dir, "step_dpo", rounds=1, **CURVE)
    run_rounds(args)
    out = tmp_path / "step_dpo"
    assert [p["step"] for p in read_curve(out / "learning_curve.jsonl")] == [0, 1]
    (out / "training_complete.json").unlink()  # as if it stopped before publishing
    data_before = (out / "round1" / "data.jsonl").stat().st_mtime_ns
    args.rounds = 2
    capsys.readouterr()
    state = run_rounds(args)
    assert "round 1: already done" in capsys.readouterr().out and sorted(state["rounds"]) == ["1", "2"]
    assert (out / "round1" / "data.jsonl").stat().st_mtime_ns == data_before
    lines = [json.loads(line)["step"] for line in (out / "learning_curve.jsonl").read_text().splitlines()]
    assert lines == [0, 1, 2]  # round 1's point is not measured again
