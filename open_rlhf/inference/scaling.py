"""The test-time scaling study: held-out accuracy against generated tokens for every inference-time strategy.

    python scripts/test_time_scaling.py                       # the latest pipeline policy, its reward model, runs/default/prm
    python scripts/test_time_scaling.py --builtin 128 --gsm8k ../shared/data/gsm8k/test.jsonl --gsm8k_n 128 --n_max 16

For each prompt set (built-in held-out problems; GSM8K test questions), from one policy:

- ``greedy``: one greedy answer.
- ``N`` samples per prompt are drawn once (temperature ``--temperature``) and scored once by the outcome reward
  model (ORM) and the PRM; every ``N`` in 1, 2, 4, ..., ``--n_max`` then uses the first ``N`` of them (the standard
  protocol: one sample pool, nested subsets, so the curves are not noisier than the samples themselves):
  ``majority`` (self-consistency, maj@N), ``bon_orm`` and ``bon_prm`` (best-of-N by the ORM / by the PRM's minimum
  step score), and ``pass`` (pass@N: some sample is right; an oracle upper bound, not a method).
- ``adaptive``: Adaptive-Consistency's stopping rule on the same sample stream (one sample at a time, stop once the
  majority is ``--confidence`` sure, budget ``N``); this is exactly what `strategies.adaptive_consistency` with
  ``samples_per_round=1`` draws, without drawing it twice.
- ``beam_prm``: PRM-guided step-level beam search (`search.beam_search`) at each ``--search_budgets`` N: ``N`` steps
  sampled per round (``beam_width = max(1, N // 4)`` prefixes times ``expand = N // beam_width``).
- ``mcts``: `search.MCTSGenerator` with the PRM as evaluator and a token budget equal to ``N`` times the mean
  tokens of one sample on that prompt set.

Tokens are generated tokens per prompt (scoring passes are not counted). Accuracy: the extracted final answer equals
the gold one (`open_rlhf.tasks.gsm8k.extract_final_answer`), with 95% Wilson intervals; each method's difference to
greedy on the same prompts gets McNemar's exact p-value. Outputs in ``--output_dir``: ``results.csv``,
``scaling.png`` (accuracy vs tokens, log x, one panel per prompt set), ``results.md`` (the table) and the cached
``<set>-*.json`` phases, so an interrupted study resumes where it stopped; nothing is overwritten. ``--phases``
lets several processes share one study: each computes its phases (greedy always) and reads the others' from the
cache; a final run with every phase assembles the results without recomputing anything.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import time
from pathlib import Path

from open_rlhf.errors import ConfigError, user_errors

logger = logging.getLogger(__name__)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="test_time_scaling.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--policy", default=None, help="policy folder (default: the latest finished pipeline policy)")
    p.add_argument("--reward_model", default="runs/default/reward", help="the outcome reward model")
    p.add_argument("--prm", default="runs/default/prm", help="the process reward model (scripts/train_prm.py)")
    p.add_argument("--builtin", type=int, default=128, help="built-in held-out problems (0: skip)")
    p.add_argument("--gsm8k", default="../shared/data/gsm8k/test.jsonl", help="GSM8K test file ('' to skip)")
    p.add_argument("--gsm8k_n", type=int, default=128, help="GSM8K questions (the first N)")
    p.add_argument("--n_max", type=int, default=16, help="samples per prompt (N = 1, 2, 4, ..., n_max)")
    p.add_argument("--search_budgets", default="4,8", help="beam_prm / mcts budgets, in samples (comma-separated)")
    p.add_argument("--gsm8k_n_max", type=int, default=None, help="GSM8K's n_max (default: --n_max)")
    p.add_argument("--gsm8k_search_budgets", default=None, help="GSM8K's search budgets (default: --search_budgets)")
    p.add_argument("--max_steps", type=int, default=10, help="beam_prm / mcts: the most steps (lines) of a solution")
    p.add_argument("--max_step_tokens", type=int, default=64, help="beam_prm / mcts: the most tokens of one step")
    p.add_argument("--mcts_simulations", type=int, default=64, help="mcts: simulations (the token budget ends first)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--confidence", type=float, default=0.95, help="adaptive: the stopping confidence")
    p.add_argument("--max_new_tokens_builtin", type=int, default=128)
    p.add_argument("--max_new_tokens_gsm8k", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=64, help="sequences per generate call")
    p.add_argument("--output_dir", default="runs/test_time_scaling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phases", default=",".join(PHASES),
                   help="phases to compute, of greedy,pool,beam_prm,mcts (the others only read from the cache): e.g. "
                        "two processes, one with pool,mcts and one with beam_prm, share the work of one output dir")
    return p


PHASES = ("greedy", "pool", "beam_prm", "mcts")


def _budgets(text: str, flag: str) -> list[int]:
    try:
        budgets = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        budgets = [0]
    if any(b < 1 for b in budgets):
        raise ConfigError(f"{flag} must be comma-separated whole numbers >= 1, got {text!r}")
    return budgets


def _check(args) -> tuple[list[int], list[int]]:
    if args.gsm8k_n_max is None:
        args.gsm8k_n_max = args.n_max
    if min(args.n_max, args.gsm8k_n_max, args.gsm8k_n) < 1 or args.builtin < 0:
        raise ConfigError(f"--n_max, --gsm8k_n_max and --gsm8k_n must be >= 1 and --builtin >= 0, got {args.n_max}, "
                          f"{args.gsm8k_n_max}, {args.gsm8k_n}, {args.builtin}")
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    if not phases or any(x not in PHASES for x in phases):
        raise ConfigError(f"--phases must be a comma-separated subset of {','.join(PHASES)}, got {args.phases!r}")
    args.phases = ",".join(phases)
    budgets = _budgets(args.search_budgets, "--search_budgets")
    gsm8k_budgets = budgets if args.gsm8k_search_budgets is None else _budgets(args.gsm8k_search_budgets,
                                                                               "--gsm8k_search_budgets")
    for name in ("reward_model", "prm"):
        if not Path(getattr(args, name)).is_dir():
            raise ConfigError(f"--{name} {getattr(args, name)} does not exist. Fix: train it (scripts/train_reward.py, "
                              "scripts/train_prm.py) or pass its folder.")
    return budgets, gsm8k_budgets


def _cached(path: Path, compute, allowed: bool = True):
    """``compute()``'s JSON result, cached in ``path`` (written atomically; read back on a rerun); None when it is
    not cached and ``allowed`` is False (a phase left to another process, `--phases`)."""
    from open_rlhf.atomic import atomic_write_text

    if path.is_file():
        return json.loads(path.read_text())
    if not allowed:
        return None
    value = compute()
    atomic_write_text(path, json.dumps(value))
    return value


def nested_sizes(n_max: int) -> list[int]:
    """1, 2, 4, ... up to ``n_max`` (``n_max`` included even when it is not a power of two)."""
    sizes, n = [], 1
    while n < n_max:
        sizes.append(n)
        n *= 2
    return sizes + [n_max]


def pool_metrics(answers: list[list[str | None]], tokens: list[list[int]], orm: list[list[float]],
                 prm: list[list[float]], gold: list[str | None], n: int, confidence: float) -> dict[str, dict]:
    """Per-prompt correctness and tokens of the sample-pool methods at ``N = n`` (the first ``n`` samples).

    Args:
        answers, tokens, orm, prm: per prompt, per sample (at least ``n``): the extracted answer, generated tokens,
            ORM score and PRM score. gold: per prompt, the normalised gold answer.

    Returns:
        ``{method: {"correct": [bool] * P, "tokens": [int] * P, "samples": [int] * P}}`` for ``majority``,
        ``bon_orm``, ``bon_prm``, ``pass`` and ``adaptive``.
    """
    from open_rlhf.inference.strategies import adaptive_should_stop, majority_vote

    out = {m: {"correct": [], "tokens": [], "samples": []} for m in ("majority", "bon_orm", "bon_prm", "pass",
                                                                    "adaptive")}

    for a, tok, o, p, g in zip(answers, tokens, orm, prm, gold, strict=True):
        a, o, p = a[:n], o[:n], p[:n]
        used = next(k for k in range(1, n + 1) if adaptive_should_stop(a[:k], confidence, 2, n))
        chosen = {"majority": (majority_vote(a)[0], n), "bon_orm": (a[max(range(n), key=o.__getitem__)], n),
                  "bon_prm": (a[max(range(n), key=p.__getitem__)], n), "pass": (g if g in a else None, n),
                  "adaptive": (majority_vote(a[:used])[0], used)}
        for method, (answer, k) in chosen.items():
            out[method]["correct"].append(answer is not None and answer == g)
            out[method]["tokens"].append(sum(tok[:k]))
            out[method]["samples"].append(k)
    return out


def _row(dataset: str, method: str, n: int, correct, tokens, samples, seconds, greedy_correct) -> dict:
    from open_rlhf.metrics import accuracy_interval, mcnemar_test

    accuracy, low, high = accuracy_interval(correct)
    p_value = mcnemar_test(correct, greedy_correct)["p_value"] if method != "greedy" else None
    return {"dataset": dataset, "method": method, "n": n, "prompts": len(correct), "accuracy": accuracy,
            "ci_low": low, "ci_high": high, "p_vs_greedy": p_value, "tokens_per_prompt": sum(tokens) / len(tokens),
            "samples_per_prompt": sum(samples) / len(samples), "seconds": seconds}


def run_prompt_set(name: str, prompts: list, gold: list[str], model, tokenizer, orm, prm, args, budgets,
                   out_dir: Path, max_new_tokens: int, n_max: int) -> list[dict]:
    """Every method on one prompt set; rows for `results.csv` (see the module docstring)."""
    import torch

    from open_rlhf.inference import sampling, search, strategies
    from open_rlhf.tasks.gsm8k import extract_final_answer, normalize_number

    gold = [normalize_number(str(g)) for g in gold]
    rows = []

    def timed(fn):
        def wrapped():
            start = time.perf_counter()
            value = fn()
            value["seconds"] = time.perf_counter() - start
            return value
        return wrapped

    def greedy():
        results = strategies.greedy(model, tokenizer, prompts, max_new_tokens, batch_size=args.batch_size)
        return {"answers": [r.answer for r in results], "tokens": [r.num_tokens for r in results]}

    g = _cached(out_dir / f"{name}-greedy.json", timed(greedy))
    greedy_correct = [a is not None and a == gg for a, gg in zip(g["answers"], gold, strict=True)]
    rows.append(_row(name, "greedy", 1, greedy_correct, g["tokens"], [1] * len(prompts), g["seconds"], greedy_correct))

    def pool():
        torch.manual_seed(args.seed)
        drawn = sampling.sample(model, tokenizer, prompts, n_max, max_new_tokens, args.temperature,
                                batch_size=args.batch_size, desc=f"{name}: {n_max} samples per prompt")
        flat_prompts = [sampling.as_messages(p) for p in prompts for _ in range(n_max)]
        texts = [s.text for group in drawn for s in group]
        orm_scores, prm_scores = orm(flat_prompts, texts), prm(flat_prompts, texts)
        n = n_max
        return {"texts": [[s.text for s in group] for group in drawn],
                "answers": [[extract_final_answer(s.text) for s in group] for group in drawn],
                "tokens": [[s.num_tokens for s in group] for group in drawn],
                "orm": [orm_scores[i * n:(i + 1) * n] for i in range(len(prompts))],
                "prm": [prm_scores[i * n:(i + 1) * n] for i in range(len(prompts))]}

    phases = set(args.phases.split(","))
    samples = _cached(out_dir / f"{name}-samples.json", timed(pool), "pool" in phases)
    for n in nested_sizes(n_max) if samples else []:
        metrics = pool_metrics(samples["answers"], samples["tokens"], samples["orm"], samples["prm"], gold, n,
                               args.confidence)
        for method, m in metrics.items():
            rows.append(_row(name, method, n, m["correct"], m["tokens"], m["samples"],
                             samples["seconds"] * n / n_max, greedy_correct))
    # MCTS's token budget is N mean samples: it needs the pool
    mean_sample_tokens = sum(map(sum, samples["tokens"])) / (len(prompts) * n_max) if samples else None

    policy = search.LMStepPolicy(model, tokenizer, max_step_tokens=args.max_step_tokens, max_steps=args.max_steps,
                                 temperature=args.temperature,
                                 rollout_tokens=max_new_tokens, batch_size=args.batch_size)
    evaluator = search.PRMValue(prm, aggregate="last")
    for budget in budgets:
        def beam(budget=budget):
            torch.manual_seed(args.seed)
            width = max(1, budget // 4)
            results = search.beam_search(policy, evaluator, prompts, beam_width=width, expand=budget // width,
                                         desc=f"{name}: beam search N={budget}")
            return {"answers": [r.answer for r in results], "tokens": [r.num_tokens for r in results],
                    "samples": [r.num_samples for r in results]}

        def mcts(budget=budget):
            torch.manual_seed(args.seed)
            generator = search.MCTSGenerator(policy, evaluator, num_simulations=args.mcts_simulations, expand=4,
                                             max_tokens=max(1, round(budget * mean_sample_tokens)))
            results = generator.generate(prompts, desc=f"{name}: MCTS N={budget}")
            return {"answers": [r.answer for r in results], "tokens": [r.num_tokens for r in results],
                    "samples": [r.num_samples for r in results]}

        for method, fn in (("beam_prm", beam), ("mcts", mcts)):
            result = _cached(out_dir / f"{name}-{method}-{budget}.json", timed(fn),
                             method in phases and (method != "mcts" or samples is not None))
            if result is None:
                continue
            correct = [a is not None and a == gg for a, gg in zip(result["answers"], gold, strict=True)]
            rows.append(_row(name, method, budget, correct, result["tokens"], result["samples"], result["seconds"],
                             greedy_correct))
    return rows


LABELS = {"greedy": "greedy", "majority": "majority@N", "bon_orm": "best-of-N (ORM)", "bon_prm": "best-of-N (PRM)",
          "pass": "pass@N (oracle)", "adaptive": "adaptive consistency", "beam_prm": "PRM beam search",
          "mcts": "MCTS (PRM)"}


def plot(rows: list[dict], path: Path) -> Path:
    """Accuracy vs generated tokens per prompt (log x), one panel per prompt set, 95% intervals as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for method, label in LABELS.items():
            points = sorted((r for r in rows if r["dataset"] == dataset and r["method"] == method),
                            key=lambda r: r["tokens_per_prompt"])
            if not points:
                continue
            x = [r["tokens_per_prompt"] for r in points]
            y = [r["accuracy"] for r in points]
            err = [[r["accuracy"] - r["ci_low"] for r in points], [r["ci_high"] - r["accuracy"] for r in points]]
            style = dict(linestyle=":" if method == "pass" else "-", marker="*" if method == "greedy" else "o",
                         markersize=10 if method == "greedy" else 4, capsize=2, label=label, alpha=0.9)
            ax.errorbar(x, y, yerr=err, **style)
        n = next(r["prompts"] for r in rows if r["dataset"] == dataset)
        ax.set(xscale="log", xlabel="generated tokens per prompt (log)", ylabel="accuracy",
               title=f"{dataset} ({n} held-out prompts)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown_table(rows: list[dict]) -> str:
    lines = ["| set | method | N | accuracy [95% CI] | p vs greedy | tokens / prompt | samples / prompt |",
             "|---|---|---:|---|---:|---:|---:|"]
    for r in rows:
        p = "" if r["p_vs_greedy"] is None else f"{r['p_vs_greedy']:.3f}"
        lines.append(f"| {r['dataset']} | {LABELS[r['method']]} | {r['n']} | {r['accuracy']:.3f} "
                     f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {p} | {r['tokens_per_prompt']:.0f} | "
                     f"{r['samples_per_prompt']:.2f} |")
    return "\n".join(lines) + "\n"


def run(args) -> Path:
    """The whole study; returns the output folder."""
    import torch

    from open_rlhf import chat, data, hardware, models
    from open_rlhf.atomic import atomic_write_text
    from open_rlhf.inference.prm import ProcessRewardModel
    from open_rlhf.rewards import RewardModelScorer

    budgets, gsm8k_budgets = _check(args)
    policy_path = args.policy or chat.latest_pipeline_policy()
    if policy_path is None:
        raise ConfigError("no --policy and no finished pipeline run under runs/. Fix: run `make pipeline` or pass "
                          "--policy PATH.")
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"policy": policy_path, "reward_model": args.reward_model, "prm": args.prm, "cpu": hardware.describe_cpu(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "args": vars(args)}
    meta_path = out_dir / "study.json"

    def settings(a: dict) -> dict:  # what the cached phases depend on (not which process computes which phase)
        return {k: v for k, v in a.items() if k != "phases"}

    if meta_path.is_file() and settings(json.loads(meta_path.read_text())["args"]) != settings(meta["args"]):
        raise ConfigError(f"{out_dir} holds a study with other settings ({meta_path}); its cached phases would be "
                          "mixed with these. Fix: pass a new --output_dir.")
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    model, tokenizer = models.load_inference_model(policy_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    orm = RewardModelScorer.from_pretrained(args.reward_model, model_kwargs={"use_safetensors": True}, batch_size=32)
    prm = ProcessRewardModel.from_pretrained(args.prm, batch_size=32, aggregate="min")
    sets = []
    if args.builtin:
        ds = data.load_prompt_dataset("builtin", split="eval", builtin_size=max(args.builtin, 2000))
        ds = ds.select(range(args.builtin))
        sets.append(("builtin", list(ds["prompt"]), list(ds["answer"]), args.max_new_tokens_builtin, args.n_max,
                     budgets))
    if args.gsm8k:
        ds = data.load_prompt_dataset(args.gsm8k)
        ds = ds.select(range(min(args.gsm8k_n, len(ds))))
        sets.append(("gsm8k", list(ds["prompt"]), list(ds["answer"]), args.max_new_tokens_gsm8k, args.gsm8k_n_max,
                     gsm8k_budgets))
    rows = []
    for name, prompts, gold, max_new_tokens, n_max, set_budgets in sets:
        rows.extend(run_prompt_set(name, prompts, gold, model, tokenizer, orm, prm, args, set_budgets, out_dir,
                                   max_new_tokens, n_max))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "results.csv", buffer.getvalue())
    table = markdown_table(rows)
    atomic_write_text(out_dir / "results.md", f"Policy {policy_path}; CPU {meta['cpu']} "
                                              f"({meta['cpu_capability']}, {meta['threads']} threads)\n\n" + table)
    plot(rows, out_dir / "scaling.png")
    print(table + f"\nCPU: {meta['cpu']} ({meta['cpu_capability']}); outputs in {out_dir}", flush=True)
    return out_dir


def scaling_main(argv: list[str] | None = None) -> None:
    with user_errors():
        run(make_parser().parse_args(argv))
