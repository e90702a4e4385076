"""``scripts/generate.py``: run one inference-time strategy over a prompts file and write one JSON line per prompt.

    python scripts/generate.py --model runs/default/ppo --prompts builtin --num_prompts 32 --strategy self_consistency --n 8
    python scripts/generate.py --model runs/default/ppo --prompts FILE --strategy best_of_n --n 8 --reward model:runs/default/reward
    python scripts/generate.py --prompts ../shared/data/gsm8k/test.jsonl --strategy adaptive --max_samples 16 --confidence 0.95
    python scripts/generate.py --prompts FILE --strategy speculative --speculative prompt_lookup
    python scripts/generate.py --model runs/default/ppo --strategy beam_prm --prm runs/default/prm --beam_width 2 --expand 4
    python scripts/generate.py --model runs/default/ppo --strategy mcts --prm runs/default/prm --num_simulations 16
    python scripts/generate.py --strategy mcts --evaluator rollout --reward math --num_simulations 8   # oracle verifier
    python scripts/generate.py --model runs/default/sft --strategy refine --temperature 0 --reward arith --refine_rounds 2

``--prompts`` is anything `open_rlhf.data.load_prompt_dataset` reads as prompts (a JSONL file with a ``prompt``
field, a string or chat messages; GSM8K; ``builtin``, whose held-out split is used), with an ``answer`` column when
the source has one: then each row says whether the answer is correct and the summary gives the accuracy. Rows:
``prompt, response, strategy, answer, gold, correct, score, num_samples, num_tokens, seconds`` (``refine`` adds
``scores``, the judge's score of each round's answer). The summary gives the accuracy with its 95% Wilson interval.
The output file is written once, atomically, and never overwrites an existing one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from open_rlhf.errors import ConfigError, OutputDirError, user_errors

STRATEGIES = ("greedy", "sample", "best_of_n", "self_consistency", "adaptive", "beam_prm", "mcts", "speculative",
              "refine")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="generate.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default=None, help="a policy folder or hub id (default: the default model)")
    p.add_argument("--prompts", default="builtin", help="prompts file / folder / hub id, or builtin (held-out split)")
    p.add_argument("--split", default=None, help="split to read (default: eval for builtin, else train)")
    p.add_argument("--num_prompts", type=int, default=None, help="the first N prompts only")
    p.add_argument("--strategy", choices=STRATEGIES, default="greedy")
    p.add_argument("--n", type=int, default=8, help="samples per prompt (best_of_n, self_consistency)")
    p.add_argument("--reward", default=None,
                   help="reward spec for best_of_n, the rollout evaluator and refine's judge (refine's default: arith), "
                        "e.g. model:runs/default/reward or math")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy)")
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--batch_size", type=int, default=16, help="sequences per generate call")
    p.add_argument("--max_samples", type=int, default=16, help="adaptive: the budget per prompt")
    p.add_argument("--confidence", type=float, default=0.95, help="adaptive: stop when the majority is this sure")
    p.add_argument("--prm", default=None, help="beam_prm / mcts: a PRM folder (scripts/train_prm.py)")
    p.add_argument("--evaluator", choices=("prm", "value", "rollout"), default="prm",
                   help="mcts / beam_prm: how a prefix is valued: the PRM (--prm), a PPO value model "
                        "(--value_model), or a rollout scored by --reward (e.g. math: an oracle with gold answers)")
    p.add_argument("--value_model", default=None, help="--evaluator value: e.g. runs/default/ppo/value_model")
    p.add_argument("--beam_width", type=int, default=2, help="beam_prm: prefixes kept per step")
    p.add_argument("--expand", type=int, default=4, help="beam_prm / mcts: next steps sampled per expansion")
    p.add_argument("--num_simulations", type=int, default=16, help="mcts: simulations per prompt")
    p.add_argument("--max_search_tokens", type=int, default=None, help="mcts: generated-token budget per prompt")
    p.add_argument("--c_puct", type=float, default=1.0, help="mcts: PUCT exploration constant")
    p.add_argument("--max_steps", type=int, default=10, help="beam_prm / mcts: the most steps (lines) of a solution")
    p.add_argument("--max_step_tokens", type=int, default=64, help="beam_prm / mcts: the most tokens of one step")
    p.add_argument("--speculative", choices=("none", "draft_model", "prompt_lookup", "self_speculative"),
                   default="prompt_lookup", help="speculative: the draft")
    p.add_argument("--draft_model", default=None, help="speculative draft_model: a smaller model, same tokenizer")
    p.add_argument("--draft_layers", type=int, default=None, help="self_speculative: the draft's depth (default L/4)")
    p.add_argument("--refine_rounds", type=int, default=2, help="refine: the most refinements after the first answer")
    p.add_argument("--refine_threshold", type=float, default=1.0,
                   help="refine: the judge (--reward) accepts an answer scoring this or more, and the prompt stops")
    p.add_argument("--refine_critique", action="store_true",
                   help="refine: the policy also checks its own steps, and the check is part of the feedback")
    p.add_argument("--refine_temperature", type=float, default=None,
                   help="refine: the temperature of critiques and rewrites (default: --temperature)")
    p.add_argument("--refine_keep", choices=("best", "last"), default="best",
                   help="refine: keep the best-scored answer (ties to the earlier) or the last one")
    p.add_argument("--compress_ratio", type=float, default=None,
                   help="compress each prompt to this share of its tokens first (LLMLingua-style, the policy as the "
                        "small LM; the question is kept verbatim; open_rlhf.inference.compress)")
    p.add_argument("--output", default=None, help="JSONL output file (default: runs/generate/<time>.jsonl)")
    p.add_argument("--seed", type=int, default=0)
    return p


def _check(args) -> None:
    if args.n < 1 or args.max_samples < 1:
        raise ConfigError(f"--n and --max_samples must be >= 1, got {args.n} and {args.max_samples}")
    if args.num_prompts is not None and args.num_prompts < 1:
        raise ConfigError(f"--num_prompts must be >= 1, got {args.num_prompts}")
    if args.strategy == "best_of_n" and not args.reward:
        raise ConfigError("--strategy best_of_n needs --reward (a reward spec: model:PATH for a reward model, "
                          "prm:PATH for a process reward model, or a verifier such as math when the prompts have gold "
                          "answers)")
    if args.strategy in ("beam_prm", "mcts"):
        needs = {"prm": ("--prm", args.prm), "value": ("--value_model", args.value_model),
                 "rollout": ("--reward", args.reward)}[args.evaluator]
        if not needs[1]:
            raise ConfigError(f"--strategy {args.strategy} with --evaluator {args.evaluator} needs {needs[0]} (e.g. "
                              "--prm runs/default/prm from scripts/train_prm.py)")
        for name in ("beam_width", "expand", "num_simulations", "max_steps", "max_step_tokens"):
            if getattr(args, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(args, name)}")
        if args.max_search_tokens is not None and args.max_search_tokens < 1:
            raise ConfigError(f"--max_search_tokens must be >= 1, got {args.max_search_tokens}")
    if args.refine_rounds < 0:
        raise ConfigError(f"--refine_rounds must be >= 0, got {args.refine_rounds}")
    if args.refine_temperature is not None and args.refine_temperature < 0:
        raise ConfigError(f"--refine_temperature must be >= 0 (0 = greedy), got {args.refine_temperature}")
    if not 0 < args.confidence < 1:
        raise ConfigError(f"--confidence must be in (0, 1), got {args.confidence}")
    if args.compress_ratio is not None and not 0 < args.compress_ratio <= 1:
        raise ConfigError(f"--compress_ratio is the share of prompt tokens kept, in (0, 1]; got {args.compress_ratio}")
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")


def _output_path(output: str | None) -> Path:
    from datetime import datetime, timezone

    if output is None:
        return Path("runs") / "generate" / f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.jsonl"
    path = Path(output).expanduser()
    if path.exists():
        raise OutputDirError(f"--output {path} already exists; outputs are never overwritten. Fix: pass a new file "
                             "name, or leave --output out for runs/generate/<time>.jsonl.")
    return path


def _search(args, model, tokenizer, prompts, reward, dataset):
    """beam_prm / mcts with the chosen evaluator."""
    from open_rlhf.inference import search
    from open_rlhf.inference.prm import ProcessRewardModel

    policy = search.LMStepPolicy(model, tokenizer, max_step_tokens=args.max_step_tokens, max_steps=args.max_steps,
                                 temperature=args.temperature, top_p=args.top_p, rollout_tokens=args.max_new_tokens,
                                 batch_size=args.batch_size)
    if args.evaluator == "prm":
        evaluator = search.PRMValue(ProcessRewardModel.from_pretrained(args.prm, device=model.device))
    elif args.evaluator == "value":
        evaluator = search.ValueModelValue.from_pretrained(args.value_model, device=model.device)
    else:
        evaluator = search.RolloutValue(policy, reward, {c: list(dataset[c]) for c in reward.required_columns})
    if args.strategy == "beam_prm":
        return search.beam_search(policy, evaluator, prompts, beam_width=args.beam_width, expand=args.expand)
    return search.MCTSGenerator(policy, evaluator, num_simulations=args.num_simulations, expand=args.expand,
                                c_puct=args.c_puct, max_tokens=args.max_search_tokens).generate(prompts)


def run(args) -> Path:
    """Run ``args.strategy`` over the prompts; write the rows; return the output path (see the module docstring)."""
    import torch

    from open_rlhf import data, models
    from open_rlhf.atomic import atomic_write_text
    from open_rlhf.inference import speculative, strategies
    from open_rlhf.metrics import accuracy_interval
    from open_rlhf.rewards import build_reward_functions, check_columns
    from open_rlhf.tasks.gsm8k import normalize_number

    _check(args)
    out_path = _output_path(args.output)
    split = args.split or ("eval" if args.prompts.strip().lower().startswith("builtin") else "train")
    dataset = data.load_prompt_dataset(args.prompts, split=split)
    if args.num_prompts:
        dataset = dataset.select(range(min(args.num_prompts, len(dataset))))
    prompts = list(dataset["prompt"])
    gold = list(dataset["answer"]) if "answer" in dataset.column_names else None
    reward = None
    # refine's default judge is arith: it reads no gold answer (math with gold answers would be an oracle judge)
    spec = args.reward or ("arith" if args.strategy == "refine" else None)
    rollout = args.strategy in ("beam_prm", "mcts") and args.evaluator == "rollout"
    if args.strategy in ("best_of_n", "refine") or rollout:
        reward = build_reward_functions(spec)
        check_columns(reward, dataset.column_names, args.prompts)
    torch.manual_seed(args.seed)
    model, tokenizer = models.load_inference_model(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if args.compress_ratio is not None:
        from open_rlhf.inference.compress import ContextCompressor, compress_prompts

        original_prompts = prompts
        prompts, stats = compress_prompts(prompts, ContextCompressor(model, tokenizer, args.compress_ratio))
        print(f"compressed prompts: {stats['original_tokens']} -> {stats['kept_tokens']} tokens "
              f"({stats['kept_share']:.1%} kept)", flush=True)
    common = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    sampling = dict(temperature=args.temperature, top_p=args.top_p, **common)
    start = time.perf_counter()
    if args.strategy == "greedy":
        results = strategies.greedy(model, tokenizer, prompts, **common)
    elif args.strategy == "sample":
        results = strategies.sampled(model, tokenizer, prompts, **sampling)
    elif args.strategy == "best_of_n":
        columns = {c: list(dataset[c]) for c in reward.required_columns}
        results = strategies.best_of_n(model, tokenizer, prompts, reward, n=args.n, columns=columns, **sampling)
    elif args.strategy == "self_consistency":
        results = strategies.self_consistency(model, tokenizer, prompts, n=args.n, **sampling)
    elif args.strategy == "adaptive":
        results = strategies.adaptive_consistency(model, tokenizer, prompts, max_samples=args.max_samples,
                                                  confidence=args.confidence, **sampling)
    elif args.strategy in ("beam_prm", "mcts"):
        results = _search(args, model, tokenizer, prompts, reward, dataset)
    elif args.strategy == "refine":
        from open_rlhf.inference.refine import IterativeRefiner

        refiner = IterativeRefiner(model, tokenizer, reward, max_rounds=args.refine_rounds,
                                   threshold=args.refine_threshold, critique=args.refine_critique,
                                   keep=args.refine_keep, refine_temperature=args.refine_temperature, **sampling)
        results = refiner.generate(prompts, {c: list(dataset[c]) for c in reward.required_columns})
    else:
        draft = None
        if args.speculative == "draft_model":
            if not args.draft_model:
                raise ConfigError("--speculative draft_model needs --draft_model PATH (a smaller model with the "
                                  "same tokenizer)")
            draft, _ = models.load_inference_model(args.draft_model, device=model.device)
        elif args.speculative == "self_speculative" and args.draft_layers:
            draft = speculative.layer_skip_draft(model, args.draft_layers)
        results = []
        for prompt in prompts:
            out = speculative.generate(model, tokenizer, prompt, args.speculative, args.max_new_tokens, draft=draft)
            results.append(strategies.Result(out.text, strategies.extract_final_answer(out.text), None, 1,
                                             out.num_tokens, [out.text]))
    seconds = time.perf_counter() - start
    rows = []
    for i, (prompt, result) in enumerate(zip(prompts, results, strict=True)):
        shown = original_prompts[i] if args.compress_ratio is not None else prompt
        row = {"prompt": shown, "response": result.response, "strategy": args.strategy, "answer": result.answer,
               "score": result.score, "num_samples": result.num_samples, "num_tokens": result.num_tokens,
               "seconds": seconds / len(prompts)}
        if args.compress_ratio is not None:
            row["compressed_prompt"] = prompt
        if args.strategy == "refine":
            row["scores"] = result.scores
        if gold is not None:
            row["gold"] = gold[i]
            row["correct"] = result.answer is not None and result.answer == normalize_number(str(gold[i]))
        rows.append(row)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tokens = sum(r["num_tokens"] for r in rows) / len(rows)
    samples = sum(r["num_samples"] for r in rows) / len(rows)
    summary = (f"{args.strategy}: {len(rows)} prompts, {samples:.2f} samples and {tokens:.0f} generated tokens per "
               f"prompt, {seconds:.1f} s")
    if gold is not None:
        accuracy, low, high = accuracy_interval([r["correct"] for r in rows])
        summary += f"; accuracy {accuracy:.3f} (95% Wilson interval {low:.3f}-{high:.3f})"
    print(summary + f"\nrows: {out_path}", flush=True)
    return out_path


def generate_main(argv: list[str] | None = None) -> None:
    with user_errors():
        run(make_parser().parse_args(argv))
