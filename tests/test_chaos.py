"""Kill anywhere, resume, lose nothing (`open_rlhf.chaos`, ``scripts/chaos_resume.py``).

Default suite: the pieces (a half-written checkpoint is moved aside, never resumed from; TRL's lost token count is
restored; the kill plan) and one in-process SFT run that crashes inside a checkpoint save and resumes to the
uninterrupted result. The harness itself (SIGKILLs of real stage processes, 5 per stage, SFT/DPO/GRPO/PPO) takes
about 15 minutes on 2 CPU cores: ``-m slow``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from open_rlhf import chaos, outputs, stages


def _checkpoint(folder: Path, step: int, state: str | None) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if state is not None:
        (path / "trainer_state.json").write_text(state)
    return path


def test_half_written_checkpoints_are_moved_aside_with_a_message(tmp_path, caplog):
    _checkpoint(tmp_path, 2, json.dumps({"global_step": 2, "log_history": []}))
    _checkpoint(tmp_path, 3, None)  # killed before trainer_state.json (transformers writes it last)
    _checkpoint(tmp_path, 4, '{"global_step": 4, "log_hi')  # torn JSON
    _checkpoint(tmp_path, 5, json.dumps({"global_step": 1}))  # someone else's state
    (tmp_path / "incomplete-checkpoint-3").mkdir()  # an earlier one of the same name is kept too
    assert outputs.valid_checkpoints(tmp_path) == [2]
    with caplog.at_level(logging.WARNING, logger="open_rlhf.outputs"):
        assert outputs.prepare_output_dir(tmp_path) == str(tmp_path / "checkpoint-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-2", "incomplete-checkpoint-3", "incomplete-checkpoint-3-2", "incomplete-checkpoint-4",
        "incomplete-checkpoint-5"]
    assert (tmp_path / "incomplete-checkpoint-3-2" / "model.safetensors").is_file()  # nothing deleted
    assert caplog.text.count("not completely written") == 3 and "moved aside to incomplete-checkpoint-4" in caplog.text
    assert not list(tmp_path.glob("checkpoint-*[!0-9]*"))  # transformers' rotation globs checkpoint-*: none left


def test_restore_token_count_from_the_checkpoint_log(tmp_path):
    history = [{"step": 1, "loss": 1.0, "num_tokens": 100.0}, {"step": 2, "loss": 0.9, "num_tokens": 210.0},
               {"step": 3, "loss": 0.8, "num_tokens": 330.0}]  # step 3: logged after the checkpoint was written
    ckpt = _checkpoint(tmp_path, 2, json.dumps({"global_step": 2, "log_history": history}))

    class Trainer:
        _total_train_tokens = 0

    trainer = Trainer()
    outputs.restore_token_count(trainer, str(ckpt))
    assert trainer._total_train_tokens == 210
    outputs.restore_token_count(object(), str(ckpt))  # a trainer without the counter (GRPO, PPO): nothing to do


def test_kill_plan_reaches_every_kill_point():
    setup = chaos.StageSetup("ppo", [], max_steps=3, save_steps=1)
    events = chaos.candidate_events(setup)
    assert events == [("step", 0), ("end", 1), ("save", 1), ("step", 1), ("end", 2), ("save", 2), ("step", 2),
                      ("end", 3)]  # PPO saves no checkpoint after its last update
    assert chaos.StageSetup("sft", [], max_steps=4, save_steps=2).saves() == [2, 4]
    # resumed from checkpoint-2: update 3 (step:2) and later are ahead, the end and save of step 2 are not
    assert [e for e in events if chaos.reachable(e, 2)] == [("step", 2), ("end", 3)]


def test_compare_logs_ignores_wall_clock_keys(tmp_path):
    for name, (loss, seconds) in {"a": (0.5, 1.0), "b": (0.5, 2.0), "c": (0.25, 1.0)}.items():
        (tmp_path / name).mkdir()
        history = [{"step": 1, "loss": loss, "step_time": seconds, "time/step": seconds},
                   {"step": 1, "train_runtime": seconds, "train_loss": loss}]
        (tmp_path / name / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    assert chaos.compare_logs(tmp_path / "a", tmp_path / "b") == []
    assert chaos.compare_logs(tmp_path / "a", tmp_path / "c") == ["step 1 loss: 0.5 vs 0.25"]


class CrashInSave(Exception):
    pass


def test_sft_crash_inside_a_checkpoint_save_resumes_to_the_uninterrupted_run(tmp_path, tiny_model_dir, monkeypatch):
    """In-process: checkpoint-2's save dies after the weights (at the optimizer's torch.save); the re-run moves it
    aside, resumes from checkpoint-1 and ends bitwise equal to a straight run, logs (num_tokens too) included."""
    args = ["--model_name_or_path", str(tiny_model_dir), "--max_steps", "2", "--save_steps", "1",
            "--logging_steps", "1", "--report_to", "none", "--per_device_train_batch_size", "2",
            "--max_train_samples", "16", "--eval_size", "4", "--learning_rate", "1e-3", "--bf16", "false",
            "--max_length", "128", "--disable_tqdm", "true"]

    def run(out: Path):
        stages.run_stage("sft", *stages.make_parser("sft").parse_args_and_config(
            args=[*args, "--output_dir", str(out)]))

    run(tmp_path / "straight")
    real_save = torch.save

    def crashing_save(obj, f, *a, **k):
        if Path(str(f)).parent.name == "checkpoint-2":
            raise CrashInSave(f)
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(CrashInSave):
        run(tmp_path / "crashed")
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "crashed" / "checkpoint-2" / "model.safetensors").is_file()
    assert not (tmp_path / "crashed" / "checkpoint-2" / "trainer_state.json").exists()
    run(tmp_path / "crashed")
    assert (tmp_path / "crashed" / "incomplete-checkpoint-2").is_dir()
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "crashed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert chaos.compare_logs(tmp_path / "straight", tmp_path / "crashed") == []
    assert len(chaos.step_logs(tmp_path / "straight")) == 2


@pytest.mark.slow
def test_chaos_harness_kill_anywhere_resume_lose_nothing(tmp_path, capsys):
    """The full harness: 5 SIGKILLs per stage (one during a checkpoint save, one by timer), SFT, DPO, GRPO, PPO."""
    code = chaos.chaos_main(["--workdir", str(tmp_path), "--kills", "5"])
    table = capsys.readouterr().out
    assert code == 0, table
    for stage in chaos.DEFAULT_STAGES:
        row = next(line for line in table.splitlines() if line.startswith(f"| {stage} |"))
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert int(cells[1].split()[0]) >= 5 and int(cells[1].split("(")[1][0]) >= 1, row  # kills, in a save
        assert float(cells[4]) == 0.0 and cells[6] == "yes" and cells[8] == "0", row


def test_generation_cycle_warning_for_grpo_and_rloo_checkpoints(tmp_path, caplog):
    """TRL's GRPO/RLOO buffer completions across a cycle of steps_per_generation x num_iterations micro-batches and
    do not checkpoint the buffer: a save_steps that cuts a cycle is warned about, with the multiple that fixes it."""
    from open_rlhf.config import GRPOConfig, RLOOConfig, generation_cycle_warning

    common = dict(per_device_train_batch_size=4, num_generations=4, gradient_accumulation_steps=2, num_iterations=2,
                  report_to="none")
    for config_class in (GRPOConfig, RLOOConfig):
        cut = config_class(output_dir=str(tmp_path / "a"), save_steps=1, **common)
        assert cut.steps_per_generation == 2  # TRL's default: gradient_accumulation_steps
        message = generation_cycle_warning(cut)  # a cycle is 2 x 2 = 4 micro-batches = 2 optimizer steps
        assert message is not None and "multiple of 2" in message
        assert generation_cycle_warning(config_class(output_dir=str(tmp_path / "b"), save_steps=6, **common)) is None
    with caplog.at_level("WARNING", logger="open_rlhf.config"):
        GRPOConfig(output_dir=str(tmp_path / "c"), save_steps=3, **common)
    assert "regenerates completions" in caplog.text
    odd = dict(common, gradient_accumulation_steps=1, num_iterations=3, steps_per_generation=1)
    assert "multiple of 3" in generation_cycle_warning(GRPOConfig(output_dir=str(tmp_path / "d"), save_steps=2, **odd))
