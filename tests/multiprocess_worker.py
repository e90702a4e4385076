"""Worker of tests/test_multiprocess.py: SFT, DPO, PPO, REINFORCE++ and PPO-ptx on tiny models, run by 1 or N processes.

    python tests/multiprocess_worker.py OUT TINY_MODEL_DIR GLOBAL_BATCH              # one process
    accelerate launch --config_file config/accelerate/multi_cpu.yaml tests/multiprocess_worker.py OUT TINY GLOBAL_BATCH
    accelerate launch --config_file config/accelerate/fsdp.yaml --mixed_precision no \
        tests/multiprocess_worker.py OUT TINY GLOBAL_BATCH fsdp                   # PPO and REINFORCE++ only, FSDP2

Every run uses the same global batch (GLOBAL_BATCH sequences per optimizer step), so each process takes
GLOBAL_BATCH / N. Writes, per stage, the final weights (rank 0) and ``<stage>-rank<r>.json`` with what each rank
saw: the logged losses and metrics, the learning rate after the last step and, for PPO, the KL coefficient. The
stages run exactly as in training: SFT and DPO through `open_rlhf.stages.run_stage`, PPO through `PPOTrainer`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from accelerate import PartialState  # noqa: E402

from open_rlhf import outputs, stages  # noqa: E402
from open_rlhf.trainers.ppo import PPOConfig, PPOTrainer  # noqa: E402

STEPS = 3


def force_fsdp_on_cpu() -> None:
    """Turn this CPU run's accelerate state into FSDP (the plugin from the ``FSDP_*`` variables that ``accelerate
    launch --config_file config/accelerate/fsdp.yaml`` sets).

    Test-only: accelerate 1.15 enables FSDP only on accelerator devices (``AcceleratorState.__init__`` sets
    ``DistributedType.FSDP`` inside its CUDA/XPU/NPU/... branch), so on a CPU-only machine the processes join as
    ``MULTI_CPU`` (DDP over gloo). torch 2.13's ``fully_shard`` itself works on a CPU device mesh over gloo, so
    after the state exists we switch it to FSDP; from there on `PPOTrainer`'s code path is the GPU one
    (``accelerator.prepare`` shards with ``fully_shard``, the reference goes through TRL's ``prepare_fsdp``).
    Called after `PPOConfig` (its ``__post_init__`` resets the shared state).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = Accelerator(cpu=True).state
    assert state.distributed_type == DistributedType.MULTI_CPU, state.distributed_type
    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables (fsdp_version 2, ...)
    PartialState().distributed_type = state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin


def dump(out: Path, name: str, record: dict) -> None:
    state = PartialState()
    (out / f"{name}-rank{state.process_index}.json").write_text(json.dumps(record, indent=1))


def run_trl_stage(stage: str, out: Path, tiny: str, per_device: int) -> None:
    folder = out / stage
    args = ["--model_name_or_path", tiny, "--output_dir", str(folder), "--max_steps", str(STEPS),
            "--per_device_train_batch_size", str(per_device), "--gradient_accumulation_steps", "1",
            "--max_train_samples", "32", "--eval_size", "4", "--learning_rate", "1e-3", "--lr_scheduler_type", "linear",
            "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--bf16", "false", "--seed", "0",
            "--gradient_checkpointing", "false", "--dataloader_num_workers", "0"]
    parsed = stages.make_parser(stage).parse_args_and_config(args=args)
    stages.run_stage(stage, *parsed)
    history = outputs.read_log_history(folder) if PartialState().is_main_process else []
    dump(out, stage, {"loss": [h["loss"] for h in history if "loss" in h],
                      "learning_rate": [h["learning_rate"] for h in history if "learning_rate" in h]})


def ptx_demonstrations(n: int = 16):
    """Demonstrations for PPO-ptx whose completions differ in length (1 to 4 words), so the processes' shares hold
    different token counts and a per-process mean would differ from the global one."""
    from datasets import Dataset

    return Dataset.from_dict({
        "prompt": [[{"role": "user", "content": f"Write something, number {i}."}] for i in range(n)],
        "completion": [[{"role": "assistant", "content": " ".join(["cat"] * (1 + i % 4))}] for i in range(n)]})


def run_ppo(out: Path, tiny: str, global_batch: int, estimator: str, fsdp: bool = False, ptx: bool = False) -> None:
    """PPO (GAE) or REINFORCE++ with adaptive KL and reward whitening (both reduce over the global batch), two
    micro-batches per optimizer step (gradient accumulation: the all-reduce happens on the second only). With
    ``ptx``, PPO-ptx (``ptx_coef`` 1): a micro-batch of demonstrations per minibatch, its backward under no_sync."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from tests.test_ppo_trainer import prompts, restrict_to_words, target_reward

    state = PartialState()
    name = ("ppo" if estimator == "gae" else "reinforce_pp") + ("_ptx" if ptx else "")
    tokenizer = AutoTokenizer.from_pretrained(tiny, padding_side="left")
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny)
    ref = AutoModelForCausalLM.from_pretrained(tiny)
    restrict_to_words(policy, tokenizer, [tokenizer.eos_token_id])
    restrict_to_words(ref, tokenizer, [tokenizer.eos_token_id])
    value = None
    if estimator == "gae":
        torch.manual_seed(0)  # the new value head: the same on every rank and in every run
        value = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1)
        value.config.pad_token_id = tokenizer.pad_token_id
    per_device = global_batch // state.num_processes
    args = PPOConfig(output_dir=str(out / name), per_device_train_batch_size=per_device // 2,
                     gradient_accumulation_steps=2, num_mini_batches=1, num_ppo_epochs=2, max_steps=STEPS,
                     response_length=6, learning_rate=3e-3, lr_scheduler_type="linear", adaptive_kl=True,
                     kl_coef=0.05, target_kl=0.01, kl_horizon=100, whiten_rewards=True, advantage_estimator=estimator,
                     save_strategy="no", report_to="none", num_sample_generations=0, seed=0, bf16=False,
                     ptx_coef=1.0 if ptx else 0.0)
    if fsdp:
        force_fsdp_on_cpu()
    trainer = PPOTrainer(args, tokenizer, policy, ref, target_reward, value, prompts(32),
                         ptx_dataset=ptx_demonstrations() if ptx else None)
    sharded = [type(p).__name__ == "DTensor" for p in trainer.wrapper.parameters()]

    # Instrumentation, not behaviour: which backward passes trigger DDP's gradient all-reduce (a comm hook sees
    # every bucket reduction); with no_sync only the last micro-batch of each minibatch may.
    backward_calls, reduced_in = [0], []
    if state.num_processes > 1 and not fsdp:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def counting_hook(process_group, bucket):
            reduced_in.append(backward_calls[0])
            return allreduce_hook(process_group, bucket)

        trainer.wrapper.register_comm_hook(None, counting_hook)
        original_backward = trainer.accelerator.backward

        def counting_backward(loss, **kwargs):
            backward_calls[0] += 1
            return original_backward(loss, **kwargs)

        trainer.accelerator.backward = counting_backward
    history = trainer.train()
    trainer.save_model(str(out / name))
    keys = ("objective/scores", "objective/kl", "loss/policy", "loss/value", "loss/ptx", "response/length", "kl_coef",
            "learning_rate")
    dump(out, name, {**{k: [h[k] for h in history if k in h] for k in keys},
                     "final_kl_coef": trainer.kl_ctl.value, "final_learning_rate": trainer.lr_scheduler.get_last_lr()[0],
                     "backward_calls": backward_calls[0], "all_reduce_in_backward": sorted(set(reduced_in)),
                     "distributed_type": str(trainer.accelerator.distributed_type),
                     "sharded_parameters": sum(sharded), "parameters": len(sharded)})


def too_small_dataset(out: Path, tiny: str) -> None:
    """3 prompts for a rollout batch of 2 per process: enough for one process, not for two."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.test_ppo_trainer import prompts, target_reward

    tokenizer = AutoTokenizer.from_pretrained(tiny, padding_side="left")
    policy, ref = AutoModelForCausalLM.from_pretrained(tiny), AutoModelForCausalLM.from_pretrained(tiny)
    args = PPOConfig(output_dir=str(out / "small"), per_device_train_batch_size=2, gradient_accumulation_steps=1,
                     advantage_estimator="reinforce_pp", max_steps=1, report_to="none", bf16=False)
    try:
        PPOTrainer(args, tokenizer, policy, ref, target_reward, None, prompts(3))
        message = None
    except Exception as error:  # noqa: BLE001 -- the record says which error it was
        message = f"{type(error).__name__}: {error}"
    dump(out, "small", {"error": message})


def main(out: str, tiny: str, global_batch: str, mode: str = "all") -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    global_batch = int(global_batch)
    # cpu=True: without it, a CPU-only machine's first PartialState would be a single process (no gloo group)
    per_device = global_batch // PartialState(cpu=True).num_processes
    if mode == "fsdp":
        run_ppo(out, tiny, global_batch, "gae", fsdp=True)
        run_ppo(out, tiny, global_batch, "reinforce_pp", fsdp=True)
        return
    run_trl_stage("sft", out, tiny, per_device)
    run_trl_stage("dpo", out, tiny, per_device)
    run_ppo(out, tiny, global_batch, "gae")
    run_ppo(out, tiny, global_batch, "reinforce_pp")
    run_ppo(out, tiny, global_batch, "gae", ptx=True)
    too_small_dataset(out, tiny)


if __name__ == "__main__":
    main(*sys.argv[1:])
