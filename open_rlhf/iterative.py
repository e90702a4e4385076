"""Round-based self-improvement: SPIN, iterative DPO with a judge, rejection-sampling fine-tuning (RFT) and Step-DPO.

Every method is the same loop over ``--rounds``; round r starts from the last accepted policy and:

1. **data**: builds its training data from that policy (or, for Step-DPO, from the task) into
   ``<output_dir>/round<r>/data.jsonl``, with what it did in ``data_stats.json``;
2. **train**: runs a TRL stage on it (``train_dpo.py`` or ``train_sft.py`` with ``--stage_config``, starting from
   that policy, which is also the DPO reference: SPIN's "reference = the previous round's policy") into
   ``round<r>/policy``;
3. **gate**: with ``--gate``, the pipeline's capability gate (`open_rlhf.gate.run_gate`) compares the round's policy
   with its start on held-out prompts; a round that regresses is rolled back (its folder stays on disk) and the loop
   stops (``--on_regression stop``) or goes on from the last accepted policy (``continue``).

With ``--curve_every K`` (any K > 0), the starting policy and every round's policy get a point of a learning curve
(held-out accuracy, reward and KL to the start at the optimizer steps trained so far: `round_curve`), plotted with the
other methods' curves by the comparison and the sweep.

Each step is skipped when its output exists, so a stopped run resumes at the step it stopped in; the rounds'
record is ``<output_dir>/iterative_state.json``. At the end the last accepted policy is published into
``<output_dir>`` itself, behind the usual completion marker (`open_rlhf.outputs.save_final`), so the pipeline and the
comparison read it like any stage's output.

| method | data of a round | trained by | source |
|---|---|---|---|
| ``spin`` | chosen = the SFT demonstration, rejected = the policy's own sampled answer (`selfplay.spin_pairs`) | DPO | Chen et al. 2024, SPIN, Alg. 1 |
| ``iterative_dpo`` | K samples per prompt judged by ``--judge``, best vs worst (`onpolicy.sample_preference_pairs`) | DPO | Xiong et al. 2024, Alg. 1; Yuan et al. 2024 |
| ``rft`` | K samples per prompt; those the judge scores >= ``--rft_min_score``, each distinct one kept | SFT | Zelikman et al. 2022 (STaR); Gulcehre et al. 2023 (ReST) |
| ``step_dpo`` | the task's one-slip pairs cut at the slip (`selfplay.step_dpo_pairs`) | DPO | Lai et al. 2024, Step-DPO |

Each round reads the next ``--prompts_per_round`` examples of the training split (wrapping around), never the
``--eval_size`` held-out ones, which the gate uses.

    python scripts/train_iterative.py --config config/iterative/spin.yaml --model_name_or_path runs/default/sft
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from open_rlhf.atomic import atomic_write_text
from open_rlhf.config import CurveArguments
from open_rlhf.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
# method -> (the data kind its rounds read, the stage that trains on a round's data, its default preset)
ROUND_METHODS = {
    "spin": ("sft", "dpo", "config/dpo/plain.yaml"),
    "iterative_dpo": ("prompt", "dpo", "config/dpo/plain.yaml"),
    "rft": ("prompt", "sft", "config/sft/default.yaml"),
    "step_dpo": ("preference", "dpo", "config/dpo/plain.yaml"),
}
STATE_FILE = "iterative_state.json"


@dataclass
class IterativeArguments(CurveArguments):
    """Options of ``scripts/train_iterative.py`` (YAML: ``config/iterative/*.yaml``); ``--curve_*``: a learning curve
    of the rounds (`round_curve`)."""

    method: str = field(default="spin", metadata={"help": f"One of {', '.join(ROUND_METHODS)}."})
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "The starting policy (usually the SFT output). Default: the embedded SmolLM2-135M-Instruct."})
    dataset_name: str = field(default="builtin", metadata={
        "help": "SFT data (spin), prompts with gold answers (iterative_dpo, rft) or one-slip pairs (step_dpo)."})
    output_dir: str = field(default="runs/iterative", metadata={"help": "Rounds go to <output_dir>/round<r>/."})
    rounds: int = field(default=2, metadata={"help": "Rounds of data + training."})
    prompts_per_round: int = field(default=64, metadata={"help": "Training examples each round reads."})
    samples_per_prompt: int = field(default=4, metadata={"help": "K: samples per prompt (iterative_dpo, rft)."})
    judge: str = field(default="math", metadata={
        "help": "Reward spec (open_rlhf.rewards) that scores samples (iterative_dpo, rft), e.g. 'math' or "
                "'model:runs/default/reward'."})
    reward: str | None = field(default=None, metadata={"help": "Alias of --judge (the pipeline passes --reward)."})
    rft_min_score: float = field(default=1.0, metadata={
        "help": "rft: the judge score a sample needs to be kept; spin with --spin_drop_verified: the score at which "
                "the policy's answer counts as right."})
    spin_drop_verified: bool = field(default=False, metadata={
        "help": "spin: score the policy's answers with --judge and make no pair where it is right (score >= "
                "--rft_min_score): the demonstration is not better there. Not in the SPIN paper."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the policy's answers."})
    max_new_tokens: int = field(default=96, metadata={"help": "Length of the sampled answers."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per generation batch."})
    stage_config: str | None = field(default=None, metadata={
        "help": "Preset of the stage a round trains (default: config/dpo/plain.yaml, config/sft/default.yaml "
                "for rft)."})
    stage_args: str = field(default="", metadata={"help": "Extra flags of every round's stage (e.g. --max_steps 10)."})
    eval_size: int = field(default=64, metadata={"help": "Held-out examples: never trained on; the gate's prompts."})
    split_seed: int = field(default=42, metadata={"help": "Seed of the train/held-out split."})
    seed: int = field(default=42, metadata={"help": "Seed of sampling and of the rounds' stages (seed + round)."})
    gate: bool = field(default=True, metadata={"help": "Gate every round (open_rlhf.gate) and roll back regressions."})
    gate_prompts: int = field(default=32, metadata={"help": "Held-out prompts of the gate."})
    gate_max_accuracy_drop: float = field(default=0.10, metadata={"help": "Largest accuracy drop a round may make."})
    gate_max_kl: float = field(default=10.0, metadata={"help": "Largest KL(round || start), nats per sequence."})
    on_regression: str = field(default="stop", metadata={
        "help": "'stop': a rejected round ends the loop; 'continue': the next round starts from the last accepted."})

    def __post_init__(self):
        if self.method not in ROUND_METHODS:
            raise ConfigError(f"--method must be one of {', '.join(ROUND_METHODS)}, got {self.method!r}.")
        for name in ("rounds", "prompts_per_round", "max_new_tokens", "batch_size", "gate_prompts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        if self.method in ("iterative_dpo", "rft") and self.samples_per_prompt < (2 if self.method == "iterative_dpo"
                                                                                  else 1):
            raise ConfigError(f"--samples_per_prompt must be >= 2 for iterative_dpo (a pair) and >= 1 for rft, got "
                              f"{self.samples_per_prompt}.")
        if self.on_regression not in ("stop", "continue"):
            raise ConfigError(f"--on_regression must be 'stop' or 'continue', got {self.on_regression!r}.")
        if self.reward:
            self.judge = self.reward
        if self.curve_every < 0 or self.curve_prompts < 1:
            raise ConfigError(f"--curve_every must be >= 0 and --curve_prompts >= 1, got {self.curve_every} and "
                              f"{self.curve_prompts}.")

    @property
    def data_kind(self) -> str:
        return ROUND_METHODS[self.method][0]

    @property
    def stage(self) -> str:
        return ROUND_METHODS[self.method][1]


def round_slice(rows, round_index: int, size: int) -> list[int]:
    """Indices of the ``size`` training examples of round ``round_index`` (1-based): the next block of the split,
    wrapping around when the rounds need more than it holds."""
    n = len(rows)
    if n == 0:
        raise ConfigError("The training split is empty; give a dataset with more examples than --eval_size.")
    start = (round_index - 1) * size
    return [(start + i) % n for i in range(min(size, n))]


def build_round_data(args: IterativeArguments, policy_path: str, rows) -> tuple[list[dict], dict]:
    """One round's training rows (the stage's JSONL format) and their statistics, from the policy in
    ``policy_path`` (not loaded for ``step_dpo``)."""
    from open_rlhf import models, selfplay

    tokenizer = models.load_tokenizer(policy_path, padding_side="left")
    if args.method == "step_dpo":
        out = selfplay.step_dpo_pairs(rows, tokenizer)
        return out, {"pairs": len(out), "examples": len(rows)}

    import torch

    policy = models.load_causal_lm(policy_path)
    torch.manual_seed(args.seed)
    prompts = list(rows["prompt"])
    if args.method == "spin":
        from open_rlhf.evaluation import generate
        from open_rlhf.rewards import completion_text

        answers, _, _ = generate(policy, tokenizer, prompts, args.max_new_tokens, args.batch_size, do_sample=True,
                                 temperature=args.temperature, desc="spin: sample")
        demonstrations = [completion_text(c) for c in rows["completion"]]
        verified = None
        if args.spin_drop_verified:
            from open_rlhf.inference.sampling import as_messages
            from open_rlhf.rewards import build_reward_functions, check_columns

            judge = build_reward_functions(args.judge)
            check_columns(judge, rows.column_names, args.dataset_name)
            columns = {c: list(rows[c]) for c in rows.column_names if c not in ("prompt", "completion")}
            scores = judge([as_messages(p) for p in prompts], answers, **columns)
            verified = [float(s) >= args.rft_min_score for s in scores]
        out, identical = selfplay.spin_pairs(prompts, demonstrations, answers, verified)
        return out, {"pairs": len(out), "identical_to_demonstration": identical, "examples": len(rows),
                     "verified_dropped": len(rows) - len(out) - identical}

    from open_rlhf.rewards import build_reward_functions, check_columns

    judge = build_reward_functions(args.judge)
    check_columns(judge, rows.column_names, args.dataset_name)
    columns = {c: list(rows[c]) for c in rows.column_names if c != "prompt"}
    if args.method == "iterative_dpo":
        from open_rlhf.onpolicy import sample_preference_pairs

        out, stats = sample_preference_pairs(policy, tokenizer, prompts, judge, k=args.samples_per_prompt,
                                             columns=columns, max_new_tokens=args.max_new_tokens,
                                             temperature=args.temperature, batch_size=args.batch_size)
        return out, asdict(stats)
    from open_rlhf.inference.strategies import best_of_n

    results = best_of_n(policy, tokenizer, prompts, judge, n=args.samples_per_prompt,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        batch_size=args.batch_size, columns=columns)
    out = []
    for prompt, result in zip(prompts, results, strict=True):
        kept = dict.fromkeys(c for c, s in zip(result.candidates, result.scores, strict=True)
                             if s >= args.rft_min_score)  # distinct, in sampling order
        out += [{"prompt": prompt, "completion": [{"role": "assistant", "content": c}]} for c in kept]
    all_scores = [s for r in results for s in r.scores]
    return out, {"examples": len(out), "prompts": len(prompts),
                 "prompts_with_an_accepted_sample": sum(any(s >= args.rft_min_score for s in r.scores)
                                                        for r in results),
                 "mean_score": sum(all_scores) / max(1, len(all_scores))}


def round_command(args: IterativeArguments, round_index: int, start: str, data_file: Path, out: Path) -> list[str]:
    """The stage command of one round: the method's stage on the round's data, from ``start``."""
    script = {"dpo": "train_dpo.py", "sft": "train_sft.py"}[args.stage]
    config = args.stage_config or ROUND_METHODS[args.method][2]
    return [sys.executable, str(REPO_ROOT / "scripts" / script), "--config", config, "--dataset_name", str(data_file),
            "--output_dir", str(out), "--model_name_or_path", start, "--eval_size", "0",
            "--seed", str(args.seed + round_index), *shlex.split(args.stage_args)]


def round_curve(args: IterativeArguments, start: str, held_out):
    """The learning curve of the rounds (``--curve_every`` > 0): `open_rlhf.curves.LearningCurveCallback`'s
    points, written to ``<output_dir>/learning_curve.jsonl`` / ``.png``, of the starting policy (step 0) and of every
    round's policy (rolled-back ones too), at the optimizer steps trained so far; KL is to the starting policy.
    The prompts are the rounds' own held-out split for prompt data (iterative_dpo, rft), else ``--curve_dataset``'s
    (default builtin) held-out prompts with the same ``--split_seed``: never a training prompt.

    Returns:
        ``evaluate(policy_path, step)``, which adds the point of that step unless the curve file has it already (a
        resumed run does not measure it again).
    """
    from open_rlhf import curves, models, rewards

    source = args.curve_dataset or (args.dataset_name if args.data_kind == "prompt" else "builtin")
    own = held_out if args.data_kind == "prompt" and source == args.dataset_name else None
    prompts, answers = curves.curve_prompts(source, own, args.curve_prompts, args.split_seed)
    scorer = rewards.RewardModelScorer.from_pretrained(args.curve_reward_model) if args.curve_reward_model else None
    callback = curves.LearningCurveCallback(models.load_tokenizer(start), prompts, answers, args.output_dir,
                                            max(1, args.curve_every), reward_scorer=scorer,
                                            reference=models.load_causal_lm(start), kl_prompts=args.curve_kl_prompts,
                                            max_new_tokens=args.curve_max_new_tokens, batch_size=args.batch_size)
    steps_done = {p["step"] for p in curves.read_curve(callback.path)} if callback.path.is_file() else set()

    def evaluate(policy: str, step: int) -> None:
        if step not in steps_done:
            callback.evaluate(models.load_causal_lm(policy), step)
            steps_done.add(step)

    return evaluate


def _trained_steps(policy_dir: Path) -> int:
    """The optimizer steps of a finished round's stage (its ``trainer_state.json``)."""
    state = policy_dir / "trainer_state.json"
    return int(json.loads(state.read_text()).get("global_step", 0)) if state.is_file() else 0


def run_rounds(args: IterativeArguments) -> dict:
    """Run (or resume) every round and publish the last accepted policy into ``args.output_dir``.

    Returns:
        dict: the state written to ``<output_dir>/iterative_state.json`` (``rounds``: per round its data
        statistics, policy folder, gate verdict and whether it was accepted; ``policy``: the final policy).

    Raises:
        OutputDirError: ``output_dir`` already holds a finished run.
        StageFailedError: a round's stage failed (fix the cause and re-run: finished steps are reused).
    """
    from open_rlhf import data, gate, models, outputs
    from open_rlhf.pipeline import _run_stage

    out = Path(args.output_dir)
    outputs.prepare_output_dir(out)  # refuses a finished run
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"rounds": {}}
    state["args"] = asdict(args)
    start = args.model_name_or_path or str(models.ensure_default_model())
    state.setdefault("start", start)
    train, held_out = data.load_splits(args.dataset_name, args.data_kind, eval_size=args.eval_size,
                                       seed=args.split_seed)
    gate_rows = held_out.select(range(min(args.gate_prompts, len(held_out)))) if held_out is not None else None
    current, input_metrics = start, None
    curve = round_curve(args, start, held_out) if args.curve_every else None
    if curve:
        curve(start, 0)
    steps = 0
    for r in range(1, args.rounds + 1):
        folder, key = out / f"round{r}", str(r)
        record = state["rounds"].get(key, {})
        if record.get("accepted") is not None:  # finished earlier: replay its verdict
            steps += _trained_steps(Path(record["policy"]))
            if curve:
                curve(record["policy"], steps)
            print(f"=== round {r}: already done ({'accepted' if record['accepted'] else 'rolled back'}), skipped",
                  flush=True)
            if record["accepted"]:
                current = record["policy"]
            elif args.on_regression == "stop":
                break
            continue
        data_file = folder / "data.jsonl"
        if not data_file.is_file():
            rows = train.select(round_slice(train, r, args.prompts_per_round))
            print(f"=== round {r}: {args.method} data from {current} ({len(rows)} examples)", flush=True)
            built, stats = build_round_data(args, current, rows)
            if not built:
                raise ConfigError(f"round {r}: {args.method} made no training example ({stats}): no sample passed "
                                  "--rft_min_score, or every prompt's samples were judged alike (no pair). Fix: more "
                                  "--samples_per_prompt or --prompts_per_round, a higher --temperature, or another "
                                  "--judge / --rft_min_score.")
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / "data_stats.json", json.dumps(stats, indent=1))
            atomic_write_text(data_file, "".join(json.dumps(row) + "\n" for row in built))
        record["data"] = json.loads((folder / "data_stats.json").read_text())
        policy_dir = folder / "policy"
        if not outputs.is_complete(policy_dir):
            _run_stage(f"round{r}", round_command(args, r, current, data_file, policy_dir), policy_dir)
        record.update(start=current, policy=str(policy_dir))
        steps += _trained_steps(policy_dir)
        if curve:
            curve(str(policy_dir), steps)
        if args.gate and gate_rows is not None:
            answers = list(gate_rows["answer"]) if "answer" in gate_rows.column_names else None
            thresholds = gate.CapabilityThresholds(args.gate_max_accuracy_drop, 0.20, args.gate_max_kl, None)
            verdict = gate.run_gate(f"round{r}", current, policy_dir, list(gate_rows["prompt"]), answers,
                                    thresholds, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                    tasks=[], data_dir=None, task_limit=0, input_metrics=input_metrics)
            print(f"=== round {r}: {gate.describe(verdict)}", flush=True)
            record.update(accepted=verdict["accepted"], gate={"checks": verdict["checks"]},
                          accuracy_before=verdict["before"].get("accuracy"),
                          accuracy_after=verdict["after"].get("accuracy"))
            if verdict["accepted"]:
                input_metrics = verdict["after"]
        else:
            record["accepted"] = True
        state["rounds"][key] = record
        atomic_write_text(state_path, json.dumps(state, indent=1, default=str))
        if record["accepted"]:
            current = str(policy_dir)
        elif args.on_regression == "stop":
            print(f"=== round {r}: rolled back; stopping (--on_regression stop) with {current}", flush=True)
            break
    state["policy"] = current
    atomic_write_text(state_path, json.dumps(state, indent=1, default=str))
    _publish(current, out, {"method": args.method, "rounds": len(state["rounds"]),
                            "accepted_rounds": sum(bool(r.get("accepted")) for r in state["rounds"].values()),
                            "policy": current, "global_step": len(state["rounds"])})
    return state


def _publish(policy: str, out: Path, info: dict) -> None:
    """Copy the final policy's model files (not its checkpoints) into ``out``, atomically, marker last."""
    from open_rlhf import outputs

    def copy(tmp: Path) -> None:
        for entry in Path(policy).iterdir():
            if entry.is_file() and entry.name != outputs.COMPLETE_MARKER:
                shutil.copy2(entry, tmp / entry.name)

    outputs.save_final(out, copy, info)


def iterative_main(argv: list[str] | None = None) -> None:
    """``scripts/train_iterative.py``: parse ``argv`` (YAML ``--config`` allowed) and run the rounds."""
    from trl import TrlParser

    from open_rlhf.errors import parse_config, user_errors

    with user_errors():
        (args,) = parse_config(TrlParser((IterativeArguments,)), argv)
        state = run_rounds(args)
    accepted = [r for r, rec in state["rounds"].items() if rec.get("accepted")]
    print(f"Rounds accepted: {accepted or 'none'}; final policy {state['policy']} -> {args.output_dir}")
