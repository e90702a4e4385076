"""The end-to-end pipeline: SFT -> reward model -> PPO (or SFT -> DPO), then held-out evaluation and a report.

Each stage runs its own script in a subprocess (the same command a user would type, recorded in the report),
writes ``runs/<run_name>/<stage>/`` and is skipped on a re-run once it has finished. The evaluation compares
the base model, the SFT policy and the final policy on the same held-out prompts.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from open_rlhf import stages

REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ppo", "dpo")


@dataclass
class PipelineArguments:
    """Options of `scripts/run_pipeline.py` (YAML: ``config/pipeline/*.yaml``)."""

    run_name: str = field(default="default", metadata={"help": "Outputs go to <runs_dir>/<run_name>/<stage>/."})
    runs_dir: str = field(default="runs", metadata={"help": "Folder of all pipeline runs."})
    method: str = field(default="ppo", metadata={"help": "ppo: SFT -> reward model -> PPO; dpo: SFT -> DPO."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Starting model (local path or hub id). Default: embedded SmolLM2-135M-Instruct."})
    # Data
    sft_dataset: str = field(default="builtin", metadata={"help": "SFT demonstrations (path, hub id or builtin)."})
    preference_dataset: str = field(default="builtin", metadata={"help": "Preference pairs for RM / DPO."})
    rl_dataset: str = field(default="builtin", metadata={"help": "PPO prompts (with gold answers for accuracy)."})
    eval_dataset: str | None = field(
        default=None, metadata={"help": "Held-out prompts with gold answers for the report. Default: rl_dataset."})
    # Stage configs and extra flags (appended last, so they win)
    sft_config: str = field(default="config/sft/default.yaml", metadata={"help": "YAML of the SFT stage."})
    reward_config: str = field(default="config/reward/default.yaml", metadata={"help": "YAML of the RM stage."})
    ppo_config: str = field(default="config/ppo/default.yaml", metadata={"help": "YAML of the PPO stage."})
    dpo_config: str = field(default="config/dpo/default.yaml", metadata={"help": "YAML of the DPO stage."})
    sft_args: str = field(default="", metadata={"help": "Extra CLI flags for train_sft.py, e.g. '--max_steps 2'."})
    reward_args: str = field(default="", metadata={"help": "Extra CLI flags for train_reward.py."})
    ppo_args: str = field(default="", metadata={"help": "Extra CLI flags for train_ppo.py."})
    dpo_args: str = field(default="", metadata={"help": "Extra CLI flags for train_dpo.py."})
    # Evaluation
    eval_prompts: int = field(default=64, metadata={"help": "Held-out prompts for accuracy / reward / KL."})
    eval_pairs: int = field(default=64, metadata={"help": "Held-out preference pairs for reward-model accuracy."})
    eval_max_new_tokens: int = field(default=96, metadata={"help": "Generation length of the evaluation."})
    eval_batch_size: int = field(default=16, metadata={"help": "Prompts per generation batch."})
    eval_base_model: bool = field(default=True, metadata={"help": "Also evaluate the starting model."})
    report_samples: int = field(default=4, metadata={"help": "Sample generations shown side by side."})
    split_seed: int = field(default=42, metadata={"help": "Seed of every train/eval split (the same in all stages)."})

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {METHODS}, got {self.method!r}.")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run_name


def stage_plan(args: PipelineArguments) -> list[tuple[str, list[str]]]:
    """The stages of the run as ``(name, command)``: what `run_pipeline` executes, in order.

    The reward/DPO and PPO stages hold out ``eval_pairs`` pairs and ``eval_prompts`` prompts (same ``split_seed``),
    which are exactly the examples the final evaluation uses.
    """
    run = args.run_dir
    start = [] if args.model_name_or_path is None else ["--model_name_or_path", args.model_name_or_path]
    py = [sys.executable]

    def cmd(script, config, dataset, out, extra, *more):
        return py + [str(REPO_ROOT / "scripts" / script), "--config", config, "--dataset_name", dataset,
                     "--output_dir", str(run / out), "--split_seed", str(args.split_seed), *more, *shlex.split(extra)]

    sft = ("sft", cmd("train_sft.py", args.sft_config, args.sft_dataset, "sft", args.sft_args, *start))
    sft_path = ["--model_name_or_path", str(run / "sft")]
    if args.method == "dpo":
        return [sft, ("dpo", cmd("train_dpo.py", args.dpo_config, args.preference_dataset, "dpo", args.dpo_args,
                                 *sft_path, "--eval_size", str(args.eval_pairs)))]
    return [
        sft,
        ("reward", cmd("train_reward.py", args.reward_config, args.preference_dataset, "reward", args.reward_args,
                       *sft_path, "--eval_size", str(args.eval_pairs))),
        ("ppo", cmd("train_ppo.py", args.ppo_config, args.rl_dataset, "ppo", args.ppo_args, *sft_path,
                    "--reward_model_path", str(run / "reward"), "--eval_size", str(args.eval_prompts))),
    ]


def _run_stage(name: str, command: list[str], out_dir: Path) -> float:
    """Run one stage script, streaming its output to the console and to ``<out_dir>.log``; returns seconds."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = out_dir.parent / f"{name}.log"
    print(f"\n=== stage {name}: {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(command)}\n")
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"Stage {name!r} failed (exit {proc.returncode}); its output is in {log_path}. "
                           "Fix the cause and re-run: finished stages are skipped, this one resumes.")
    return time.perf_counter() - start


def run_pipeline(args: PipelineArguments) -> Path:
    """Run (or continue) the whole pipeline and write ``<run_dir>/report.md`` with its plots.

    Returns:
        `Path` of the report.

    Raises:
        RuntimeError: when a stage fails (its log path is in the message).
    """
    run = args.run_dir
    run.mkdir(parents=True, exist_ok=True)
    state_path = run / "pipeline_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"stages": {}}
    state["args"] = asdict(args)
    pipeline_start = time.perf_counter()
    for name, command in stage_plan(args):
        out_dir = run / name
        if stages.is_complete(out_dir):
            print(f"=== stage {name}: already finished in {out_dir}, skipped", flush=True)
            continue
        seconds = _run_stage(name, command, out_dir)
        state["stages"][name] = {"command": shlex.join(command), "wall_seconds": seconds}
        stages.atomic_write_text(state_path, json.dumps(state, indent=1))

    from open_rlhf.report import evaluate_run, write_report

    eval_path = run / "eval" / "results.json"
    if eval_path.is_file():
        print(f"=== evaluation: already done in {eval_path}, skipped", flush=True)
    else:
        start = time.perf_counter()
        results = evaluate_run(args)
        results["wall_seconds"] = time.perf_counter() - start
        stages.atomic_write_text(eval_path, json.dumps(results, indent=1))
    state["last_session_seconds"] = time.perf_counter() - pipeline_start
    stages.atomic_write_text(state_path, json.dumps(state, indent=1))
    report = write_report(args)
    print(f"\nReport: {report}", flush=True)
    return report
