"""The pipeline's capability gate: after each policy stage, compare the new policy with the one it started from,
and reject the stage on a regression beyond the thresholds or a non-finite loss or weight.

A rejected stage is rolled back: its output stays on disk (never deleted), but later stages start from, and the
pipeline's final policy is, the last accepted policy. The checks (`CapabilityThresholds`):

* training health: every logged loss and gradient norm finite, every saved weight finite;
* task accuracy on held-out prompts (greedy, ``#### N`` exact match), at most ``max_accuracy_drop`` lower;
* EOS rate (share of responses that end by themselves), at most ``max_eos_rate_drop`` lower;
* KL(new || input) in nats per sequence (`open_rlhf.evaluation.kl_to_reference`), at most ``max_kl``; skipped
  for SFT, which moves away from a base model on purpose;
* a small lm-eval subset (``--gate_tasks`` with ``--gate_task_limit`` documents), each task's primary metric at
  most ``max_benchmark_drop`` lower.

Drops are absolute (accuracy 0.40 -> 0.28 is a drop of 0.12). With a few dozen prompts an accuracy has a
standard error of several points: the thresholds catch a broken stage, not a small regression.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class CapabilityThresholds:
    """Largest tolerated regressions of a policy stage (absolute; None turns a check off)."""

    max_accuracy_drop: float | None = 0.10
    max_eos_rate_drop: float | None = 0.20
    max_kl: float | None = 10.0
    max_benchmark_drop: float | None = 0.10


def nonfinite_logs(history: list[dict]) -> list[str]:
    """Logged losses and gradient norms that are NaN or infinite, as ``"<key>=<value> at step <n>"``.

    Args:
        history: a trainer's ``log_history`` (`open_rlhf.outputs.read_log_history`): one dict per logging step.
    """
    found = []
    for entry in history:
        for key, value in entry.items():
            if ("loss" in key or "grad_norm" in key) and isinstance(value, (int, float)) and not math.isfinite(value):
                found.append(f"{key}={value} at step {entry.get('step', '?')}")
    return found


def nonfinite_parameters(model) -> int:
    """Number of NaN or infinite values in the model's parameters."""
    import torch

    return int(sum((~torch.isfinite(p)).sum().item() for p in model.parameters()))


def nonfinite_logits(model, tokenizer, prompt) -> str | None:
    """``"non-finite logits"`` when one forward pass on ``prompt`` (a conversation) gives a NaN or infinite logit
    (finite but huge weights overflow), else None."""
    import torch

    ids = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"].to(model.device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    bad = int((~torch.isfinite(logits)).sum().item())
    return f"non-finite logits ({bad} of {logits.numel()})" if bad else None


def model_problem(model, tokenizer, prompt) -> str | None:
    """Why ``model`` cannot be evaluated (non-finite weights, or non-finite logits on ``prompt``), or None."""
    bad = nonfinite_parameters(model)
    return f"{bad} non-finite weights" if bad else nonfinite_logits(model, tokenizer, prompt)


def decide(before: dict, after: dict, thresholds: CapabilityThresholds, check_kl: bool = True) -> list[dict]:
    """Compare the capability metrics of a stage's input (``before``) and output (``after``).

    Args:
        before, after: `capability_metrics` results: ``accuracy``, ``eos_rate`` (fractions or None),
            ``benchmarks`` (task -> score); ``after`` also has ``kl_to_input`` (nats/seq or None) and ``health``
            (a list of problems: non-finite logs or weights).
        check_kl: False for SFT (a large KL to the base model is its purpose).

    Returns:
        `list[dict]`: one row per check with ``check``, ``before``, ``after``, ``change`` (after - before; for KL the
        value), ``threshold`` and ``passed``. The stage is accepted when every row passed.
    """
    rows = []
    health = after.get("health") or []
    rows.append({"check": "finite loss and weights", "before": None, "after": "; ".join(health) or "ok",
                 "change": None, "threshold": "all finite", "passed": not health})

    def drop(check, b, a, limit):
        if limit is None or b is None or a is None:
            return
        change = a - b
        rows.append({"check": check, "before": b, "after": a, "change": change, "threshold": -limit,
                     "passed": bool(math.isfinite(change) and change >= -limit - 1e-12)})

    drop("task accuracy", before.get("accuracy"), after.get("accuracy"), thresholds.max_accuracy_drop)
    drop("EOS rate", before.get("eos_rate"), after.get("eos_rate"), thresholds.max_eos_rate_drop)
    kl = after.get("kl_to_input")
    if check_kl and thresholds.max_kl is not None and kl is not None:
        rows.append({"check": "KL to input (nats/seq)", "before": 0.0, "after": kl, "change": kl,
                     "threshold": thresholds.max_kl, "passed": bool(math.isfinite(kl) and kl <= thresholds.max_kl)})
    for task, score in (after.get("benchmarks") or {}).items():
        drop(f"lm-eval {task}", (before.get("benchmarks") or {}).get(task), score, thresholds.max_benchmark_drop)
    return rows


def capability_metrics(model, tokenizer, prompts, answers, *, max_new_tokens: int, batch_size: int,
                       reference=None, benchmarks: dict | None = None) -> dict:
    """The capability suite on one policy: accuracy and EOS rate on held-out prompts, KL to ``reference``.

    Args:
        model: the policy (a causal LM); prompts/answers: held-out prompts and gold answers (answers may be None).
        reference: the stage's input policy, for KL(model || reference); None skips it.
        benchmarks: lm-eval scores already computed for this policy (task -> primary metric).

    Returns:
        dict with ``accuracy``, ``eos_rate``, ``response_length`` (tokens), ``kl_to_input``, ``benchmarks``,
        ``health`` (non-finite weights, as a list of problems).
    """
    from open_rlhf import evaluation

    problem = model_problem(model, tokenizer, prompts[0])
    if problem:  # generating from such a model gives nothing meaningful (or fails): report the cause instead
        return {"accuracy": None, "eos_rate": None, "response_length": None, "kl_to_input": None,
                "benchmarks": {}, "health": [problem]}
    result = evaluation.evaluate_policy(model, tokenizer, prompts, answers, None, max_new_tokens, batch_size)
    kl = None
    if reference is not None:
        kl = evaluation.kl_to_reference(model, reference, tokenizer, prompts, max_new_tokens, batch_size)
    return {"accuracy": result["accuracy"], "eos_rate": result["eos_rate"],
            "response_length": result["response_length"], "kl_to_input": kl, "benchmarks": benchmarks or {},
            "health": []}


def benchmark_scores(path: str, tasks: list[str], data_dir: str | None, limit: int) -> dict:
    """Primary lm-eval metric (``acc`` / ``exact_match``) per task for the model folder ``path``, on the first
    ``limit`` documents (`open_rlhf.harness`)."""
    from open_rlhf import harness

    harness.set_offline()
    manager = harness.task_manager(None, data_dir)
    names = harness.resolve_tasks(tasks, manager, data_dir)
    lm = harness.load_lm(harness.resolve_model(path), batch_size=8)
    scores = {}
    for task in names:
        results = harness.evaluate_task(lm, task, manager, limit=limit, bootstrap_iters=0)
        rows = harness.primary_rows(harness.result_rows({path: results}))
        scores.update({r["task"]: r["value"] for r in rows})
    return scores


def run_gate(stage: str, input_path: str, output_path: Path, prompts, answers, thresholds: CapabilityThresholds,
             *, max_new_tokens: int, batch_size: int, tasks: list[str], data_dir: str | None, task_limit: int,
             input_metrics: dict | None = None, check_kl: bool = True) -> dict:
    """Gate one finished policy stage: its training log, then the capability suite on input and output.

    Args:
        stage: the stage's name; input_path: the policy it started from; output_path: its output folder.
        input_metrics: the input policy's suite, when an earlier gate already measured it (it was that stage's
            output); it is reused rather than recomputed.

    Returns:
        dict (JSON-ready, stored in ``pipeline_state.json``) with ``stage``, ``input``, ``output``, ``accepted``,
        ``checks`` (`decide` rows), ``before`` and ``after`` (the two suites), ``thresholds``.
    """
    from open_rlhf import models, outputs

    health = nonfinite_logs(outputs.read_log_history(output_path))
    tokenizer = models.load_tokenizer(str(output_path))
    new = models.load_causal_lm(str(output_path))
    old = models.load_causal_lm(input_path) if (input_metrics is None or check_kl) else None
    if input_metrics is None:
        input_metrics = capability_metrics(
            old, models.load_tokenizer(input_path), prompts, answers, max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            benchmarks=benchmark_scores(input_path, tasks, data_dir, task_limit) if tasks else None)
    after = capability_metrics(new, tokenizer, prompts, answers, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, reference=old if check_kl else None)
    after["health"] = health + after["health"]
    if tasks and not after["health"]:
        after["benchmarks"] = benchmark_scores(str(output_path), tasks, data_dir, task_limit)
    checks = decide(input_metrics, after, thresholds, check_kl=check_kl)
    return {"stage": stage, "input": str(input_path), "output": str(output_path),
            "accepted": all(c["passed"] for c in checks), "checks": checks, "before": input_metrics,
            "after": after, "thresholds": asdict(thresholds)}


def describe(record: dict) -> str:
    """One line: the gate's verdict on a stage and, when rejected, every failed check with its numbers."""
    if record["accepted"]:
        return f"gate: stage {record['stage']} accepted"
    failed = []
    for c in record["checks"]:
        if c["passed"]:
            continue
        if c["change"] is None:
            failed.append(f"{c['check']}: {c['after']}")
        else:
            failed.append(f"{c['check']}: {_num(c['before'])} -> {_num(c['after'])} (limit {_num(c['threshold'])})")
    return (f"gate: stage {record['stage']} REJECTED ({'; '.join(failed)}); rolled back to {record['input']} "
            f"(the rejected output is kept in {record['output']})")


def _num(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
