"""Learning curves: held-out accuracy, reward-model score and KL to the reference policy every K training steps.

`LearningCurveCallback` is a `transformers.TrainerCallback`, so it runs inside every TRL trainer and inside our PPO
trainer (`open_rlhf.trainers.ppo.PPOTrainer` fires the same ``on_train_begin`` / ``on_step_end`` /
``on_train_end`` events). At step 0, every ``every`` optimizer steps and at the end it evaluates the policy
being trained on a fixed set of held-out prompts:

- ``accuracy``: greedy responses, share of ``#### N`` answers equal to the gold answer, with its 95% Wilson
  interval (`open_rlhf.metrics.accuracy_interval`);
- ``reward_score``: the mean reward-model score of those responses (when a reward model is given);
- ``kl``: Monte-Carlo KL(policy || reference) in nats per sequence on ``kl_prompts`` of the prompts, from responses
  sampled at temperature 1 (`open_rlhf.evaluation.kl_to_reference`; when a reference policy is given).

The plot also shows an RL stage's own training reward (the mean reward of each step's rollouts, from the
trainer's log ``metrics.jsonl``: TRL's ``reward``, our PPO's ``objective/scores``), raw and as a moving mean, so a
reward that rises while held-out accuracy falls (reward hacking) or that stays flat (no learning signal) is seen.

Each point is one JSON line appended to ``<output_dir>/learning_curve.jsonl`` (a resumed run appends to the same
file; the plot keeps the last point of each step), and ``learning_curve.png`` is redrawn after every point, so a
user can watch a run and see whether it is still improving when its budget ends.

In the stage scripts: ``--curve_every K`` (0, the default, is off), ``--curve_prompts``, ``--curve_dataset``,
``--curve_reward_model``, ``--curve_kl_prompts``, ``--curve_max_new_tokens`` (`open_rlhf.config.ScriptArguments`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

CURVE_FILE = "learning_curve.jsonl"
CURVE_PLOT = "learning_curve.png"
# the per-step rollout reward in an RL trainer's log: TRL's GRPO/RLOO, then our PPO
TRAINING_REWARD_KEYS = ("reward", "objective/scores")


def read_curve(path: str | Path) -> list[dict]:
    """The points of a ``learning_curve.jsonl``, sorted by step, the last one kept where a step repeats (a resumed
    run re-evaluates its resume point).

    Raises:
        ValueError: a line that is not JSON, named by file and line number.
    """
    by_step: dict[int, dict] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            point = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: not a JSON object ({err.msg}). Fix: delete the line.") from err
        by_step[int(point["step"])] = point
    return [by_step[s] for s in sorted(by_step)]


def training_reward(output_dir: str | Path) -> list[tuple[int, float]]:
    """``(step, mean rollout reward)`` of each logging step of an RL stage, from its ``metrics.jsonl``
    (`open_rlhf.progress.read_metrics`; the first of `TRAINING_REWARD_KEYS` it logs), else from the log history of
    its ``trainer_state.json`` (our PPO trainer wrote no ``metrics.jsonl`` before 72052f7); [] for other stages."""
    from open_rlhf.progress import read_metrics

    records = read_metrics(output_dir)
    state = Path(output_dir) / "trainer_state.json"
    if not records and state.is_file():
        records = json.loads(state.read_text()).get("log_history", [])
    key = next((k for k in TRAINING_REWARD_KEYS if any(k in r for r in records)), None)
    return [(int(r["step"]), float(r[key])) for r in records if key in r and "step" in r]


def moving_mean(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving mean: element i is the mean of ``values[max(0, i - window + 1): i + 1]``."""
    return [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
            for i in range(len(values))]


def plot_curves(curves: dict[str, list[dict]], out: str | Path, title: str = "learning curves",
                rewards: dict[str, list[tuple[int, float]]] | None = None, smooth: int = 5) -> Path:
    """One figure, a panel per metric (accuracy with its 95% band, reward-model score, KL, and the RL training
    reward), a line per run.

    Args:
        curves: run name -> its points (`read_curve`).
        out: the PNG to write (atomically).
        rewards: run name -> its training reward per step (`training_reward`), drawn raw (faint) and as a trailing
            moving mean over ``smooth`` logged steps.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from open_rlhf.atomic import atomic_save_figure

    rewards = {name: r for name, r in (rewards or {}).items() if r}
    metrics = [m for m in ("accuracy", "reward_score", "kl")
               if any(p.get(m) is not None for points in curves.values() for p in points)]
    panels = metrics + (["training_reward"] if rewards else [])
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.4), squeeze=False)
    labels = {"accuracy": "held-out accuracy", "reward_score": "reward-model score", "kl": "KL to reference (nats)"}
    names = list(dict.fromkeys([*curves, *rewards]))
    palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colors = {name: palette(i % palette.N) for i, name in enumerate(names)}  # one colour per run in every panel
    if rewards:
        ax = axes[0][len(metrics)]
        for name, points in rewards.items():
            steps, values = [s for s, _ in points], [v for _, v in points]
            ax.plot(steps, moving_mean(values, smooth), color=colors[name], label=name)
            ax.plot(steps, values, color=colors[name], alpha=0.25, linewidth=0.8)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"training reward (mean of {smooth} steps)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax, metric in zip(axes[0], metrics, strict=False):
        for name, points in curves.items():
            pts = [p for p in points if p.get(metric) is not None]
            if not pts:
                continue
            steps = [p["step"] for p in pts]
            ax.plot(steps, [p[metric] for p in pts], marker="o", markersize=3, color=colors[name], label=name)
            if metric == "accuracy" and all("ci_low" in p for p in pts):
                ax.fill_between(steps, [p["ci_low"] for p in pts], [p["ci_high"] for p in pts], color=colors[name],
                                alpha=0.1)
        ax.set_xlabel("training step")
        ax.set_ylabel(labels[metric])
        ax.grid(alpha=0.3)
    if curves:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return atomic_save_figure(fig, out, dpi=110)


def plot_run_curves(stage_dirs: dict[str, Path], out: str | Path, title: str) -> Path | None:
    """`plot_curves` of those runs of ``stage_dirs`` (name -> stage output folder) that wrote a curve file.

    Returns:
        The PNG written, or None when no run has a curve (nothing is written).
    """
    curves = {name: read_curve(d / CURVE_FILE) for name, d in stage_dirs.items() if (d / CURVE_FILE).is_file()}
    rewards = {name: training_reward(stage_dirs[name]) for name in curves}
    return plot_curves(curves, out, title=title, rewards=rewards) if curves else None


def curve_prompts(source: str, own_held_out, count: int, split_seed: int) -> tuple[list, list[str] | None]:
    """The held-out prompts of a learning curve: the first ``count`` rows of ``own_held_out`` (an RL run's own eval
    split of prompt data, never trained on) when it is given, else the held-out prompts of ``source``
    (`open_rlhf.evaluation.held_out_prompts` with ``split_seed``).

    Returns:
        `(prompts, answers)`: `P` conversational prompts and their `P` gold answers (None when the data has none).
    """
    from open_rlhf import evaluation

    if own_held_out is None:
        return evaluation.held_out_prompts(source, count, split_seed)
    rows = own_held_out.select(range(min(count, len(own_held_out))))
    return list(rows["prompt"]), list(rows["answer"]) if "answer" in rows.column_names else None


@contextlib.contextmanager
def _plain_forward(model):
    """Run ``model`` without the autocast wrapper `accelerate.Accelerator.prepare_model` puts around its ``forward``
    under mixed precision (it keeps the plain one as ``model._original_forward``), so a curve point is measured in
    the weights' own precision, as the final evaluation and the reference policy are: with the wrapper, the KL
    to the reference at step 0 came out at -0.15 nats (GRPO, bf16 autocast) instead of 0."""
    patched, original = model.__dict__.get("forward"), getattr(model, "_original_forward", None)
    if patched is None or original is None:
        yield
        return
    model.forward = original
    try:
        yield
    finally:
        model.forward = patched


class LearningCurveCallback(TrainerCallback):
    """Evaluate the policy on held-out prompts every ``every`` steps (see the module docstring).

    Args:
        tokenizer: the policy's tokenizer.
        prompts: `P` conversational prompts (lists of messages) held out from training.
        answers: their `P` gold answers (None: no accuracy).
        output_dir: the run folder; the curve goes to ``<output_dir>/learning_curve.jsonl`` and ``.png``.
        every (`int`): evaluate every this many optimizer steps (and at step 0 and at the end).
        reward_scorer (`open_rlhf.rewards.RewardModelScorer`, *optional*): scores the greedy responses.
        reference (*optional*): the reference policy of the KL (usually the SFT policy the run starts from).
        kl_prompts (`int`): how many of the prompts the KL estimate samples on.
        max_new_tokens, batch_size: generation settings of the evaluation.
        policy (*optional*): the model to evaluate; default: the ``model`` the trainer passes to its callbacks.

    Raises:
        ValueError: ``every < 1``, no prompts, or answers that do not match the prompts in number.
    """

    def __init__(self, tokenizer, prompts: Sequence, answers: Sequence[str] | None, output_dir: str | Path,
                 every: int, reward_scorer=None, reference=None, kl_prompts: int = 16, max_new_tokens: int = 96,
                 batch_size: int = 16, policy=None):
        if every < 1 or not prompts or (answers is not None and len(answers) != len(prompts)):
            raise ValueError(f"LearningCurveCallback needs every >= 1 (got {every}), prompts (got {len(prompts)}) "
                             f"and one answer per prompt (got {None if answers is None else len(answers)}).")
        self.tokenizer, self.prompts, self.answers = tokenizer, list(prompts), answers
        self.every, self.reward_scorer, self.reference = every, reward_scorer, reference
        self.kl_prompts, self.max_new_tokens, self.batch_size = kl_prompts, max_new_tokens, batch_size
        self.policy = policy
        self.path = Path(output_dir) / CURVE_FILE
        self._last_step: int | None = None

    def evaluate(self, model, step: int) -> dict:
        """One point of the curve: evaluate ``model`` now and append the point to the file and the plot."""
        start = time.perf_counter()
        was_training = model.training
        with _plain_forward(model):
            point = self._measure(model, step)
        point["seconds"] = time.perf_counter() - start
        if was_training:
            model.train()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:  # one line per point: an interrupted run loses at most the point in flight
            f.write(json.dumps(point) + "\n")
        name = self.path.parent.name
        plot_curves({name: read_curve(self.path)}, self.path.with_name(CURVE_PLOT),
                    title=f"learning curve: {self.path.parent}", rewards={name: training_reward(self.path.parent)})
        logger.info("learning curve, step %d: %s", step, ", ".join(
            f"{k} {v:.4g}" for k, v in point.items() if isinstance(v, float) and k not in ("ci_low", "ci_high")))
        self._last_step = step
        return point

    def _measure(self, model, step: int) -> dict:
        from open_rlhf import evaluation
        from open_rlhf.metrics import accuracy_interval

        metrics = evaluation.evaluate_policy(model, self.tokenizer, self.prompts, self.answers, self.reward_scorer,
                                             self.max_new_tokens, self.batch_size)
        point = {"step": step, "prompts": len(self.prompts), "accuracy": metrics["accuracy"],
                 "reward_score": metrics["reward_score"], "response_length": metrics["response_length"]}
        if metrics.get("correct") is not None:
            _, point["ci_low"], point["ci_high"] = accuracy_interval(metrics["correct"])
        if self.reference is not None and self.kl_prompts > 0:
            self.reference.to(model.device)
            with torch.random.fork_rng():  # the training run's random stream is not disturbed
                point["kl"] = evaluation.kl_to_reference(model, self.reference, self.tokenizer,
                                                         self.prompts[: self.kl_prompts], self.max_new_tokens,
                                                         self.batch_size, seed=step)
        return point

    def _maybe(self, state, model, force: bool = False) -> None:
        if not state.is_world_process_zero:
            return
        model = self.policy if self.policy is not None else model
        if model is None:
            raise ValueError("LearningCurveCallback: the trainer passed no model; give the callback policy=...")
        step = int(state.global_step)
        if step != self._last_step and (force or step % self.every == 0):
            self.evaluate(model, step)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._maybe(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._maybe(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._maybe(state, model, force=True)
