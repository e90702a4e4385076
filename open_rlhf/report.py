"""Evaluation of a finished pipeline run and its report: ``report.md`` plus PNG plots.

Plots: training curves per stage, reward-model margins on held-out pairs, and the base / SFT / final policy
compared on held-out prompts (task accuracy, reward-model score, KL to the SFT policy).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from open_rlhf import data, outputs  # noqa: E402
from open_rlhf.atomic import atomic_write_text  # noqa: E402

# Which logged quantities to plot per stage (key in log_history -> panel title).
CURVES = {
    "sft": {"loss": "train loss (nats/token)", "eval_loss": "eval loss", "mean_token_accuracy": "token accuracy"},
    "reward": {"loss": "train loss", "accuracy": "train pair accuracy", "eval_accuracy": "eval pair accuracy",
               "margin": "reward margin"},
    "dpo": {"loss": "train loss", "rewards/margins": "implicit reward margin",
            "rewards/accuracies": "implicit reward accuracy", "eval_loss": "eval loss"},
    "ppo": {"objective/scores": "score (reward model)", "objective/kl": "KL to reference (nats/seq)",
            "objective/entropy": "entropy (nats/token)", "loss/value": "value loss",
            "response/length": "response length (tokens)", "response/eos_rate": "EOS rate"},
    "kto": {"loss": "train loss", "rewards/margins": "implicit reward margin", "kl": "KL estimate (z_0)",
            "eval_loss": "eval loss"},
    "orpo": {"loss": "train loss", "nll_loss": "NLL of chosen", "log_odds_ratio": "log odds ratio",
             "rewards/accuracies": "implicit reward accuracy"},
    "grpo": {"reward": "reward (mean of the group)", "kl": "KL to reference", "entropy": "entropy (nats/token)",
             "completions/mean_length": "completion length (tokens)"},
}
CURVES.update(ipo=CURVES["dpo"], simpo=CURVES["dpo"], rloo=CURVES["grpo"], rlvr=CURVES["ppo"],
              reinforce_pp=CURVES["ppo"])  # the same logged keys as the trainer they share


def evaluate_run(args) -> dict:
    """Evaluate the base, SFT and final policies of a run on held-out prompts, and the reward model on pairs.

    The held-out prompts and pairs are the eval splits the stages kept out of training (same ``split_seed``).

    Returns:
        dict: ``policies`` (per policy: accuracy, reward_score, response_length, eos_rate), ``kl_vs_sft``,
        ``reward_model`` (held-out accuracy and margins), ``samples`` (prompt, gold answer, each policy's text).
    """
    from open_rlhf import evaluation, gate, models
    from open_rlhf.rewards import RewardModelScorer

    run = args.run_dir
    prompts, answers = args.held_out_prompts()
    final = args.method
    policy_paths = {"sft": args.sft_path, final: run / final}
    if args.eval_base_model:
        policy_paths = {"base": Path(models.resolve_model_path(args.model_name_or_path)), **policy_paths}

    results: dict = {"policies": {}, "kl_vs_sft": {}, "reward_model": None, "num_prompts": len(prompts)}
    scorer = None
    if args.reward_path is not None:
        scorer = RewardModelScorer.from_pretrained(str(args.reward_path))
        _, pairs = data.load_splits(args.preference_dataset, "preference", eval_size=args.eval_pairs,
                                    seed=args.split_seed)
        results["reward_model"] = evaluation.reward_model_accuracy(scorer, pairs)

    loaded = {}
    for name, path in policy_paths.items():
        tokenizer = models.load_tokenizer(str(path))
        loaded[name] = models.load_causal_lm(str(path))
        metrics = evaluation.evaluate_policy(loaded[name], tokenizer, prompts, answers, scorer,
                                             args.eval_max_new_tokens, args.eval_batch_size)
        results["policies"][name] = metrics
        print(f"eval {name}: accuracy={metrics['accuracy']} reward={metrics['reward_score']} "
              f"length={metrics['response_length']:.1f} eos={metrics['eos_rate']:.2f}", flush=True)
        if name == "base":
            del loaded[name]  # only the SFT and final policies are needed for KL
    tokenizer = models.load_tokenizer(str(policy_paths["sft"]))
    problem = gate.model_problem(loaded[final], tokenizer, prompts[0])
    if problem:  # a broken policy (the gate rejected it) cannot be sampled from: no KL
        results["kl_vs_sft"][final] = None
        print(f"eval KL({final} || sft): not computed, the policy is broken ({problem})", flush=True)
    else:
        results["kl_vs_sft"][final] = evaluation.kl_to_reference(
            loaded[final], loaded["sft"], tokenizer, prompts, args.eval_max_new_tokens, args.eval_batch_size)
        print(f"eval KL({final} || sft) = {results['kl_vs_sft'][final]:.3f} nats", flush=True)
    del loaded

    results["samples"] = [
        {"prompt": prompts[i][-1]["content"], "answer": answers[i] if answers else None,
         **{name: results["policies"][name]["responses"][i] for name in results["policies"]}}
        for i in range(min(args.report_samples, len(prompts)))
    ]
    return results


def _stage_throughput(history: list[dict]) -> tuple[float | None, float | None]:
    """(train seconds, tokens/s) from a TRL log history (``num_tokens`` and ``train_runtime``) or ours (PPO)."""
    runtime = next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), None)
    tokens = next((h["num_tokens"] for h in reversed(history) if "num_tokens" in h), None)
    if runtime and tokens:
        return runtime, tokens / runtime
    ppo = [h for h in history if "tokens_per_second" in h]
    if ppo:
        seconds = sum(h["time/step"] for h in ppo)
        return seconds, sum(h["tokens_per_second"] * h["time/step"] for h in ppo) / seconds
    return runtime, None


def plot_training_curves(run_dir: Path, stage_names: list[str], out: Path) -> Path:
    """One row of panels per stage with its logged curves against the step; saved as PNG."""
    rows = []
    for name in stage_names:
        history = outputs.read_log_history(run_dir / name)
        panels = [(key, title) for key, title in CURVES.get(name, {}).items() if any(key in h for h in history)]
        rows.append((name, history, panels))
    ncols = max([len(p) for _, _, p in rows] + [1])
    fig, axes = plt.subplots(len(rows), ncols, figsize=(3.2 * ncols, 2.6 * len(rows)), squeeze=False)
    for r, (name, history, panels) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            if c >= len(panels):
                ax.axis("off")
                continue
            key, title = panels[c]
            points = [(h.get("step", h.get("epoch")), h[key]) for h in history if key in h]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None)
            ax.set_title(f"{name}: {title}", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_reward_margins(reward_model: dict, out: Path) -> Path:
    """Histogram of r(chosen) - r(rejected) on held-out pairs, with the pairwise accuracy in the title."""
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(reward_model["margins"], bins=20, color="tab:blue", alpha=0.8)
    ax.axvline(0, color="black", lw=1)
    ax.set_title(f"Reward model on held-out pairs: accuracy {reward_model['accuracy']:.1%}", fontsize=10)
    ax.set_xlabel("r(chosen) - r(rejected)")
    ax.set_ylabel("pairs")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_policy_comparison(results: dict, out: Path) -> Path:
    """Bars per policy: task accuracy, reward-model score; and the final policy's KL to SFT."""
    names = list(results["policies"])
    metrics = [("accuracy", "task accuracy"), ("reward_score", "reward-model score")]
    metrics = [(k, t) for k, t in metrics if any(results["policies"][n][k] is not None for n in names)]
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(3.6 * (len(metrics) + 1), 3), squeeze=False)
    colors = ["tab:gray", "tab:blue", "tab:green", "tab:orange"]
    for ax, (key, title) in zip(axes[0], metrics, strict=False):
        values = [results["policies"][n][key] or 0.0 for n in names]
        ax.bar(names, values, color=colors[: len(names)])
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=10)
    ax = axes[0][-1]
    kl = {name: value for name, value in results["kl_vs_sft"].items() if value is not None}
    ax.bar(list(kl), list(kl.values()), color="tab:red")
    for i, v in enumerate(kl.values()):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_title("KL to SFT policy (nats/seq)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _fmt(value, spec=".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def gate_section(state: dict) -> list[str]:
    """The report's capability-gate section: per gated stage its checks, numbers, thresholds and verdict, and the
    pipeline's final policy (`open_rlhf.gate`)."""
    gates = state.get("gate") or {}
    if not gates:
        return ["## Capability gate", "", "Off for this run (`--no_gate`).", ""]
    lines = ["## Capability gate", "",
             "After each policy stage the new policy is compared with the one it started from on held-out prompts "
             "(`open_rlhf.gate`); a stage that regresses beyond a threshold, or logs a non-finite loss, is rejected "
             "and rolled back: later stages and the final policy use the last accepted policy, and the rejected "
             "output is kept.", "",
             "| stage | check | input | output | change | limit | result |", "|---|---|---:|---:|---:|---:|---|"]
    for name, record in gates.items():
        for c in record["checks"]:
            lines.append(f"| {name} | {c['check']} | {_fmt(c['before'])} | "
                         f"{_fmt(c['after']) if not isinstance(c['after'], str) else c['after']} | "
                         f"{_fmt(c['change'], '+.3f')} | {_fmt(c['threshold']) if not isinstance(c['threshold'], str) else c['threshold']} | "
                         f"{'pass' if c['passed'] else '**FAIL**'} |")
    lines.append("")
    for name, record in gates.items():
        verdict = "accepted" if record["accepted"] else f"**rejected**: rolled back to `{record['input']}`; its output " \
                                                        f"stays in `{record['output']}`"
        lines.append(f"- `{name}` ({record['input']} -> {record['output']}): {verdict}.")
    lines += ["", f"Final policy of the pipeline: **`{state.get('final_policy')}`**.", ""]
    return lines


def tracking_dirs(run_dir: Path, stage_names: list[str]) -> dict[str, list[Path]]:
    """Per stage, the folders under ``<run_dir>/<stage>/`` that hold TensorBoard event files (``report_to``)."""
    found = {}
    for name in stage_names:
        folders = sorted({p.parent for p in (run_dir / name).glob("**/events.out.tfevents*")})
        if folders:
            found[name] = folders
    return found


def tracking_section(args, stage_names: list[str]) -> list[str]:
    """Links to the stages' TensorBoard event folders and the trackio database (``--report_to``), or nothing."""
    report_to = getattr(args, "report_to", None) or ""
    found = tracking_dirs(args.run_dir, stage_names)
    if not found and "trackio" not in report_to:
        return []
    lines = ["## Experiment tracking", ""]
    for name, folders in found.items():
        links = ", ".join(f"[{f.relative_to(args.run_dir)}]({f.relative_to(args.run_dir)})" for f in folders)
        lines.append(f"- {name}: TensorBoard events in {links}")
    if found:
        lines.append(f"- `tensorboard --logdir {args.run_dir}` shows every stage.")
    if "trackio" in report_to:
        where = os.environ.get("TRACKIO_DIR", str(args.run_dir / "trackio"))
        lines.append(f"- trackio: project `open-rlhf-{args.run_name}` (one run per stage) in `{where}`; "
                     f"`TRACKIO_DIR={where} trackio show --project open-rlhf-{args.run_name}`.")
    return lines + [""]


def write_report(args, stage_names: list[str]) -> Path:
    """Write ``<run_dir>/report.md`` and its PNG plots from the stage outputs and ``eval/results.json``.

    Args:
        args: the run's `open_rlhf.pipeline.PipelineArguments`.
        stage_names (`list[str]`): the run's stages in order (``[name for name, _ in stage_plan(args)]``).
    """
    run = args.run_dir
    state = json.loads((run / "pipeline_state.json").read_text())
    results = json.loads((run / "eval" / "results.json").read_text())
    names = list(stage_names)
    plots = {"curves": plot_training_curves(run, names, run / "training_curves.png"),
             "policies": plot_policy_comparison(results, run / "policy_comparison.png")}
    if results.get("reward_model"):
        plots["reward"] = plot_reward_margins(results["reward_model"], run / "reward_margins.png")

    lines = [f"# Pipeline report: `{args.run_name}` ({' -> '.join(n.upper() for n in names)})", ""]
    lines += ["## Stages", "", "| stage | wall time (s) | train time (s) | tokens/s | command |", "|---|---:|---:|---:|---|"]
    total = 0.0
    for name in names:
        info = state["stages"].get(name, {})
        wall = info.get("wall_seconds")
        total += wall or 0.0
        train_s, tps = _stage_throughput(outputs.read_log_history(run / name))
        lines.append(f"| {name} | {_fmt(wall, '.0f')} | {_fmt(train_s, '.0f')} | {_fmt(tps, '.1f')} | "
                     f"`{info.get('command', '(finished earlier)')}` |")
    lines.append(f"| evaluation | {_fmt(results.get('wall_seconds'), '.0f')} | | | |")
    total += results.get("wall_seconds") or 0.0
    lines += ["", f"Total wall time of stages + evaluation: **{total / 60:.1f} min**.", ""]
    lines += tracking_section(args, names)
    lines += ["![training curves](training_curves.png)", ""]
    lines += gate_section(state)

    if results.get("reward_model"):
        rm = results["reward_model"]
        lines += ["## Reward model", "", f"Held-out pairwise accuracy: **{rm['accuracy']:.1%}** on "
                  f"{len(rm['margins'])} pairs; mean margin r(chosen) - r(rejected) = {rm['mean_margin']:.3f}.", "",
                  "![reward margins](reward_margins.png)", ""]

    lines += ["## Policies on held-out prompts", "",
              f"{results['num_prompts']} held-out prompts, greedy decoding. Accuracy = share of `#### N` answers equal "
              "to the gold answer; reward = mean reward-model score; KL = sampled-sequence estimate of "
              "KL(policy || SFT) in nats.", "",
              "| policy | accuracy | reward-model score | KL to SFT | response length | EOS rate |",
              "|---|---:|---:|---:|---:|---:|"]
    rejected = {n for n, r in (state.get("gate") or {}).items() if not r["accepted"]}
    for name, m in results["policies"].items():
        kl = 0.0 if name == "sft" else results["kl_vs_sft"].get(name)
        label = f"{name} (rejected by the gate)" if name in rejected else name
        lines.append(f"| {label} | {_fmt(m['accuracy'])} | {_fmt(m['reward_score'])} | {_fmt(kl)} | "
                     f"{_fmt(m['response_length'], '.1f')} | {_fmt(m['eos_rate'], '.2f')} |")
    lines += ["", "![policy comparison](policy_comparison.png)", "", "## Sample generations", ""]
    for i, sample in enumerate(results["samples"], 1):
        lines += [f"**{i}.** {sample['prompt']}" + (f"  (gold: {sample['answer']})" if sample.get("answer") else ""),
                  "", "| " + " | ".join(results["policies"]) + " |", "|" + "---|" * len(results["policies"]),
                  "| " + " | ".join(sample[n].replace("\n", "<br>").replace("|", "\\|") for n in results["policies"])
                  + " |", ""]
    out = run / "report.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out
