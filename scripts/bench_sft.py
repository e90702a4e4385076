"""SFT throughput (tokens/s) on the default model next to this machine's measured matmul GFLOP/s: model FLOPs
utilisation (MFU) = tokens/s x training FLOPs per token / measured matmul FLOP/s.

Runs TRL's SFTTrainer on the built-in task for ``--steps`` timed steps per precision (fp32 is the baseline, the
ratio column compares against it, same process). Rows are appended to ``bench_results/bench_sft.csv``.

    python scripts/bench_sft.py
    python scripts/bench_sft.py --precisions bf16 --steps 8 --batch_size 8
"""

import tempfile
from dataclasses import dataclass, field

import torch
from trl import ModelConfig, SFTTrainer, TrlParser
from trl.trainer.utils import compute_flops_per_token

from open_rlhf import data, models
from open_rlhf.benchmark import matmul_gflops, report
from open_rlhf.config import SFTConfig
from open_rlhf.memory import PeakMemory


@dataclass
class BenchSFTArguments:
    precisions: list[str] = field(default_factory=lambda: ["fp32", "bf16"],
                                  metadata={"help": "Precisions to compare; the first is the baseline."})
    steps: int = field(default=4, metadata={"help": "Timed optimizer steps per precision (after 1 warm-up step)."})
    batch_size: int = field(default=8, metadata={"help": "Sequences per step."})
    csv: str = field(default="bench_results/bench_sft.csv", metadata={"help": "CSV the rows are appended to."})


def bench_precision(precision: str, args: BenchSFTArguments, model_path: str) -> dict:
    tokenizer = models.load_tokenizer(model_path, padding_side="right")
    model = models.load_causal_lm(model_path)
    train, _ = data.load_splits("builtin", "sft", eval_size=0, seed=0, max_samples=args.batch_size * (args.steps + 1))
    out = tempfile.mkdtemp()
    config = SFTConfig(output_dir=out, max_steps=args.steps + 1, per_device_train_batch_size=args.batch_size,
                       bf16=precision == "bf16", gradient_checkpointing=False, logging_steps=1, save_strategy="no",
                       report_to="none", learning_rate=1e-5)
    trainer = SFTTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer)
    with PeakMemory() as memory:
        trainer.train()
    logs = [h for h in trainer.state.log_history if "num_tokens" in h and "loss" in h]
    # per-step wall times are not logged; time the steps after the first from the trainer's own clock
    tokens = logs[-1]["num_tokens"] - logs[0]["num_tokens"]
    seconds = trainer.state.log_history[-1]["train_runtime"] * args.steps / (args.steps + 1)
    seq_len = tokens / (args.steps * args.batch_size)
    flops_per_token = compute_flops_per_token(model.config, int(seq_len))
    return {"precision": precision, "tokens_per_s": tokens / seconds, "seq_len": seq_len,
            "gflops_per_token": flops_per_token / 1e9, "achieved_gflops": tokens / seconds * flops_per_token / 1e9,
            "peak_mb": memory.peak_mb}


def main(args: BenchSFTArguments, model_args: ModelConfig) -> None:
    model_path = models.resolve_model_path(model_args.model_name_or_path)
    peaks = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    rows = [bench_precision(p, args, model_path) for p in args.precisions]
    for row in rows:
        row["matmul_gflops"] = peaks[row["precision"]]
        row["mfu"] = row["achieved_gflops"] / row["matmul_gflops"]
        row["speedup_vs_base"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
    report(rows, ["precision", "tokens_per_s", "seq_len", "achieved_gflops", "matmul_gflops", "mfu", "peak_mb",
                  "speedup_vs_base"], f"SFT on {model_path}, batch {args.batch_size}", args.csv, model_path)
    print("matmul_gflops: measured here, (2048x2048)@(2048x2048); MFU = achieved / measured matmul throughput")


def make_parser() -> TrlParser:
    return TrlParser((BenchSFTArguments, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
