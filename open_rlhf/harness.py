"""Benchmarks through EleutherAI's lm-evaluation-harness (lm-eval 0.4.13, its Hugging Face ``hf`` backend).

`eval/run_eval.py` wraps ``lm_eval.simple_evaluate`` and adds only what a multi-model comparison needs: model
folders resolved the way the stages write them (full models, merged models, PEFT adapters), the shipped task
YAMLs in ``eval/tasks/`` that read the local public data (``--data_dir``), one results table and a bar chart for
all models, and clear errors. Everything else, prompts, metrics and their standard errors, is lm-eval's: a task
run here gives the same numbers as under the ``lm-eval`` command line with the same flags.

Offline by default: the Hugging Face offline variables are set before lm-eval, datasets or transformers load,
so nothing reaches the Hub (``--online`` lifts that for hub ids and lm-eval's standard tasks).
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from open_rlhf.atomic import atomic_save_figure, atomic_write_text
from open_rlhf.errors import ConfigError, DataNotFoundError, ModelNotFoundError

REPO_ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO_ROOT / "eval" / "tasks"
# The shipped tasks: the standard short name -> our task on local data, and the files it reads under --data_dir
SHIPPED_TASKS = {"arc_easy": "arc_easy_local", "hellaswag": "hellaswag_local", "gsm8k": "gsm8k_local"}
TASK_FILES = {"arc_easy_local": ["arc/arc_easy.jsonl"],
              "hellaswag_local": ["hellaswag/hellaswag_val_full.txt.bz2"],
              "gsm8k_local": ["gsm8k/train.jsonl", "gsm8k/test.jsonl"]}
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def set_offline() -> None:
    """Set the Hugging Face offline variables (hub, datasets, transformers) unless the user set them already."""
    for name in OFFLINE_VARIABLES:
        os.environ.setdefault(name, "1")


@dataclass(frozen=True)
class ModelSpec:
    """A model for lm-eval's ``hf`` backend.

    Attributes:
        name: the label in tables (the ``--model`` argument as given, ``default`` for the default model).
        model_args: ``HFLM`` keyword arguments: ``pretrained`` and, for a PEFT adapter folder, ``peft``.
    """

    name: str
    model_args: dict


def resolve_model(model: str | None) -> ModelSpec:
    """Turn a ``--model`` argument into lm-eval ``hf`` model arguments.

    ``None`` or ``"default"``: the embedded default model. A folder with ``adapter_config.json`` (a LoRA stage's
    output): its base model (``base_model_name_or_path``) with the adapter (lm-eval's ``peft=``). Any other local
    folder must hold ``config.json``. Anything else is passed on as a hub id.

    Raises:
        ModelNotFoundError: when a local path does not exist or is not a model folder.
    """
    from open_rlhf import models

    name = model or "default"
    path = models.resolve_model_path(model)
    folder = Path(path).expanduser()
    if not folder.is_dir():
        if os.environ.get("HF_HUB_OFFLINE") == "1" and not model_looks_like_hub_id(path):
            raise ModelNotFoundError(f"--model {model}: no such folder. Fix: pass a folder a stage wrote "
                                     "(e.g. runs/default/sft), or 'default'.")
        return ModelSpec(name, {"pretrained": path})
    adapter = folder / "adapter_config.json"
    if adapter.is_file():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if not base:
            raise ModelNotFoundError(f"{adapter} names no base_model_name_or_path; cannot load the adapter.")
        return ModelSpec(name, {"pretrained": base, "peft": str(folder)})
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"--model {model}: {folder} has no config.json, so it is not a finished model folder "
                                 "(a stage writes it when it ends; an unfinished stage has only checkpoint-* "
                                 "folders). Fix: pass the stage's output folder after it finished.")
    return ModelSpec(name, {"pretrained": str(folder)})


def model_looks_like_hub_id(name: str) -> bool:
    """``org/name`` (one slash, no leading ``.``/``/``/``~``): what the Hub would accept as a repository id."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def task_manager(include_path: list[str] | None = None, data_dir: str | None = None):
    """lm-eval's `TaskManager` over its standard tasks, ``eval/tasks/`` and the user's ``--include_path`` folders.

    ``data_dir`` reaches the shipped tasks' loaders as lm-eval task metadata (what the CLI's ``--metadata``
    gives), so the same YAMLs also run under ``lm-eval run --include_path eval/tasks --metadata ...``.

    Raises:
        DataNotFoundError: when an ``--include_path`` folder does not exist.
    """
    paths = [str(TASKS_DIR)]
    for path in include_path or []:
        if not Path(path).exists():
            raise DataNotFoundError(f"--include_path {path}: no such file or folder of lm-eval task YAMLs.")
        paths.append(str(Path(path).resolve()))
    return _task_manager(tuple(paths), str(Path(data_dir).expanduser().resolve()) if data_dir else None)


@functools.lru_cache(maxsize=8)
def _task_manager(paths: tuple[str, ...], data_dir: str | None):
    """One `TaskManager` per task folders and data folder in a process: indexing lm-eval's ~15,000 task YAMLs
    takes ~10 s, and the gate and tests ask for the same one again."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths), metadata={"data_dir": data_dir} if data_dir else None)


def resolve_tasks(names: list[str], manager, data_dir: str | None) -> list[str]:
    """Check the task names and map the standard short names to the shipped local tasks when ``data_dir`` is set.

    With ``--data_dir``, ``arc_easy`` / ``hellaswag`` / ``gsm8k`` mean ``arc_easy_local`` / ``hellaswag_local`` /
    ``gsm8k_local`` (same prompts and metrics, local files); without it they are lm-eval's standard tasks (Hub
    datasets). Every other name (an lm-eval task, group or tag, or one from ``--include_path``) passes unchanged.

    Returns:
        `list[str]`: the lm-eval task names to run, in the order given, without repeats.

    Raises:
        ConfigError: for an unknown task name (with the closest known names), or no tasks at all.
        DataNotFoundError: when a shipped task's data file is missing under ``data_dir`` (or ``data_dir`` is not
            given for a ``*_local`` task).
    """
    if not names:
        raise ConfigError("no tasks: pass --tasks (comma-separated lm-eval task names) or --bench all.")
    known = set(manager.all_tasks)
    resolved = []
    for name in names:
        task = SHIPPED_TASKS.get(name, name) if data_dir else name
        if task not in known:
            close = difflib.get_close_matches(task, sorted(known), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown task {name!r}: not an lm-eval task, group or tag, nor one of eval/tasks/ or "
                              f"--include_path.{hint} List them with `lm-eval ls tasks`.")
        if task in TASK_FILES:
            if not data_dir:
                raise DataNotFoundError(f"task {task} reads the local public data: pass --data_dir (the folder with "
                                        "arc/, hellaswag/, gsm8k/, e.g. ../shared/data).")
            for relative in TASK_FILES[task]:
                path = Path(data_dir).expanduser() / relative
                if not path.is_file():
                    raise DataNotFoundError(f"task {task} needs {path}, which does not exist. Fix --data_dir "
                                            f"(now {data_dir}): it must hold {relative}.")
        if task not in resolved:
            resolved.append(task)
    return resolved


def load_lm(model: ModelSpec, batch_size: int | str = 8, device: str | None = None, dtype: str | None = None):
    """The lm-eval ``hf`` language model (`lm_eval.models.huggingface.HFLM`) for ``model``, as simple_evaluate
    builds it from ``model_args`` (so the numbers are the same as passing the arguments to simple_evaluate)."""
    import torch
    from lm_eval.api.registry import get_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    args = dict(model.model_args)
    if dtype:
        args["dtype"] = dtype
    return get_model("hf").create_from_arg_obj(args, {"batch_size": batch_size, "device": device})


def evaluate_task(lm, task: str, manager, *, num_fewshot: int | None = None, limit: float | None = None,
                  apply_chat_template: bool = False, fewshot_as_multiturn: bool | None = None,
                  gen_kwargs: str | None = None, bootstrap_iters: int = 100000, seed: int = 0,
                  log_samples: bool = False) -> dict:
    """One task through ``lm_eval.simple_evaluate`` with lm-eval's default seeds (as its CLI uses them).

    Args:
        limit: documents per task (lm-eval's ``--limit``; below 1 a fraction).

    Returns:
        dict: lm-eval's results object (``results``, ``configs``, ``n-shot``, ``n-samples``, ``versions``, ...).
    """
    import lm_eval

    kwargs = {}
    if fewshot_as_multiturn is not None:
        kwargs["fewshot_as_multiturn"] = fewshot_as_multiturn
    return lm_eval.simple_evaluate(
        model=lm, tasks=[task], task_manager=manager, num_fewshot=num_fewshot, limit=limit,
        apply_chat_template=apply_chat_template, gen_kwargs=gen_kwargs, bootstrap_iters=bootstrap_iters,
        random_seed=seed, log_samples=log_samples, **kwargs)


def merge_results(parts: list[dict]) -> dict:
    """Merge per-task lm-eval results objects of one model into one (the layout of a multi-task run)."""
    merged: dict = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            elif key not in merged:
                merged[key] = value
    return merged


def result_rows(results_by_model: dict[str, dict]) -> list[dict]:
    """Long table of every metric lm-eval reported: one row per model, task, metric and filter.

    Returns:
        `list[dict]` with ``model``, ``task``, ``metric``, ``filter``, ``value``, ``stderr`` (None where lm-eval
        gives none), ``num_fewshot``, ``samples`` (documents evaluated).
    """
    rows = []
    for model, results in results_by_model.items():
        for task, metrics in results["results"].items():
            for key, value in metrics.items():
                if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                    continue
                metric, filt = key.split(",", 1)
                stderr = metrics.get(f"{metric}_stderr,{filt}")
                samples = results.get("n-samples", {}).get(task, {})
                rows.append({"model": model, "task": task, "metric": metric, "filter": filt, "value": float(value),
                             "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                             "num_fewshot": results.get("n-shot", {}).get(task),
                             "samples": samples.get("effective") if isinstance(samples, dict) else None})
    return rows


def _cell(row: dict) -> str:
    return f"{row['value']:.4f}" + (f" ± {row['stderr']:.4f}" if row["stderr"] is not None else "")


def markdown_table(rows: list[dict]) -> str:
    """Model x (task, metric, filter) Markdown table, ``value ± stderr`` as lm-eval reports them."""
    columns = list(dict.fromkeys((r["task"], r["metric"], r["filter"]) for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    cells = {(r["model"], r["task"], r["metric"], r["filter"]): _cell(r) for r in rows}
    header = ["model"] + [f"{t} {m}" + ("" if f == "none" else f" ({f})") for t, m, f in columns]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(columns)]
    for model in models:
        lines.append("| " + " | ".join([f"`{model}`"] + [cells.get((model, *c), "") for c in columns]) + " |")
    return "\n".join(lines)


def rows_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["model", "task", "metric", "filter", "value", "stderr", "num_fewshot",
                                                "samples"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def primary_rows(rows: list[dict]) -> list[dict]:
    """The first metric and filter lm-eval reported per task (``acc`` for multiple choice, ``exact_match``
    strict-match for GSM8K): what the bar chart shows."""
    first: dict[str, tuple[str, str]] = {}
    for r in rows:
        first.setdefault(r["task"], (r["metric"], r["filter"]))
    return [r for r in rows if first[r["task"]] == (r["metric"], r["filter"])]


def plot_results(rows: list[dict], out: Path) -> Path:
    """Grouped bar chart: one group per task (its primary metric), one bar per model, lm-eval's stderr as error
    bars; saved atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = primary_rows(rows)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["model"], r["task"]): r for r in rows}
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(tasks) * max(1, len(models)) ** 0.5 + 2), 3.6))
    x = np.arange(len(tasks))
    for i, model in enumerate(models):
        values = [by[(model, t)]["value"] if (model, t) in by else 0.0 for t in tasks]
        errors = [(by[(model, t)]["stderr"] or 0.0) if (model, t) in by else 0.0 for t in tasks]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, yerr=errors, capsize=3, label=model)
        for bar, v in zip(bars, values, strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [f"{t}\n{by[(models[0], t)]['metric'] if (models[0], t) in by else ''}" for t in tasks],
                  fontsize=8)
    ax.set_ylabel("score (± stderr)")
    ax.set_ylim(0, min(1.05, max([r["value"] + (r["stderr"] or 0) for r in rows] + [0.1]) * 1.25))
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title("lm-eval benchmarks", fontsize=10)
    fig.tight_layout()
    return atomic_save_figure(fig, out, dpi=110)


def results_json(results: dict) -> str:
    """lm-eval's results object as JSON (its own serializer for numpy values and functions)."""
    from lm_eval.utils import handle_non_serializable

    return json.dumps({k: v for k, v in results.items() if k != "samples"}, indent=2,
                      default=handle_non_serializable, ensure_ascii=False)


def result_folder_name(model: str) -> str:
    """The folder of one model's ``results.json`` inside the results folder (lm-eval's own model-name sanitizer)."""
    from lm_eval.utils import sanitize_model_name

    return sanitize_model_name(model)


def write_results(out_dir: Path, results_by_model: dict[str, dict]) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv``, ``results.png`` and ``<model>/results.json`` (lm-eval's own object)
    into ``out_dir``; each file atomically.

    Returns:
        dict of the written paths (``markdown``, ``csv``, ``png``, ``json``: per model).
    """
    rows = result_rows(results_by_model)
    paths = {"markdown": out_dir / "results.md", "csv": out_dir / "results.csv", "json": {}}
    for model, results in results_by_model.items():
        path = out_dir / result_folder_name(model) / "results.json"
        atomic_write_text(path, results_json(results))
        paths["json"][model] = path
    atomic_write_text(paths["csv"], rows_csv(rows))
    atomic_write_text(paths["markdown"], markdown_table(rows) + "\n")
    if rows:
        paths["png"] = plot_results(rows, out_dir / "results.png")
    return paths
