"""Data parallel on the CPU: 2 processes (``accelerate launch``, DDP over gloo) with per-process batch b train as
1 process with batch 2b, for SFT, DPO, PPO, REINFORCE++ and PPO-ptx (``tests/multiprocess_worker.py`` runs them).

Tolerances: the two runs see the same examples in the same optimizer steps; only the floating-point summation
order differs (per-process partial sums, gloo's all-reduce), so losses agree to 1e-5 relative and weights to
1e-5 absolute, against updates of 2e-3 (SFT, DPO: AdamW at lr 1e-3 for 3 steps) to 1e-2 (PPO).

FSDP2 (``config/accelerate/fsdp.yaml``, ``fsdp_version: 2``): PPO and REINFORCE++ with every parameter sharded over
the 2 processes (``fully_shard`` on a CPU mesh over gloo) train as the single process too. accelerate 1.15 enables
FSDP only on accelerator devices, so the worker switches its CPU state to FSDP (`multiprocess_worker.force_fsdp_on_cpu`);
everything after that (sharding, gathered generation, the sharded reference, the gathered save) is the GPU path.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "multiprocess_worker.py"
GLOBAL_BATCH = 4
STAGES = ("sft", "dpo", "ppo", "reinforce_pp")
# The 2-process launches take over a minute of the default run's 12-minute budget on 2 AVX2 cores: make test-slow.
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(command: list[str], log: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as f:
        proc = subprocess.run(command, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=900)
    assert proc.returncode == 0, f"{' '.join(command)} failed; see its output:\n{log.read_text()[-4000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> dict[int, Path]:
    """The worker once on 1 process and once on 2 (the accelerate config of the README's multi-CPU command)."""
    root = tmp_path_factory.mktemp("multiprocess")
    one, two = root / "one", root / "two"
    _run([sys.executable, str(WORKER), str(one), str(tiny_model_dir), str(GLOBAL_BATCH)], root / "one.log")
    accelerate = Path(sys.executable).with_name("accelerate")
    _run([str(accelerate), "launch", "--config_file", str(REPO / "config/accelerate/multi_cpu.yaml"),
          "--num_processes", "2", "--main_process_port", str(_free_port()), str(WORKER), str(two),
          str(tiny_model_dir), str(GLOBAL_BATCH)], root / "two.log")
    return {1: one, 2: two}


def record(run: Path, stage: str, rank: int = 0) -> dict:
    return json.loads((run / f"{stage}-rank{rank}.json").read_text())


@pytest.mark.parametrize("stage", STAGES)
def test_two_processes_train_as_one_with_twice_the_batch(runs, stage):
    one, two = record(runs[1], stage), record(runs[2], stage)
    loss_key = "loss" if stage in ("sft", "dpo") else "loss/policy"
    assert len(one[loss_key]) == 3
    torch.testing.assert_close(torch.tensor(two[loss_key]), torch.tensor(one[loss_key]), rtol=1e-5, atol=1e-6)
    a, b = load_file(runs[1] / stage / "model.safetensors"), load_file(runs[2] / stage / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=f"{stage}: {name}")


@pytest.mark.parametrize("stage", STAGES)
def test_learning_rate_schedule_is_the_single_process_one(runs, stage):
    """The LR of every step equals one process's (accelerate used to step our PPO scheduler once per process)."""
    one, two = record(runs[1], stage), record(runs[2], stage)
    assert two["learning_rate"] == pytest.approx(one["learning_rate"]) and one["learning_rate"][-1] < one[
        "learning_rate"][0]


@pytest.mark.parametrize("stage", ["ppo", "reinforce_pp"])
def test_ppo_statistics_are_global(runs, stage):
    """The adaptive KL coefficient and the logged metrics are those of the global batch, identical on both ranks
    and equal to one process's (they were rank-local); the value loss too (PPO)."""
    one = record(runs[1], stage)
    ranks = [record(runs[2], stage, r) for r in (0, 1)]
    for key in ("kl_coef", "objective/scores", "objective/kl", "response/length", "loss/value"):
        assert ranks[0][key] == ranks[1][key], key
        torch.testing.assert_close(torch.tensor(ranks[0][key]), torch.tensor(one[key]), rtol=1e-5, atol=1e-6)
    assert ranks[0]["final_kl_coef"] == ranks[1]["final_kl_coef"] == pytest.approx(one["final_kl_coef"])
    assert one["final_kl_coef"] != 0.05  # the controller moved it


@pytest.mark.parametrize("stage", ["ppo", "reinforce_pp"])
def test_gradients_are_all_reduced_once_per_optimizer_step(runs, stage):
    """2 micro-batches per optimizer step: DDP reduces gradients in the second backward only (no_sync on the first)."""
    for rank in (0, 1):
        r = record(runs[2], stage, rank)
        assert r["backward_calls"] == 12  # 3 updates x 2 PPO epochs x 2 micro-batches
        assert r["all_reduce_in_backward"] == [2, 4, 6, 8, 10, 12]


def test_ppo_ptx_on_two_processes_trains_as_one(runs):
    """PPO-ptx (a value model, ptx_coef 1): the demonstrations' backward runs under no_sync before the RL
    micro-batches, each process on its half of the same rows; its NLL is normalised by the global token count, so
    with completions of different lengths the losses and final weights (policy and value model) still equal one
    process's, and the all-reduce still happens once per optimizer step (in the last RL micro-batch)."""
    one = record(runs[1], "ppo_ptx")
    assert len(one["loss/ptx"]) == 3 and one["loss/ptx"][-1] < one["loss/ptx"][0]
    for rank in (0, 1):
        two = record(runs[2], "ppo_ptx", rank)
        for key in ("loss/policy", "loss/value", "loss/ptx", "objective/scores"):
            torch.testing.assert_close(torch.tensor(two[key]), torch.tensor(one[key]), rtol=1e-5, atol=1e-6, msg=key)
        assert two["backward_calls"] == 18  # 3 updates x 2 PPO epochs x (1 ptx + 2 RL micro-batches)
        assert two["all_reduce_in_backward"] == [3, 6, 9, 12, 15, 18]
    for name in ("model.safetensors", "value_model/model.safetensors"):
        a, b = load_file(runs[1] / "ppo_ptx" / name), load_file(runs[2] / "ppo_ptx" / name)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=f"{name}: {key}")


def test_a_dataset_smaller_than_the_global_rollout_batch_says_what_to_change(runs):
    assert record(runs[1], "small")["error"] is None  # 3 prompts are enough for one process with batch 2
    for rank in (0, 1):
        error = record(runs[2], "small", rank)["error"]
        assert error.startswith("ConfigError") and "2 processes" in error and "Fix:" in error


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, tiny_model_dir) -> Path:
    """PPO and REINFORCE++ on 2 processes under FSDP2 (``config/accelerate/fsdp.yaml`` with mixed precision off)."""
    root = tmp_path_factory.mktemp("fsdp")
    accelerate = Path(sys.executable).with_name("accelerate")
    _run([str(accelerate), "launch", "--config_file", str(REPO / "config/accelerate/fsdp.yaml"), "--num_processes", "2",
          "--mixed_precision", "no", "--main_process_port", str(_free_port()), str(WORKER), str(root / "fsdp"),
          str(tiny_model_dir), str(GLOBAL_BATCH), "fsdp"], root / "fsdp.log")
    return root / "fsdp"


@pytest.mark.parametrize("stage", ["ppo", "reinforce_pp"])
def test_fsdp2_shards_and_trains_as_one_process(runs, fsdp_run, stage):
    """Under FSDP2 every trained parameter is a DTensor shard, generation runs on the gathered weights on both
    ranks (same scores as one process: the rollouts are identical), and losses and final weights equal one
    process's (the tiny model's tied LM head stays tied: accelerate re-ties through `PolicyAndValue.tie_weights`)."""
    one = record(runs[1], stage)
    ranks = [record(fsdp_run, stage, r) for r in (0, 1)]
    for r in ranks:
        assert r["distributed_type"] == "DistributedType.FSDP"
        assert r["sharded_parameters"] == r["parameters"] > 0
    assert ranks[0]["loss/policy"] == ranks[1]["loss/policy"]
    for key in ("objective/scores", "loss/policy", "kl_coef", "learning_rate"):
        torch.testing.assert_close(torch.tensor(ranks[0][key]), torch.tensor(one[key]), rtol=1e-5, atol=1e-6)
    folders = [(stage, "model.safetensors")] + ([(stage, "value_model/model.safetensors")] if stage == "ppo" else [])
    for folder, name in folders:
        a, b = load_file(runs[1] / folder / name), load_file(fsdp_run / folder / name)
        assert a.keys() == b.keys(), name
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=f"{stage}: {key}")
