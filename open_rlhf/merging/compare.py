"""Merge two pipeline policies with every method and evaluate inputs and merges on the same held-out prompts.

The real demonstration of issue 4: each merge is written with `merge_models` (reused if it already exists with
its ``merge_record.json``), then every model is scored with `open_rlhf.evaluation.evaluate_policy` on the
pipeline's held-out prompts (task accuracy; reward-model score when a reward model is given).
"""

from __future__ import annotations

import json
from pathlib import Path

from open_rlhf import evaluation, models
from open_rlhf.atomic import append_csv, atomic_write_text
from open_rlhf.benchmark import print_table
from open_rlhf.merging.merge import merge_models
from open_rlhf.rewards import RewardModelScorer

# (name, method, keyword arguments of merge_models) for two models on a shared base
DEFAULT_MERGES = [
    ("linear", "linear", {"weights": [0.5, 0.5]}),
    ("slerp t=0.5", "slerp", {"t": 0.5}),
    ("task_arithmetic", "task_arithmetic", {"weights": [1.0, 1.0], "lambda_": 0.5}),
    ("ties d=0.2", "ties", {"density": 0.2, "lambda_": 1.0}),
    ("dare_ties d=0.5", "dare_ties", {"density": 0.5, "lambda_": 1.0, "seed": 0}),
    ("dare_linear d=0.5", "dare_linear", {"density": 0.5, "weights": [1.0, 1.0], "lambda_": 0.5, "seed": 0}),
]


def compare_merges(inputs: dict[str, str], base_model: str, output_dir: str | Path, eval_source: str = "builtin",
                   eval_prompts: int = 64, split_seed: int = 42, reward_model_path: str | None = None,
                   max_new_tokens: int = 96, merges=DEFAULT_MERGES) -> list[dict]:
    """Merge the two ``inputs`` with each of ``merges`` and evaluate inputs, base and merges.

    Args:
        inputs (`dict[str, str]`): two named model folders, e.g. ``{"sft": "runs/default/sft", ...}``.
        base_model (`str`): their shared base (task vectors are taken against it).
        output_dir: where the merged folders, ``merge_comparison.csv``/``.md``/``.png`` go.
        eval_source, eval_prompts, split_seed: the held-out prompts, as the pipeline's evaluation takes them.

    Returns:
        `list[dict]`: one row per model (name, kind, accuracy, reward_score, response_length, eos_rate).

    Raises:
        ValueError: when ``inputs`` does not hold exactly two models.
    """
    if len(inputs) != 2:
        raise ValueError(f"compare_merges takes exactly two input models, got {len(inputs)}: {list(inputs)}.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    prompts, answers = evaluation.held_out_prompts(eval_source, eval_prompts, split_seed)
    scorer = RewardModelScorer.from_pretrained(reward_model_path) if reward_model_path else None

    candidates = [("base", "input", base_model)] + [(name, "input", path) for name, path in inputs.items()]
    for name, method, kwargs in merges:
        folder = output_dir / name.replace(" ", "_").replace("=", "")
        if not (folder / "merge_record.json").is_file():
            # linear and slerp interpolate the models themselves; the others merge task vectors against the base
            base = {} if method in ("linear", "slerp") else {"base_model": base_model}
            merge_models(list(inputs.values()), folder, method, **base, **kwargs)
        candidates.append((name, method, str(folder)))

    rows = []
    for name, kind, path in candidates:
        tokenizer, model = models.load_tokenizer(path), models.load_causal_lm(path)
        metrics = evaluation.evaluate_policy(model, tokenizer, prompts, answers, scorer, max_new_tokens)
        rows.append({"model": name, "kind": kind, "accuracy": metrics["accuracy"],
                     "reward_score": metrics["reward_score"], "response_length": metrics["response_length"],
                     "eos_rate": metrics["eos_rate"]})
        print(f"{name}: accuracy={metrics['accuracy']}", flush=True)
    columns = ["model", "kind", "accuracy", "reward_score", "response_length", "eos_rate"]
    print_table(rows, columns, title=f"Inputs and merges on {len(prompts)} held-out prompts")
    append_csv(rows, output_dir / "merge_comparison.csv", {"inputs": json.dumps(inputs), "base": base_model})
    atomic_write_text(output_dir / "merge_comparison.md", _markdown(rows, columns, len(prompts)))
    _plot(rows, output_dir / "merge_comparison.png")
    return rows


def _markdown(rows: list[dict], columns: list[str], n: int) -> str:
    def cell(v):
        return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [f"{n} held-out prompts, greedy decoding.", "", "| " + " | ".join(columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 3.2))
    colors = ["tab:gray" if r["kind"] == "input" else "tab:purple" for r in rows]
    values = [r["accuracy"] or 0.0 for r in rows]
    ax.bar([r["model"] for r in rows], values, color=colors)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("held-out accuracy")
    ax.set_title("Merging two pipeline policies (gray: inputs, purple: merges)", fontsize=10)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
