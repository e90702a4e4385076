"""Process reward model (PRM) training: a token classifier read at the end of every solution step.

Ours because TRL 1.16 removed its ``PRMTrainer``; this is a thin `transformers.Trainer` subclass (the training
loop, checkpoints, resume, logging and accelerate are transformers'), with the data preparation of TRL's former
trainer and Math-Shepherd:

- input: stepwise-supervision rows ``prompt``, ``completions`` (the steps), ``labels`` (one bool per step);
  `open_rlhf.inference.prm.encode_steps` gives the token ids and each step's last position;
- target: the label at each step's last position (1 correct, 0 wrong), -100 (ignored) everywhere else;
- loss: the mean cross-entropy over the labelled positions, i.e. ``-1/S sum_s [y_s log p_s + (1 - y_s)
  log(1 - p_s)]`` over the S steps of the batch (Lightman et al. 2023, Sec. 2.6; Wang et al. 2024, Eq. 4), which
  is transformers' token-classification loss with these labels.

Held-out metrics (``eval_*``): ``step_accuracy`` (a step predicted correct iff ``P(correct) > 0.5``),
``first_error_accuracy`` (the predicted first wrong step, or "none", equals the labelled one: ProcessBench's
question, Zheng et al. 2024) and ``solution_accuracy`` (the solution judged correct iff every step is).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from datasets import Features, Sequence, Value
from transformers import DataCollatorForTokenClassification, Trainer, TrainingArguments

from open_rlhf.config import HardwareDefaultsMixin
from open_rlhf.inference.prm import encode_steps

logger = logging.getLogger(__name__)
IGNORE_INDEX = -100


@dataclass
class PRMConfig(HardwareDefaultsMixin, TrainingArguments):
    """`transformers.TrainingArguments` plus the PRM's data and Monte-Carlo labelling options; device and
    precision from the hardware (`HardwareDefaultsMixin`)."""

    max_length: int = field(default=512, metadata={"help": "Longer inputs lose their prompt's start."})
    mc_rollouts: int = field(default=4, metadata={
        "help": "Monte-Carlo step labels (data with gold answers but no step labels, e.g. GSM8K): completions "
                "sampled from each step (Math-Shepherd's N)."})
    mc_solutions: int = field(default=1, metadata={"help": "Monte-Carlo labels: policy solutions per question."})
    mc_policy: str | None = field(default=None, metadata={
        "help": "Monte-Carlo labels: the completer (default: --model_name_or_path, the PRM's starting point)."})
    mc_max_new_tokens: int = field(default=256, metadata={"help": "Monte-Carlo labels: tokens per completion."})
    mc_temperature: float = field(default=0.7, metadata={"help": "Monte-Carlo labels: sampling temperature."})
    mc_max_steps: int = field(default=12, metadata={"help": "Monte-Carlo labels: solutions with more steps are dropped."})

    def __post_init__(self):
        super().__post_init__()
        if self.mc_rollouts < 1 or self.mc_solutions < 1:
            raise ValueError(f"mc_rollouts and mc_solutions must be >= 1, got {self.mc_rollouts} and {self.mc_solutions}")


def tokenize_stepwise(row: dict, tokenizer, max_length: int) -> dict:
    """One stepwise row -> ``input_ids``, ``attention_mask`` and ``labels`` (the step label at each step's last
    token, -100 elsewhere)."""
    ids, positions = encode_steps(tokenizer, row["prompt"], row["completions"], max_length)
    labels = [IGNORE_INDEX] * len(ids)
    kept = row["labels"][len(row["labels"]) - len(positions):]  # left truncation drops the first steps
    for position, label in zip(positions, kept, strict=True):
        labels[position] = int(label)
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def step_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Step, first-error and solution accuracy of predicted ``P(correct)`` against step labels.

    Args:
        probs (`np.ndarray` of shape `(N, L)`): ``P(correct)`` at every position; labels: `(N, L)` with 1 / 0 at
            step positions and -100 elsewhere (padding included).

    Returns:
        ``{"step_accuracy", "first_error_accuracy", "solution_accuracy", "steps"}``.
    """
    correct_steps = total_steps = first_hits = solution_hits = solutions = 0
    for p, y in zip(probs, labels, strict=True):
        at = y != IGNORE_INDEX
        if not at.any():
            continue
        predicted, truth = p[at] > 0.5, y[at] == 1
        correct_steps += int((predicted == truth).sum())
        total_steps += int(at.sum())
        first_predicted = int(np.argmin(predicted)) if not predicted.all() else -1
        first_true = int(np.argmin(truth)) if not truth.all() else -1
        first_hits += first_predicted == first_true
        solution_hits += bool(predicted.all()) == bool(truth.all())
        solutions += 1
    return {"step_accuracy": correct_steps / max(total_steps, 1), "first_error_accuracy": first_hits / max(solutions, 1),
            "solution_accuracy": solution_hits / max(solutions, 1), "steps": float(total_steps)}


def _probs_of_correct(logits, labels):
    return logits.float().softmax(-1)[..., 1]


def _compute_metrics(prediction) -> dict[str, float]:
    return step_metrics(np.asarray(prediction.predictions), np.asarray(prediction.label_ids))


class PRMTrainer(Trainer):
    """`transformers.Trainer` for a process reward model on stepwise-supervision data (see the module docstring).

    Args:
        model: a token classifier with two labels (`open_rlhf.models.load_step_classifier`).
        args (`PRMConfig`): training arguments.
        train_dataset, eval_dataset: rows ``prompt``, ``completions``, ``labels`` (tokenized here).
        processing_class: the tokenizer (with a chat template).
        peft_config (*optional*): a PEFT config (LoRA; the classifier head trains with ``task_type="TOKEN_CLS"``).

    Raises:
        ValueError: when a dataset lacks the stepwise columns.
    """

    def __init__(self, model, args: PRMConfig, train_dataset, processing_class, eval_dataset=None, peft_config=None,
                 **kwargs):
        if peft_config is not None:
            from peft import get_peft_model

            peft_config.task_type = "TOKEN_CLS"
            model = get_peft_model(model, peft_config)
        tokenizer = processing_class

        def prepare(dataset, name):
            missing = {"prompt", "completions", "labels"} - set(dataset.column_names)
            if missing:
                raise ValueError(f"the PRM's {name} dataset has no {sorted(missing)} column(s); it needs stepwise "
                                 "rows prompt / completions / labels (open_rlhf.data.load_stepwise_dataset)")
            # explicit features: the output's "labels" (ints) would otherwise take the input's bool type
            features = Features({k: Sequence(Value("int64")) for k in ("input_ids", "attention_mask", "labels")})
            return dataset.map(tokenize_stepwise, fn_kwargs={"tokenizer": tokenizer, "max_length": args.max_length},
                               remove_columns=dataset.column_names, features=features,
                               desc=f"Tokenizing the PRM {name} set")

        train_dataset = prepare(train_dataset, "train")
        if eval_dataset is not None:
            eval_dataset = prepare(eval_dataset, "eval")
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, data_collator=DataCollatorForTokenClassification(tokenizer),
                         compute_metrics=_compute_metrics, preprocess_logits_for_metrics=_probs_of_correct, **kwargs)
