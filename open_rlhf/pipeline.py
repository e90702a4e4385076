"""The end-to-end pipeline: SFT -> (reward model ->) one preference or RL method, then evaluation and a report.

Each stage runs its own script in a subprocess (the same command a user would type, recorded in the report),
writes ``runs/<run_name>/<stage>/`` and is skipped on a re-run once it has finished. The evaluation compares
the base model, the SFT policy and the final policy on the same held-out prompts.

``--method`` picks the last stage from `METHODS` (one flag switches method); see the method table in the README.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from open_rlhf import outputs
from open_rlhf.atomic import atomic_write_text
from open_rlhf.errors import EXIT_USER_ERROR, ConfigError, StageFailedError, parse_config, user_errors
from open_rlhf.progress import relay_output, stdout_buffer
from open_rlhf.rewards import parse_reward_spec

REPO_ROOT = Path(__file__).resolve().parents[1]
VERIFIABLE_REWARD = "math,0.2*format"  # RLVR: math-verify answer check + the '#### N' format
REWARD_MODEL = "model"  # in a reward spec: the pipeline's reward model (trained in the run, or --reward_model_path)


@dataclass(frozen=True)
class Method:
    """One row of the method table: how the pipeline trains the final policy from the SFT policy.

    Attributes:
        script: the stage script in ``scripts/``.
        config: its default preset.
        data: ``"preference"`` (pairs, or unpaired for KTO), ``"prompt"`` (RL prompts with gold answers) or ``"sft"``
            (demonstrations: SPIN).
        reward: default reward spec of an RL method (``"model"`` = the reward model); None for offline methods.
        flags: fixed extra flags of the method (e.g. REINFORCE++'s advantage estimator).
        reference: whether a frozen reference model is held during training.
        source: the paper.
    """

    script: str
    config: str
    data: str
    reward: str | None
    reference: bool
    source: str
    flags: tuple[str, ...] = ()


METHODS: dict[str, Method] = {
    "ppo": Method("train_ppo.py", "config/ppo/default.yaml", "prompt", REWARD_MODEL, True,
                  "Ouyang et al. 2022 (InstructGPT); Schulman et al. 2017"),
    "rlvr": Method("train_ppo.py", "config/ppo/rlvr.yaml", "prompt", VERIFIABLE_REWARD, True,
                   "Lambert et al. 2024 (Tulu 3, RLVR): PPO with a verifiable reward"),
    "reinforce_pp": Method("train_ppo.py", "config/ppo/reinforce_pp.yaml", "prompt", VERIFIABLE_REWARD, True,
                           "Hu et al. 2025 (REINFORCE++)"),
    "trpo": Method("train_ppo.py", "config/ppo/trpo.yaml", "prompt", VERIFIABLE_REWARD, True,
                   "Schulman et al. 2015 (TRPO): natural-gradient step in a KL trust region"),
    "grpo": Method("train_grpo.py", "config/grpo/default.yaml", "prompt", VERIFIABLE_REWARD, True,
                   "Shao et al. 2024 (DeepSeekMath)"),
    "gdpo": Method("train_grpo.py", "config/grpo/gdpo.yaml", "prompt", VERIFIABLE_REWARD, True,
                   "GDPO 2026 (Group reward-Decoupled normalization, arXiv 2601.05242)"),
    "rloo": Method("train_rloo.py", "config/rloo/default.yaml", "prompt", VERIFIABLE_REWARD, True,
                   "Ahmadian et al. 2024 (Back to Basics)"),
    "dpo": Method("train_dpo.py", "config/dpo/default.yaml", "preference", None, True, "Rafailov et al. 2023"),
    # round-based self-improvement (open_rlhf.iterative): every round's data and policy under the method's folder
    "spin": Method("train_iterative.py", "config/iterative/spin.yaml", "sft", None, True,
                   "Chen et al. 2024 (SPIN)"),
    "iterative_dpo": Method("train_iterative.py", "config/iterative/iterative_dpo.yaml", "prompt", VERIFIABLE_REWARD,
                            True, "Xiong et al. 2024 (iterative RLHF); Yuan et al. 2024 (self-rewarding)"),
    "rft": Method("train_iterative.py", "config/iterative/rft.yaml", "prompt", VERIFIABLE_REWARD, False,
                  "Zelikman et al. 2022 (STaR); Gulcehre et al. 2023 (ReST)"),
    "step_dpo": Method("train_iterative.py", "config/iterative/step_dpo.yaml", "preference", None, True,
                       "Lai et al. 2024 (Step-DPO)"),
    "ipo": Method("train_dpo.py", "config/dpo/ipo.yaml", "preference", None, True, "Azar et al. 2023"),
    "kto": Method("train_kto.py", "config/kto/default.yaml", "preference", None, True, "Ethayarajh et al. 2024"),
    "orpo": Method("train_orpo.py", "config/orpo/default.yaml", "preference", None, False, "Hong et al. 2024"),
    "simpo": Method("train_simpo.py", "config/simpo/default.yaml", "preference", None, False, "Meng et al. 2024"),
}


@dataclass
class PipelineArguments:
    """Options of `scripts/run_pipeline.py` (YAML: ``config/pipeline/*.yaml``)."""

    run_name: str = field(default="default", metadata={"help": "Outputs go to <runs_dir>/<run_name>/<stage>/."})
    runs_dir: str = field(default="runs", metadata={"help": "Folder of all pipeline runs."})
    method: str = field(default="ppo", metadata={"help": f"The final stage, one of {', '.join(METHODS)}."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Starting model (local path or hub id). Default: embedded SmolLM2-135M-Instruct."})
    sft_model_path: str | None = field(
        default=None, metadata={"help": "A finished SFT policy to start from instead of training one (no SFT stage)."})
    reward_model_path: str | None = field(
        default=None, metadata={"help": "A finished reward model to use instead of training one (no reward stage)."})
    reward: str | None = field(
        default=None,
        metadata={"help": "Reward spec of an RL method (open_rlhf.rewards); 'model' stands for the pipeline's reward "
                          f"model. Default: 'model' for ppo, '{VERIFIABLE_REWARD}' for the other RL methods."})
    # Data
    sft_dataset: str = field(default="builtin", metadata={"help": "SFT demonstrations (path, hub id or builtin)."})
    preference_dataset: str = field(default="builtin", metadata={"help": "Preference pairs for RM / DPO etc."})
    rl_dataset: str = field(default="builtin", metadata={"help": "RL prompts (with gold answers for accuracy)."})
    eval_dataset: str | None = field(
        default=None, metadata={"help": "Held-out prompts with gold answers for the report. Default: rl_dataset."})
    # Stage configs and extra flags (appended last, so they win)
    sft_config: str = field(default="config/sft/default.yaml", metadata={"help": "YAML of the SFT stage."})
    reward_config: str = field(default="config/reward/default.yaml", metadata={"help": "YAML of the RM stage."})
    method_config: str | None = field(
        default=None, metadata={"help": "YAML of the method's stage. Default: the method's preset (METHODS)."})
    sft_args: str = field(default="", metadata={"help": "Extra CLI flags for train_sft.py, e.g. '--max_steps 2'."})
    reward_args: str = field(default="", metadata={"help": "Extra CLI flags for train_reward.py."})
    method_args: str = field(default="", metadata={"help": "Extra CLI flags for the method's stage script."})
    report_to: str | None = field(
        default=None,
        metadata={"help": "Experiment tracking of every stage: tensorboard, trackio or 'tensorboard,trackio' (passed as "
                          "--report_to; trackio logs locally to <run_dir>/trackio unless TRACKIO_DIR is set). The "
                          "report links the event folders."})
    skip_disk_check: bool = field(
        default=False, metadata={"help": "Skip the free-disk check before the pipeline and each stage (open_rlhf.disk)."})
    # Evaluation
    evaluate: bool = field(default=True, metadata={"help": "Evaluate and write the report after training."})
    eval_prompts: int = field(default=64, metadata={"help": "Held-out prompts for accuracy / reward / KL."})
    eval_pairs: int = field(default=64, metadata={"help": "Held-out preference pairs for reward-model accuracy."})
    eval_max_new_tokens: int = field(default=96, metadata={"help": "Generation length of the evaluation."})
    eval_batch_size: int = field(default=16, metadata={"help": "Prompts per generation batch."})
    eval_base_model: bool = field(default=True, metadata={"help": "Also evaluate the starting model."})
    report_samples: int = field(default=4, metadata={"help": "Sample generations shown side by side."})
    split_seed: int = field(default=42, metadata={"help": "Seed of every train/eval split (the same in all stages)."})
    data_dir: str | None = field(
        default=None, metadata={"help": "The local public data (../shared/data): the gate's lm-eval tasks read it."})
    # Capability gate (open_rlhf.gate): after each policy stage; --no_gate turns it off
    gate: bool = field(default=True, metadata={"help": "Gate each policy stage (reject and roll back regressions)."})
    gate_prompts: int = field(
        default=32, metadata={"help": "Held-out prompts of the gate: the first of the eval_prompts (at most all)."})
    gate_max_accuracy_drop: float | None = field(default=0.10, metadata={"help": "Largest task-accuracy drop."})
    gate_max_eos_rate_drop: float | None = field(default=0.20, metadata={"help": "Largest EOS-rate drop."})
    gate_max_kl: float | None = field(
        default=10.0, metadata={"help": "Largest KL(new || input) in nats/seq (not checked for SFT)."})
    gate_tasks: str = field(default="", metadata={"help": "lm-eval tasks of the gate, comma-separated (e.g. arc_easy)."})
    gate_task_limit: int = field(default=50, metadata={"help": "Documents per gate lm-eval task."})
    gate_max_benchmark_drop: float | None = field(default=0.10, metadata={"help": "Largest lm-eval score drop."})

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}.")
        if self.gate and self.gate_prompts <= 0:
            raise ConfigError(f"--gate_prompts must be > 0, got {self.gate_prompts} (or pass --no_gate).")
        if self.reward is not None and METHODS[self.method].reward is None:
            raise ConfigError(f"--reward is for RL methods; --method {self.method} learns from preference data. "
                             "Drop --reward, or pick one of: "
                             + ", ".join(m for m, spec in METHODS.items() if spec.reward) + ".")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run_name

    @property
    def reward_spec(self) -> str | None:
        """The RL reward spec with ``model`` still standing for the pipeline's reward model (None: offline)."""
        return self.reward or METHODS[self.method].reward

    @property
    def uses_reward_model(self) -> bool:
        spec = self.reward_spec
        return spec is not None and any(_bare_reward_model(t) for t in parse_reward_spec(spec))

    @property
    def sft_path(self) -> Path:
        return Path(self.sft_model_path) if self.sft_model_path else self.run_dir / "sft"

    @property
    def gate_task_list(self) -> list[str]:
        return [t.strip() for t in self.gate_tasks.split(",") if t.strip()]

    @property
    def policy_stages(self) -> list[str]:
        """The stages that produce a policy (the gate checks these): SFT unless given, and the method."""
        return ([] if self.sft_model_path else ["sft"]) + [self.method]

    def held_out_prompts(self) -> tuple[list, list[str] | None]:
        """The evaluation's held-out prompts and gold answers (`open_rlhf.evaluation.held_out_prompts`):
        ``eval_prompts`` of ``eval_dataset``'s held-out split, else of ``rl_dataset``'s (the prompts training held out)."""
        from open_rlhf import evaluation

        return evaluation.held_out_prompts(self.eval_dataset or self.rl_dataset, self.eval_prompts, self.split_seed)

    @property
    def reward_path(self) -> Path | None:
        if self.reward_model_path:
            return Path(self.reward_model_path)
        return self.run_dir / "reward" if self.uses_reward_model else None


def _bare_reward_model(term) -> bool:
    """Whether a parsed reward term is ``model`` without a path: the pipeline's own reward model."""
    return term.name == REWARD_MODEL and term.argument is None


def _resolve_reward_model(spec: str, reward_path: Path) -> str:
    """Replace the bare ``model`` terms of a reward spec by ``model:<reward_path>``."""
    return ",".join(t.text + (f":{reward_path}" if _bare_reward_model(t) else "") for t in parse_reward_spec(spec))


def base_model(args: PipelineArguments) -> str:
    """The starting model of the run (a folder or hub id; the embedded default model when none is given)."""
    from open_rlhf.models import resolve_model_path

    return resolve_model_path(args.model_name_or_path)


def start_policy(args: PipelineArguments, state: dict | None = None) -> Path | str:
    """The policy the stages after SFT start from: the SFT policy, or the base model when the gate rejected SFT."""
    record = ((state or {}).get("gate") or {}).get("sft")
    if record is not None and not record["accepted"]:
        return record["input"]
    return args.sft_path


def final_policy(args: PipelineArguments, state: dict | None = None) -> str:
    """The pipeline's result: the last policy stage's output, or with the gate, the last accepted policy."""
    gates = (state or {}).get("gate") or {}
    if not args.gate:
        return str(args.run_dir / args.method)
    current = str(args.sft_path) if args.sft_model_path else base_model(args)
    for name in args.policy_stages:
        record = gates.get(name)
        if record is not None and record["accepted"]:
            current = record["output"]
    return current


def stage_plan(args: PipelineArguments, state: dict | None = None) -> list[tuple[str, list[str]]]:
    """The stages of the run as ``(name, command)``: what `run_pipeline` executes, in order.

    SFT (unless ``sft_model_path``), the reward model (only for an RL reward that uses it, unless
    ``reward_model_path``), then the method's stage, named after the method. The preference and RL stages hold out
    ``eval_pairs`` pairs and ``eval_prompts`` prompts (same ``split_seed``), exactly the examples the final
    evaluation uses. They start from the SFT policy, or (``state`` records the gate rejecting SFT) the base model.
    """
    run = args.run_dir
    method = METHODS[args.method]
    start = [] if args.model_name_or_path is None else ["--model_name_or_path", args.model_name_or_path]
    py = [sys.executable]

    def cmd(script, config, dataset, out, extra, *more):
        return py + [str(REPO_ROOT / "scripts" / script), "--config", config, "--dataset_name", dataset,
                     "--output_dir", str(run / out), "--split_seed", str(args.split_seed), *more,
                     *tracking_flags(args, script, out), *shlex.split(extra)]

    plan = []
    if not args.sft_model_path:
        plan.append(("sft", cmd("train_sft.py", args.sft_config, args.sft_dataset, "sft", args.sft_args, *start)))
    sft_path = ["--model_name_or_path", str(start_policy(args, state))]
    if args.uses_reward_model and not args.reward_model_path:
        plan.append(("reward", cmd("train_reward.py", args.reward_config, args.preference_dataset, "reward",
                                   args.reward_args, *sft_path, "--eval_size", str(args.eval_pairs))))
    config = args.method_config or method.config
    if method.data == "sft":  # SPIN: the SFT demonstrations are its data
        plan.append((args.method, cmd(method.script, config, args.sft_dataset, args.method, args.method_args,
                                      *sft_path, *method.flags, "--eval_size", str(args.eval_prompts))))
        return plan
    if method.data == "preference":
        plan.append((args.method, cmd(method.script, config, args.preference_dataset, args.method, args.method_args,
                                      *sft_path, *method.flags, "--eval_size", str(args.eval_pairs))))
        return plan
    spec = args.reward_spec
    more = list(method.flags)
    if args.reward_path is not None:
        spec = _resolve_reward_model(spec, args.reward_path)
        if method.script == "train_ppo.py":  # PPO's value model starts from the reward model
            more += ["--reward_model_path", str(args.reward_path)]
    plan.append((args.method, cmd(method.script, config, args.rl_dataset, args.method, args.method_args, *sft_path,
                                  *more, "--reward", spec, "--eval_size", str(args.eval_prompts))))
    return plan


def tracking_flags(args: PipelineArguments, script: str, stage: str) -> list[str]:
    """``--report_to`` (and for trackio the project and run names) of one stage; before the stage's extra flags,
    so that those win. The round-based methods pass them to every round's stage through ``--stage_args``."""
    if not args.report_to or args.report_to == "none":
        return []
    flags = ["--report_to", args.report_to]
    if "trackio" in args.report_to:
        flags += ["--project", f"open-rlhf-{args.run_name}", "--run_name", stage]
    if script == "train_iterative.py":
        return ["--stage_args", shlex.join(flags)]
    return flags


def check_disk(args: PipelineArguments, state: dict | None = None) -> None:
    """Before any stage trains: free disk at ``<run_dir>`` against the stages still to run (`open_rlhf.disk`).

    Each unfinished stage counts its final model and the checkpoints its preset keeps (``save_total_limit``), the
    largest one extra checkpoint (rotation writes the new one before it deletes the old), plus a margin once.
    Skipped when the starting model is not a local folder (a hub id: its size is unknown here).

    Raises:
        DiskSpaceError: naming the folder, the free and the needed GB, and ``--skip_disk_check``.
    """
    import yaml

    from open_rlhf import disk

    if args.skip_disk_check:
        return
    params = disk.count_parameters(base_model(args))
    if params is None:
        return
    stages = []
    for name, command in stage_plan(args, state):
        if outputs.is_complete(args.run_dir / name):
            continue
        config_path = Path(command[command.index("--config") + 1])
        config_path = config_path if config_path.is_absolute() or config_path.is_file() else REPO_ROOT / config_path
        preset = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
        value_model = Path(command[1]).name == "train_ppo.py" and preset.get("advantage_estimator", "gae") == "gae"
        kept = disk.checkpoints_on_disk(preset.get("save_strategy", "steps"), preset.get("save_total_limit"),
                                        preset.get("save_steps", 500), preset.get("max_steps", -1))
        stages.append((2 if value_model else 1, kept))
    if stages:
        disk.check_free_disk(args.run_dir, disk.estimate_pipeline_bytes(params, stages),
                             f"the pipeline's {len(stages)} remaining stage(s)", override="pass --skip_disk_check")


def _run_stage(name: str, command: list[str], out_dir: Path) -> float:
    """Run one stage script; relay its output live to the terminal and line by line to ``<run>/<name>.log``.

    The child runs unbuffered, and its bytes (progress-bar redraws included) reach the terminal as they come
    (`open_rlhf.progress.relay_output`); the log (UTF-8, appended to on a re-run) gets the command, then each
    finished line, flushed, as it last looked on screen.

    Args:
        name (`str`): the stage's name (in messages and the log's file name).
        command (`list[str]`): the stage's command line (from `stage_plan`), run in the repository root.
        out_dir (`Path`): the stage's output folder; the log goes beside it.

    Returns:
        `float`: the stage's wall time in seconds.

    Raises:
        StageFailedError: when the stage exits non-zero; its one-line message has the stage's own ``error:``
            line (or, after a crash, its last output line) and the log's path.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = out_dir.parent / f"{name}.log"
    print(f"\n=== stage {name}: {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
        try:
            tail = relay_output(proc.stdout, stdout_buffer(), log)
        finally:
            proc.stdout.close()
            proc.wait()
    if proc.returncode != 0:
        errors = [line for line in tail if line.startswith("error: ")]
        cause = errors[-1][len("error: "):] if errors else (tail[-1] if tail else "no output")
        if proc.returncode == EXIT_USER_ERROR:
            kind = "failed"
        elif proc.returncode < 0:
            kind = f"was killed (signal {-proc.returncode})"
        else:
            kind = f"crashed (exit {proc.returncode})"
        raise StageFailedError(f"stage {name!r} {kind}: {cause} (full output: {log_path}; fix the cause and re-run: "
                               "finished stages are skipped, this one resumes)", proc.returncode)
    return time.perf_counter() - start


def train_stages(args: PipelineArguments, only: set[str] | None = None) -> dict:
    """Run the training stages of `stage_plan` that have not finished (all, or those named in ``only``).

    Each stage's command and wall time go to ``<run_dir>/pipeline_state.json``.

    Returns:
        dict: the pipeline state (``stages``: per stage ``command`` and ``wall_seconds``).

    Raises:
        StageFailedError: when a stage fails (its error line and log path are in the message).
    """
    run = args.run_dir
    run.mkdir(parents=True, exist_ok=True)
    state_path = run / "pipeline_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"stages": {}}
    state["args"] = asdict(args)
    state.setdefault("gate", {})
    for name in [n for n, _ in stage_plan(args, state)]:
        if only is not None and name not in only:
            continue
        command = dict(stage_plan(args, state))[name]  # after the gate on SFT: it may start from the base model
        out_dir = run / name
        if outputs.is_complete(out_dir):
            print(f"=== stage {name}: already finished in {out_dir}, skipped", flush=True)
            stale = stale_stage_reason(state["stages"].get(name, {}), command)
            if stale:
                print(f"=== WARNING stage {name}: {stale} since it ran; the finished stage is reused as it is. "
                      f"Fix: to retrain with the current settings, move {out_dir} away or pass a new --run_name.",
                      flush=True)
        else:
            started_with = stage_fingerprint(command)
            seconds = _run_stage(name, command, out_dir)
            state["stages"][name] = {"command": shlex.join(command), "wall_seconds": seconds, **started_with}
            atomic_write_text(state_path, json.dumps(state, indent=1))
        if args.gate and name in args.policy_stages and name not in state["gate"]:
            start = time.perf_counter()
            state["gate"][name] = _gate_stage(args, state, name, command)
            state["gate"][name]["wall_seconds"] = time.perf_counter() - start
            atomic_write_text(state_path, json.dumps(state, indent=1))
        if name in state["gate"]:
            from open_rlhf.gate import describe

            print(f"=== {describe(state['gate'][name])}", flush=True)
    state["final_policy"] = final_policy(args, state)
    atomic_write_text(state_path, json.dumps(state, indent=1))
    return state


def stage_fingerprint(command: list[str]) -> dict:
    """What a finished stage was trained with, beyond its command line: the SHA-256 of its ``--config`` file's
    content (``config_sha256``; a preset edited in place keeps its path)."""
    if "--config" not in command:
        return {}
    config = Path(command[command.index("--config") + 1])
    path = config if config.is_absolute() else REPO_ROOT / config
    return {"config_sha256": hashlib.sha256(path.read_bytes()).hexdigest()} if path.is_file() else {}


def stale_stage_reason(entry: dict, command: list[str]) -> str | None:
    """Why a finished stage (its ``pipeline_state.json`` entry) no longer matches the stage ``command`` would run
    now: its flags or its config file's content changed; None when they match or the entry predates the record."""
    reasons = []
    # [0] and [1], the interpreter and the script, are absolute paths that move with the checkout
    if entry.get("command") and shlex.split(entry["command"])[2:] != command[2:]:
        reasons.append("its command line changed")
    recorded, now = entry.get("config_sha256"), stage_fingerprint(command).get("config_sha256")
    if recorded and now and recorded != now:
        reasons.append(f"its preset {command[command.index('--config') + 1]} changed")
    return " and ".join(reasons) or None


def _gate_stage(args: PipelineArguments, state: dict, name: str, command: list[str]) -> dict:
    """Run the capability gate (`open_rlhf.gate.run_gate`) on the finished policy stage ``name``."""
    from open_rlhf import gate

    input_path = command[command.index("--model_name_or_path") + 1] if "--model_name_or_path" in command \
        else base_model(args)
    prompts, answers = args.held_out_prompts()
    prompts, answers = prompts[:args.gate_prompts], (answers[:args.gate_prompts] if answers else None)
    earlier = [r for r in state["gate"].values() if r["output"] == str(input_path)]
    print(f"=== gate: stage {name} ({input_path} -> {args.run_dir / name}) on {len(prompts)} held-out prompts"
          + (f" and lm-eval {args.gate_tasks} (limit {args.gate_task_limit})" if args.gate_task_list else ""),
          flush=True)
    thresholds = gate.CapabilityThresholds(args.gate_max_accuracy_drop, args.gate_max_eos_rate_drop, args.gate_max_kl,
                                           args.gate_max_benchmark_drop)
    return gate.run_gate(name, str(input_path), args.run_dir / name, prompts, answers, thresholds,
                         max_new_tokens=args.eval_max_new_tokens, batch_size=args.eval_batch_size,
                         tasks=args.gate_task_list, data_dir=args.data_dir, task_limit=args.gate_task_limit,
                         input_metrics=earlier[-1]["after"] if earlier else None, check_kl=name != "sft")


def run_pipeline(args: PipelineArguments) -> Path:
    """Run (or continue) the whole pipeline and write ``<run_dir>/report.md`` with its plots.

    Returns:
        `Path` of the report (with ``evaluate=False``: of the final policy, the last one the gate accepted;
        nothing is evaluated).

    Raises:
        StageFailedError: when a stage fails (its error line and log path are in the message).
    """
    run = args.run_dir
    state_path = run / "pipeline_state.json"
    pipeline_start = time.perf_counter()
    check_gate_tasks(args)
    if args.skip_disk_check:
        from open_rlhf.disk import SKIP_ENV

        os.environ[SKIP_ENV] = "1"  # the stages inherit it
    else:
        check_disk(args, json.loads(state_path.read_text()) if state_path.is_file() else None)
    if args.report_to and "trackio" in args.report_to:
        os.environ.setdefault("TRACKIO_DIR", str((run / "trackio").absolute()))  # local, inside the run
    state = train_stages(args)
    if not args.evaluate:
        state["last_session_seconds"] = time.perf_counter() - pipeline_start
        atomic_write_text(state_path, json.dumps(state, indent=1))
        return Path(state["final_policy"])
    from open_rlhf.report import evaluate_run, write_report

    eval_path = run / "eval" / "results.json"
    if eval_path.is_file():
        print(f"=== evaluation: already done in {eval_path}, skipped", flush=True)
    else:
        start = time.perf_counter()
        results = evaluate_run(args)
        results["wall_seconds"] = time.perf_counter() - start
        atomic_write_text(eval_path, json.dumps(results, indent=1))
    state["last_session_seconds"] = time.perf_counter() - pipeline_start
    atomic_write_text(state_path, json.dumps(state, indent=1))
    report = write_report(args, [name for name, _ in stage_plan(args)])
    print(f"\nReport: {report}", flush=True)
    return report


def check_gate_tasks(args: PipelineArguments) -> None:
    """Check the gate's lm-eval tasks and their data before any stage trains (a typo fails in seconds).

    Raises:
        ConfigError, DataNotFoundError: for an unknown task or a missing data file (`open_rlhf.harness`).
    """
    if not (args.gate and args.gate_task_list):
        return
    from open_rlhf import harness

    harness.set_offline()
    harness.resolve_tasks(args.gate_task_list, harness.task_manager(None, args.data_dir), args.data_dir)


def make_parser():
    """The `trl.TrlParser` of ``scripts/run_pipeline.py`` (YAML: ``config/pipeline/*.yaml``)."""
    from trl import TrlParser

    return TrlParser((PipelineArguments,))


def pipeline_main(argv: list[str] | None = None) -> None:
    """``scripts/run_pipeline.py`` / ``open-rlhf pipeline``: parse ``argv`` (default ``sys.argv[1:]``) and run.

    A user error (a bad flag value or ``--config``, or a stage that failed on one) prints ``error: <message>``
    and exits with status 2; a stage that crashed exits with status 1 (`open_rlhf.errors.user_errors`).
    """
    with user_errors():
        (args,) = parse_config(make_parser(), argv)
        run_pipeline(args)
