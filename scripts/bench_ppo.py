"""Benchmark one PPO update on the default model: time split generate / score / forward / train, tokens/s, memory.

Each setting builds the policy, reference and value model from ``--model_name_or_path`` (default: the embedded
SmolLM2-135M-Instruct), runs ``--warmup`` untimed updates and ``--steps`` timed ones on the built-in prompts with
the verifiable reward, and prints a row; ratios are against the first setting (the baseline), measured in the
same process. Rows are appended to ``bench_results/bench_ppo.csv``.

    python scripts/bench_ppo.py
    python scripts/bench_ppo.py --settings "8,64,full" "16,64,full" "8,64,lora" --steps 2
"""

import tempfile
from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser

from open_rlhf import data, models, rewards
from open_rlhf.benchmark import report
from open_rlhf.memory import PeakMemory
from open_rlhf.trainers.ppo import PPOConfig, PPOTrainer


@dataclass
class BenchPPOArguments:
    settings: list[str] = field(
        default_factory=lambda: ["8,64,full", "16,64,full", "8,64,lora"],
        metadata={"help": "Settings 'rollout_batch,response_length,full|lora'; the first is the baseline."})
    steps: int = field(default=1, metadata={"help": "Timed PPO updates per setting."})
    warmup: int = field(default=1, metadata={"help": "Untimed updates first (allocator, kernel selection)."})
    num_ppo_epochs: int = field(default=2, metadata={"help": "PPO epochs per update, as in config/ppo/default.yaml."})
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 autocast; default: where the hardware runs it natively (open_rlhf.hardware), as our PPO."})
    csv: str = field(default="bench_results/bench_ppo.csv", metadata={"help": "CSV the rows are appended to."})


def bench_setting(setting: str, args: BenchPPOArguments, model_path: str) -> dict:
    batch, length, kind = setting.split(",")
    batch, length = int(batch), int(length)
    model_args = ModelConfig(model_name_or_path=model_path, use_peft=kind == "lora", lora_r=16,
                             lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    policy, ref, tokenizer, _ = models.load_policy_and_reference(model_args)
    value = models.load_value_model(None, None, model_path, tokenizer.pad_token_id)
    prompts, _ = data.load_splits("builtin", "prompt", eval_size=0, seed=0, max_samples=batch * (args.steps + args.warmup))
    config = PPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=min(batch, 8),
                       gradient_accumulation_steps=max(1, batch // 8), response_length=length,
                       num_ppo_epochs=args.num_ppo_epochs, max_steps=args.steps + args.warmup, save_strategy="no",
                       num_sample_generations=0, logging_strategy="no", bf16=args.bf16, report_to="none")
    trainer = PPOTrainer(config, tokenizer, policy, ref, [rewards.accuracy_reward], value, prompts)
    with PeakMemory() as memory:
        history = trainer.train()
    timed = history[args.warmup:]

    def mean(key):
        return sum(h[key] for h in timed) / len(timed)

    return {"setting": setting, "rollout_batch": batch, "response_length": length, "policy": kind,
            "generate_s": mean("time/generate"), "score_s": mean("time/score"), "forward_s": mean("time/forward"),
            "train_s": mean("time/train"), "step_s": mean("time/step"), "tokens_per_s": mean("tokens_per_second"),
            "mean_response_tokens": mean("response/length"), "peak_mb": memory.peak_mb, "added_mb": memory.delta_mb}


def main(args: BenchPPOArguments, model_args: ModelConfig) -> None:
    model_path = models.resolve_model_path(model_args.model_name_or_path)
    rows = []
    for setting in args.settings:
        rows.append(bench_setting(setting, args, model_path))
    base = rows[0]
    for row in rows:
        row["step_vs_base"] = row["step_s"] / base["step_s"]
        row["tokens_per_s_vs_base"] = row["tokens_per_s"] / base["tokens_per_s"]
    report(rows, ["setting", "generate_s", "score_s", "forward_s", "train_s", "step_s", "tokens_per_s", "peak_mb",
                  "step_vs_base", "tokens_per_s_vs_base"],
           f"One PPO update on {model_path} (mean of {args.steps} after {args.warmup} warm-up)", args.csv, model_path)


def make_parser() -> TrlParser:
    return TrlParser((BenchPPOArguments, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
