"""Hyperparameter sweeps of the preference and RL methods from one SFT policy, every run in one CSV, resumable.

A sweep is a grid per method over the few hyperparameters that matter, times seeds. Every point is a pipeline run
of that method (`open_rlhf.pipeline.train_stages`: the method's preset, then the grid values and the seed as
flags, which win) in its own folder ``<runs_dir>/<run_name>/<point>/``, started from one SFT policy and scored
with one reward model (trained once in ``<runs_dir>/<run_name>/`` unless ``--sft_model_path`` /
``--reward_model_path`` are given). Each point is evaluated like `open_rlhf.compare` does: greedy accuracy on the
same held-out prompts with its 95% Wilson interval, the paired difference to the SFT policy with a 95% bootstrap
interval and the exact McNemar p-value, reward-model win rate and KL to the SFT policy.

``reward`` is a point family too (``--grid reward.learning_rate=3e-5,1e-4``): such a point trains a reward model from
the SFT policy on ``--preference_dataset`` with ``--eval_pairs`` pairs held out, and is scored by its held-out pair
accuracy (share of pairs with r(chosen) > r(rejected), 95% Wilson interval) and mean margin.

``sft`` is the control family (``--grid sft.max_steps=20 sft.learning_rate=1e-5``): such a point continues SFT from
the SFT policy on ``--sft_dataset`` (the SFT preset, ``--sft_args``, then the grid values and the seed) and is scored
like a method. It is the "Preferred-FT" baseline of Rafailov et al. 2023 (§6.1: fine-tuning on the chosen answers
alone): a preference method whose data holds the demonstrations as chosen answers (the built-in pairs) must beat the
same budget of plain SFT on them, or its gain over the SFT policy is more SFT, not preference learning.

Outputs, rewritten atomically after every point (so a partial sweep is readable):

- ``sweep.csv``: one row per point: method, seed, each grid value, the metrics, train time, the stage command;
- ``sweep.md``: per method and configuration, the mean over seeds, best first;
- ``learning_curves.png``: with ``--curve_every``, every point's learning curve in one figure.
- ``<point>/evaluation.json``: the point's per-prompt evaluation (responses, correctness, reward scores), so two
  points can be compared paired: ``--versus A B`` (`paired_comparison`), e.g. a method against the control.

A point that finished training and evaluation is never redone (its ``result.json``), so a stopped sweep resumes
where it stopped, and growing the grid only runs the new points. A point whose stage fails is recorded as failed
and the sweep goes on. ``--curve_every K`` gives every point a learning curve (`open_rlhf.curves`). A finished
point's ``checkpoint-N`` folders are deleted (its final model stays) unless ``--keep_checkpoints``: with optimizer
states they are about 3x a model each, and a sweep of dozens of points would fill the disk.

    python scripts/sweep.py --sft_model_path runs/default/sft --reward_model_path runs/default/reward \\
        --grid dpo.learning_rate=5e-7,5e-6 dpo.beta=0.1,0.5 --seeds 0 1
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from open_rlhf.atomic import atomic_write_text
from open_rlhf.compare import FromSFT, FromSFTArguments, cached_json, control_row, drop_checkpoints
from open_rlhf.curves import plot_run_curves
from open_rlhf.errors import ConfigError, StageFailedError, parse_config, user_errors

REWARD = "reward"  # the point family of reward models (scored by held-out pair accuracy, not by a policy's)
SFT = "sft"  # the control family: SFT continued from the SFT policy (Preferred-FT), scored like a method
EVALUATION_FILE = "evaluation.json"  # a point's per-prompt evaluation (`paired_comparison`)
# settings added after the first sweeps, with the value those sweeps had
_META_DEFAULTS = {"preference_dataset": "builtin", "eval_pairs": 256, "eval_dataset": None}
_GRID_ITEM = re.compile(r"^(?P<method>[A-Za-z0-9_]+)\.(?P<param>[A-Za-z_][A-Za-z0-9_]*)=(?P<values>.+)$")


@dataclass
class SweepArguments(FromSFTArguments):
    """Options of `scripts/sweep.py` (YAML: ``config/sweep/*.yaml``); the shared ones are `FromSFTArguments`'."""

    run_name: str = field(default="sweep", metadata={"help": "Sweep folder: <runs_dir>/<run_name>/."})
    grid: list[str] = field(default_factory=list, metadata={
        "help": "Grid items METHOD.PARAM=V1,V2,... (a stage flag and its values); the grid of a method is the "
                "product of its items. A method named with no item runs its preset once."})
    methods: list[str] = field(default_factory=list, metadata={"help": "Methods to run with their preset only."})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Seeds of every configuration."})
    eval_pairs: int = field(default=256, metadata={
        "help": "Held-out preference pairs of the reward-model points (their pair accuracy)."})
    versus: list[str] = field(default_factory=list, metadata={
        "help": "Two finished points (folders <runs_dir>/<sweep>/<point>, or a sweep folder for its SFT policy): "
                "print the paired comparison of the first against the second on the same prompts and exit; "
                "e.g. a method against the continued-SFT control of the same budget."})

    sampled: list[str] = field(default_factory=list, metadata={
        "help": "Finished points (or sweep folders, for their SFT policy): sample --sampled_k responses per held-out "
                "prompt at --sampled_temperature, print sampled accuracy, pass@k and the prompts greedy gets wrong "
                "but a sample gets right, write <folder>/sampled-k<K>-t<T>.json, and exit."})
    sampled_k: int = field(default=4, metadata={"help": "--sampled: responses per prompt."})
    sampled_temperature: float = field(default=0.7, metadata={"help": "--sampled: sampling temperature."})

    def __post_init__(self):
        if self.sampled:
            if self.sampled_k < 1 or self.sampled_temperature <= 0:
                raise ConfigError(f"--sampled needs --sampled_k >= 1 and --sampled_temperature > 0, got "
                                  f"{self.sampled_k} and {self.sampled_temperature}.")
            return
        if self.versus:
            if len(self.versus) != 2:
                raise ConfigError(f"--versus takes two point folders (A B: A against B), got {len(self.versus)}.")
            return
        self.points()  # a bad grid fails before anything runs

    def points(self) -> list[dict]:
        """The sweep's points in run order: ``{"name", "method", "seed", "params": {flag: value}}``.

        Raises:
            ConfigError: a grid item that is not ``METHOD.PARAM=V1,...``, an unknown method, no point at all.
        """
        from open_rlhf.pipeline import METHODS

        grids: dict[str, dict[str, list[str]]] = {m: {} for m in self.methods}
        for item in self.grid:
            match = _GRID_ITEM.match(item.strip())
            if not match:
                raise ConfigError(f"--grid {item!r}: expected METHOD.PARAM=V1,V2,... "
                                  "(e.g. dpo.learning_rate=5e-7,5e-6).")
            values = [v.strip() for v in match["values"].split(",") if v.strip()]
            if not values:
                raise ConfigError(f"--grid {item!r}: no values after '='.")
            grids.setdefault(match["method"], {})[match["param"]] = values
        unknown = [m for m in grids if m not in METHODS and m not in (REWARD, SFT)]
        if unknown:
            raise ConfigError(f"--grid / --methods: unknown method {unknown}; choose from {', '.join(METHODS)}, "
                              f"{REWARD} (a reward model) or {SFT} (continued SFT, the control).")
        if not grids:
            raise ConfigError("A sweep needs --grid items or --methods (e.g. --grid dpo.beta=0.1,0.5).")
        if not self.seeds:
            raise ConfigError("--seeds: give at least one seed.")
        points = []
        for method, grid in grids.items():
            for combo in itertools.product(*grid.values()):
                params = dict(zip(grid, combo, strict=True))
                for seed in self.seeds:
                    label = "-".join(f"{k}{v}" for k, v in params.items())
                    name = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(x for x in (method, label, f"s{seed}") if x))
                    points.append({"name": name, "method": method, "seed": seed, "params": params})
        return points


def point_flags(point: dict, common: str = "", curve_every: int = 0) -> str:
    """The extra stage flags of one point: ``common``, then ``--PARAM VALUE`` per grid value, then the seed."""
    flags = [common] if common else []
    flags += [f"--{k} {v}" for k, v in point["params"].items()]
    if curve_every:
        flags.append(f"--curve_every {curve_every}")
    flags.append(f"--seed {point['seed']}")
    return " ".join(flags)


def run_sweep(args: SweepArguments) -> list[dict]:
    """Train and evaluate every point not done yet; write ``sweep.csv`` and ``sweep.md`` (module docstring).

    Both files hold the current grid's points in run order, then any point the folder finished under an earlier
    grid (its ``result.json``), so narrowing or changing the grid loses no row.

    Returns:
        `list[dict]`: one row per point of the current grid, in run order.
    """
    from open_rlhf import outputs
    from open_rlhf.pipeline import train_stages

    run = args.run_dir
    # Results are only comparable under one evaluation: a sweep folder keeps its settings
    meta = {k: getattr(args, k) for k in ("rl_dataset", "eval_prompts", "eval_max_new_tokens", "split_seed",
                                          "sft_model_path", "reward_model_path", "model_name_or_path",
                                          *_META_DEFAULTS)}
    meta_path = run / "sweep.json"
    if meta_path.is_file() and {**_META_DEFAULTS, **json.loads(meta_path.read_text())} != meta:
        raise ConfigError(f"{run} holds a sweep evaluated with other settings ({meta_path}: "
                          f"{meta_path.read_text().strip()}); its results would be mixed with these. Fix: pass a new "
                          "--run_name, or the same evaluation settings.")
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta_path, json.dumps(meta))
    start = FromSFT(args, sft_cache=run / "sft_eval.json")
    points = args.points()
    # points this folder finished under an earlier grid stay in sweep.csv / sweep.md, after the current ones
    current = {p["name"] for p in points}
    earlier = [json.loads(f.read_text()) for f in sorted(run.glob("*/result.json")) if f.parent.name not in current]
    rows = []
    for point in points:
        folder = run / point["name"]
        result_file = folder / "result.json"
        base = {"point": point["name"], "method": point["method"], "seed": point["seed"],
                "params": json.dumps(point["params"])}
        if result_file.is_file():
            print(f"=== sweep {point['name']}: already done ({result_file}), skipped", flush=True)
            rows.append(json.loads(result_file.read_text()))
            continue
        if point["method"] == REWARD:  # a reward model from the SFT policy, with its own held-out pairs
            pipeline_args = args.pipeline_args(
                "ppo", run_name=point["name"], runs_dir=str(run), sft_model_path=str(start.sft_path),
                reward_model_path=None, reward_args=point_flags(point, args.reward_args), eval_pairs=args.eval_pairs)
        elif point["method"] == SFT:  # an SFT stage that starts from the shared SFT policy
            pipeline_args = args.control_pipeline_args(start, point["name"], str(run),
                                                       point_flags(point, args.sft_args, args.curve_every))
        else:
            pipeline_args = args.pipeline_args(
                point["method"], point_flags(point, args.method_args, args.curve_every), run_name=point["name"],
                runs_dir=str(run), sft_model_path=str(start.sft_path), reward_model_path=str(start.reward_path))
        try:
            state = train_stages(pipeline_args, only={point["method"]} if point["method"] in (REWARD, SFT) else None)
        except StageFailedError as error:  # a failed point is a result too; the sweep goes on (and retries it)
            print(f"=== sweep {point['name']}: FAILED ({error})", flush=True)
            rows.append({**base, "status": "failed", "error": str(error).splitlines()[0]})
            write_outputs(rows + earlier, run)
            continue
        stage_dir = folder / point["method"]
        marker = json.loads((stage_dir / outputs.COMPLETE_MARKER).read_text())
        stage = state["stages"].get(point["method"], {})
        if point["method"] == REWARD:
            row = {**base, "status": "done", **point["params"],
                   **reward_point_row(stage_dir, args.preference_dataset, args.eval_pairs, args.split_seed, stage,
                                      marker)}
        else:  # the per-prompt evaluation is kept for paired comparisons between points (--versus)
            metrics = cached_json(folder / EVALUATION_FILE, functools.partial(start.evaluate, stage_dir), point["name"])
            if point["method"] == SFT:
                row = {**base, "status": "done", **point["params"],
                       **control_row(SFT, metrics, start.sft, stage, marker)}
            else:
                row = {**base, "status": "done", **point["params"],
                       **start.row(point["method"], metrics, stage, marker)}
                row["sft_accuracy"] = start.sft["accuracy"]
        atomic_write_text(result_file, json.dumps(row))
        drop_checkpoints(stage_dir, f"sweep {point['name']}", args.keep_checkpoints)
        rows.append(row)
        write_outputs(rows + earlier, run)
    write_outputs(rows + earlier, run)
    return rows


def point_evaluation(folder: Path) -> tuple[dict, dict]:
    """The per-prompt evaluation of a finished point folder (its ``evaluation.json``), or of a sweep folder's SFT
    policy (its ``sft_eval.json``), with the evaluation settings of its sweep (``sweep.json``).

    Raises:
        ConfigError: when ``folder`` holds neither file (a point that is not finished, or one finished before
            points kept their evaluation), or its sweep's ``sweep.json`` is missing.
    """
    folder = Path(folder)
    for file, sweep_dir in ((folder / EVALUATION_FILE, folder.parent), (folder / "sft_eval.json", folder)):
        if file.is_file():
            meta = sweep_dir / "sweep.json"
            if not meta.is_file():
                raise ConfigError(f"{meta} is missing: {folder} is not in a sweep folder, so its evaluation settings "
                                  "are unknown. Fix: give a point folder <runs_dir>/<sweep>/<point>.")
            return json.loads(file.read_text()), json.loads(meta.read_text())
    raise ConfigError(f"{folder} has no {EVALUATION_FILE} (a finished sweep point) and no sft_eval.json (a sweep "
                      "folder). Fix: give a finished point's folder; a point finished before points kept their "
                      f"evaluation has only result.json: remove it to re-evaluate the point.")


def paired_comparison(a: Path, b: Path) -> dict:
    """Point ``a`` against point ``b`` on the same held-out prompts (folders as `point_evaluation` reads them):
    the accuracy of each with its 95% Wilson interval, the paired difference ``a - b`` with its 95% bootstrap
    interval, the exact McNemar p-value, and the prompts ``a`` fixed (right where ``b`` was wrong) and broke.

    Use it to test a preference method against the continued-SFT control of the same budget (Rafailov et al. 2023,
    §6.1): both started from the same SFT policy, so the SFT evaluation is shared and the test is paired.

    Raises:
        ConfigError: when the two sweeps evaluated other prompts (their ``rl_dataset``, ``eval_dataset``,
            ``eval_prompts``, ``eval_max_new_tokens`` or ``split_seed`` differ) or other numbers of prompts.
    """
    from open_rlhf.metrics import accuracy_interval, mcnemar_test, paired_bootstrap

    (eval_a, meta_a), (eval_b, meta_b) = point_evaluation(a), point_evaluation(b)
    keys = ("rl_dataset", "eval_dataset", "eval_prompts", "eval_max_new_tokens", "split_seed")
    differ = {k: (meta_a.get(k), meta_b.get(k)) for k in keys if meta_a.get(k) != meta_b.get(k)}
    if differ or len(eval_a["correct"]) != len(eval_b["correct"]):
        raise ConfigError(f"--versus {a} {b}: the two were evaluated on other prompts ({differ or 'prompt counts '}"
                          f"{len(eval_a['correct'])} and {len(eval_b['correct'])}); a paired test needs the same ones.")
    result = {"a": str(a), "b": str(b)}
    for name, ev in (("a", eval_a), ("b", eval_b)):
        result[f"accuracy_{name}"], result[f"ci_low_{name}"], result[f"ci_high_{name}"] = accuracy_interval(
            ev["correct"])
    delta = paired_bootstrap(eval_a["correct"], eval_b["correct"])
    test = mcnemar_test(eval_a["correct"], eval_b["correct"])  # its discordant counts are fixed / broke
    return {**result, "delta": delta["mean_difference"], "delta_ci_low": delta["low"], "delta_ci_high": delta["high"],
            "p_value": test["p_value"], "fixed": test["a_only"], "broke": test["b_only"], "prompts": test["n"]}


def sampled_point(folder: Path, k: int, temperature: float, seed: int = 0) -> dict:
    """`open_rlhf.evaluation.pass_at_k_summary` of a finished point's policy (or a sweep folder's SFT policy) on its
    sweep's held-out prompts, against the greedy evaluation the sweep kept (`point_evaluation`): ``k`` samples per
    prompt at ``temperature``, torch seeded with ``seed``, fp32 as the sweep's greedy evaluation. Written to
    ``<folder>/sampled-k<k>-t<temperature>.json`` (atomically; an existing file is read back, not recomputed).

    Raises:
        ConfigError: as `point_evaluation`; when the point's policy folder holds no model; when the sweep's prompts
            have no gold answers.
    """
    import torch

    from open_rlhf import evaluation, models
    from open_rlhf.atomic import atomic_write_text

    folder = Path(folder)
    out = folder / f"sampled-k{k}-t{temperature:g}.json"
    if out.is_file():
        return json.loads(out.read_text())
    greedy, meta = point_evaluation(folder)
    if (folder / EVALUATION_FILE).is_file():
        policy = folder / json.loads((folder / "result.json").read_text())["method"]
    else:
        policy = Path(meta["sft_model_path"])
    if not (policy / "config.json").is_file():
        raise ConfigError(f"{policy} holds no model (config.json), so {folder}'s policy cannot be sampled. Fix: give a "
                          "point whose final model was kept.")
    source = meta.get("eval_dataset") or meta["rl_dataset"]
    prompts, answers = evaluation.held_out_prompts(source, meta["eval_prompts"], meta["split_seed"])
    if answers is None:
        raise ConfigError(f"--sampled: {source} has no gold answers to score samples against.")
    torch.manual_seed(seed)
    correct = evaluation.sampled_correctness(models.load_causal_lm(str(policy)), models.load_tokenizer(str(policy)),
                                             prompts, answers, k, temperature, meta["eval_max_new_tokens"])
    result = {"folder": str(folder), "policy": str(policy), "temperature": temperature, "seed": seed,
              **evaluation.pass_at_k_summary(correct, greedy["correct"]), "sampled_correct": correct}
    atomic_write_text(out, json.dumps(result, indent=1))
    return result


def reward_point_row(stage_dir: Path, preference_dataset: str, eval_pairs: int, split_seed: int, stage: dict,
                     marker: dict) -> dict:
    """The result of a reward-model point: held-out pair accuracy of the model in ``stage_dir`` on the
    ``eval_pairs`` pairs its stage held out (`open_rlhf.data.load_splits` of ``preference_dataset``, same
    ``split_seed``), with its 95% Wilson interval (`open_rlhf.metrics.wilson_interval`) and the mean margin
    r(chosen) - r(rejected) (reward units)."""
    from open_rlhf import data, evaluation
    from open_rlhf.metrics import wilson_interval
    from open_rlhf.rewards import RewardModelScorer

    _, pairs = data.load_splits(preference_dataset, "preference", eval_size=eval_pairs, seed=split_seed)
    result = evaluation.reward_model_accuracy(RewardModelScorer.from_pretrained(str(stage_dir)), pairs)
    wins = sum(m > 0 for m in result["margins"])
    low, high = wilson_interval(wins, len(result["margins"]))
    return {"family": "reward model", "accuracy": result["accuracy"], "accuracy_ci_low": low,
            "accuracy_ci_high": high, "mean_margin": result["mean_margin"], "eval_pairs": len(result["margins"]),
            "train_seconds": stage.get("wall_seconds"), "peak_rss_mb": marker.get("peak_rss_mb"),
            "global_step": marker.get("global_step"), "command": stage.get("command", "(finished earlier)")}


def summarize(rows: list[dict]) -> list[dict]:
    """Per method and configuration: mean accuracy and mean difference to SFT over seeds, best first per method.

    Returns:
        `list[dict]` with ``method``, ``params``, ``seeds``, ``accuracy``, ``accuracy_delta_vs_sft`` (means),
        ``min_delta`` / ``max_delta`` over seeds, ``significant_seeds`` (seeds with McNemar p < 0.05 and a
        positive difference), ``kl_vs_sft`` (mean). A reward-model configuration's ``accuracy`` is its held-out
        pair accuracy, with ``ci_low`` (the lowest 95% bound over seeds) and ``mean_margin`` instead of the
        comparison with the SFT policy.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r.get("status") == "done":
            groups.setdefault((r["method"], r["params"]), []).append(r)
    out = []
    for (method, params), rs in groups.items():
        summary = {"method": method, "params": params, "seeds": len(rs),
                   "accuracy": statistics.fmean(r["accuracy"] for r in rs)}
        if method == REWARD:
            summary.update(ci_low=min(r["accuracy_ci_low"] for r in rs),
                           mean_margin=statistics.fmean(r["mean_margin"] for r in rs))
            out.append(summary)
            continue
        deltas = [r["accuracy_delta_vs_sft"] for r in rs]
        kls = [r["kl_vs_sft"] for r in rs if r.get("kl_vs_sft") is not None]
        summary.update(accuracy_delta_vs_sft=statistics.fmean(deltas), min_delta=min(deltas), max_delta=max(deltas),
                       significant_seeds=sum(r["p_vs_sft"] < 0.05 and r["accuracy_delta_vs_sft"] > 0 for r in rs),
                       kl_vs_sft=statistics.fmean(kls) if kls else None)
        out.append(summary)
    out.sort(key=lambda s: (s["method"], -s["accuracy"]))
    return out


def markdown_summary(rows: list[dict]) -> str:
    """``sweep.md``: the per-configuration summary (policies, then reward models) and the failed points."""
    summaries = summarize(rows)
    policies = [s for s in summaries if s["method"] != REWARD]
    lines = ["| method | configuration | seeds | accuracy (mean) | vs SFT (mean; min, max) | seeds significantly "
             "above SFT | KL to SFT |", "|---|---|---:|---:|---:|---:|---:|"] if policies or not summaries else []
    for s in policies:
        kl = "n/a" if s["kl_vs_sft"] is None else f"{s['kl_vs_sft']:.3f}"
        lines.append(f"| {s['method']} | `{s['params']}` | {s['seeds']} | {s['accuracy']:.3f} | "
                     f"{s['accuracy_delta_vs_sft']:+.3f} ({s['min_delta']:+.3f}, {s['max_delta']:+.3f}) | "
                     f"{s['significant_seeds']} | {kl} |")
    reward = [s for s in summaries if s["method"] == REWARD]
    if reward:
        lines += [""] * bool(lines) + ["| reward model | seeds | held-out pair accuracy (mean) | lowest 95% bound | "
                                       "mean margin |", "|---|---:|---:|---:|---:|"]
        lines += [f"| `{s['params']}` | {s['seeds']} | {s['accuracy']:.3f} | {s['ci_low']:.3f} | "
                  f"{s['mean_margin']:+.3f} |" for s in reward]
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        lines += ["", "Failed points: " + ", ".join(f"`{r['point']}` ({r['error']})" for r in failed)]
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[dict], run_dir: Path) -> None:
    """``sweep.csv`` (every column any row has, in first-seen order) and ``sweep.md``, each written atomically."""
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / "sweep.csv", buffer.getvalue())
    atomic_write_text(run_dir / "sweep.md", markdown_summary(rows))
    # the points trained with --curve_every, one line each
    plot_run_curves({r["point"]: run_dir / r["point"] / r["method"] for r in rows
                     if r.get("status") == "done" and r["method"] != REWARD},
                    run_dir / "learning_curves.png", title="Sweep learning curves from one SFT policy")


def sweep_main(argv: list[str] | None = None) -> None:
    """``scripts/sweep.py``: parse ``argv``, run the sweep, print the summary."""
    from trl import TrlParser

    with user_errors():
        (args,) = parse_config(TrlParser((SweepArguments,)), argv)
        if args.sampled:
            for folder in args.sampled:
                r = sampled_point(Path(folder), args.sampled_k, args.sampled_temperature)
                print(f"{folder}: greedy {r['greedy_accuracy']:.3f}, sampled (T {r['temperature']:g}) "
                      f"{r['sampled_accuracy']:.3f}, pass@{r['k']} {r['pass_at_k']:.3f}, greedy wrong / a sample right "
                      f"{r['greedy_wrong_sample_right']:.3f}, greedy right / a sample wrong "
                      f"{r['greedy_right_sample_wrong']:.3f}, samples agree {r['samples_agree']:.3f} "
                      f"({r['prompts']} prompts)")
            return
        if args.versus:
            r = paired_comparison(Path(args.versus[0]), Path(args.versus[1]))
            print(f"A {r['a']}: {r['accuracy_a']:.3f} [{r['ci_low_a']:.3f}, {r['ci_high_a']:.3f}]\n"
                  f"B {r['b']}: {r['accuracy_b']:.3f} [{r['ci_low_b']:.3f}, {r['ci_high_b']:.3f}]\n"
                  f"A - B: {r['delta']:+.3f} [{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}] (95% paired "
                  f"bootstrap), McNemar p {r['p_value']:.3g}, A fixed {r['fixed']} / broke {r['broke']} of "
                  f"{r['prompts']} prompts")
            return
        rows = run_sweep(args)
    print(markdown_summary(rows))
    print(f"Written: {args.run_dir / 'sweep.csv'}, {args.run_dir / 'sweep.md'}")
