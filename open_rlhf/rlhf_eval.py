"""The RLHF metrics of ``eval/run_eval.py --rlhf``: what a reward/KL/win-rate evaluation of aligned policies reports.

On the held-out prompts of each eval set (`open_rlhf.eval_sets`: ``builtin``, ``gsm8k``, ``mt_bench``,
``self_instruct``), every model answers greedily, and per model and set:

* ``accuracy``: task accuracy with a 95% Wilson interval (sets with gold answers: builtin, GSM8K);
* ``reward``: mean reward-model score (``--reward_model``);
* ``win_rate``: against the baseline B (``--baseline``, default the last ``--model``) judged by the reward model,
  ties counting one half, with a 95% interval and the win/tie/loss counts; ``lc_win_rate``: AlpacaEval 2.0's
  length-controlled win rate (response lengths in characters);
* ``kl_to_baseline``: Monte-Carlo KL(model || baseline) in nats per sequence (`open_rlhf.evaluation.kl_to_reference`);
* ``distinct_1`` / ``distinct_2`` and ``self_bleu``: diversity of the responses across prompts;
* ``perplexity``: of the reference demonstrations (sets that have them: self-instruct, MT-Bench's references);
* ``response_length`` (tokens) and ``eos_rate``.

The formulas are the pure functions of `open_rlhf.metrics` (each tested against hand-computed values).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from open_rlhf.atomic import atomic_save_figure, atomic_write_text
from open_rlhf.errors import ConfigError

# Columns of rlhf.md, in order: metric key -> header
COLUMNS = {"accuracy": "accuracy", "reward": "reward", "win_rate": "win rate vs baseline",
           "lc_win_rate": "LC win rate", "kl_to_baseline": "KL to baseline", "distinct_1": "distinct-1",
           "distinct_2": "distinct-2", "self_bleu": "self-BLEU", "perplexity": "ref. perplexity",
           "response_length": "length (tokens)", "eos_rate": "EOS rate"}


def check_rlhf_inputs(args) -> None:
    """Check the RLHF flags (sets, data files, reward model, baseline) before any model loads.

    Raises:
        ConfigError: when ``--baseline`` is not one of the ``--model``s; DataNotFoundError: a missing eval-set
            file; ModelNotFoundError: a missing reward model folder.
    """
    from open_rlhf import eval_sets, models

    for name in args.rlhf_set_list:
        eval_sets.load_eval_set(name, args.data_dir, limit=1, seed=args.split_seed)
    if args.reward_model:
        models.resolve_model_path(args.reward_model)
    baseline = args.baseline or args.models[-1]
    if baseline not in args.models:
        raise ConfigError(f"--baseline {baseline} is not one of the --model arguments ({', '.join(args.models)}); "
                          "the baseline answers the same prompts, so pass it as a --model too.")


def set_metrics(model, tokenizer, eval_set, *, max_new_tokens: int, batch_size: int = 16, scorer=None) -> dict:
    """Greedy responses of one model on one eval set and the metrics that need only this model.

    Returns:
        dict of metric -> value (see the module docstring) plus ``responses`` (`N` texts), ``response_chars``
        (`N` lengths in characters), ``scores`` (`N` reward-model scores, with a scorer) and ``correct``.
    """
    from open_rlhf import evaluation, metrics

    result = evaluation.evaluate_policy(model, tokenizer, eval_set.prompts, eval_set.answers, scorer,
                                        max_new_tokens, batch_size)
    texts = result["responses"]
    out = {"responses": texts, "response_chars": [len(t) for t in texts],
           "response_length": result["response_length"], "eos_rate": result["eos_rate"],
           "distinct_1": metrics.distinct_n(texts, 1), "distinct_2": metrics.distinct_n(texts, 2),
           "self_bleu": metrics.self_bleu(texts) if len(texts) > 1 else None}
    if result["accuracy"] is not None:
        mean, low, high = metrics.accuracy_interval(result["correct"])
        out.update(accuracy=mean, accuracy_low=low, accuracy_high=high, correct=result["correct"])
    if scorer is not None:
        out.update(reward=result["reward_score"], scores=result["scores"])
    if eval_set.references is not None:
        keep = [i for i, r in enumerate(eval_set.references) if r]
        if keep:
            ppl = metrics.perplexity(model, tokenizer, [eval_set.prompts[i] for i in keep],
                                     [eval_set.references[i] for i in keep], batch_size=max(1, batch_size // 2))
            out.update(perplexity=ppl["perplexity"], reference_tokens=ppl["num_tokens"])
    return out


def pairwise_metrics(a: dict, b: dict) -> dict:
    """Win rate and length-controlled win rate of model A over baseline B from their `set_metrics` results."""
    from open_rlhf import metrics

    if "scores" not in a or "scores" not in b:
        return {}
    wr = metrics.win_rate(a["scores"], b["scores"])
    prefs = metrics.pairwise_preferences(a["scores"], b["scores"])
    out = {"win_rate": wr["win_rate"], "win_rate_low": wr["low"], "win_rate_high": wr["high"], "wins": wr["wins"],
           "ties": wr["ties"], "losses": wr["losses"]}
    if len(set(x - y for x, y in zip(a["response_chars"], b["response_chars"], strict=True))) > 1:
        out["lc_win_rate"] = metrics.length_controlled_win_rate(
            prefs, a["response_chars"], b["response_chars"])["length_controlled_win_rate"]
    return out


def rlhf_evaluate(args, out_dir: Path) -> dict[str, Path]:
    """Run the RLHF metrics for ``args.models`` on ``args.rlhf_set_list`` and write ``rlhf.{md,csv,json,png}``.

    Args:
        args: `open_rlhf.run_eval` arguments (``models``, ``rlhf_set_list``, ``rlhf_prompts``, ``data_dir``,
            ``reward_model``, ``baseline``, ``max_new_tokens``, ``split_seed``, ``device``).
        out_dir: the results folder.

    Returns:
        dict of the written paths (``markdown``, ``csv``, ``json``, ``png``).
    """
    import torch
    from tqdm.auto import tqdm

    from open_rlhf import eval_sets, evaluation, models
    from open_rlhf.rewards import RewardModelScorer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sets = {name: eval_sets.load_eval_set(name, args.data_dir, limit=args.rlhf_prompts, seed=args.split_seed)
            for name in args.rlhf_set_list}
    scorer = RewardModelScorer.from_pretrained(models.resolve_model_path(args.reward_model), device=device) \
        if args.reward_model else None
    baseline = args.baseline or args.models[-1]
    order = [baseline] + [m for m in args.models if m != baseline]  # the baseline first: KL needs it loaded
    per: dict[str, dict[str, dict]] = {name: {} for name in sets}
    reference = None
    with tqdm(total=len(order) * len(sets), desc="RLHF metrics", unit="set", file=sys.stdout) as bar:
        for name in order:
            path = models.resolve_model_path(name)
            tokenizer = models.load_tokenizer(path)
            model = models.load_causal_lm(path).to(device)
            for set_name, eval_set in sets.items():
                bar.set_postfix_str(f"{name}: {set_name}")
                result = set_metrics(model, tokenizer, eval_set, max_new_tokens=args.max_new_tokens, scorer=scorer)
                if name == baseline:
                    result["kl_to_baseline"] = 0.0
                else:
                    result.update(pairwise_metrics(result, per[set_name][baseline]))
                    result["kl_to_baseline"] = evaluation.kl_to_reference(
                        model, reference, tokenizer, eval_set.prompts, args.max_new_tokens, seed=args.split_seed)
                per[set_name][name] = result
                bar.update(1)
            if name == baseline:
                reference = model
            else:
                del model
    return write_rlhf_results(out_dir, per, args.models, baseline)


def rlhf_rows(per: dict[str, dict[str, dict]], model_order: list[str]) -> list[dict]:
    """Long table: one row per eval set, model and metric with ``value``, ``low``, ``high`` (95%, where known)."""
    rows = []
    for set_name, by_model in per.items():
        for model in model_order:
            result = by_model.get(model, {})
            for key in COLUMNS:
                if result.get(key) is None:
                    continue
                rows.append({"set": set_name, "model": model, "metric": key, "value": float(result[key]),
                             "low": result.get(f"{key}_low"), "high": result.get(f"{key}_high"),
                             "n": len(result["responses"])})
    return rows


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    text = f"{row['value']:.3f}"
    if row["low"] is not None:
        text += f" [{row['low']:.3f}, {row['high']:.3f}]"
    return text


def write_rlhf_results(out_dir: Path, per: dict, model_order: list[str], baseline: str) -> dict[str, Path]:
    """``rlhf.md`` (a table per eval set), ``rlhf.csv`` (long), ``rlhf.json`` (everything, responses included) and
    ``rlhf.png`` (one panel per metric, bars per model and set), each written atomically."""
    import csv
    import io

    rows = rlhf_rows(per, model_order)
    by = {(r["set"], r["model"], r["metric"]): r for r in rows}
    lines = [f"# RLHF metrics (baseline B = `{baseline}`)", "",
             "Greedy responses on held-out prompts; [low, high] = 95% interval (Wilson). Win rates are judged by the "
             "reward model (ties count 1/2); LC = AlpacaEval 2.0's length-controlled win rate; KL in nats/sequence "
             "(sampled); perplexity of the reference demonstrations.", ""]
    for set_name in per:
        n = len(next(iter(per[set_name].values()))["responses"])
        present = [k for k in COLUMNS if any((set_name, m, k) in by for m in model_order)]
        lines += [f"## {set_name} ({n} prompts)", "", "| model | " + " | ".join(COLUMNS[k] for k in present) + " |",
                  "|---|" + "---:|" * len(present)]
        for model in model_order:
            lines.append(f"| `{model}` | " + " | ".join(_cell(by.get((set_name, model, k))) for k in present) + " |")
        lines.append("")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["set", "model", "metric", "value", "low", "high", "n"])
    writer.writeheader()
    writer.writerows(rows)
    paths = {"markdown": out_dir / "rlhf.md", "csv": out_dir / "rlhf.csv", "json": out_dir / "rlhf.json",
             "png": out_dir / "rlhf.png"}
    atomic_write_text(paths["markdown"], "\n".join(lines))
    atomic_write_text(paths["csv"], buffer.getvalue())
    atomic_write_text(paths["json"], json.dumps({"baseline": baseline, "sets": per}, indent=1, ensure_ascii=False))
    plot_rlhf(rows, model_order, paths["png"])
    return paths


def plot_rlhf(rows: list[dict], model_order: list[str], out: Path) -> Path:
    """One panel per metric; in each, a group of bars per eval set and a bar per model (95% interval as error bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = [k for k in COLUMNS if any(r["metric"] == k for r in rows)]
    sets = list(dict.fromkeys(r["set"] for r in rows))
    by = {(r["set"], r["model"], r["metric"]): r for r in rows}
    ncols = min(4, max(1, len(metrics)))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False)
    width = 0.8 / max(1, len(model_order))
    for ax, key in zip(axes.flat, metrics, strict=False):
        x = np.arange(len(sets))
        for i, model in enumerate(model_order):
            cells = [by.get((s, model, key)) for s in sets]
            values = [c["value"] if c else 0.0 for c in cells]
            err = np.array([[c["value"] - c["low"], c["high"] - c["value"]] if c and c["low"] is not None else [0, 0]
                            for c in cells]).T
            ax.bar(x + (i - (len(model_order) - 1) / 2) * width, values, width, yerr=err, capsize=2,
                   label=Path(model).name or model)
        ax.set_xticks(x, sets, fontsize=7)
        ax.set_title(COLUMNS[key], fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    return atomic_save_figure(fig, out, dpi=100)
