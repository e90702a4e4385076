"""Benchmark: speculative decoding vs plain greedy decoding, same model, same prompts, same process.

Input-grounded prompts (Self-Instruct user-oriented tasks whose instance has an input to rewrite, correct or
transform) are decoded greedily by plain ``generate`` and by each speculative variant of
`open_rlhf.inference.speculative`: prompt lookup, a self-speculative draft of the target's first layers, and a draft
model when ``--draft_model`` is given. The table gives tokens/s, the speed-up over plain greedy, the tokens produced
per forward pass of the target (1.0 for plain decoding; accepted draft tokens + 1 for speculative ones), and whether
every output is identical to plain greedy (it must be). Target: prompt lookup >= 2x on these prompts.

    python scripts/bench_generate.py --data_dir ../shared/data
    python scripts/bench_generate.py --model runs/default/ppo --draft_layers 8,15 --max_new_tokens 128
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from trl import TrlParser

from open_rlhf import models
from open_rlhf.benchmark import report
from open_rlhf.inference import speculative

GROUNDED = ("rewrite", "correct", "paraphrase", "fix", "edit", "convert", "rephrase", "grammar", "change", "format")


@dataclass
class BenchGenerateArguments:
    model: str = field(default="default", metadata={"help": "The target model."})
    data_dir: str = field(default="../shared/data", metadata={"help": "Holds self-instruct/."})
    num_prompts: int = field(default=8, metadata={"help": "Input-grounded prompts."})
    max_new_tokens: int = field(default=96, metadata={"help": "Greedy tokens per prompt."})
    draft_layers: str = field(default="8", metadata={"help": "Self-speculative draft depths, comma-separated."})
    draft_model: str = field(default="", metadata={"help": "A smaller model with the same tokenizer (optional)."})
    results_csv: str = field(default="bench_results/generate.csv", metadata={"help": "Rows are appended here."})


def grounded_prompts(data_dir: str, n: int) -> list[str]:
    """The first ``n`` Self-Instruct user-oriented tasks with an input and a rewriting-like instruction."""
    path = Path(data_dir) / "self-instruct" / "user_oriented_instructions.jsonl"
    prompts = []
    for line in path.read_text().splitlines():
        task = json.loads(line)
        instance = task["instances"][0]
        if instance["input"].strip() and any(word in task["instruction"].lower() for word in GROUNDED):
            prompts.append(f"{task['instruction']}\n\n{instance['input']}")
        if len(prompts) == n:
            break
    return prompts


class _CountTargetPasses:
    """Counts forward passes of the target: a hook on its last decoder layer, which no layer-skip draft runs."""

    def __init__(self, model):
        self.count = 0
        self.handle = model.model.layers[-1].register_forward_hook(self)

    def __call__(self, *_):
        self.count += 1


def main(args: BenchGenerateArguments) -> None:
    model, tokenizer = models.load_inference_model(args.model)
    prompts = grounded_prompts(args.data_dir, args.num_prompts)
    variants = [("plain greedy", "none", None), ("prompt lookup", "prompt_lookup", None)]
    for depth in [int(d) for d in args.draft_layers.split(",") if d.strip()]:
        variants.append((f"self-speculative ({depth}/{len(model.model.layers)} layers)", "self_speculative",
                         speculative.layer_skip_draft(model, depth)))
    if args.draft_model:
        draft, _ = models.load_inference_model(args.draft_model)
        variants.append((f"draft model {args.draft_model}", "draft_model", draft))
    speculative.generate(model, tokenizer, prompts[0], "none", max_new_tokens=8)  # warm-up
    counter = _CountTargetPasses(model)
    rows, plain = [], None
    for name, method, draft in variants:
        counter.count, seconds, tokens, outputs = 0, 0.0, 0, []
        for prompt in prompts:
            out = speculative.generate(model, tokenizer, prompt, method, args.max_new_tokens, draft=draft)
            seconds += out.seconds
            tokens += out.num_tokens
            outputs.append(out.token_ids)
        plain = plain or (tokens / seconds, outputs)
        rows.append({"method": name, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                     "speedup": tokens / seconds / plain[0], "tokens_per_target_pass": tokens / max(counter.count, 1),
                     "identical": all(torch.equal(a, b) for a, b in zip(outputs, plain[1], strict=True))})
    counter.handle.remove()
    report(rows, ["method", "tokens", "seconds", "tokens_per_s", "speedup", "tokens_per_target_pass", "identical"],
           f"Speculative decoding: {len(prompts)} input-grounded Self-Instruct prompts, greedy, "
           f"max {args.max_new_tokens} new tokens", args.results_csv, args.model)


if __name__ == "__main__":
    (bench_args,) = TrlParser(BenchGenerateArguments).parse_args_and_config()
    main(bench_args)
