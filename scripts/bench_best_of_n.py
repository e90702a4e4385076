"""Benchmark: throughput of best-of-N sampling: N sequential ``generate`` calls vs one batched call vs transformers'
continuous batching (``generate_batch``, paged KV cache), same model, prompts and sampling settings, same process.

The table gives samples/s and generated tokens/s of each and the ratio against the N sequential calls.

    python scripts/bench_best_of_n.py                       # the default model, 4 prompts, N = 8, 64 new tokens
    python scripts/bench_best_of_n.py --n 16 --max_new_tokens 128
"""

import time
from dataclasses import dataclass, field

import torch
from trl import TrlParser

from open_rlhf import models
from open_rlhf.benchmark import report
from open_rlhf.inference.sampling import as_messages, sample

PROMPTS = ["What is 17 + 25? End with #### and the number.", "Give me three tips for staying focused.",
           "Explain why the sky is blue in two sentences.", "Write a haiku about autumn leaves."]


@dataclass
class BenchBestOfNArguments:
    model: str = field(default="default", metadata={"help": "The policy."})
    n: int = field(default=8, metadata={"help": "Samples per prompt."})
    max_new_tokens: int = field(default=64, metadata={"help": "Cap per sample."})
    results_csv: str = field(default="bench_results/best_of_n.csv", metadata={"help": "Rows are appended here."})


def main(args: BenchBestOfNArguments) -> None:
    model, tokenizer = models.load_inference_model(args.model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    settings = dict(max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0)
    sample(model, tokenizer, PROMPTS[:1], 2, 8)  # warm-up
    rows = []

    def timed(name, fn):
        torch.manual_seed(0)
        start = time.perf_counter()
        tokens, samples = fn()
        seconds = time.perf_counter() - start
        rows.append({"method": name, "samples": samples, "tokens": tokens, "seconds": seconds,
                     "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds})

    def sequential():
        out = [sample(model, tokenizer, [p], 1, **settings)[0][0] for p in PROMPTS for _ in range(args.n)]
        return sum(s.num_tokens for s in out), len(out)

    def batched():
        out = sample(model, tokenizer, PROMPTS, args.n, batch_size=len(PROMPTS) * args.n, **settings)
        return sum(s.num_tokens for per in out for s in per), sum(len(per) for per in out)

    timed(f"{args.n} sequential calls per prompt", sequential)
    timed("one batched call (num_return_sequences)", batched)
    try:
        from transformers import GenerationConfig

        inputs = [tokenizer.apply_chat_template(as_messages(p), add_generation_prompt=True, return_dict=True)
                  ["input_ids"] for p in PROMPTS for _ in range(args.n)]
        config = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=True, temperature=1.0, top_k=0,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)

        def continuous():
            out = model.generate_batch(inputs, generation_config=config)
            return sum(len(o.generated_tokens) for o in out.values()), len(out)

        timed("generate_batch (continuous batching)", continuous)
    except Exception as error:  # a backend this transformers build or this device lacks: say so in the table
        rows.append({"method": f"generate_batch: not available ({type(error).__name__}: {str(error)[:80]})"})
    for row in rows:
        if "samples_per_s" in row:
            row["vs_sequential"] = row["samples_per_s"] / rows[0]["samples_per_s"]
    report(rows, ["method", "samples", "tokens", "seconds", "samples_per_s", "tokens_per_s", "vs_sequential"],
           f"Best-of-N sampling throughput: {len(PROMPTS)} prompts x N={args.n}, max {args.max_new_tokens} new tokens, "
           "temperature 1", args.results_csv, args.model)


if __name__ == "__main__":
    (bench_args,) = TrlParser(BenchBestOfNArguments).parse_args_and_config()
    main(bench_args)
