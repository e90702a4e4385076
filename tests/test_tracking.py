"""Experiment tracking through transformers' integrations: trackio (local-first, offline) and TensorBoard, read back,
in our PPO and in a TRL stage (SFT) run by the stage runner; the pipeline passes ``--report_to`` to every stage.

(PPO's TensorBoard is tested in tests/test_ppo_trainer.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, sys, tempfile
from tests.test_ppo_trainer import PPOTrainer, make_args, make_models, prompts, target_reward
from open_rlhf.models import ensure_default_model, load_tokenizer
tokenizer = load_tokenizer(str(ensure_default_model()), padding_side="left")
policy, ref, value = make_models(tokenizer)
args = make_args(sys.argv[1], max_steps=2, save_strategy="no", report_to="trackio", project="open-rlhf-test",
                 run_name="ppo-trackio")
history = PPOTrainer(args, tokenizer, policy, ref, target_reward, value, prompts()).train()
from trackio.sqlite_storage import SQLiteStorage
logged = [row["train/objective/scores"] for row in SQLiteStorage.get_logs("open-rlhf-test", "ppo-trackio")
          if "train/objective/scores" in row]  # transformers prefixes training metrics with train/
print("RESULT " + json.dumps({"history": [h["objective/scores"] for h in history], "logged": logged}))
"""


def test_report_to_trackio_logs_the_scalars_locally(tmp_path):
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "ppo")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert len(result["history"]) == 2 and result["logged"] == result["history"]
    assert (tmp_path / "trackio" / "open-rlhf-test.db").is_file()


SFT_FLAGS = ["--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no", "--per_device_train_batch_size", "2",
             "--max_train_samples", "8", "--eval_size", "2", "--max_length", "128", "--bf16", "false",
             "--disable_tqdm", "true"]


def test_sft_stage_report_to_tensorboard_logs_the_loss(tmp_path, tiny_model_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from open_rlhf import outputs, report, stages

    out = tmp_path / "sft"
    stages.run_stage("sft", *stages.make_parser("sft").parse_args_and_config(args=[
        "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--report_to", "tensorboard",
        *SFT_FLAGS]))
    (folder,) = report.tracking_dirs(tmp_path, ["sft"])["sft"]  # <output_dir>/runs/<time>_<host>/
    events = EventAccumulator(str(folder))
    events.Reload()
    logged = [e.value for e in events.Scalars("train/loss")]
    history = [h["loss"] for h in outputs.read_log_history(out) if "loss" in h]
    assert len(logged) == 2 and logged == pytest.approx(history, rel=1e-6)  # TensorBoard stores float32


@pytest.mark.slow  # a stage subprocess (about 30 s); trackio in our PPO is in the default suite
def test_sft_stage_report_to_trackio_writes_locally_offline(tmp_path, tiny_model_dir):
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "train_sft.py"), "--model_name_or_path",
                          str(tiny_model_dir), "--output_dir", str(tmp_path / "sft"), "--report_to", "trackio",
                          "--project", "open-rlhf-sft", "--run_name", "sft", *SFT_FLAGS],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    check = subprocess.run([sys.executable, "-c", "import json; from trackio.sqlite_storage import SQLiteStorage; "
                            "print(json.dumps([r.get('train/loss') for r in SQLiteStorage.get_logs('open-rlhf-sft', "
                            "'sft') if 'train/loss' in r]))"], env=env, capture_output=True, text=True, timeout=120)
    losses = json.loads(check.stdout.strip().splitlines()[-1])
    history = json.loads((tmp_path / "sft" / "trainer_state.json").read_text())["log_history"]
    assert losses == [h["loss"] for h in history if "loss" in h] and len(losses) == 2
    assert (tmp_path / "trackio" / "open-rlhf-sft.db").is_file()


def test_pipeline_passes_report_to_every_stage(tmp_path):
    from open_rlhf.pipeline import PipelineArguments, stage_plan

    for method in ("ppo", "dpo", "grpo"):
        args = PipelineArguments(runs_dir=str(tmp_path), run_name="r", method=method, report_to="tensorboard,trackio",
                                 method_args="--report_to tensorboard")
        for name, command in stage_plan(args):
            i = command.index("--report_to")
            assert command[i + 1] == "tensorboard,trackio" and command[command.index("--run_name") + 1] == name
            assert command[command.index("--project") + 1] == "open-rlhf-r"
            if name == method:  # the stage's own extra flags come last and win
                assert command[-2:] == ["--report_to", "tensorboard"]
    spin = PipelineArguments(runs_dir=str(tmp_path), method="spin", report_to="tensorboard")
    command = dict(stage_plan(spin))["spin"]
    assert command[command.index("--stage_args") + 1] == "--report_to tensorboard"
    plain = PipelineArguments(runs_dir=str(tmp_path), method="dpo")
    assert all("--report_to" not in command for _, command in stage_plan(plain))
