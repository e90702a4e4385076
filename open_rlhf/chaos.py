"""Kill anywhere, resume, lose nothing: SIGKILL a stage at random points, resume it, compare with a straight run.

For each stage (SFT, DPO, GRPO, PPO by default) on a tiny random Llama with the real tokenizer, the harness runs the
stage's command (``python -m open_rlhf.chaos <stage> FLAGS``: the stage's own CLI, `open_rlhf.cli.stage_main`,
plus the kill hooks below) once uninterrupted, then again in a second folder, SIGKILLing it ``kills`` times and
re-running the same command after each kill (a stage resumes by itself from its last valid checkpoint,
`open_rlhf.outputs.prepare_output_dir`). At the end it checks that

1. the final weights equal the uninterrupted run's (max |Δ| over every tensor, policy and PPO's value model);
2. every per-step entry of ``log_history`` (loss, grad norm, learning rate, rewards, KL, ...; wall-clock keys
   left out) equals the uninterrupted run's;
3. no checkpoint is left invalid in the output folder: a half-written one was moved aside with a message.

Where the kills land (seeded, `KillPlan`). The child blocks at a *kill point* and writes a marker file; the
parent sees the marker and sends SIGKILL from outside, so the kill hits exactly that point:

* ``step:s``  inside update s+1, after its forward/backward (and generation, for GRPO/PPO), before the
  optimizer changes the weights (a global `torch.optim` step pre-hook);
* ``end:s``   after update s, before its checkpoint (``on_step_end``);
* ``save:s``  *during* the save of ``checkpoint-s``: at the first `torch.save` into it, i.e. after the model
  weights are written and before the optimizer state and ``trainer_state.json`` (TRL/transformers), or inside
  PPO's ``.tmp-checkpoint-s`` before its rename; at least one per stage;
* ``time:t``  a plain timer: SIGKILL t seconds after start (anywhere: imports, model loading, data, a step).

Every kill point is chosen among those still ahead of the last checkpoint, so each one is reached.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ENV_EVENT = "OPEN_RLHF_CHAOS_EVENT"  # "<phase>:<step>" the child blocks at
ENV_MARKER = "OPEN_RLHF_CHAOS_MARKER"  # file the child writes when it is there
PHASE_ORDER = {"end": 0, "save": 1, "step": 2}  # within one step s: end of update s, its save, then update s+1
TIMING_KEYS = ("time", "runtime", "per_second", "tokens_per_second")  # wall-clock log keys, not compared
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STAGES = ("sft", "dpo", "grpo", "ppo")


# -- the child: the stage's CLI plus kill points -------------------------------------------------------------------
def _block(marker: str, event: str, detail: str) -> None:
    """Write the marker (atomically) and wait for the parent's SIGKILL."""
    from open_rlhf.atomic import atomic_write_text

    atomic_write_text(marker, json.dumps({"event": event, "detail": detail, "pid": os.getpid()}))
    while True:
        time.sleep(3600)


def _install_kill_point(event: str, marker: str) -> None:
    """Make this process block at ``event`` (``step:s``, ``end:s``, ``save:s``); see the module docstring."""
    import torch
    from transformers import TrainerCallback

    from open_rlhf import stages

    phase, step = event.split(":")
    step = int(step)
    held: dict = {}

    def global_step() -> int:
        trainer = held.get("trainer")
        return trainer.state.global_step if trainer is not None else -1

    if phase == "step":
        def pre_hook(optimizer, args, kwargs):
            if global_step() == step:
                _block(marker, event, "optimizer step pre-hook")

        from torch.optim.optimizer import register_optimizer_step_pre_hook

        register_optimizer_step_pre_hook(pre_hook)
    elif phase == "save":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)) and Path(f).parent.name.endswith(f"checkpoint-{step}"):
                _block(marker, event, f"torch.save of {Path(f).name} into {Path(f).parent.name}")
            return real_save(obj, f, *args, **kwargs)

        torch.save = save
    elif phase != "end":
        raise ValueError(f"{ENV_EVENT}: unknown kill point {event!r}; expected step:N, end:N or save:N.")

    class KillPoint(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if phase == "end" and state.global_step == step:
                _block(marker, event, "on_step_end")

    build = stages._build_trainer

    def build_and_hold(*args, **kwargs):
        trainer = build(*args, **kwargs)
        held["trainer"] = trainer
        trainer.callback_handler.add_callback(KillPoint())
        return trainer

    stages._build_trainer = build_and_hold


def child_main(argv: list[str] | None = None) -> None:
    """``python -m open_rlhf.chaos <stage> FLAGS``: run the stage as ``open-rlhf <stage> FLAGS`` does, blocking at
    the kill point in ``$OPEN_RLHF_CHAOS_EVENT`` (if set) after writing ``$OPEN_RLHF_CHAOS_MARKER``."""
    from open_rlhf.cli import stage_main

    argv = list(sys.argv[1:] if argv is None else argv)
    event = os.environ.get(ENV_EVENT)
    if event:
        _install_kill_point(event, os.environ[ENV_MARKER])
    stage_main(argv[0], argv[1:])


# -- the parent: plan, run, kill, compare ---------------------------------------------------------------------------
@dataclass
class StageSetup:
    """A stage's command for the harness: preset, tiny-run flags, steps and checkpoint interval."""

    name: str
    flags: list[str]
    max_steps: int = 6
    save_steps: int = 1

    def saves(self) -> list[int]:
        """Steps with a checkpoint (PPO does not checkpoint its last update; the final save follows)."""
        last = self.max_steps - 1 if self.name == "ppo" else self.max_steps
        return [s for s in range(self.save_steps, last + 1, self.save_steps)]


def stage_setups(model: str, reward_model: str, max_steps: int = 6,
                 save_steps: int | None = None) -> dict[str, StageSetup]:
    """The four stages on a tiny model: each stage's default preset with a few steps and frequent checkpoints.

    ``save_steps`` None: a checkpoint every step, GRPO's every 2 steps (a whole generation cycle, see
    `open_rlhf.config.generation_cycle_warning`; with ``save_steps=1`` a GRPO resume inside a cycle drifts, as
    documented in the README).

    fp32 (``--bf16 false``), so that the comparison does not depend on the CPU. GRPO keeps its preset's structure
    (2 accumulation steps, 2 iterations per generation batch), so a checkpoint can fall inside a generation batch;
    PPO keeps its 2 PPO epochs and accumulation. GRPO and PPO score with a tiny random reward model: the verifiable
    reward is 0 for every completion of a random model, which leaves the advantages, the loss and the updates at 0.
    """
    common = ["--model_name_or_path", model, "--bf16", "false", "--max_steps", str(max_steps),
              "--save_total_limit", "2", "--logging_steps", "1", "--report_to", "none", "--max_train_samples", "32",
              "--eval_size", "4", "--learning_rate", "1e-3", "--seed", "42", "--disable_tqdm", "true"]
    flags = {
        "sft": ["--config", "config/sft/default.yaml", "--per_device_train_batch_size", "2", "--max_length", "128",
                "--warmup_steps", "1"],
        "dpo": ["--config", "config/dpo/default.yaml", "--per_device_train_batch_size", "2", "--max_length", "128",
                "--warmup_steps", "1"],
        "grpo": ["--config", "config/grpo/default.yaml", "--per_device_train_batch_size", "4", "--num_generations",
                 "2", "--max_completion_length", "8", "--reward", f"model:{reward_model}"],
        "ppo": ["--config", "config/ppo/default.yaml", "--per_device_train_batch_size", "2", "--response_length",
                "8", "--reward_model_path", reward_model],
    }
    steps = {name: save_steps or (2 if name == "grpo" else 1) for name in flags}
    return {name: StageSetup(name, [*f, *common, "--save_steps", str(steps[name])], max_steps, steps[name])
            for name, f in flags.items()}


def save_tiny_model(path: Path, seed: int = 0, reward: bool = False) -> Path:
    """A tiny random Llama with the real SmolLM2 tokenizer (`open_rlhf.models.save_tiny_model`, as
    ``tests/conftest.py`` builds it; with ``reward``: a one-output sequence classifier, a reward model)."""
    from open_rlhf import models

    tokenizer = models.load_tokenizer(str(models.ensure_default_model()), padding_side="left")
    return models.save_tiny_model(path, tokenizer, seed, reward=reward)


def candidate_events(setup: StageSetup) -> list[tuple[str, int]]:
    """Every deterministic kill point of a run, in the order the run reaches them."""
    events = [("end", s) for s in range(1, setup.max_steps + 1)]
    events += [("save", s) for s in setup.saves()]
    events += [("step", s) for s in range(setup.max_steps)]
    return sorted(events, key=lambda e: (e[1], PHASE_ORDER[e[0]]))


def checkpoint_step(output_dir: Path) -> int:
    """The step of the checkpoint the stage would resume from (0: none), as `outputs.prepare_output_dir` sees it,
    without moving anything."""
    from open_rlhf.outputs import valid_checkpoints

    found = valid_checkpoints(output_dir) if output_dir.is_dir() else []
    return max(found, default=0)


def reachable(event: tuple[str, int], resume_step: int) -> bool:
    """Whether a run resuming at ``resume_step`` still passes kill point ``event``."""
    phase, s = event
    return s >= resume_step if phase == "step" else s > resume_step


@dataclass
class Attempt:
    event: str
    outcome: str  # "killed" / "finished" / "failed (exit N)"
    seconds: float
    resumed_from: int


@dataclass
class StageResult:
    stage: str
    attempts: list[Attempt] = field(default_factory=list)
    max_abs_diff: float = math.nan
    tensors: int = 0
    metrics_equal: bool = False
    metric_diffs: list[str] = field(default_factory=list)
    moved_aside: list[str] = field(default_factory=list)
    invalid_left: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    straight_seconds: float = 0.0

    @property
    def kills(self) -> int:
        return sum(a.outcome == "killed" for a in self.attempts)

    @property
    def resumes(self) -> int:
        return sum(a.resumed_from > 0 for a in self.attempts)

    @property
    def ok(self) -> bool:
        return self.max_abs_diff == 0.0 and self.metrics_equal and not self.invalid_left


def _run_child(command: list[str], log_path: Path, event: str | None, marker: Path, timeout: float) -> tuple[str, float]:
    """Run one child; SIGKILL it at its kill point (or after ``time:t`` seconds). Returns (outcome, seconds)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop(ENV_EVENT, None)
    marker.unlink(missing_ok=True)
    deadline = None
    if event and event.startswith("time:"):
        deadline = float(event.split(":")[1])
    elif event:
        env[ENV_EVENT], env[ENV_MARKER] = event, str(marker)
    start = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(command)}   # kill point: {event or 'none'}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
        while True:
            elapsed = time.perf_counter() - start
            if proc.poll() is not None:
                outcome = "finished" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
                return outcome, elapsed
            if marker.exists() or (deadline is not None and elapsed >= deadline):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                log.write(f"# SIGKILL at {event} after {elapsed:.1f} s\n")
                marker.unlink(missing_ok=True)
                return "killed", elapsed
            if elapsed > timeout:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return "failed (timeout)", elapsed
            time.sleep(0.02)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(folder.rglob("*.safetensors")):
        if "checkpoint-" in str(path.relative_to(folder)):
            continue
        for key, value in load_file(str(path)).items():
            tensors[f"{path.relative_to(folder)}:{key}"] = value
    return tensors


def compare_weights(a: Path, b: Path) -> tuple[float, int]:
    """Max |Δ| over every tensor of the final model folders ``a`` and ``b`` (policy, PPO's value model)."""
    wa, wb = _weights(a), _weights(b)
    if set(wa) != set(wb) or not wa:
        raise AssertionError(f"{a} and {b} hold different tensors: {sorted(set(wa) ^ set(wb))[:5]}")
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa), len(wa)


def step_logs(output_dir: Path) -> dict[int, dict]:
    """The per-step entries of a finished stage's ``log_history``, wall-clock keys left out."""
    from open_rlhf.outputs import read_log_history

    logs = {}
    for entry in read_log_history(output_dir):
        if "step" not in entry or any(k.startswith("train_") for k in entry):  # the run's summary line
            continue
        logs[entry["step"]] = {k: v for k, v in entry.items() if not any(t in k for t in TIMING_KEYS)}
    return logs


def compare_logs(a: Path, b: Path) -> list[str]:
    """The differing per-step log values of two finished runs (empty: equal)."""
    la, lb = step_logs(a), step_logs(b)
    diffs = [] if la else ["no per-step log entries"]
    if sorted(la) != sorted(lb):
        diffs.append(f"logged steps {sorted(la)} vs {sorted(lb)}")
    for step in sorted(set(la) & set(lb)):
        for key in sorted(set(la[step]) | set(lb[step])):
            if la[step].get(key) != lb[step].get(key):
                diffs.append(f"step {step} {key}: {la[step].get(key)} vs {lb[step].get(key)}")
    return diffs


def run_stage_chaos(setup: StageSetup, workdir: Path, kills: int = 5, seed: int = 0, timeout: float = 900.0,
                    log=print) -> StageResult:
    """Kill-and-resume one stage ``kills`` times and compare with its uninterrupted run (module docstring).

    Args:
        setup: the stage and its flags (`stage_setups`).
        workdir: gets ``<stage>/straight``, ``<stage>/chaos`` and ``<stage>/chaos.log``.
        kills: SIGKILLs of the chaos run (one during a checkpoint save; with ``kills >= 3`` the first by timer).
        seed: of the kill plan.
    """
    rng = random.Random(f"{seed}-{setup.name}")
    base = workdir / setup.name
    base.mkdir(parents=True, exist_ok=True)
    result = StageResult(setup.name)
    marker = base / "kill_point.json"

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "open_rlhf.chaos", setup.name, *setup.flags, "--output_dir", str(out)]

    outcome, result.straight_seconds = _run_child(command(base / "straight"), base / "straight.log", None, marker,
                                                  timeout)
    if outcome != "finished":
        raise RuntimeError(f"{setup.name}: the uninterrupted run {outcome}; see {base / 'straight.log'}")
    log(f"{setup.name}: uninterrupted run {result.straight_seconds:.1f} s")

    out = base / "chaos"
    chaos_log = base / "chaos.log"
    save_kill_at = rng.randrange(1 if kills >= 3 else 0, kills)  # which kill is the one during a save
    timer_kill = kills >= 3
    done = False
    for k in range(kills):
        resume = checkpoint_step(out)
        if timer_kill and k == 0:
            event = f"time:{rng.uniform(0.2, 0.9) * result.straight_seconds:.2f}"  # anywhere in a fresh run
        else:
            left = [e for e in candidate_events(setup) if reachable(e, resume)]
            if k == save_kill_at:
                left = [e for e in left if e[0] == "save"]
            remaining = kills - k  # deterministic kills left, this one included
            if not left:
                log(f"{setup.name}: no kill point left after checkpoint-{resume}")
                break
            window = left[:max(1, math.ceil(len(left) / max(1, remaining)))]  # leave room for the later kills
            phase, s = rng.choice(window)
            event = f"{phase}:{s}"
        outcome, seconds = _run_child(command(out), chaos_log, event, marker, timeout)
        result.attempts.append(Attempt(event, outcome, seconds, resume))
        log(f"{setup.name}: run {k + 1} from checkpoint-{resume}, kill point {event}: {outcome} ({seconds:.1f} s)")
        if outcome.startswith("failed"):
            raise RuntimeError(f"{setup.name}: a resumed run {outcome}; see {chaos_log}")
        if outcome == "finished":
            done = True
            break
    if not done:
        resume = checkpoint_step(out)
        outcome, seconds = _run_child(command(out), chaos_log, None, marker, timeout)
        result.attempts.append(Attempt("none", outcome, seconds, resume))
        log(f"{setup.name}: final run from checkpoint-{resume}: {outcome} ({seconds:.1f} s)")
        if outcome != "finished":
            raise RuntimeError(f"{setup.name}: the final resumed run {outcome}; see {chaos_log}")

    from open_rlhf.outputs import INCOMPLETE_PREFIX, invalid_checkpoints

    result.max_abs_diff, result.tensors = compare_weights(base / "straight", out)
    result.metric_diffs = compare_logs(base / "straight", out)
    result.metrics_equal = not result.metric_diffs
    result.moved_aside = sorted(p.name for p in out.glob(f"{INCOMPLETE_PREFIX}*"))
    result.invalid_left = [p.name for p in invalid_checkpoints(out)]
    result.messages = [line.strip() for line in chaos_log.read_text().splitlines() if "moved aside" in line]
    return result


def format_table(results: list[StageResult]) -> str:
    """One row per stage: kills, resumes, max |Δweight|, metrics equal, checkpoints moved aside, invalid left."""
    lines = ["| stage | kills (in a save) | resumes | uninterrupted s | max abs Δweight | tensors | metrics equal "
             "| moved aside | invalid left |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        in_save = sum(a.outcome == "killed" and a.event.startswith("save") for a in r.attempts)
        lines.append(f"| {r.stage} | {r.kills} ({in_save}) | {r.resumes} | {r.straight_seconds:.0f} | "
                     f"{r.max_abs_diff:.3g} | {r.tensors} | {'yes' if r.metrics_equal else 'no'} | "
                     f"{len(r.moved_aside)} | {len(r.invalid_left)} |")
    return "\n".join(lines)


def chaos_main(argv: list[str] | None = None) -> int:
    """``scripts/chaos_resume.py``: run the harness on the stages, print the table, exit 1 when a stage differs."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default=",".join(DEFAULT_STAGES), help="comma-separated stages")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs per stage (>= 3: one by timer)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill plan")
    parser.add_argument("--max_steps", type=int, default=6)
    parser.add_argument("--save_steps", type=int, default=None,
                        help="checkpoint interval (default: every step; GRPO every 2 steps, a whole generation cycle)")
    parser.add_argument("--workdir", default=None, help="where the runs go (default: a new temporary folder)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model, reward_model = workdir / "tiny-model", workdir / "tiny-reward-model"
    if not (model / "config.json").is_file():
        save_tiny_model(model)
    if not (reward_model / "config.json").is_file():
        save_tiny_model(reward_model, seed=1, reward=True)
    setups = stage_setups(str(model), str(reward_model), args.max_steps, args.save_steps)
    results = []
    for name in args.stages.split(","):
        r = run_stage_chaos(setups[name], workdir, args.kills, args.seed)
        for message in r.messages:
            print(f"{name}: {message}")
        for diff in r.metric_diffs[:10]:
            print(f"{name}: log differs: {diff}")
        results.append(r)
    print(format_table(results))
    print(f"runs and logs: {workdir}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    child_main()
