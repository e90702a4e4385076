"""On-policy preference pairs: sample K answers per prompt from the policy itself, judge them, pair best vs worst.

The built-in task's offline pairs differ by one slip in a solution the SFT policy did not write; DPO-style losses
on such pairs can push the likelihood of both answers down (likelihood displacement: Razin et al. 2024,
"Unintentional Unalignment", and Pal et al. 2024, "Smaug", Sec. 3). Pairs drawn from the policy's own answers
stay on its distribution: this is the data step of on-policy / iterative DPO (Xiong et al. 2024, "Iterative
Preference Learning from Human Feedback", Alg. 1: sample, rank by a reward, best vs worst) and of the
``iterative_dpo`` method.

`preference_pairs` turns judged samples into pairs; `sample_preference_pairs` samples with
`open_rlhf.inference.strategies.best_of_n` (batched ``generate``) and judges with any reward spec of
`open_rlhf.rewards` (``math`` for the verifiable reward, ``model:PATH``, ``ensemble:...``). ``scripts/make_pairs.py``
writes the pairs as a TRL conversational preference JSONL that every preference stage reads
(``--dataset_name FILE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class PairStats:
    """What `sample_preference_pairs` did: prompts sampled, pairs made, prompts without a pair (every sample
    judged alike: all right or all wrong under a verifier), and the mean judge score of all samples."""

    prompts: int
    pairs: int
    no_margin: int
    mean_score: float


def preference_pairs(prompts: Sequence, samples: Sequence[Sequence[str]], scores: Sequence[Sequence[float]],
                     min_margin: float = 0.0) -> tuple[list[dict], int]:
    """Best-vs-worst pairs from judged samples.

    Args:
        prompts: `P` prompts (strings or chat messages).
        samples: per prompt, its `K` sampled answers.
        scores: per prompt, the judge's `K` scores of them.
        min_margin (`float`): a pair needs ``score(best) - score(worst) > min_margin``; with a 0/1 verifier the
            default 0 keeps exactly the prompts with at least one right and one wrong answer.

    Returns:
        `(rows, no_margin)`: rows ``{"prompt", "chosen", "rejected", "score_chosen", "score_rejected"}`` (the
        chosen is the first highest-scoring sample, the rejected the first lowest-scoring one, both as assistant
        messages), and the number of prompts that gave no pair.

    Raises:
        ValueError: when the lengths do not match.
    """
    from open_rlhf.inference.sampling import as_messages

    if not len(prompts) == len(samples) == len(scores):
        raise ValueError(f"preference_pairs needs one sample list and one score list per prompt, got {len(prompts)} "
                         f"prompts, {len(samples)} sample lists and {len(scores)} score lists")
    rows, no_margin = [], 0
    for prompt, texts, own in zip(prompts, samples, scores, strict=True):
        if len(texts) != len(own) or not texts:
            raise ValueError(f"a prompt has {len(texts)} samples and {len(own)} scores; they must match and be >= 1")
        best = max(range(len(own)), key=own.__getitem__)
        worst = min(range(len(own)), key=own.__getitem__)
        if own[best] - own[worst] <= min_margin or texts[best] == texts[worst]:
            no_margin += 1
            continue
        rows.append({"prompt": as_messages(prompt), "chosen": [{"role": "assistant", "content": texts[best]}],
                     "rejected": [{"role": "assistant", "content": texts[worst]}],
                     "score_chosen": float(own[best]), "score_rejected": float(own[worst])})
    return rows, no_margin


def sample_preference_pairs(model, tokenizer, prompts: Sequence, reward, k: int = 4,
                            columns: dict[str, Sequence] | None = None, max_new_tokens: int = 128,
                            temperature: float = 1.0, batch_size: int = 16,
                            min_margin: float = 0.0) -> tuple[list[dict], PairStats]:
    """``k`` samples per prompt from ``model``, judged by ``reward``, paired best vs worst (`preference_pairs`).

    Args:
        reward: ``reward(prompts, completions, **columns) -> list[float]`` (a `open_rlhf.rewards.RewardSpec`).
        k (`int`): samples per prompt, >= 2.
        columns: per-prompt columns the reward reads (``{"answer": [...]}`` for ``math``).

    Raises:
        ValueError: ``k < 2``, or columns whose length is not the number of prompts.
    """
    from open_rlhf.inference.strategies import best_of_n

    if k < 2:
        raise ValueError(f"a preference pair needs k >= 2 samples per prompt, got {k}")
    results = best_of_n(model, tokenizer, prompts, reward, n=k, max_new_tokens=max_new_tokens,
                        temperature=temperature, batch_size=batch_size, columns=columns)
    rows, no_margin = preference_pairs(prompts, [r.candidates for r in results], [r.scores for r in results],
                                       min_margin)
    all_scores = [s for r in results for s in r.scores]
    return rows, PairStats(len(prompts), len(rows), no_margin, sum(all_scores) / max(1, len(all_scores)))


def make_pairs_main(argv: list[str] | None = None) -> None:
    """``scripts/make_pairs.py``: on-policy pairs from a policy's own samples, written to a new JSONL file."""
    import argparse
    import json
    from pathlib import Path

    import torch

    from open_rlhf import data, models
    from open_rlhf.atomic import atomic_write_text
    from open_rlhf.errors import ConfigError, OutputDirError, user_errors
    from open_rlhf.rewards import build_reward_functions, check_columns

    p = argparse.ArgumentParser(description="On-policy preference pairs: K samples per prompt, judged, best vs worst.")
    p.add_argument("--policy", required=True, help="the policy that samples (e.g. runs/default/sft)")
    p.add_argument("--prompts", default="builtin", help="prompt source (open_rlhf.data); builtin: its train stream")
    p.add_argument("--split", default="train", help="split to read (train: never the held-out prompts)")
    p.add_argument("--num_prompts", type=int, default=512, help="the first N prompts")
    p.add_argument("--k", type=int, default=4, help="samples per prompt (>= 2)")
    p.add_argument("--judge", default="math", help="reward spec that scores the samples (open_rlhf.rewards)")
    p.add_argument("--min_margin", type=float, default=0.0, help="score gap a pair needs")
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--batch_size", type=int, default=32, help="sequences per generate call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="the JSONL file to write (must not exist)")
    args = p.parse_args(argv)
    with user_errors():
        out = Path(args.output)
        if out.exists():
            raise OutputDirError(f"--output {out} already exists; outputs are never overwritten. Fix: a new name.")
        if args.k < 2 or args.num_prompts < 1:
            raise ConfigError(f"--k must be >= 2 and --num_prompts >= 1, got {args.k} and {args.num_prompts}.")
        dataset = data.load_prompt_dataset(args.prompts, split=args.split)
        dataset = dataset.select(range(min(args.num_prompts, len(dataset))))
        reward = build_reward_functions(args.judge)
        check_columns(reward, dataset.column_names, args.prompts)
        torch.manual_seed(args.seed)
        model, tokenizer = models.load_inference_model(args.policy)
        rows, stats = sample_preference_pairs(
            model, tokenizer, list(dataset["prompt"]), reward, k=args.k,
            columns={c: list(dataset[c]) for c in reward.required_columns}, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, batch_size=args.batch_size, min_margin=args.min_margin)
        if not rows:
            raise ConfigError(f"No pair: all {stats.prompts} prompts had {args.k} equally judged samples (mean score "
                              f"{stats.mean_score:.3f}). Fix: more samples (--k), a higher --temperature, or a judge "
                              "that tells the answers apart.")
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
        meta = {**vars(args), "pairs": stats.pairs, "prompts": stats.prompts, "no_margin": stats.no_margin,
                "mean_score": stats.mean_score}
        atomic_write_text(out.with_suffix(out.suffix + ".meta.json"), json.dumps(meta, indent=1))
    print(f"{stats.pairs} pairs from {stats.prompts} prompts ({stats.no_margin} without a margin; mean judge score "
          f"{stats.mean_score:.3f}) -> {out}")
