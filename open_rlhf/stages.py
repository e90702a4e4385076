"""The stages, as a table: one small `StageSpec` per stage and one runner, `run_stage`, for all of them.

TRL's own ``trl/scripts/*.py`` are the model: a stage is a spec (trainer, config class, data kind, padding side,
model loader, what goes into the trainer), not a copy of a script. ``scripts/train_<stage>.py`` and the
``open-rlhf <stage>`` command (`open_rlhf.cli`) both run `run_stage`. A new stage is one `StageSpec` entry in
`STAGES` plus its preset ``config/<stage>/default.yaml``.

What `run_stage` does, for every stage:

1. logging for this process (`open_rlhf.logs.setup_logging`) and one line on the precision and why;
2. the output folder: refuse a finished run, find the checkpoint to resume from (`open_rlhf.outputs`);
3. seed (before any model is built: a new reward or value head is randomly initialised);
4. model(s) and tokenizer; the fused RMSNorm when asked (``--use_fused_rmsnorm``);
5. the reward functions of an RL stage (``--reward``, `open_rlhf.rewards.build_reward_functions`);
6. data: the train/eval split of ``--dataset_name`` for the stage's data kind (`open_rlhf.data.load_splits`;
   with ``--streaming``, a stream and its first ``eval_size`` examples, `open_rlhf.data.load_streaming_splits`);
7. the trainer, with a progress bar that names the stage and shows the loss, and with ``--ewc_lambda`` the EWC
   penalty anchored at the input policy (`open_rlhf.trainers.ewc`); ``train`` (resuming);
8. the final model saved atomically behind the completion marker (`open_rlhf.outputs.save_final`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from open_rlhf import data, disk, models, outputs, rewards
from open_rlhf.config import (
    DPOConfig,
    GRPOConfig,
    KTOConfig,
    RewardConfig,
    RLOOConfig,
    ScriptArguments,
    SFTConfig,
)
from open_rlhf.logs import setup_logging
from open_rlhf.progress import use_stage_progress

logger = logging.getLogger(__name__)


def _trl(name: str) -> Callable[[], type]:
    def load():
        import trl

        return getattr(trl, name)

    return load


def _ppo_config() -> type:
    from open_rlhf.trainers.ppo import PPOConfig

    return PPOConfig


def _ppo_trainer() -> type:
    from open_rlhf.trainers.ppo import PPOTrainer

    return PPOTrainer


def _simpo_config() -> type:
    from open_rlhf.trainers.simpo import SimPOConfig

    return SimPOConfig


def _simpo_trainer() -> type:
    from open_rlhf.trainers.simpo import SimPOTrainer

    return SimPOTrainer


def _prm_config() -> type:
    from open_rlhf.trainers.prm import PRMConfig

    return PRMConfig


def _prm_trainer() -> type:
    from open_rlhf.trainers.prm import PRMTrainer

    return PRMTrainer


def _orpo_config() -> type:
    from open_rlhf.trainers.experimental import orpo_config_class

    return orpo_config_class()


def _orpo_trainer() -> type:
    from open_rlhf.trainers.experimental import orpo_classes

    return orpo_classes()[1]


@dataclass(frozen=True)
class StageSpec:
    """How one stage is trained.

    Attributes:
        name: the stage's name (``open-rlhf <name>``, ``scripts/train_<name>.py``).
        summary: one line for ``open-rlhf --help``.
        config: returns the config class (a `transformers.TrainingArguments`); a callable, so that a guarded
            ``trl.experimental`` import happens only when that stage runs.
        trainer: returns the trainer class.
        data_kind: the `open_rlhf.data.load_splits` kind: ``"sft"``, ``"preference"``, ``"unpaired"``,
            ``"prompt"``, ``"stepwise"``.
        model: ``"causal_lm"`` (policy), ``"scalar_head"`` (a reward model: a new one-output head),
            ``"step_classifier"`` (a PRM: a new two-label token head), or ``"ppo"`` (policy, reference and value
            model; our PPO trainer).
        padding_side: of the tokenizer (``"left"`` for stages that generate).
        trainer_kwargs: fixed extra keyword arguments of the trainer (``{"ref_model": None}``).
        eval_dataset: whether the held-out split goes to the trainer (the RL stages keep it for the pipeline's
            final evaluation only).
        reward: whether the stage takes a reward spec (``--reward``) and passes its terms to the trainer.
        lora_task_type: PEFT task type of ``--use_peft`` (``"SEQ_CLS"`` for a classifier: its head must train).
        evaluate_at_end: run the trainer's ``evaluate`` on the held-out split after training and keep its metrics
            in the run's completion record (the PRM's step accuracies).
    """

    name: str
    summary: str
    config: Callable[[], type]
    trainer: Callable[[], type]
    data_kind: str
    model: str = "causal_lm"
    padding_side: str = "right"
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_dataset: bool = True
    reward: bool = False
    lora_task_type: str | None = None
    evaluate_at_end: bool = False


def _spec(name, summary, config, trainer, data_kind, **kwargs) -> tuple[str, StageSpec]:
    return name, StageSpec(name, summary, config, trainer, data_kind, **kwargs)


STAGES: dict[str, StageSpec] = dict([
    _spec("sft", "supervised fine-tuning on demonstrations (TRL SFTTrainer)", lambda: SFTConfig, _trl("SFTTrainer"),
          "sft"),
    _spec("reward", "reward model on chosen/rejected pairs (TRL RewardTrainer)", lambda: RewardConfig,
          _trl("RewardTrainer"), "preference", model="scalar_head", lora_task_type="SEQ_CLS"),
    _spec("dpo", "DPO, IPO and other DPO losses via --loss_type (TRL DPOTrainer)", lambda: DPOConfig,
          _trl("DPOTrainer"), "preference", trainer_kwargs={"ref_model": None}),
    _spec("kto", "KTO from unpaired or paired preferences (TRL KTOTrainer)", lambda: KTOConfig,
          _trl("KTOTrainer"), "unpaired", trainer_kwargs={"ref_model": None}),
    _spec("orpo", "ORPO, no reference model (TRL trl.experimental.orpo, guarded)", _orpo_config, _orpo_trainer,
          "preference"),
    _spec("simpo", "SimPO, no reference model (ours, a DPOTrainer subclass)", _simpo_config, _simpo_trainer,
          "preference"),
    _spec("grpo", "GRPO with verifiable rewards or a reward model (TRL GRPOTrainer)", lambda: GRPOConfig,
          _trl("GRPOTrainer"), "prompt", padding_side="left", eval_dataset=False, reward=True),
    _spec("rloo", "RLOO with verifiable rewards or a reward model (TRL RLOOTrainer)", lambda: RLOOConfig,
          _trl("RLOOTrainer"), "prompt", padding_side="left", eval_dataset=False, reward=True),
    _spec("ppo", "PPO and REINFORCE++ (ours: TRL removed PPO in 1.13)", _ppo_config, _ppo_trainer, "prompt",
          model="ppo", padding_side="left", eval_dataset=False, reward=True),
    _spec("prm", "process reward model on step labels (ours: TRL removed its PRMTrainer)", _prm_config,
          _prm_trainer, "stepwise", model="step_classifier", lora_task_type="TOKEN_CLS", evaluate_at_end=True),
])


def make_parser(name: str):
    """The `trl.TrlParser` of a stage: ``(ScriptArguments, <stage config>, ModelConfig)``.

    Raises:
        KeyError: for an unknown stage name.
    """
    from trl import ModelConfig, TrlParser

    return TrlParser((ScriptArguments, STAGES[name].config(), ModelConfig))


def reward_spec_of(spec: StageSpec, training_args) -> str | None:
    """The reward spec string a stage trains with (None for offline stages).

    PPO without ``--reward``: ``model:<reward_model_path>`` when a reward model is given, else the built-in
    verifiable ``accuracy``.
    """
    if not spec.reward:
        return None
    if spec.model == "ppo" and not training_args.reward:
        return f"model:{training_args.reward_model_path}" if training_args.reward_model_path else "accuracy"
    return training_args.reward


def _load_models(spec: StageSpec, training_args, model_args) -> dict[str, Any]:
    """The stage's models and tokenizer; ``model_path`` is the resolved starting checkpoint."""
    if spec.model == "ppo":
        policy, ref_model, tokenizer, model_path = models.load_policy_and_reference(
            model_args, training_args.sft_model_path)
        value_model = None  # REINFORCE++ has none
        if training_args.advantage_estimator == "gae":
            value_model = models.load_value_model(training_args.value_model_path, training_args.reward_model_path,
                                                  model_path, tokenizer.pad_token_id)
        return {"model": policy, "ref_model": ref_model, "value_model": value_model, "tokenizer": tokenizer,
                "model_path": model_path}
    model_path = models.resolve_model_path(model_args.model_name_or_path)
    tokenizer = models.load_tokenizer(model_path, padding_side=spec.padding_side)
    if spec.model == "scalar_head":
        model = models.load_scalar_head_model(model_path, tokenizer.pad_token_id, model_args)
    elif spec.model == "step_classifier":
        model = models.load_step_classifier(model_path, tokenizer.pad_token_id, model_args)
    else:
        model = models.load_causal_lm(model_path, model_args)
    return {"model": model, "tokenizer": tokenizer, "model_path": model_path}


def _build_trainer(spec: StageSpec, loaded: dict, training_args, model_args, train_dataset, eval_dataset,
                   reward, ptx_dataset=None) -> Any:
    from trl import get_peft_config

    trainer_class = spec.trainer()
    ewc_lambda = getattr(training_args, "ewc_lambda", 0.0)  # SFT, DPO, SimPO, KTO (`open_rlhf.config.EWCArguments`)
    if ewc_lambda:
        from open_rlhf.trainers.ewc import anchor_ewc, ewc_trainer_class

        trainer_class = ewc_trainer_class(trainer_class)
    if spec.model == "ppo":
        return trainer_class(args=training_args, processing_class=loaded["tokenizer"], model=loaded["model"],
                             ref_model=loaded["ref_model"], reward_funcs=[reward],
                             value_model=loaded["value_model"], train_dataset=train_dataset,
                             ptx_dataset=ptx_dataset)
    kwargs = dict(spec.trainer_kwargs)
    if spec.eval_dataset:
        kwargs["eval_dataset"] = eval_dataset
    if reward is not None:
        kwargs["reward_funcs"] = reward.funcs
    if spec.lora_task_type:
        model_args.lora_task_type = spec.lora_task_type
    trainer = trainer_class(model=loaded["model"], args=training_args, train_dataset=train_dataset,
                            processing_class=loaded["tokenizer"], peft_config=get_peft_config(model_args), **kwargs)
    if reward is not None:
        reward.to(trainer.accelerator.device)  # a reward model scores where the policy runs (TRL leaves callables)
    if ewc_lambda:  # the input policy's Fisher, before `train` loads any checkpoint (so a resume recomputes it)
        anchor_ewc(trainer, spec.data_kind, ewc_lambda, training_args.ewc_fisher_batches)
    use_stage_progress(trainer, spec.name)
    return trainer


def seeded_order(training_args, train_dataset):
    """The training set in the order a trainer that samples sequentially will see it: shuffled once with
    ``data_seed`` (else ``seed``), as transformers' random sampler would, so that the seed decides the data order.

    TRL's `KTOTrainer` requires ``train_sampling_strategy="sequential"`` (it precomputes each example's KL
    completion by position), so without this shuffle every KTO seed trains on the same batches in file order
    (measured: seeds 0 and 1 logged identical losses). Worse, pairs are unpaired in blocks of 1,000 (TRL's
    `unpair_preference_dataset`), so in file order the first 1,000 examples are all desirable: the KTO preset's
    320 examples held no undesirable answer, and KTO was SFT on the chosen answers. `run_stage` applies it to the
    KTO stage only (a user's ``sequential`` choice for another stage is kept); any other strategy gets the dataset
    unchanged.

    Args:
        training_args: the stage's TRL config (``train_sampling_strategy``, ``seed``, ``data_seed``).
        train_dataset (`datasets.Dataset`): the training split (a streaming KTO stage shuffles within blocks
            instead: `data.load_streaming_splits`'s ``seed``).

    Returns:
        `datasets.Dataset`: ``train_dataset``, shuffled when the trainer samples sequentially.
    """
    if getattr(training_args, "train_sampling_strategy", "random") != "sequential":
        return train_dataset
    return train_dataset.shuffle(seed=data_seed(training_args)).flatten_indices()


def data_seed(training_args) -> int:
    """The seed of the data order: ``data_seed``, else ``seed`` (as transformers' `Trainer` seeds its sampler)."""
    return training_args.data_seed if training_args.data_seed is not None else training_args.seed


def _curve_callback(spec: StageSpec, script_args, training_args, loaded: dict, eval_dataset):
    """The `open_rlhf.curves.LearningCurveCallback` of ``--curve_every``: the held-out prompts are the stage's own
    eval split for an RL stage on its own data (never a training prompt), else the held-out prompts of
    ``--curve_dataset`` (default builtin) with the same ``split_seed``; the reference is the starting policy."""
    from open_rlhf.curves import LearningCurveCallback, curve_prompts
    from open_rlhf.errors import ConfigError

    if spec.model in ("scalar_head", "step_classifier"):
        raise ConfigError(f"--curve_every: the {spec.name} stage trains a scorer, not a policy; learning curves "
                          "are for policy stages. Fix: drop --curve_every.")
    if script_args.curve_every < 0 or script_args.curve_prompts < 1:
        raise ConfigError(f"--curve_every must be >= 0 and --curve_prompts >= 1, got {script_args.curve_every} and "
                          f"{script_args.curve_prompts}.")
    source = script_args.curve_dataset or (script_args.dataset_name if spec.data_kind == "prompt" else "builtin")
    own = eval_dataset if spec.data_kind == "prompt" and source == script_args.dataset_name else None
    prompts, answers = curve_prompts(source, own, script_args.curve_prompts, script_args.split_seed)
    reference = loaded.get("ref_model") or models.load_causal_lm(loaded["model_path"])
    scorer = None
    if script_args.curve_reward_model:
        scorer = rewards.RewardModelScorer.from_pretrained(script_args.curve_reward_model)
    return LearningCurveCallback(loaded["tokenizer"], prompts, answers, training_args.output_dir,
                                 script_args.curve_every, reward_scorer=scorer, reference=reference,
                                 kl_prompts=script_args.curve_kl_prompts,
                                 max_new_tokens=script_args.curve_max_new_tokens,
                                 batch_size=training_args.per_device_eval_batch_size)


def _monte_carlo_labels(training_args, model_path: str, train_dataset, eval_dataset):
    """Step labels for prompts with gold answers (the PRM stage on GSM8K): Math-Shepherd rollouts from the policy
    (`open_rlhf.inference.prm.monte_carlo_step_labels`), cached in ``<output_dir>/step_labels-<split>.jsonl``
    (written atomically, reused on resume)."""
    import json
    from pathlib import Path

    from datasets import Dataset

    from open_rlhf.atomic import atomic_write_text
    from open_rlhf.inference.prm import monte_carlo_step_labels

    policy = training_args.mc_policy or model_path
    loaded = None
    labelled = []
    for split, dataset in (("train", train_dataset), ("eval", eval_dataset)):
        if dataset is None:
            labelled.append(None)
            continue
        cache = Path(training_args.output_dir) / f"step_labels-{split}.jsonl"
        if cache.is_file():
            rows = [json.loads(line) for line in cache.read_text().splitlines() if line.strip()]
            logger.info("prm: %d Monte-Carlo labelled %s solutions read from %s", len(rows), split, cache)
        else:
            if loaded is None:
                loaded = models.load_inference_model(policy)
                if loaded[1].pad_token is None:
                    loaded[1].pad_token = loaded[1].eos_token
            rows, tokens = monte_carlo_step_labels(
                *loaded, list(dataset["prompt"]), list(dataset["answer"]), num_rollouts=training_args.mc_rollouts,
                solutions_per_prompt=training_args.mc_solutions, max_new_tokens=training_args.mc_max_new_tokens,
                temperature=training_args.mc_temperature, max_steps=training_args.mc_max_steps)
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache, "".join(json.dumps(r) + "\n" for r in rows))
            good = sum(sum(r["labels"]) for r in rows)
            total = sum(len(r["labels"]) for r in rows)
            logger.info("prm: Monte-Carlo labels for %d %s solutions of %d questions from %s (%d rollouts per "
                        "step, %d tokens generated): %d of %d steps good; saved to %s", len(rows), split,
                        len(dataset), policy, training_args.mc_rollouts, tokens, good, total, cache)
        if not rows:
            raise data.DataFormatError(f"prm: no {split} solution of {policy} could be split into 1 to "
                                       f"{training_args.mc_max_steps} steps. Fix: raise --mc_max_steps or "
                                       "--mc_max_new_tokens, or give step-labelled data.")
        labelled.append(Dataset.from_list(rows))
    return labelled[0], labelled[1]


STREAMING_STAGES = ("sft", "reward", "dpo", "kto")  # the stages whose TRL trainer trains on an IterableDataset


def check_streaming(name: str, script_args: ScriptArguments, training_args) -> bool:
    """Whether the stage streams its training data (``--streaming``, or TRL's ``--dataset_streaming``), checked
    before anything is loaded.

    Raises:
        ConfigError: with streaming, for a stage not in `STREAMING_STAGES`, or without ``--max_steps`` (a stream
            has no length, so the Trainer cannot count epochs).
    """
    from open_rlhf.errors import ConfigError

    if not (script_args.streaming or getattr(script_args, "dataset_streaming", False)):
        return False
    if name not in STREAMING_STAGES:
        raise ConfigError(f"--streaming: the {name} stage cannot stream its data; the stages that can are "
                          f"{', '.join(STREAMING_STAGES)}. Fix: drop --streaming.")
    if training_args.max_steps is None or training_args.max_steps <= 0:
        raise ConfigError("--streaming needs --max_steps: a stream has no length, so training runs for --max_steps "
                          "optimizer steps (the stream starts over when it ends). Fix: add e.g. --max_steps 1000.")
    return True


def run_stage(name: str, script_args: ScriptArguments, training_args, model_args) -> None:
    """Train one stage end to end (see the module docstring for the steps).

    Args:
        name (`str`): a key of `STAGES`.
        script_args (`ScriptArguments`), training_args (the stage's config), model_args (`trl.ModelConfig`):
            as parsed by `make_parser`.

    Raises:
        open_rlhf.errors.UserError: for what the user can fix: a finished ``output_dir``, bad data, a bad reward
            spec, a missing model, an unsupported option (the runner prints it and exits with status 2).
    """
    from transformers import set_seed

    spec = STAGES[name]
    setup_logging(training_args)
    streaming = check_streaming(name, script_args, training_args)
    if training_args.should_log and hasattr(training_args, "precision_line"):
        logger.info("%s: %s", name, training_args.precision_line)

    # Output dir, resume, seed (before any model is built: a new reward/value head is randomly initialised)
    last_checkpoint = outputs.prepare_output_dir(training_args.output_dir)
    set_seed(training_args.seed)

    # Models and tokenizer
    loaded = _load_models(spec, training_args, model_args)
    if script_args.use_fused_rmsnorm:
        for key in ("model", "ref_model", "value_model"):
            if loaded.get(key) is not None:
                models.use_fused_rmsnorm(loaded[key])
    disk.check_stage_disk(name, training_args, [loaded["model"], loaded.get("value_model")],
                          use_peft=getattr(model_args, "use_peft", False))

    # Rewards (RL stages)
    reward_spec = reward_spec_of(spec, training_args)
    reward = rewards.build_reward_functions(reward_spec) if reward_spec else None
    if reward is not None and spec.model != "ppo":
        training_args.reward_weights = reward.weights  # TRL logs each term; the spec's weights sum them

    # Data (the RL stages' eval split is held out for the pipeline's final evaluation, not trained on)
    if streaming:  # an IterableDataset that never ends (max_steps decides) and the first eval_size examples
        train_dataset, eval_dataset = data.load_streaming_splits(
            script_args.dataset_name, spec.data_kind, eval_size=script_args.eval_size,
            max_samples=script_args.max_train_samples, seed=data_seed(training_args))
    else:
        train_dataset, eval_dataset = data.load_splits(
            script_args.dataset_name, spec.data_kind, eval_size=script_args.eval_size, seed=script_args.split_seed,
            max_samples=script_args.max_train_samples)
        if spec.name == "kto":  # TRL's KTOTrainer samples in order: the seed must decide that order
            train_dataset = seeded_order(training_args, train_dataset)
    if reward is not None:
        rewards.check_columns(reward, train_dataset.column_names, script_args.dataset_name)
    if spec.data_kind == "stepwise" and "labels" not in train_dataset.column_names:
        train_dataset, eval_dataset = _monte_carlo_labels(training_args, loaded["model_path"], train_dataset,
                                                          eval_dataset)

    # PPO-ptx demonstrations: split like the stage's data (same eval_size and seed), so when they come from the
    # stage's own file its held-out rows stay held out; for the built-in task they are the SFT stream
    ptx_dataset = None
    if spec.model == "ppo" and training_args.ptx_coef > 0:
        ptx_dataset = data.load_splits(training_args.ptx_dataset_name or script_args.dataset_name, "sft",
                                       eval_size=script_args.eval_size, seed=script_args.split_seed)[0]

    # Train
    trainer = _build_trainer(spec, loaded, training_args, model_args, train_dataset, eval_dataset, reward,
                             ptx_dataset)
    if script_args.curve_every:
        trainer.callback_handler.add_callback(_curve_callback(spec, script_args, training_args, loaded, eval_dataset))
    outputs.restore_token_count(trainer, last_checkpoint)  # TRL does not checkpoint SFT/DPO's num_tokens
    trainer.train(resume_from_checkpoint=last_checkpoint)

    # Save
    info = {"stage": name, "model": loaded["model_path"], "dataset": script_args.dataset_name,
            "train_examples": None if streaming else len(train_dataset)}
    if streaming:
        info["streaming"] = True
    if reward_spec:
        info["reward"] = reward_spec
    if spec.evaluate_at_end and eval_dataset is not None:
        info["eval"] = trainer.evaluate()
        logger.info("%s held-out: %s", name, ", ".join(f"{k} {v:.4g}" for k, v in info["eval"].items()))
    if spec.model == "ppo":
        info["global_step"] = trainer.global_step
        outputs.save_final(training_args.output_dir, trainer.save_model, info)
    else:
        info["global_step"] = trainer.state.global_step
        outputs.save_final(training_args.output_dir, lambda folder: outputs.save_trainer(trainer, folder), info)
