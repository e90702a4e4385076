"""Benchmark: context compression (open_rlhf.inference.compress) on long prompts, uncompressed baseline in the same run.

(a) GSM8K test questions with 8 worked GSM8K train examples in the prompt (8-shot): prompt tokens and greedy
    accuracy, full prompt vs compressed to ``--compress_ratio``.
(b) MT-Bench second turns (user turn 1, the model's own greedy answer to it, user turn 2): prompt tokens, and a
    quality proxy: the mean log-likelihood per token (nats) of the full-prompt greedy answer to turn 2 under the
    compressed prompt minus under the full prompt (0 = the compression does not change what the model would say;
    more negative = it does). A proxy, not a judged score: no judge model runs here.

The policy is its own small LM for the compression. Prints a table and writes ``results.json`` to ``--output_dir``.

    python scripts/bench_compress.py                          # default model, 32 GSM8K questions, 16 MT-Bench questions
    python scripts/bench_compress.py --compress_ratio 0.33 --num_gsm8k 64
"""

import argparse
import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from open_rlhf import hardware, models
from open_rlhf.atomic import atomic_write_text
from open_rlhf.benchmark import print_table
from open_rlhf.inference.compress import ContextCompressor, compress_prompts
from open_rlhf.inference.sampling import prompt_text, sample
from open_rlhf.tasks.gsm8k import extract_final_answer, normalize_number, user_prompt

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def gsm8k_prompts(n: int, shots: int = 8) -> tuple[list[str], list[str]]:
    train, test = read_jsonl(DATA / "gsm8k" / "train.jsonl"), read_jsonl(DATA / "gsm8k" / "test.jsonl")
    examples = "\n\n".join(f"Question: {r['question']}\nAnswer: {re.sub(r'<<[^<>]*>>', '', r['answer'])}"
                           for r in train[:shots])
    prompts = [f"{examples}\n\nQuestion: {user_prompt(r['question'])}" for r in test[:n]]
    return prompts, [normalize_number(r["answer"].split("####")[-1]) for r in test[:n]]


@torch.no_grad()
def answer_loglik(model, tokenizer, prompts: list, answers: list[str]) -> list[float]:
    """Mean log-likelihood per token (nats) of each answer after its prompt."""
    out = []
    for prompt, answer in zip(prompts, answers, strict=True):
        context = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        target = tokenizer(answer, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        x = torch.tensor([context + target])
        logp = model(input_ids=x).logits[0, len(context) - 1:-1].float().log_softmax(-1)
        out.append(float(logp.gather(1, torch.tensor(target)[:, None]).mean()))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="policy (default: the default model)")
    p.add_argument("--compress_ratio", type=float, default=0.5)
    p.add_argument("--num_gsm8k", type=int, default=32)
    p.add_argument("--num_mt_bench", type=int, default=16)
    p.add_argument("--max_new_tokens", type=int, default=192)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--output_dir", default=None, help="default runs/bench_compress/<time>")
    args = p.parse_args()
    out_dir = Path(args.output_dir or f"runs/bench_compress/{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")
    if (out_dir / "results.json").exists():
        raise SystemExit(f"error: {out_dir / 'results.json'} exists; outputs are never overwritten. Pass a new "
                         "--output_dir.")
    model, tokenizer = models.load_inference_model(args.model)
    compressor = ContextCompressor(model, tokenizer, args.compress_ratio)
    rows, results = [], {"cpu": hardware.describe_cpu(), "compress_ratio": args.compress_ratio}

    # (a) GSM8K 8-shot
    prompts, gold = gsm8k_prompts(args.num_gsm8k)
    start = time.perf_counter()
    compressed, stats = compress_prompts(tqdm(prompts, desc="compress GSM8K"), compressor)
    compress_seconds = time.perf_counter() - start
    for name, batch in (("full", prompts), ("compressed", compressed)):
        start = time.perf_counter()
        out = sample(model, tokenizer, batch, 1, args.max_new_tokens, temperature=0, batch_size=args.batch_size,
                     desc=f"GSM8K 8-shot, {name}")
        seconds = time.perf_counter() - start
        accuracy = sum(extract_final_answer(s[0].text) == g for s, g in zip(out, gold, strict=True)) / len(gold)
        tokens = stats["original_tokens" if name == "full" else "kept_tokens"] / len(prompts)
        results[f"gsm8k_{name}"] = {"accuracy": accuracy, "prompt_tokens": tokens, "generate_seconds": seconds}
        rows.append({"set": "GSM8K 8-shot", "prompt": name, "prompts": len(prompts), "prompt tokens": f"{tokens:.0f}",
                     "kept": f"{tokens / (stats['original_tokens'] / len(prompts)):.2f}", "accuracy": f"{accuracy:.3f}",
                     "generate s": f"{seconds:.0f}"})
    results["gsm8k_compress_seconds"] = compress_seconds

    # (b) MT-Bench second turns
    questions = read_jsonl(DATA / "mt_bench" / "question.jsonl")[:args.num_mt_bench]
    first = sample(model, tokenizer, [q["turns"][0] for q in questions], 1, 128, temperature=0,
                   batch_size=args.batch_size, desc="MT-Bench turn 1")
    full = [[{"role": "user", "content": q["turns"][0]}, {"role": "assistant", "content": a[0].text},
             {"role": "user", "content": q["turns"][1]}] for q, a in zip(questions, first, strict=True)]
    second = sample(model, tokenizer, full, 1, 128, temperature=0, batch_size=args.batch_size, desc="MT-Bench turn 2")
    answers = [s[0].text for s in second]
    short, mt_stats = compress_prompts(full, compressor)
    base = answer_loglik(model, tokenizer, full, answers)
    comp = answer_loglik(model, tokenizer, short, answers)
    delta = sum(c - b for c, b in zip(comp, base, strict=True)) / len(base)
    results["mt_bench"] = {**mt_stats, "loglik_full": sum(base) / len(base), "loglik_compressed": sum(comp) / len(comp),
                           "loglik_delta": delta}
    n = len(full)
    for name, tokens, ll in (("full", mt_stats["original_tokens"], sum(base) / n),
                             ("compressed", mt_stats["kept_tokens"], sum(comp) / n)):
        rows.append({"set": "MT-Bench turn 2", "prompt": name, "prompts": n, "prompt tokens": f"{tokens / n:.0f}",
                     "kept": f"{tokens / mt_stats['original_tokens']:.2f}",
                     "accuracy": f"loglik/token {ll:.3f}", "generate s": ""})
    print_table(rows, list(rows[0]), title=f"Context compression, ratio {args.compress_ratio}\n{results['cpu']}")
    print(f"MT-Bench: log-likelihood per token of the full-prompt answer, compressed minus full: {delta:+.3f} nats")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=1))
    print(f"results: {out_dir / 'results.json'}")


if __name__ == "__main__":
    main()
