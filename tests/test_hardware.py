"""Precision from the hardware: the same preset runs bf16 autocast only where the CPU (or GPU) has native bf16.

A CPU without native bf16 is emulated on any machine with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``
(ATen's kernels and oneDNN limited to AVX2), which both checks of `open_rlhf.hardware.cpu_native_bf16` honour.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from open_rlhf import hardware

REPO = Path(__file__).resolve().parents[1]
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
PARSE = """
import json, sys
from open_rlhf import hardware, stages
stage, *argv = sys.argv[1:]
_, args, _ = stages.make_parser(stage).parse_args_and_config(args=argv)
print(json.dumps({"bf16": args.bf16, "reason": args.precision_reason, "line": args.precision_line,
                  "native": hardware.cpu_native_bf16()}))
"""


def parse_in_subprocess(stage: str, *argv: str, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", PARSE, stage, *argv], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU precision choice")


@pytest.mark.parametrize("stage", ["sft", "ppo"])
def test_default_presets_run_fp32_on_a_cpu_without_native_bf16(stage, tmp_path):
    parsed = parse_in_subprocess(stage, "--config", f"config/{stage}/default.yaml", "--output_dir", str(tmp_path),
                                 env=AVX2_ONLY)
    assert parsed["native"] is False and parsed["bf16"] is False
    assert parsed["line"].startswith("precision: fp32 (the CPU has no native bf16 (ATen AVX2")


def test_an_explicit_flag_still_forces_bf16(tmp_path):
    parsed = parse_in_subprocess("sft", "--config", "config/sft/default.yaml", "--output_dir", str(tmp_path),
                                 "--bf16", "true", env=AVX2_ONLY)
    assert parsed["bf16"] is True and parsed["reason"] is None and "set explicitly" in parsed["line"]


def test_presets_follow_this_machine(tmp_path):
    """On this machine, whichever CPU it has: bf16 exactly where it is native."""
    parsed = parse_in_subprocess("dpo", "--config", "config/dpo/default.yaml", "--output_dir", str(tmp_path))
    assert parsed["bf16"] is hardware.cpu_native_bf16() is parsed["native"]


def test_no_preset_hard_codes_bf16():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "config").rglob("*.yaml")
                 if "accelerate" not in p.parts and any(line.split("#")[0].strip().startswith("bf16:")
                                                         for line in p.read_text().splitlines())]
    assert offenders == []


def test_the_stage_says_which_precision_and_why(tmp_path, tiny_model_dir):
    out = subprocess.run(
        [sys.executable, "scripts/train_sft.py", "--model_name_or_path", str(tiny_model_dir), "--output_dir",
         str(tmp_path / "sft"), "--max_steps", "1", "--per_device_train_batch_size", "2", "--max_train_samples", "4",
         "--eval_size", "2", "--report_to", "none", "--save_strategy", "no"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, **AVX2_ONLY, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in (out.stdout + out.stderr).splitlines() if "precision: " in line]
    assert len(lines) == 1 and "precision: fp32 (the CPU has no native bf16" in lines[0], lines
