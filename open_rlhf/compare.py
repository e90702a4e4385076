"""Compare preference and RL methods trained from one SFT policy: held-out accuracy, reward-model win rate
against the SFT policy, KL to the SFT policy, wall time and peak memory; writes a CSV, a Markdown table and a PNG.

Every method is a `open_rlhf.pipeline` run in one shared run folder (``<runs_dir>/<run_name>/``): the SFT policy
and the reward model are trained once (or taken from ``--sft_model_path`` / ``--reward_model_path``), then each
method's stage is trained from the SFT policy with its preset. A method that already finished, or was already
evaluated (``compare/<method>.json``), is not redone, so an interrupted comparison continues where it stopped.

Metrics, on the held-out prompts of the pipeline's evaluation (same ``split_seed``; greedy decoding):

* ``accuracy``: share of ``#### N`` answers equal to the gold answer (`open_rlhf.rewards.accuracy_reward`), with
  its 95% Wilson interval (``accuracy_ci_low`` / ``_high``).
* ``accuracy_delta_vs_sft`` with a 95% paired-bootstrap interval (``delta_ci_low`` / ``_high``) and ``p_vs_sft``,
  the exact McNemar p-value against the SFT policy on the same prompts (`open_rlhf.metrics`).
* ``fixed_vs_sft`` / ``broke_vs_sft``: prompts answered right where the SFT policy was wrong, and the reverse.
* ``win_rate_vs_sft``: share of prompts where the reward model scores the method's response above the SFT
  policy's response (ties count 1/2).
* ``kl_vs_sft``: Monte-Carlo KL(policy || SFT) in nats per sequence, from responses sampled at temperature 1.
* with ``control_args``, the Preferred-FT control (Rafailov et al. 2023, §6.1): SFT continued from the SFT policy on
  its demonstrations, a row of the family ``control``; every method gets ``delta_vs_control`` with its paired-bootstrap
  interval (``control_ci_low`` / ``_high``) and ``p_vs_control`` (McNemar). A preference method whose gain over the
  SFT policy is not above the control's shows more SFT, not preference learning.
* ``train_seconds`` (the stage's wall time, model loading included) and ``peak_rss_mb`` (the stage process's
  peak resident memory; ``peak_gpu_mb`` with CUDA).
"""

from __future__ import annotations

import csv
import functools
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from open_rlhf import outputs  # noqa: E402
from open_rlhf.atomic import atomic_write_text  # noqa: E402
from open_rlhf.curves import plot_run_curves  # noqa: E402
from open_rlhf.errors import ConfigError, StageFailedError, parse_config, user_errors  # noqa: E402
from open_rlhf.metrics import accuracy_interval, mcnemar_test, paired_bootstrap  # noqa: E402
from open_rlhf.metrics import win_rate as win_rate_with_interval  # noqa: E402
from open_rlhf.pipeline import METHODS, Method, PipelineArguments, train_stages  # noqa: E402
from open_rlhf.rewards import RewardModelScorer  # noqa: E402

CSV_COLUMNS = ["method", "family", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "accuracy_delta_vs_sft",
               "delta_ci_low", "delta_ci_high", "p_vs_sft", "fixed_vs_sft", "broke_vs_sft",
               "win_rate_vs_sft", "reward_score",
               "kl_vs_sft", "response_length", "eos_rate", "train_seconds", "peak_rss_mb", "peak_gpu_mb",
               "global_step", "delta_vs_control", "control_ci_low", "control_ci_high", "p_vs_control", "command"]
CONTROL = "control"  # the Preferred-FT control's name: SFT continued from the SFT policy (family "control")
CONTROL_METHOD = Method("train_sft.py", "config/sft/default.yaml", "sft", None, False,
                        "Rafailov et al. 2023 (Preferred-FT baseline)")


@dataclass
class FromSFTArguments:
    """Options shared by `compare_methods.py` and `sweep.py`: methods trained from one SFT policy, scored by one
    reward model and evaluated on the same held-out prompts (`FromSFT`)."""

    run_name: str = field(default="methods", metadata={"help": "Shared run folder: <runs_dir>/<run_name>/."})
    runs_dir: str = field(default="runs", metadata={"help": "Folder of all runs."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Starting model of the SFT stage. Default: embedded SmolLM2-135M-Instruct."})
    sft_model_path: str | None = field(
        default=None, metadata={"help": "A finished SFT policy (e.g. runs/default/sft); default: train one."})
    reward_model_path: str | None = field(
        default=None, metadata={"help": "A finished reward model (e.g. runs/default/reward); default: train one."})
    preference_dataset: str = field(default="builtin", metadata={"help": "Pairs of the offline methods and RM."})
    rl_dataset: str = field(default="builtin", metadata={"help": "Prompts (with gold answers) of RL methods."})
    sft_dataset: str = field(default="builtin", metadata={"help": "SFT data (when the SFT stage is trained)."})
    eval_dataset: str | None = field(default=None, metadata={
        "help": "Held-out prompts with gold answers of the evaluation (e.g. ../shared/data/gsm8k/test.jsonl while the "
                "RL methods train on gsm8k/train.jsonl). Default: rl_dataset's held-out split."})
    method_args: str = field(default="", metadata={"help": "Extra flags for every method's stage (e.g. smoke runs)."})
    sft_args: str = field(default="", metadata={"help": "Extra flags for the SFT stage."})
    reward_args: str = field(default="", metadata={"help": "Extra flags for the reward stage."})
    curve_every: int = field(default=0, metadata={
        "help": "Learning curve of every method every K steps (open_rlhf.curves; 0: off), plotted together."})
    eval_prompts: int = field(default=256, metadata={
        "help": "Held-out prompts (256: a standard error of about 3 points at an accuracy of 0.5; 64 gives 6)."})
    eval_max_new_tokens: int = field(default=96, metadata={"help": "Generation length of the evaluation."})
    eval_batch_size: int = field(default=16, metadata={"help": "Prompts per generation batch."})
    split_seed: int = field(default=42, metadata={"help": "Seed of every train/eval split."})
    keep_checkpoints: bool = field(default=False, metadata={
        "help": "Keep each finished stage's checkpoint-N folders (optimizer states, about 3x the model's size each; "
                "only a stopped stage needs them, to resume). By default they are deleted once the stage is "
                "evaluated; its final model stays."})

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run_name

    def pipeline_args(self, method: str, method_args: str = "", **overrides) -> PipelineArguments:
        """A pipeline run of ``method`` from the shared SFT policy and reward model; no per-run report or gate (a
        comparison evaluates every method, regressions included: nothing is rolled back)."""
        settings = dict(
            run_name=self.run_name, runs_dir=self.runs_dir, method=method, model_name_or_path=self.model_name_or_path,
            sft_model_path=self.sft_model_path, reward_model_path=self.reward_model_path,
            sft_dataset=self.sft_dataset, preference_dataset=self.preference_dataset, rl_dataset=self.rl_dataset,
            eval_dataset=self.eval_dataset,
            sft_args=self.sft_args, reward_args=self.reward_args, method_args=method_args.strip(),
            evaluate=False, eval_prompts=self.eval_prompts, split_seed=self.split_seed, gate=False)
        return PipelineArguments(**{**settings, **overrides})

    def control_pipeline_args(self, start: FromSFT, run_name: str, runs_dir: str, sft_args: str) -> PipelineArguments:
        """The Preferred-FT control as a pipeline run: its SFT stage (``sft_args``) starts from ``start``'s SFT policy
        (train it with ``only={"sft"}``); the reward model is ``start``'s."""
        return self.pipeline_args("ppo", run_name=run_name, runs_dir=runs_dir, model_name_or_path=str(start.sft_path),
                                  sft_model_path=None, reward_model_path=str(start.reward_path), sft_args=sft_args)


@dataclass
class CompareArguments(FromSFTArguments):
    """Options of `scripts/compare_methods.py`."""

    methods: list[str] = field(
        default_factory=lambda: list(METHODS), metadata={"help": f"Methods to compare (of: {', '.join(METHODS)})."})
    offline_args: str = field(default="", metadata={"help": "Extra flags for the preference methods' stages only."})
    online_args: str = field(default="", metadata={"help": "Extra flags for the RL methods' stages only."})
    control_args: str = field(default="", metadata={
        "help": "Flags of the Preferred-FT control, SFT continued from the SFT policy on its demonstrations (e.g. "
                "'--max_steps 60 --learning_rate 2e-5'): a row of its own and a paired test of every method against "
                "it. Empty: no control."})

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}.")

    def method_pipeline_args(self, method: str) -> PipelineArguments:
        """The pipeline run of one method: shared run folder, SFT policy and reward model, the method's extra flags."""
        return self.pipeline_args(method, " ".join([
            self.method_args, self.offline_args if METHODS[method].data == "preference" else self.online_args,
            f"--curve_every {self.curve_every}" if self.curve_every else ""]))


def cached_json(path: Path, compute, label: str) -> dict:
    """The evaluation saved in ``path`` when there is one (saying that ``label`` is already evaluated), else
    ``compute()``, saved there atomically first."""
    if path.is_file():
        print(f"=== {label}: already evaluated ({path}), reused", flush=True)
        return json.loads(path.read_text())
    result = compute()
    atomic_write_text(path, json.dumps(result, indent=1))
    return result


class FromSFT:
    """The shared start and yardstick of a comparison or a sweep: the SFT policy and reward model (trained once in
    ``args.run_dir`` unless given), the held-out prompts, and the SFT policy's own evaluation (cached in
    ``sft_cache``) that every method is compared with.

    Args:
        args (`FromSFTArguments`): the shared options.
        sft_cache (`Path`): JSON file of the SFT policy's evaluation; reused when it exists.

    Raises:
        StageFailedError: when the SFT or reward stage fails.
    """

    def __init__(self, args: FromSFTArguments, sft_cache: Path):
        from open_rlhf import models

        self.args = args
        shared = args.pipeline_args("ppo")
        train_stages(shared, only={"sft", "reward"})
        self.sft_path, self.reward_path = shared.sft_path, shared.reward_path
        self.prompts, self.answers = shared.held_out_prompts()
        self.scorer = RewardModelScorer.from_pretrained(str(self.reward_path))
        # the SFT policy, for KL; loaded once, on first use
        self._reference = functools.cache(lambda: models.load_causal_lm(str(self.sft_path)))
        self._sft_cache = sft_cache

    @functools.cached_property
    def sft(self) -> dict:
        """The SFT policy's evaluation (`evaluate` without KL), computed on first use and cached in ``sft_cache``
        (a sweep of reward models alone never needs it)."""
        return cached_json(self._sft_cache, lambda: self.evaluate(Path(self.sft_path), kl=False), "SFT policy")

    def evaluate(self, path: Path, kl: bool = True) -> dict:
        """`open_rlhf.evaluation.evaluate_policy` of the policy in ``path`` on the held-out prompts (greedy), and
        with ``kl`` its sampled KL to the SFT policy (``kl_vs_sft``, nats per sequence)."""
        from open_rlhf import evaluation, models

        tokenizer = models.load_tokenizer(str(path))
        policy = models.load_causal_lm(str(path))
        metrics = evaluation.evaluate_policy(policy, tokenizer, self.prompts, self.answers, self.scorer,
                                             self.args.eval_max_new_tokens, self.args.eval_batch_size)
        if kl:
            metrics["kl_vs_sft"] = evaluation.kl_to_reference(policy, self._reference(), tokenizer, self.prompts,
                                                              self.args.eval_max_new_tokens,
                                                              self.args.eval_batch_size)
        return metrics

    def row(self, method: str, metrics: dict, stage: dict | None = None, marker: dict | None = None) -> dict:
        """One comparison row (`CSV_COLUMNS`) of ``method`` (``"sft"`` for the start) against the SFT policy:
        accuracy with its Wilson interval, paired-bootstrap difference, McNemar p, fixed / broke, win rate
        (`comparison_row`)."""
        return comparison_row(method, None if method == "sft" else METHODS[method], metrics, self.sft, stage or {},
                              marker or {})


def win_rate(scores: list[float], baseline_scores: list[float]) -> float:
    """Share of prompts where ``scores`` beat ``baseline_scores``; a tie counts 1/2 (`open_rlhf.metrics.win_rate`).

    Args:
        scores: `N` reward-model scores of the method's responses.
        baseline_scores: `N` scores of the baseline's (SFT) responses to the same prompts.

    Raises:
        ValueError: when the lists differ in length or are empty.
    """
    if len(scores) != len(baseline_scores) or not scores:
        raise ValueError(f"win_rate needs two equally long, non-empty score lists; got {len(scores)} and "
                         f"{len(baseline_scores)}.")
    return win_rate_with_interval(scores, baseline_scores)["win_rate"]


def compare_methods(args: CompareArguments) -> list[dict]:
    """Train (or reuse) every method of ``args.methods`` from one SFT policy, evaluate each, write the outputs.

    Writes ``<run_dir>/method_comparison.csv``, ``.md`` and ``.png``, and per method ``<run_dir>/compare/<m>.json``;
    with ``curve_every``, every method's learning curve in one ``<run_dir>/learning_curves.png``. Once a method is
    evaluated, its ``checkpoint-N`` folders are deleted unless ``keep_checkpoints`` (its final model stays).

    Returns:
        `list[dict]`: one row per method (the CSV columns), SFT first.

    Raises:
        StageFailedError: when a stage fails (its log path is in the message); the other methods still run first.
    """
    run = args.run_dir
    out = run / "compare"
    start = FromSFT(args, sft_cache=out / "sft.json")

    rows = [start.row("sft", start.sft)]
    failed = []
    control = None
    if args.control_args:
        try:
            control = train_control(args, start)
            rows.append(control["row"])
        except StageFailedError as error:
            print(f"=== compare {CONTROL}: FAILED, skipped ({error})", flush=True)
            failed.append(CONTROL)
    for method in args.methods:
        try:
            state = train_stages(args.method_pipeline_args(method))
        except StageFailedError as error:  # one broken method must not cost the others' results
            print(f"=== compare {method}: FAILED, skipped ({error})", flush=True)
            failed.append(method)
            continue
        metrics = cached_json(out / f"{method}.json", lambda m=method: start.evaluate(run / m), f"compare {method}")
        drop_checkpoints(run / method, f"compare {method}", args.keep_checkpoints)
        marker = json.loads((run / method / outputs.COMPLETE_MARKER).read_text())
        rows.append(start.row(method, metrics, state["stages"].get(method, {}), marker))
        if control is not None:
            rows[-1].update(versus_control(metrics, control["metrics"]))
        write_outputs(rows, run)  # after every method: a partial comparison is already readable
    if failed:
        raise StageFailedError(f"Methods {failed} failed (logs: {run}/<method>.log); the others are in "
                               f"{run / 'method_comparison.csv'}. Fix the cause and re-run: finished work is reused.",
                               returncode=1)
    return rows


def train_control(args: CompareArguments, start: FromSFT) -> dict:
    """Train (or reuse) the Preferred-FT control in ``<run_dir>/control/sft``: the SFT stage with
    ``args.control_args``, started from the shared SFT policy, and evaluate it like a method.

    Returns:
        `dict`: ``metrics`` (the evaluation, cached in ``compare/control.json``) and ``row`` (its `CSV_COLUMNS` row,
        family ``"control"``).

    Raises:
        StageFailedError: when the SFT stage fails.
    """
    run = args.run_dir
    pipeline_args = args.control_pipeline_args(start, CONTROL, str(run), " ".join(
        [args.sft_args, args.control_args, f"--curve_every {args.curve_every}" if args.curve_every else ""]))
    state = train_stages(pipeline_args, only={"sft"})
    folder = stage_dir(run, CONTROL)
    metrics = cached_json(run / "compare" / f"{CONTROL}.json", lambda: start.evaluate(folder), f"compare {CONTROL}")
    drop_checkpoints(folder, f"compare {CONTROL}", args.keep_checkpoints)
    marker = json.loads((folder / outputs.COMPLETE_MARKER).read_text())
    return {"metrics": metrics, "row": control_row(CONTROL, metrics, start.sft, state["stages"].get("sft", {}), marker)}


def drop_checkpoints(folder: Path, label: str, keep: bool) -> None:
    """Delete a finished, evaluated stage's ``checkpoint-N`` folders (`outputs.remove_checkpoints`) unless ``keep``:
    only a stopped stage needs them, and a comparison or sweep of many stages would fill the disk with them."""
    if keep:
        return
    freed = outputs.remove_checkpoints(folder)
    if freed:
        print(f"=== {label}: its checkpoints deleted ({freed / 1e9:.1f} GB; --keep_checkpoints keeps them)", flush=True)


def control_row(name: str, metrics: dict, sft: dict, stage: dict, marker: dict) -> dict:
    """The `comparison_row` of a continued-SFT control against the SFT policy it started from, with the family
    ``"control"``: the same paired test and intervals as a method's row."""
    return {**comparison_row(name, CONTROL_METHOD, metrics, sft, stage, marker), "family": "control"}


def versus_control(metrics: dict, control: dict) -> dict:
    """A method's paired test against the control on the same prompts: ``delta_vs_control`` (accuracy
    difference), its 95% paired-bootstrap interval and the exact McNemar ``p_vs_control``."""
    delta = paired_bootstrap(metrics["correct"], control["correct"])
    return {"delta_vs_control": metrics["accuracy"] - control["accuracy"], "control_ci_low": delta["low"],
            "control_ci_high": delta["high"], "p_vs_control": mcnemar_test(metrics["correct"],
                                                                           control["correct"])["p_value"]}


def comparison_row(name: str, method, metrics: dict, sft: dict, stage: dict, marker: dict) -> dict:
    """One row of `CSV_COLUMNS`: ``metrics`` of ``name`` (its `open_rlhf.pipeline.METHODS` entry ``method``, None for
    the SFT start) against the SFT policy's ``sft`` metrics on the same prompts; ``stage`` is the pipeline state's
    entry (wall time, command), ``marker`` the stage's completion marker (peak memory, steps)."""
    family = "start" if method is None else ("offline" if method.data == "preference" else "online RL")
    accuracy = metrics.get("accuracy")
    low = high = p_value = delta = fixed = broke = None
    if metrics.get("correct"):
        _, low, high = accuracy_interval(metrics["correct"])
        test = mcnemar_test(metrics["correct"], sft["correct"])
        # prompts the method answers right where the SFT policy was wrong, and the reverse
        fixed, broke = test["a_only"], test["b_only"]
        if method is not None:
            p_value = test["p_value"]
            delta = paired_bootstrap(metrics["correct"], sft["correct"])
    return {
        "method": name, "family": family, "accuracy": accuracy, "accuracy_ci_low": low, "accuracy_ci_high": high,
        "accuracy_delta_vs_sft": None if accuracy is None else accuracy - sft["accuracy"],
        "delta_ci_low": delta and delta["low"], "delta_ci_high": delta and delta["high"], "p_vs_sft": p_value,
        "fixed_vs_sft": fixed, "broke_vs_sft": broke,
        "win_rate_vs_sft": None if method is None else win_rate(metrics["scores"], sft["scores"]),
        "reward_score": metrics.get("reward_score"), "kl_vs_sft": metrics.get("kl_vs_sft", 0.0 if method is None
                                                                               else None),
        "response_length": metrics.get("response_length"), "eos_rate": metrics.get("eos_rate"),
        "train_seconds": stage.get("wall_seconds"), "peak_rss_mb": marker.get("peak_rss_mb"),
        "peak_gpu_mb": marker.get("peak_gpu_mb"), "global_step": marker.get("global_step"),
        "command": stage.get("command", "(finished earlier)" if method is not None else ""),
    }


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown_table(rows: list[dict]) -> str:
    """The comparison as a Markdown table (the README's method table is this output); with a control row, a column
    of each method's paired difference to it [95% CI] and its McNemar p."""
    with_control = any(r.get("delta_vs_control") is not None for r in rows)
    header = ("| method | accuracy [95% CI] | vs SFT [95% CI] | McNemar p | fixed / broke | "
              + ("vs control [95% CI], p | " if with_control else "")
              + "RM win rate vs SFT | KL to SFT (nats) | train time (s) | peak RSS (MB) |")
    lines = [header, "|---|---:|---:|---:|---:|" + ("---:|" if with_control else "") + "---:|---:|---:|---:|"]
    for r in rows:
        accuracy = _fmt(r["accuracy"], ".3f")
        if r.get("accuracy_ci_low") is not None:
            accuracy += f" [{r['accuracy_ci_low']:.3f}, {r['accuracy_ci_high']:.3f}]"
        delta = _fmt(r["accuracy_delta_vs_sft"], "+.3f")
        if r.get("delta_ci_low") is not None:
            delta += f" [{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}]"
        versus = ""
        if with_control:
            versus = ("| " if r.get("delta_vs_control") is None else
                      f"| {r['delta_vs_control']:+.3f} [{r['control_ci_low']:+.3f}, {r['control_ci_high']:+.3f}], "
                      f"{r['p_vs_control']:.3g} ")
        lines.append(f"| {r['method']} | {accuracy} | {delta} | {_fmt(r.get('p_vs_sft'), '.3g')} | "
                     f"{_fmt(r['fixed_vs_sft'], 'd')} / {_fmt(r['broke_vs_sft'], 'd')} {versus}| "
                     f"{_fmt(r['win_rate_vs_sft'], '.3f')} | {_fmt(r['kl_vs_sft'], '.3f')} | "
                     f"{_fmt(r['train_seconds'], '.0f')} | {_fmt(r['peak_rss_mb'], '.0f')} |")
    return "\n".join(lines) + "\n"


def plot_comparison(rows: list[dict], out: Path) -> Path:
    """Bar charts per method: accuracy with its 95% interval (SFT as a line), RM win rate vs SFT (0.5 line), KL to
    SFT, train time, peak memory."""
    panels = [("accuracy", "held-out accuracy"), ("win_rate_vs_sft", "RM win rate vs SFT"),
              ("kl_vs_sft", "KL to SFT (nats/seq)"), ("train_seconds", "train wall time (s)"),
              ("peak_rss_mb", "peak RSS (MB)")]
    methods = [r for r in rows if r["family"] != "start"]
    names = [r["method"] for r in methods]
    colors = [{"offline": "tab:blue", "control": "tab:gray"}.get(r["family"], "tab:orange") for r in methods]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = [r[key] if r[key] is not None else 0.0 for r in methods]
        error = None
        if key == "accuracy" and all(r.get("accuracy_ci_low") is not None for r in methods):  # 95% Wilson intervals
            error = [[v - r["accuracy_ci_low"] for v, r in zip(values, methods, strict=True)],
                     [r["accuracy_ci_high"] - v for v, r in zip(values, methods, strict=True)]]
        ax.bar(names, values, color=colors, yerr=error, capsize=2, error_kw={"lw": 0.8})
        for i, v in enumerate(values):
            label = f"{v:.2f}" if abs(v) < 10 else f"{v:.0f}" if abs(v) < 1000 else f"{v / 1000:.1f}k"
            ax.text(i, v if error is None else v + error[1][i], label, ha="center", va="bottom", fontsize=7)
        if key == "accuracy":
            ax.axhline(rows[0]["accuracy"], color="black", lw=1, ls="--", label="SFT")
            ax.legend(fontsize=7)
        if key == "win_rate_vs_sft":
            ax.axhline(0.5, color="black", lw=1, ls="--")
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelrotation=60, labelsize=7)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("Methods from one SFT policy (blue: offline preference, orange: online RL, gray: continued SFT)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def stage_dir(run_dir: Path, name: str) -> Path:
    """The output folder of a comparison row's stage: ``<run_dir>/<method>``, the control's ``<run_dir>/control/sft``
    (a pipeline run of its own, `train_control`)."""
    return run_dir / CONTROL / "sft" if name == CONTROL else run_dir / name


def write_outputs(rows: list[dict], run_dir: Path) -> None:
    """Write ``method_comparison.csv``, ``.md`` and ``.png`` into ``run_dir`` (each atomically)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / "method_comparison.csv", buffer.getvalue())
    atomic_write_text(run_dir / "method_comparison.md", markdown_table(rows))
    tmp = run_dir / ".method_comparison.tmp.png"
    plot_comparison(rows, tmp)
    tmp.replace(run_dir / "method_comparison.png")
    # the methods trained with --curve_every, one line each
    plot_run_curves({r["method"]: stage_dir(run_dir, r["method"]) for r in rows}, run_dir / "learning_curves.png",
                    title="Learning curves from one SFT policy")


def make_parser():
    """The `trl.TrlParser` of ``scripts/compare_methods.py`` (YAML: ``config/compare/*.yaml``)."""
    from trl import TrlParser

    return TrlParser((CompareArguments,))


def compare_main(argv: list[str] | None = None) -> None:
    """``scripts/compare_methods.py`` / ``open-rlhf compare``: parse ``argv``, compare, print the table."""
    with user_errors():
        (args,) = parse_config(make_parser(), argv)
        rows = compare_methods(args)
    print(markdown_table(rows))
    print(f"Written: {args.run_dir / 'method_comparison.csv'}, .md, .png")
