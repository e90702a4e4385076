"""Experiment tracking through transformers' integrations in our PPO: trackio (local-first) logs, read back.

(TensorBoard is tested in tests/test_ppo_trainer.py; the TRL stages use the same integrations natively.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
