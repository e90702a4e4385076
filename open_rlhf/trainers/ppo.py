"""PPO for RLHF: policy, frozen reference, reward (a reward model or any reward function), value model;
and REINFORCE++ (the same loop without the value model).

Ours because TRL removed `PPOTrainer` in 1.13 (this file targets TRL 1.16; it uses only TRL's numerics helpers
`selective_log_softmax_and_entropy` and `disable_dropout_in_model`).

What one update (``global_step``) actually does:

1. **Rollout.** Take ``rollout_batch_size`` prompts, render them with the chat template, sample responses from
   the policy (``temperature``, at most ``response_length`` tokens). Each response is truncated after its first
   EOS; later tokens are padding and are masked out of every loss.
2. **Score.** Decode each response and call the reward function -> one scalar score per response (a reward
   model's output, or a verifiable 0/1). A response with no EOS loses ``missing_eos_penalty``.
3. **Per-token reward** (Ziegler et al. 2019, Eq. 2; Stiennon et al. 2020, Eq. 1):
   ``r_t = -beta * (log pi(y_t) - log pi_ref(y_t))`` on every response token, plus the score on the last one.
   With ``step_reward="arith"``, also a process reward of ``-step_reward_coef`` on the token that completes each
   wrong ``a op b = c`` equation (`step_reward_tensor`), so the slip itself is blamed, not the steps after it.
4. **GAE** (Schulman et al. 2016, Eq. 16) with the value model's per-token values -> advantages, returns;
   advantages are whitened over the valid tokens of the batch.
5. **Optimise** for ``num_ppo_epochs`` epochs over ``num_mini_batches`` shuffled minibatches: the clipped
   surrogate policy loss (Schulman et al. 2017, Eq. 7) plus ``vf_coef`` times the clipped value loss, one
   optimizer over the policy's trainable parameters and the value model. With ``ptx_coef`` > 0 (PPO-ptx, Ouyang
   et al. 2022, Eq. 2) each minibatch also adds ``ptx_coef`` times the mean NLL per token of a micro-batch of
   demonstrations; with ``freezing_actor_steps`` the first updates train only the value model.
6. **KL coefficient**: fixed, or adapted towards ``target_kl`` (Ziegler et al. 2019, Sec. 2.2).

**REINFORCE++** (``advantage_estimator="reinforce_pp"``; Hu et al. 2025, https://huggingface.co/papers/2501.03262,
Sec. 3): no value model is loaded or trained. Step 3 is unchanged (token-level KL penalty in the reward), and the
advantage of response token ``t`` is the undiscounted reward-to-go ``A_t = score - beta * sum_{i>=t} KL_i`` (GAE
with values 0 and ``gamma = lam = 1``), normalised to zero mean and unit variance over all valid tokens of the
*global* batch (every process). The clipped surrogate of step 5 is kept, as in the paper. TRL 1.16's GRPO cannot
express this exactly (its KL is a loss term, not a per-token reward, and its advantage is one scalar per
sequence), so it lives here.

**REINFORCE++-baseline** (``advantage_estimator="reinforce_pp_baseline"``, the same paper's variant for groups of
responses): each prompt is sampled ``num_samples_per_prompt`` times and each score has its group's mean subtracted
(`rl_math.group_baseline`) before step 3; the rest is REINFORCE++. ``num_samples_per_prompt`` > 1 also works with
the other estimators (more responses per prompt, no group baseline).

Advantages (both estimators) are whitened over the global batch: the statistics are all-reduced across processes.

Implementation choices follow Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO"
(https://huggingface.co/papers/2403.17031): log-probs of the rollout are recomputed with a forward pass (not
taken from ``generate``), logits are divided by the sampling temperature, the value of the state before each
response token is read at the previous position, the reward model is frozen.

With a PEFT (LoRA) policy and no explicit reference model, the reference is the policy with its adapters
disabled, so no second copy of the weights is held.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from bisect import bisect_left
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TopPLogitsWarper,
    TrainingArguments,
    get_scheduler,
)
from trl.models import prepare_deepspeed, prepare_fsdp, unwrap_model_for_generation
from trl.trainer.utils import disable_dropout_in_model, selective_log_softmax_and_entropy

from open_rlhf.config import HardwareDefaultsMixin
from open_rlhf.errors import ConfigError
from open_rlhf.models import stop_token_ids
from open_rlhf.rewards import arithmetic_step_checks
from open_rlhf.rl_math import (
    AdaptiveKLController,
    FixedKLController,
    backtracking_line_search,
    compute_gae,
    compute_rewards,
    conjugate_gradient,
    fisher_vector_product,
    flat_grad,
    group_baseline,
    masked_mean,
    masked_whiten,
    per_token_kl,
    ppo_policy_loss,
    ppo_value_loss,
    reinforce_pp_advantages,
    response_mask_after_eos,
    trust_region_step,
)

logger = logging.getLogger(__name__)

INVALID_LOGPROB = 1.0  # fill value for masked positions; never read by a loss (all losses are masked)
TRAINER_STATE_NAME = "trainer_state.json"
ADVANTAGE_ESTIMATORS = ("gae", "reinforce_pp", "reinforce_pp_baseline")
POLICY_UPDATES = ("ppo", "trpo")
ROLLOUT_SAMPLING = ("per_prompt", "global")
STEP_REWARDS = ("arith",)
# The TrainingArguments fields PPOTrainer reads (besides its own PPOConfig fields). Also the bookkeeping fields
# transformers' own Trainer ignores (do_train, ...) and those that only matter to the launcher or logging.
HONOURED_TRAINING_ARGUMENTS = frozenset({
    "output_dir", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps",
    "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "weight_decay", "adam_beta1",
    "adam_beta2", "adam_epsilon", "max_grad_norm", "bf16", "fp16", "use_cpu", "seed", "activation_checkpointing",
    "activation_checkpointing_kwargs", "gradient_checkpointing", "gradient_checkpointing_kwargs",
    "logging_strategy", "logging_steps", "log_level", "log_level_replica", "log_on_each_node", "disable_tqdm",
    "report_to", "run_name", "project", "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id",
    "save_strategy", "save_steps", "save_total_limit", "do_train", "do_eval", "do_predict", "local_rank",
    "skip_memory_metrics", "resume_from_checkpoint",
})
CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class PPOConfig(HardwareDefaultsMixin, TrainingArguments):
    """`transformers.TrainingArguments` plus the PPO hyper-parameters.

    Batch sizes (per process): one rollout holds ``rollout_batch_size = per_device_train_batch_size *
    gradient_accumulation_steps * num_mini_batches`` responses, ``num_samples_per_prompt`` (default 1) to each of
    its ``rollout_batch_size / num_samples_per_prompt`` prompts; each optimizer step sees one minibatch of
    ``per_device_train_batch_size * gradient_accumulation_steps`` responses. ``max_steps`` counts rollouts
    (updates); if it is not set, ``total_episodes`` (default: ``num_train_epochs`` passes over the prompts)
    decides.

    Of the `transformers.TrainingArguments` fields, our trainer honours those in `HONOURED_TRAINING_ARGUMENTS`
    (optimizer and schedule, precision, logging with ``report_to`` integrations, checkpointing,
    ``gradient_checkpointing``, seeds); setting any other one to a non-default value raises a `ConfigError`
    naming it, instead of being silently ignored.
    """

    # Overrides of TrainingArguments defaults (CPU-friendly, log every update)
    output_dir: str | None = field(default="runs/ppo", metadata={"help": "Where checkpoints and the policy go."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the prompts (if max_steps <= 0)."})
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N updates."})
    save_steps: float = field(default=50, metadata={"help": "Checkpoint every N updates."})
    report_to: str | list[str] = field(default="none", metadata={"help": "Integrations to report to."})
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 autocast for every forward. Default: on where the hardware runs bf16 natively "
                          "(open_rlhf.hardware.auto_bf16), else fp32. Log-probs and losses stay fp32."},
    )
    # Data / rollout
    reward_model_path: str | None = field(
        default=None,
        metadata={"help": "Reward model (train_reward.py output). None: the built-in verifiable accuracy reward."},
    )
    reward: str | None = field(
        default=None,
        metadata={"help": "Reward spec (open_rlhf.rewards.build_reward_functions), e.g. 'math,0.1*format'. Default: "
                          "'model:<reward_model_path>' when a reward model is given, else 'accuracy'."},
    )
    value_model_path: str | None = field(
        default=None, metadata={"help": "Initial value model. Default: the reward model, else the policy."}
    )
    sft_model_path: str | None = field(
        default=None, metadata={"help": "Reference model. Default: the initial policy (adapter-disabled with PEFT)."}
    )
    response_length: int = field(default=64, metadata={"help": "Maximum generated tokens per response."})
    max_prompt_length: int = field(default=256, metadata={"help": "Prompts are left-truncated to this length."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of rollouts."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling of rollouts (1.0 = off)."})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtracted from the score of a response that hits the length limit."}
    )
    total_episodes: int | None = field(default=None, metadata={"help": "Total responses (episodes) to train on; prompts when num_samples_per_prompt is 1."})
    num_mini_batches: int = field(default=1, metadata={"help": "Minibatches per rollout batch."})
    num_ppo_epochs: int = field(default=4, metadata={"help": "Optimisation epochs over each rollout batch."})
    local_rollout_forward_batch_size: int = field(
        default=16, metadata={"help": "Micro-batch of the no-grad rollout forwards (logprobs, values)."}
    )
    # Losses
    kl_coef: float = field(default=0.05, metadata={"help": "beta: weight of the per-token KL penalty."})
    kl_estimator: str = field(
        default="k1", metadata={"help": "Per-token KL estimator in the reward: 'k1' (log-ratio) or 'k3' (Schulman)."}
    )
    adaptive_kl: bool = field(default=False, metadata={"help": "Adapt beta towards target_kl (Ziegler et al.)."})
    target_kl: float = field(default=6.0, metadata={"help": "Target sequence KL (nats) of the adaptive controller."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon (episodes) of the adaptive controller."})
    cliprange: float = field(default=0.2, metadata={"help": "epsilon of the clipped policy ratio."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value predictions."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    value_learning_rate: float | None = field(
        default=None,
        metadata={"help": "AdamW learning rate of the value model (its own parameter group, on the same schedule); "
                          "default: learning_rate. A critic usually learns faster than the policy (OpenRLHF's "
                          "defaults: 9e-6 against 5e-7), and with AdamW vf_coef hardly changes its step size."},
    )
    freezing_actor_steps: int = field(
        default=0,
        metadata={"help": "PPO with a value model: the first N updates train only the value model (the policy's "
                          "gradients are dropped), so GAE's advantages are not mostly critic error when the policy "
                          "starts to move. They count in max_steps. OpenRLHF's --freezing_actor_steps."},
    )
    ptx_coef: float = field(
        default=0.0,
        metadata={"help": "PPO-ptx (InstructGPT, Ouyang et al. 2022, Eq. 2): weight of the demonstrations' NLL (mean "
                          "nats per completion token) added to each minibatch's loss; 0 = off."},
    )
    ptx_dataset_name: str | None = field(
        default=None,
        metadata={"help": "Demonstrations of the ptx term (prompt-completion data, as train_sft.py reads it); "
                          "default: the SFT data of --dataset_name (the built-in task's SFT stream)."},
    )
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten per-token rewards before GAE."})
    step_reward: str | None = field(
        default=None,
        metadata={"help": "A process reward on the token that completes each checked step, besides the sequence "
                          "score: 'arith' adds -step_reward_coef at the result of every wrong 'a op b = c' equation "
                          "of a response (rewards.arithmetic_step_checks), so the reward-to-go blames the slip and "
                          "the tokens before it, not the steps after it. Default: none."},
    )
    step_reward_coef: float = field(
        default=0.5, metadata={"help": "The penalty of one wrong step of --step_reward (reward units, >= 0)."})
    advantage_estimator: str = field(
        default="gae",
        metadata={"help": "'gae': PPO with a value model (GAE); 'reinforce_pp': REINFORCE++ (no value model, "
                          "reward-to-go advantages normalised over the global batch); 'reinforce_pp_baseline': "
                          "REINFORCE++ with each score's group mean subtracted (needs num_samples_per_prompt > 1)."},
    )
    num_samples_per_prompt: int = field(
        default=1,
        metadata={"help": "Responses sampled per prompt in a rollout (a group, consecutive rows); the rollout batch "
                          "(per_device_train_batch_size * gradient_accumulation_steps * num_mini_batches responses) "
                          "then holds that many times fewer prompts, and must be a multiple of it."},
    )
    num_sample_generations: int = field(
        default=2, metadata={"help": "Sample generations printed in the log per update (0 = none)."}
    )
    policy_update: str = field(
        default="ppo",
        metadata={"help": "'ppo': clipped-surrogate AdamW steps; 'trpo': one natural-gradient step per rollout "
                          "(conjugate gradient on Fisher-vector products, a line search enforcing trpo_max_kl; "
                          "Schulman et al. 2015). The value model is trained the same way in both."},
    )
    trpo_max_kl: float = field(default=0.01, metadata={
        "help": "TRPO's trust region delta: the largest mean per-token KL(pi_old || pi_new) of an update, nats."})
    trpo_cg_iterations: int = field(default=10, metadata={"help": "TRPO: conjugate-gradient iterations."})
    trpo_damping: float = field(default=0.1, metadata={"help": "TRPO: damping added to the Fisher matrix."})
    trpo_max_backtracks: int = field(default=10, metadata={"help": "TRPO: line-search halvings before giving up."})
    rollout_sampling: str = field(
        default="per_prompt",
        metadata={"help": "'per_prompt': each prompt's response is sampled with its own generator seeded by (seed, "
                          "update, prompt index), so rollouts do not depend on batch composition or the number of "
                          "processes (PerPromptSampler); 'global': transformers' sampling with the global RNG."},
    )

    def __post_init__(self):
        reject_ignored_training_arguments(self)  # before TrainingArguments normalises the values
        super().__post_init__()  # HardwareDefaultsMixin (device, bf16), then TrainingArguments
        if self.rollout_sampling not in ROLLOUT_SAMPLING:
            raise ConfigError(f"--rollout_sampling must be one of {ROLLOUT_SAMPLING}, got {self.rollout_sampling!r}.")
        if self.advantage_estimator not in ADVANTAGE_ESTIMATORS:
            raise ConfigError(f"--advantage_estimator must be one of {ADVANTAGE_ESTIMATORS}, got "
                              f"{self.advantage_estimator!r}.")
        if self.policy_update not in POLICY_UPDATES:
            raise ConfigError(f"--policy_update must be one of {POLICY_UPDATES}, got {self.policy_update!r}.")
        if self.policy_update == "trpo" and (self.trpo_max_kl <= 0 or self.trpo_cg_iterations < 1
                                             or self.trpo_damping < 0 or self.trpo_max_backtracks < 1):
            raise ConfigError(f"TRPO needs --trpo_max_kl > 0 (got {self.trpo_max_kl}), --trpo_cg_iterations >= 1 "
                              f"(got {self.trpo_cg_iterations}), --trpo_damping >= 0 (got {self.trpo_damping}) and "
                              f"--trpo_max_backtracks >= 1 (got {self.trpo_max_backtracks}).")
        if self.step_reward is not None and self.step_reward not in STEP_REWARDS:
            raise ConfigError(f"--step_reward must be one of {STEP_REWARDS} (or unset), got {self.step_reward!r}.")
        if self.step_reward_coef < 0:
            raise ConfigError(f"--step_reward_coef is a penalty per wrong step and must be >= 0, got "
                              f"{self.step_reward_coef}.")
        if self.kl_estimator not in ("k1", "k3"):
            raise ConfigError(f"--kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}.")
        for name in ("num_mini_batches", "num_ppo_epochs", "response_length", "local_rollout_forward_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        if self.temperature <= 0:
            raise ConfigError(f"--temperature must be > 0 (sampling is required for PPO), got {self.temperature}.")
        if self.ptx_coef < 0:
            raise ConfigError(f"--ptx_coef must be >= 0, got {self.ptx_coef}.")
        if self.freezing_actor_steps < 0:
            raise ConfigError(f"--freezing_actor_steps must be >= 0, got {self.freezing_actor_steps}.")
        if self.freezing_actor_steps and self.advantage_estimator != "gae":
            raise ConfigError(f"--freezing_actor_steps {self.freezing_actor_steps} warms up a value model, and "
                              f"--advantage_estimator {self.advantage_estimator} has none. Fix: drop it, or use gae.")
        if self.value_learning_rate is not None and self.value_learning_rate <= 0:
            raise ConfigError(f"--value_learning_rate must be > 0, got {self.value_learning_rate}.")
        if self.num_samples_per_prompt < 1:
            raise ConfigError(f"--num_samples_per_prompt must be >= 1, got {self.num_samples_per_prompt}.")
        if self.rollout_batch_size % self.num_samples_per_prompt:
            raise ConfigError(
                f"--num_samples_per_prompt {self.num_samples_per_prompt} does not divide the rollout batch of "
                f"{self.rollout_batch_size} responses (per_device_train_batch_size * gradient_accumulation_steps * "
                "num_mini_batches), so a prompt's group would be split. Fix: make the batch a multiple of it.")
        if self.advantage_estimator == "reinforce_pp_baseline" and self.num_samples_per_prompt < 2:
            raise ConfigError("--advantage_estimator reinforce_pp_baseline subtracts each prompt's mean score over its "
                              "group, which needs --num_samples_per_prompt >= 2 (e.g. 4).")

    @property
    def rollout_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches

    @property
    def mini_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps


_UNSET = (None, False, "", "no", "none", (), [], {})
_ADAMW = ("adamw_torch", "adamw_torch_fused")  # our optimizer is torch's AdamW (fused or not is torch's choice)


def _is_default(value, default) -> bool:
    """Whether a field's value means its default (parsers give ``False`` for a ``"no"`` default, enums for str)."""
    value, default = (getattr(v, "value", v) for v in (value, default))
    if value in _UNSET and default in _UNSET:
        return True
    return value == default or str(value) == str(default)


def reject_ignored_training_arguments(config) -> None:
    """Raise for a `TrainingArguments` field set away from its default that `PPOTrainer` does not read.

    Raises:
        ConfigError: naming the first such field (and the honoured ones): e.g. ``--eval_strategy steps`` (our PPO
            has no evaluation loop; the pipeline evaluates after training) or ``--optim adafactor`` (AdamW only).
    """
    training_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    for f in dataclasses.fields(config):
        if f.name not in training_fields or f.name in HONOURED_TRAINING_ARGUMENTS or not f.init:
            continue
        value = getattr(config, f.name)
        if f.name == "optim" and getattr(value, "value", value) in _ADAMW:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if not _is_default(value, default):
            raise ConfigError(
                f"--{f.name} {value!r} is not supported by open_rlhf's PPO trainer (it would be silently ignored). "
                f"Fix: drop --{f.name}. PPOTrainer reads only these TrainingArguments: "
                f"{', '.join(sorted(HONOURED_TRAINING_ARGUMENTS))}.")


# ----------------------------------------------------------------------------------------------------------------
# Model forwards
# ----------------------------------------------------------------------------------------------------------------


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    # left padding: positions count only real tokens, so a padded prompt sees the same positions as unpadded
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def policy_logprobs(
    model: nn.Module,
    query_responses: torch.Tensor,
    attention_mask: torch.Tensor,
    context_length: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies of the response tokens under a causal LM, logits divided by ``temperature``.

    Args:
        query_responses (`torch.LongTensor` of shape `(B, P + R)`): left-padded prompts followed by responses.
        attention_mask (`torch.Tensor` of shape `(B, P + R)`).
        context_length (`int`): P.

    Returns:
        `(logprobs, entropy)`, both `(B, R)`, nats.
    """
    output = model(input_ids=query_responses, attention_mask=attention_mask,
                   position_ids=_position_ids(attention_mask), use_cache=False)
    logits = output.logits[:, context_length - 1: -1]
    responses = query_responses[:, context_length:]
    return selective_log_softmax_and_entropy(logits.float(), responses, temperature=temperature)


def token_values(
    value_model: nn.Module, query_responses: torch.Tensor, attention_mask: torch.Tensor, context_length: int
) -> torch.Tensor:
    """Per-token values of a sequence-classification model used as value model.

    The value of the state before response token ``t`` is the scalar head applied to the hidden state at
    position ``P + t - 1`` (the last token the policy had seen when it sampled token ``t``).

    ``value_model`` must have a scalar ``score`` head (`check_value_model`; `PPOTrainer` checks it once).

    Returns:
        `torch.Tensor` of shape `(B, R)`.
    """
    backbone = getattr(value_model, value_model.base_model_prefix)
    hidden = backbone(input_ids=query_responses, attention_mask=attention_mask,
                      position_ids=_position_ids(attention_mask), use_cache=False).last_hidden_state
    return value_model.score(hidden[:, context_length - 1: -1]).squeeze(-1).float()


def check_value_model(value_model: nn.Module) -> None:
    """A value model is a sequence classifier with one output: a ``score`` head of one output feature.

    Raises:
        ConfigError: for anything else (a causal LM has no scalar head; its vocabulary-sized output embedding is
            not a value).
    """
    model = value_model.get_base_model() if hasattr(value_model, "get_base_model") else value_model
    if getattr(model, "score", None) is None or getattr(model.config, "num_labels", None) != 1:
        raise ConfigError(
            f"The value model ({type(model).__name__}) has no scalar head: it must be a sequence classifier with "
            "num_labels=1 and a `score` head (AutoModelForSequenceClassification, e.g. a train_reward.py output, "
            "or open_rlhf.models.load_value_model). Fix: pass --value_model_path to such a model or leave it unset.")


def steps_from_ratio(value: float, total: int, name: str) -> int:
    """``logging_steps`` / ``save_steps`` as a number of updates: a count (>= 1), or a fraction (< 1) of ``total``
    rounded up, as `transformers.TrainingArguments` reads them.

    Raises:
        ConfigError: for a value <= 0.
    """
    if value is None or value <= 0:
        raise ConfigError(f"--{name} must be a number of updates (>= 1) or a fraction of the run (0 < x < 1), got "
                          f"{value!r}.")
    return max(1, math.ceil(value * total)) if value < 1 else int(value)


class PolicyAndValue(nn.Module):
    """One module holding both trained networks, so one optimizer and one DDP / FSDP / DeepSpeed wrapper cover both.

    ``value_model`` is None for REINFORCE++; ``forward`` then returns None for the values. Every pass over the
    policy (the training forward, the rollout's log-probs and values, and generation) goes through this module's
    ``forward``: under FSDP2 this module is the root of the sharded tree, and only a call to the root gathers the
    parameters it owns (embeddings, final norm, LM and value heads; each decoder layer gathers its own).
    """

    def __init__(self, policy: nn.Module, value_model: nn.Module | None):
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    @property
    def _no_split_modules(self) -> list[str]:
        # accelerate's TRANSFORMER_BASED_WRAP shards per decoder layer by the model's `_no_split_modules`; without
        # it the whole wrapper would be one FSDP unit, gathered at once.
        names = set(getattr(self.policy, "_no_split_modules", None) or [])
        if self.value_model is not None:
            names |= set(getattr(self.value_model, "_no_split_modules", None) or [])
        return sorted(names)

    def tie_weights(self) -> None:
        # accelerate's FSDP2 preparation moves the module to the meta device (which unties shared parameters) and
        # re-ties them only through `tie_weights`; without this, a tied LM head (SmolLM2) would train apart from
        # the input embeddings.
        for m in (self.policy, self.value_model):
            if m is not None and hasattr(m, "tie_weights"):
                m.tie_weights()

    @property
    def is_gradient_checkpointing(self) -> bool:  # read by TRL's unwrap_model_for_generation
        policy = self.policy
        return bool(getattr(policy, "is_activation_checkpointing", None)
                    if hasattr(policy, "is_activation_checkpointing") else
                    getattr(policy, "is_gradient_checkpointing", False))

    def gradient_checkpointing_disable(self) -> None:
        for m in (self.policy, self.value_model):
            if m is not None:  # transformers 5.23 renamed it activation checkpointing
                (getattr(m, "activation_checkpointing_disable", None) or m.gradient_checkpointing_disable)()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        kwargs = gradient_checkpointing_kwargs or {"use_reentrant": False}
        for m in (self.policy, self.value_model):
            if m is not None:
                (getattr(m, "activation_checkpointing_enable", None) or m.gradient_checkpointing_enable)(kwargs)

    def forward(self, query_responses, attention_mask, context_length: int = 0, temperature: float = 1.0,
                adapter_reference: bool = False, generation_kwargs: dict | None = None):
        """Training / rollout pass, or generation.

        Returns:
            ``(logprobs, entropy, values, reference_logprobs)``: `(B, R)` each; ``values`` is None without a value
            model, ``reference_logprobs`` is None unless ``adapter_reference`` (then the log-probs of the policy
            with its LoRA adapters disabled, the reference of a PEFT policy). With ``generation_kwargs``, the
            `(B, P + R)` ids of ``policy.generate(input_ids=query_responses, attention_mask=..., **kwargs)``.
        """
        if generation_kwargs is not None:
            return self.policy.generate(input_ids=query_responses, attention_mask=attention_mask,
                                        **generation_kwargs)
        logprobs, entropy = policy_logprobs(self.policy, query_responses, attention_mask, context_length, temperature)
        values = reference = None
        if self.value_model is not None:
            values = token_values(self.value_model, query_responses, attention_mask, context_length)
        if adapter_reference:
            with self.policy.disable_adapter():
                reference, _ = policy_logprobs(self.policy, query_responses, attention_mask, context_length,
                                               temperature)
        return logprobs, entropy, values, reference


# ----------------------------------------------------------------------------------------------------------------
# Rollout sampling
# ----------------------------------------------------------------------------------------------------------------


class PerPromptSampler(LogitsProcessor):
    """Samples each row from ``softmax(logits / temperature)`` (nucleus ``top_p``) with its own random generator.

    Used with greedy decoding: the processor adds Gumbel(0, 1) noise to the tempered (and nucleus-filtered) logits,
    and ``argmax(logits / T + G)`` is an exact sample of ``softmax(logits / T)`` (the Gumbel-max trick; Gumbel
    1954, Maddison et al. 2014, https://arxiv.org/abs/1411.0030). Row ``b`` draws its noise from a generator
    seeded with ``seeds[b]``, so its response depends only on its prompt, its seed and the policy: not on which
    other prompts share the batch, how the batch is split over processes, or the global random state.

    Args:
        seeds (`list[int]`): one seed per row of the batch (`B`).
        temperature (`float`): > 0.
        top_p (`float`): nucleus mass in (0, 1]; 1.0 is off.
        device (`torch.device`): where the logits live.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device: torch.device):
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float() / self.temperature
        if self.top_p is not None:
            scores = self.top_p(input_ids, scores)
        uniform = torch.stack([torch.rand(scores.shape[1], generator=g, device=scores.device)
                               for g in self.generators])
        tiny = torch.finfo(uniform.dtype).tiny
        return scores - torch.log(-torch.log(uniform.clamp(min=tiny)))


def rollout_seed(seed: int, update: int, prompt_index: int) -> int:
    """The sampling seed of one prompt at one update: a 63-bit hash of ``(seed, update, prompt_index)``."""
    value = seed
    for part in (update, prompt_index):
        value = (value * 1_000_003 + part + 1) % (2**63 - 1)
    return value


# ----------------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------------


def token_end_offsets(tokenizer, ids: list[int]) -> list[int]:
    """Where each token of a decoded response ends: ``len(decode(ids[:i + 1]))`` for every ``i``, made monotone.

    Decoding each prefix (as the response text itself is decoded, special tokens skipped) maps character offsets
    of the text back to tokens for any tokenizer, byte-level BPE included. O(len(ids)^2) characters; responses here
    are at most ``response_length`` tokens.
    """
    ends, longest = [], 0
    for i in range(len(ids)):
        longest = max(longest, len(tokenizer.decode(ids[: i + 1], skip_special_tokens=True)))
        ends.append(longest)
    return ends


def step_reward_tensor(texts: list[str], responses: torch.Tensor, mask: torch.Tensor, tokenizer,
                       coef: float) -> torch.Tensor:
    """Process rewards of the arithmetic steps: ``-coef`` on the token that completes each wrong equation.

    Args:
        texts (`list[str]`): the decoded responses, ``tokenizer.decode(responses[b][mask[b]],
            skip_special_tokens=True)``.
        responses (`torch.Tensor` of shape `(B, R)`): the response token ids.
        mask (`torch.Tensor` of shape `(B, R)`, bool): the valid tokens of each row (a prefix).
        tokenizer: the policy's tokenizer.
        coef (`float`): the penalty of one wrong step (reward units).

    Returns:
        `torch.Tensor` of shape `(B, R)`, float32: 0 everywhere except ``-coef`` (summed when two steps end on one
        token) at the first token whose decoded prefix covers the result ``c`` of a wrong ``a op b = c``
        (`rewards.arithmetic_step_checks`). Right steps get no reward, so writing more equations cannot earn any.

    Source: step-level rewards placed at the end of each step, as in the step-by-step PPO of Math-Shepherd (Wang et
    al. 2024, https://arxiv.org/abs/2312.08935, Sec. 3.4) and Lightman et al. 2023's process supervision, with the
    steps checked by a calculator instead of a process reward model.
    """
    out = torch.zeros(responses.shape, dtype=torch.float32)
    for b, text in enumerate(texts):
        wrong = [end for end, right in arithmetic_step_checks(text) if not right]
        if not wrong:
            continue
        ends = token_end_offsets(tokenizer, responses[b][mask[b]].tolist())
        for end in wrong:
            out[b, min(bisect_left(ends, end), len(ends) - 1)] -= coef
    return out


@dataclass
class Rollout:
    """One rollout batch of this process (steps 1-4 of the module docstring).

    B rollouts, P prompt tokens (left-padded to the longest prompt), R response tokens (right-padded after each
    response's end). All `(B, R)` tensors are zero (or `INVALID_LOGPROB`) on masked positions.
    """

    query_responses: torch.Tensor  # (B, P + R) token ids
    attention_mask: torch.Tensor  # (B, P + R)
    context_length: int  # P
    mask: torch.Tensor  # (B, R) float, 1 on the response tokens up to and including the first EOS
    has_eos: torch.Tensor  # (B,) bool
    logprobs: torch.Tensor  # (B, R) log pi at rollout time, nats
    ref_logprobs: torch.Tensor  # (B, R) log pi_ref, nats
    values: torch.Tensor  # (B, R) value model; zeros for REINFORCE++
    rewards: torch.Tensor  # (B, R) per-token rewards (KL penalty, score on the last token; whitened if asked)
    advantages: torch.Tensor  # (B, R)
    returns: torch.Tensor  # (B, R) value targets; zeros for REINFORCE++
    scores: torch.Tensor  # (B,) scores after the missing-EOS penalty
    raw_scores: torch.Tensor  # (B,) the reward functions' scores
    kl: torch.Tensor  # (B, R) per-token KL estimate in the reward, nats
    non_score_reward: torch.Tensor  # (B,) -beta * sum_t kl_t
    entropy: torch.Tensor  # (B, R) policy entropy, nats
    texts: list[str]  # the decoded responses
    timings: dict[str, float] = field(default_factory=dict)  # seconds: generate, score, forward
    step_rewards: torch.Tensor | None = None  # (B, R) the process rewards of --step_reward, or None


class PPOTrainer:
    """PPO trainer for causal-LM policies (see the module docstring for the algorithm).

    Distributed (``accelerate launch``, DDP): each process rolls out its own share of the prompts and every
    statistic that spans the batch is global: advantage and reward whitening, the token normaliser of the losses,
    the KL controller's KL, and every logged metric (all-reduced sums and counts). Gradients are all-reduced
    once per optimizer step (``no_sync`` on the other micro-batches). With the per-prompt seeded sampler, rollouts
    do not depend on the number of processes, so N processes with ``per_device_train_batch_size`` b train exactly
    as one process with N * b, up to floating-point summation order, when ``num_mini_batches`` is 1 (with more
    minibatches, each process shuffles its own share into them).

    Sharded (FSDP2, ``config/accelerate/fsdp.yaml``; DeepSpeed ZeRO-3): the policy and value model are sharded by
    ``accelerator.prepare``, the reference by TRL's ``prepare_fsdp`` / ``prepare_deepspeed``; rollouts are generated
    on gathered weights through TRL's ``unwrap_model_for_generation`` (ZeRO-3: all parameters gathered for the call;
    FSDP2: layer by layer through the root module, every process stepping until all are done) and `save_model`
    gathers a full state dict. FSDP2 is tested on 2 CPU processes (the same losses and weights as one process);
    ZeRO-3 is untested (DeepSpeed is not installed).

    Args:
        args (`PPOConfig`): hyper-parameters and output options.
        processing_class: the policy's tokenizer (with a chat template and a pad token; padding side left).
        model: the policy, a causal LM (a `peft.PeftModel` for LoRA).
        ref_model: the frozen reference model; None with a PEFT policy (adapter-disabled policy is used).
        reward_funcs: one callable or a list, each ``f(prompts, completions, **columns) -> list[float]``;
            their scores are summed (a `RewardSpec`, `RewardModelScorer`, `accuracy_reward`, ...). A reward
            function with a ``to(device)`` method (one holding a reward model) is moved to the training device.
        value_model: a sequence classifier with one output (num_labels=1, a ``score`` head), trained with the
            policy; must be None with ``advantage_estimator="reinforce_pp"`` (REINFORCE++ has no value model).
        train_dataset: a `datasets.Dataset` with a conversational ``prompt`` column; other columns (e.g.
            ``answer``) are passed to the reward functions.

    Raises:
        ConfigError: when the dataset has no ``prompt`` column or is smaller than one global rollout batch, when
            ``ref_model`` is None for a non-PEFT policy, when ``value_model`` is given for REINFORCE++, missing for
            GAE, or has no scalar ``score`` head.
    """

    def __init__(self, args: PPOConfig, processing_class, model, ref_model, reward_funcs, value_model, train_dataset,
                 ptx_dataset=None):
        self.args = args
        self.tokenizer = processing_class
        if "prompt" not in train_dataset.column_names:
            raise ConfigError(f"The PPO dataset needs a 'prompt' column; it has {train_dataset.column_names}.")
        if args.ptx_coef > 0 and (ptx_dataset is None or len(ptx_dataset) == 0
                                  or not {"prompt", "completion"} <= set(ptx_dataset.column_names)):
            raise ConfigError(
                f"--ptx_coef {args.ptx_coef} needs demonstrations with 'prompt' and 'completion' columns (got "
                f"{None if ptx_dataset is None else ptx_dataset.column_names}). Fix: pass --ptx_dataset_name with "
                "SFT data, or drop --ptx_coef.")
        self.ptx_dataset = ptx_dataset if args.ptx_coef > 0 else None
        self.is_peft = hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
        if ref_model is None and not self.is_peft:
            raise ConfigError("ref_model is required unless the policy is a PEFT model (adapter-disabled reference).")
        self.use_value_model = args.advantage_estimator == "gae"
        if self.use_value_model and value_model is None:
            raise ConfigError("advantage_estimator='gae' (PPO) needs a value model; pass one, or use "
                              "advantage_estimator='reinforce_pp' (REINFORCE++), which has none.")
        if not self.use_value_model and value_model is not None:
            raise ConfigError("advantage_estimator='reinforce_pp' (REINFORCE++) trains no value model; pass "
                              "value_model=None.")
        if value_model is not None:
            check_value_model(value_model)
        self.train_dataset = train_dataset
        self.accelerator = Accelerator(cpu=args.use_cpu,
                                       mixed_precision="bf16" if args.bf16 else "fp16" if args.fp16 else "no")
        set_seed(args.seed)

        # Schedule: one update = one rollout batch of every process.
        world = self.accelerator.num_processes
        if args.policy_update == "trpo" and world > 1:
            raise ConfigError(f"--policy_update trpo runs on one process (its natural-gradient step is not "
                              f"distributed); this run has {world}. Fix: launch one process, or use ppo.")
        self.batch_size = args.rollout_batch_size * world  # responses per update
        self.prompts_per_update = self.batch_size // args.num_samples_per_prompt
        if len(train_dataset) < self.prompts_per_update:
            raise ConfigError(
                f"The PPO dataset has {len(train_dataset)} prompts, fewer than one rollout batch of all processes "
                f"({self.prompts_per_update} = per_device_train_batch_size {args.per_device_train_batch_size} * "
                f"gradient_accumulation_steps {args.gradient_accumulation_steps} * num_mini_batches "
                f"{args.num_mini_batches} * {world} processes / num_samples_per_prompt "
                f"{args.num_samples_per_prompt}). Fix: use more prompts, a smaller "
                "--per_device_train_batch_size / --gradient_accumulation_steps / --num_mini_batches, or fewer "
                "processes."
            )
        if args.max_steps and args.max_steps > 0:
            self.num_updates = args.max_steps
        elif args.total_episodes:  # responses
            self.num_updates = max(1, args.total_episodes // self.batch_size)
        else:  # passes over the prompts
            self.num_updates = max(1, int(args.num_train_epochs * len(train_dataset)) // self.prompts_per_update)
        num_optimizer_steps = self.num_updates * args.num_ppo_epochs * args.num_mini_batches
        self.logging_every = steps_from_ratio(args.logging_steps, self.num_updates, "logging_steps")
        self.save_every = steps_from_ratio(args.save_steps, self.num_updates, "save_steps")

        for m in (model, value_model, ref_model):
            if m is not None:
                disable_dropout_in_model(m)  # dropout would make the rollout and training log-probs disagree
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
            ref_model.to(self.accelerator.device)
        self.ref_model = ref_model
        if args.gradient_checkpointing:
            kwargs = args.gradient_checkpointing_kwargs or {"use_reentrant": False}
            for m in (model, value_model):
                if m is not None:  # transformers 5.23 renamed it activation checkpointing
                    enable = getattr(m, "activation_checkpointing_enable", None) or m.gradient_checkpointing_enable
                    enable(kwargs)
        # Stop ids: the tokenizer's EOS and every id of the model's generation config (Llama 3 has three). Passed to
        # generate and to the masks; the model's generation config is left as it was (it is saved with the policy).
        self.eos_token_ids = stop_token_ids(self.tokenizer, model.generation_config)
        self.reward_funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
        for func in self.reward_funcs:
            if hasattr(func, "to"):  # a reward model scores where the policy runs
                func.to(self.accelerator.device)

        self.wrapper = PolicyAndValue(model, value_model)
        params = [p for p in self.wrapper.parameters() if p.requires_grad]
        if value_model is not None and args.value_learning_rate is not None:  # the critic's own group
            value_ids = {id(p) for p in value_model.parameters()}
            params = [{"params": [p for p in params if id(p) not in value_ids]},
                      {"params": [p for p in params if id(p) in value_ids], "lr": args.value_learning_rate}]
        optimizer = torch.optim.AdamW(params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                      eps=args.adam_epsilon, weight_decay=args.weight_decay)
        # The scheduler is not passed to accelerator.prepare: accelerate would step it once per process per
        # optimizer step, and on N processes the schedule would end after 1/N of training.
        self.lr_scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                                          num_warmup_steps=args.get_warmup_steps(num_optimizer_steps),
                                          num_training_steps=num_optimizer_steps,
                                          scheduler_specific_kwargs=args.lr_scheduler_kwargs or None)
        self.wrapper, self.optimizer = self.accelerator.prepare(self.wrapper, optimizer)
        # FSDP (any version) or DeepSpeed ZeRO-3: parameters are sharded over the processes. The frozen reference
        # is sharded the same way (as TRL's GRPO does), generation gathers the weights (see `_generate`) and
        # saving gathers a full state dict.
        state = self.accelerator.state
        self.is_fsdp = self.accelerator.distributed_type == DistributedType.FSDP
        self.is_zero3 = (self.accelerator.distributed_type == DistributedType.DEEPSPEED
                         and state.deepspeed_plugin.zero_stage == 3)
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED and (args.freezing_actor_steps
                                                                                 or args.ptx_coef > 0):
            raise ConfigError("--freezing_actor_steps (which drops the policy's gradients before the optimizer step) "
                              "and --ptx_coef (an extra backward per minibatch) need the gradients in torch's hands; "
                              "DeepSpeed's engine keeps them in its own buffers and counts every backward as an "
                              "accumulation step. Fix: drop them, or use DDP or FSDP.")
        if ref_model is not None and self.is_fsdp:
            self.ref_model = prepare_fsdp(ref_model, self.accelerator)
        elif ref_model is not None and self.is_zero3:
            self.ref_model = prepare_deepspeed(ref_model, self.accelerator)
        self.accelerator.register_for_checkpointing(self.lr_scheduler)
        self.kl_ctl = (AdaptiveKLController(args.kl_coef, args.target_kl, args.kl_horizon) if args.adaptive_kl
                       else FixedKLController(args.kl_coef))
        self.global_step = 0
        self.episode = 0
        self.log_history: list[dict] = []
        self._init_callbacks()

    # -- properties ------------------------------------------------------------------------------------------
    @property
    def policy(self):
        return self.accelerator.unwrap_model(self.wrapper).policy

    @property
    def value_model(self):
        return self.accelerator.unwrap_model(self.wrapper).value_model

    def _reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over processes (identity with one process): statistics of the global batch."""
        return self.accelerator.reduce(tensor, "sum") if self.accelerator.num_processes > 1 else tensor

    def _global_means(self, terms: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """``{name: (values, weights)} -> {name: sum(values) / sum(weights)}`` over every process (one all-reduce).

        ``values`` are already multiplied by their weights (a token mean: ``(x * mask, mask)``; a mean over
        sequences: ``(x, ones)``).
        """
        if not terms:
            return {}
        device = self.accelerator.device
        totals = torch.stack([torch.stack([v.detach().float().sum().to(device), w.detach().float().sum().to(device)])
                              for v, w in terms.values()])
        totals = self._reduce_sum(totals)
        return {name: (totals[i, 0] / totals[i, 1].clamp(min=1e-12)).item() for i, name in enumerate(terms)}

    # -- reporting -------------------------------------------------------------------------------------------
    def _init_callbacks(self) -> None:
        """``report_to`` through transformers' integrations (TensorBoard, trackio, ...): their callbacks get the
        same ``on_train_begin`` / ``on_log`` / ``on_train_end`` events as under `transformers.Trainer`."""
        from transformers.integrations import get_reporting_integration_callbacks
        from transformers.trainer_callback import (
            CallbackHandler,
            DefaultFlowCallback,
            TrainerControl,
            TrainerState,
        )

        from open_rlhf.progress import MetricsFileCallback

        # metrics.jsonl as the TRL stages write it (the web demo's job view, the curves' training reward)
        callbacks = [DefaultFlowCallback, MetricsFileCallback,
                     *get_reporting_integration_callbacks(self.args.report_to)]
        self.callback_handler = CallbackHandler(callbacks, self.policy, self.tokenizer, self.optimizer,
                                                self.lr_scheduler)
        self.state = TrainerState(is_local_process_zero=self.accelerator.is_local_main_process,
                                  is_world_process_zero=self.accelerator.is_main_process)
        self.state.max_steps = self.num_updates
        self.state.logging_steps = self.logging_every
        self.state.save_steps = self.save_every
        self.control = TrainerControl()

    # -- data ------------------------------------------------------------------------------------------------
    def _batch_indices(self, step: int) -> list[int]:
        """Prompt indices of update ``step`` for this process, each repeated ``num_samples_per_prompt`` times in a
        row (a group): a seeded permutation per pass over the data; the global batch is the same on any number of
        processes, each process takes its consecutive share (whole groups)."""
        per_process = self.args.rollout_batch_size // self.args.num_samples_per_prompt
        per_epoch = len(self.train_dataset) // self.prompts_per_update  # >= 1, checked in __init__
        epoch, offset = divmod(step, per_epoch)
        generator = torch.Generator().manual_seed(self.args.seed + epoch)
        perm = torch.randperm(len(self.train_dataset), generator=generator).tolist()
        start = offset * self.prompts_per_update + self.accelerator.process_index * per_process
        return [i for i in perm[start:start + per_process] for _ in range(self.args.num_samples_per_prompt)]

    def _prompt_texts(self, prompts: list) -> list[str]:
        return [p if isinstance(p, str) else
                self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]

    def _encode_prompts(self, prompts: list, texts: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Left-padded, left-truncated ids of the prompts; ``texts`` their `_prompt_texts` when already rendered."""
        texts = self._prompt_texts(prompts) if texts is None else texts
        side = self.tokenizer.truncation_side
        self.tokenizer.truncation_side = "left"
        try:
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", truncation=True,
                                 max_length=self.args.max_prompt_length, add_special_tokens=False)
        finally:
            self.tokenizer.truncation_side = side
        return {k: v.to(self.accelerator.device) for k, v in enc.items()}

    def _ptx_batch(self, draw: int) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
        """This process's micro-batch number ``draw`` of demonstrations for the ptx term.

        ``per_device_train_batch_size`` rows of a seeded permutation per pass over the demonstrations (the draw
        index, not a stream, picks them, so a resumed run draws the same rows), each process its own share. The
        prompt is rendered and left-padded as in a rollout, the completion (the chat template's assistant turn,
        with its end-of-turn tokens) right-padded and cut at ``response_length``.

        Returns:
            `(query_responses, attention_mask, context_length, completion_mask)`: `(B, P + C)`, `(B, P + C)`, P, and
            `(B, C)` float, 1 on the completion's tokens.

        Raises:
            ConfigError: when a conversational completion does not extend its prompt under the chat template.
        """
        args, n = self.args, len(self.ptx_dataset)
        size, world = args.per_device_train_batch_size, self.accelerator.num_processes
        per_epoch = max(1, n // (size * world))
        epoch, offset = divmod(draw, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed + 7919 + epoch)).tolist()
        start = (offset * world + self.accelerator.process_index) * size
        rows = self.ptx_dataset[[perm[(start + i) % n] for i in range(size)]]
        prompt_texts = self._prompt_texts(rows["prompt"])
        completions = []
        for prompt, text, completion in zip(rows["prompt"], prompt_texts, rows["completion"], strict=True):
            if isinstance(completion, str):
                completions.append(completion + (self.tokenizer.eos_token or ""))
                continue
            full = self.tokenizer.apply_chat_template(prompt + completion, tokenize=False)
            if not full.startswith(text):
                raise ConfigError("A ptx demonstration's chat-template rendering does not start with its prompt's "
                                  f"(prompt {prompt!r}); the ptx term needs a template whose assistant turn extends the "
                                  "prompt. Fix: use plain-text prompt/completion columns.")
            completions.append(full[len(text):])
        enc = self._encode_prompts(rows["prompt"], prompt_texts)
        comp = self.tokenizer(completions, return_tensors="pt", padding=True, padding_side="right", truncation=True,
                              max_length=args.response_length, add_special_tokens=False)
        comp = {k: v.to(self.accelerator.device) for k, v in comp.items()}
        return (torch.cat([enc["input_ids"], comp["input_ids"]], dim=1),
                torch.cat([enc["attention_mask"], comp["attention_mask"]], dim=1),
                enc["input_ids"].shape[1], comp["attention_mask"].float())

    # -- rollout ---------------------------------------------------------------------------------------------
    def _generate(self, enc: dict[str, torch.Tensor], prompt_indices: list[int]) -> torch.Tensor:
        """Sample one response per row: `(B, P + R)` prompt and response ids (step 1). Rows come in groups of
        ``num_samples_per_prompt`` copies of a prompt; the ``j``-th copy of prompt ``i`` is seeded by the sample
        key ``i * num_samples_per_prompt + j`` (``i`` itself with one sample per prompt)."""
        args = self.args
        config = GenerationConfig(max_new_tokens=args.response_length, eos_token_id=self.eos_token_ids,
                                  pad_token_id=self.tokenizer.pad_token_id)
        kwargs = {}
        if args.rollout_sampling == "per_prompt":
            config.do_sample = False  # greedy over Gumbel-perturbed logits = sampling (PerPromptSampler)
            k = args.num_samples_per_prompt
            seeds = [rollout_seed(args.seed, self.global_step, i * k + row % k) for row, i in enumerate(prompt_indices)]
            kwargs["logits_processor"] = LogitsProcessorList([
                PerPromptSampler(seeds, args.temperature, args.top_p, self.accelerator.device)])
        else:
            config.do_sample, config.temperature, config.top_p, config.top_k = True, args.temperature, args.top_p, 0
        # Gathered weights, as TRL's GRPO: under ZeRO-3 `unwrap_model_for_generation` gathers every parameter for the
        # whole generate call; under FSDP2 the call goes through the root module, which gathers its own parameters
        # while each decoder layer gathers (and frees) its shard at every step, so every process must run the same
        # number of decoding steps (synced_gpus: a process whose sequences have all ended keeps stepping).
        kwargs |= {"generation_config": config, "synced_gpus": self.is_fsdp and self.accelerator.num_processes > 1}
        with (unwrap_model_for_generation(self.wrapper, self.accelerator,
                                          gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs) as module,
              self.accelerator.autocast()):
            return module(enc["input_ids"], enc["attention_mask"], generation_kwargs=kwargs)

    @torch.no_grad()
    def rollout(self, batch: dict, prompt_indices: list[int] | None = None) -> Rollout:
        """Generate, score and compute advantages for one batch of prompts (steps 1-4 of the module docstring).

        Args:
            batch (`dict`): columns of the dataset rows (``prompt`` and whatever the reward functions read).
            prompt_indices (`list[int]`, *optional*): the rows' indices in the dataset, which seed the per-prompt
                sampler (default ``0..B-1``).
        """
        args = self.args
        timings = {}
        enc = self._encode_prompts(batch["prompt"])
        context_length = enc["input_ids"].shape[1]
        policy = self.policy
        policy.eval()
        start = time.perf_counter()
        query_responses = self._generate(enc, list(range(len(batch["prompt"]))) if prompt_indices is None
                                         else prompt_indices)
        timings["generate"] = time.perf_counter() - start
        responses = query_responses[:, context_length:]
        mask, has_eos = response_mask_after_eos(responses, self.eos_token_ids)
        attention_mask = torch.cat([enc["attention_mask"], torch.ones_like(responses)], dim=1)

        start = time.perf_counter()
        texts = [self.tokenizer.decode(r[m], skip_special_tokens=True) for r, m in zip(responses, mask, strict=True)]
        columns = {k: v for k, v in batch.items() if k != "prompt"}
        scores = torch.zeros(len(texts))
        for func in self.reward_funcs:
            scores += torch.tensor(func(prompts=batch["prompt"], completions=texts, **columns), dtype=torch.float32)
        scores = scores.to(self.accelerator.device)
        raw_scores = scores.clone()
        if args.missing_eos_penalty is not None:
            scores = scores - args.missing_eos_penalty * (~has_eos).float()
        step_rewards = (step_reward_tensor(texts, responses, mask, self.tokenizer, args.step_reward_coef)
                        .to(self.accelerator.device) if args.step_reward == "arith" else None)
        timings["score"] = time.perf_counter() - start

        start = time.perf_counter()
        logprobs, ref_logprobs, values, entropies = [], [], [], []
        step = args.local_rollout_forward_batch_size
        # The module itself, not its DDP wrapper (no gradient, no collective); under FSDP2 it is the sharded root.
        module = self.accelerator.unwrap_model(self.wrapper)
        for i in range(0, query_responses.shape[0], step):
            qr, am = query_responses[i:i + step], attention_mask[i:i + step]
            with self.accelerator.autocast():
                lp, ent, value, ref_lp = module(qr, am, context_length, args.temperature,
                                                adapter_reference=self.ref_model is None)
                if self.ref_model is not None:
                    ref_lp, _ = policy_logprobs(self.ref_model, qr, am, context_length, args.temperature)
                if value is None:  # REINFORCE++: no value model
                    value = torch.zeros(qr.shape[0], qr.shape[1] - context_length, device=qr.device)
            values.append(value)
            logprobs.append(lp)
            ref_logprobs.append(ref_lp)
            entropies.append(ent)
        logprobs, ref_logprobs = torch.cat(logprobs), torch.cat(ref_logprobs)
        values, entropy = torch.cat(values), torch.cat(entropies)
        maskf = mask.float()
        logprobs = torch.where(mask, logprobs, INVALID_LOGPROB)
        ref_logprobs = torch.where(mask, ref_logprobs, INVALID_LOGPROB)
        values = values * maskf

        # REINFORCE++-baseline: each score minus its prompt group's mean, before the KL penalty (Hu et al. 2025)
        task_scores = (group_baseline(scores, args.num_samples_per_prompt)
                       if args.advantage_estimator == "reinforce_pp_baseline" else scores)
        rewards, kl = compute_rewards(task_scores, logprobs, ref_logprobs, maskf, self.kl_ctl.value,
                                      args.kl_estimator, step_rewards=step_rewards)
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, maskf, shift_mean=False, reduce_sum=self._reduce_sum)
        if self.use_value_model:
            advantages, returns = compute_gae(rewards, values, maskf, args.gamma, args.lam)
            advantages = masked_whiten(advantages, maskf, reduce_sum=self._reduce_sum)
        else:
            advantages = reinforce_pp_advantages(rewards, maskf, gamma=args.gamma, reduce_sum=self._reduce_sum)
            returns = torch.zeros_like(advantages)  # no value model to fit
        timings["forward"] = time.perf_counter() - start
        return Rollout(query_responses=query_responses, attention_mask=attention_mask, context_length=context_length,
                       mask=maskf, has_eos=has_eos, logprobs=logprobs, ref_logprobs=ref_logprobs, values=values,
                       rewards=rewards, advantages=advantages, returns=returns, scores=scores,
                       raw_scores=raw_scores, kl=kl, non_score_reward=(-self.kl_ctl.value * kl).sum(1),
                       entropy=entropy, texts=texts, timings=timings, step_rewards=step_rewards)

    # -- optimisation ----------------------------------------------------------------------------------------
    def optimize(self, data: Rollout) -> dict[str, float]:
        """PPO epochs over minibatches of one rollout (step 5). Returns the loss statistics, token means over
        every epoch, minibatch and process.

        Each minibatch's loss is the mean over all its valid tokens on every process: a micro-batch contributes
        ``sum of its token losses / (tokens of the global minibatch / processes)``, and DDP's gradient average over
        the processes completes the mean. Gradients are all-reduced once per minibatch (``no_sync`` on the other
        micro-batches).
        """
        args = self.args
        if args.policy_update == "trpo":
            return self._trpo_update(data)
        self.wrapper.train()
        freeze_actor = self.use_value_model and self.global_step < args.freezing_actor_steps
        sums: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
        n = data.query_responses.shape[0]
        micro = args.per_device_train_batch_size
        world = self.accelerator.num_processes
        draw = self.global_step * args.num_ppo_epochs * args.num_mini_batches  # the ptx micro-batch index
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(n).tolist()
            for mb_start in range(0, n, args.mini_batch_size):
                mb = order[mb_start:mb_start + args.mini_batch_size]
                mb_tokens = self._reduce_sum(data.mask[torch.tensor(mb, device=data.mask.device)].sum())
                normaliser = (mb_tokens / world).clamp(min=1.0)
                self.optimizer.zero_grad()
                if self.ptx_dataset is not None:  # PPO-ptx: ptx_coef * the demonstrations' mean NLL per token
                    qr, am, p_len, c_mask = self._ptx_batch(draw)
                    draw += 1
                    # the mean over every process's demonstration tokens: DDP averages the gradients over the
                    # processes, so each divides its NLL sum by the global token count / world (as the RL loss)
                    ptx_tokens = c_mask.sum()
                    ptx_normaliser = (self._reduce_sum(ptx_tokens) / world).clamp(min=1.0)
                    with self.accelerator.no_sync(self.wrapper):  # the last RL micro-batch all-reduces
                        ptx_logprobs = self.wrapper(qr, am, p_len, 1.0)[0]
                        ptx_nll = -(ptx_logprobs * c_mask).sum()
                        self.accelerator.backward(args.ptx_coef * ptx_nll / ptx_normaliser)
                    sums["loss/ptx"][0].append(ptx_nll.detach())
                    sums["loss/ptx"][1].append(ptx_tokens)
                starts = list(range(0, len(mb), micro))
                for mc_start in starts:
                    idx = torch.tensor(mb[mc_start:mc_start + micro], device=self.accelerator.device)
                    m = data.mask[idx]
                    sync = contextlib.nullcontext() if mc_start == starts[-1] else self.accelerator.no_sync(self.wrapper)
                    with sync:
                        new_logprobs, _, new_values, _ = self.wrapper(data.query_responses[idx],
                                                                      data.attention_mask[idx], data.context_length,
                                                                      args.temperature)
                        pg_loss, pg_stats = ppo_policy_loss(new_logprobs, data.logprobs[idx], data.advantages[idx], m,
                                                            args.cliprange, num_tokens=normaliser)
                        loss = pg_loss
                        tokens = m.sum()
                        # the micro-batch's token means (its losses un-normalised), weighted by its tokens below
                        means = {"loss/policy": pg_loss * normaliser / tokens.clamp(min=1),
                                 **{f"policy/{k}": v for k, v in pg_stats.items()}}
                        if self.use_value_model:
                            vf_loss, vf_stats = ppo_value_loss(new_values, data.values[idx], data.returns[idx], m,
                                                               args.cliprange_value, num_tokens=normaliser)
                            # frozen actor: 0 * pg_loss keeps the policy in the graph (DDP expects its gradients)
                            loss = (0.0 if freeze_actor else 1.0) * pg_loss + args.vf_coef * vf_loss
                            means |= {"loss/value": vf_loss * normaliser / tokens.clamp(min=1),
                                      **{f"value/{k}": v for k, v in vf_stats.items()}}
                        self.accelerator.backward(loss)
                    for key, mean in means.items():
                        sums[key][0].append(mean.detach() * tokens)
                        sums[key][1].append(tokens)
                if freeze_actor:  # critic warm-up: the policy's gradients (all-reduced zeros or not) are dropped
                    for p in self.accelerator.unwrap_model(self.wrapper).policy.parameters():
                        p.grad = None
                if args.max_grad_norm and args.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(self.wrapper.parameters(), args.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
        return self._global_means({k: (torch.stack(v), torch.stack(w)) for k, (v, w) in sums.items()})

    def _trpo_update(self, data: Rollout) -> dict[str, float]:
        """TRPO's update of one rollout: the value model as in PPO (AdamW on the clipped value loss), then one
        natural-gradient step of the policy.

        1. Surrogate ``L(theta) = mean_t rho_t A_t`` (rho_t = pi_theta / pi_old of the rollout token) and its
           gradient g at theta_old, over every valid token of the rollout at once (no minibatches).
        2. F, the Fisher matrix, as the Gauss-Newton Hessian ``mean_t J_t^T J_t`` (J_t = d log pi_theta(a_t)/d theta,
           the empirical Fisher on the sampled tokens): the Hessian of ``mean_t 0.5 * (log pi_theta - sg[log
           pi_theta])^2`` (`fisher_vector_product`), damped. Not the Hessian of ``0.5 * (log pi_theta - log
           pi_old)^2``: the rollout's log-probs come from a bf16 forward, the residual is not 0 at theta_old, and its
           second-order term made that matrix indefinite on the default model (s . F s < 0 at update 6).
        3. s = F^-1 g by `conjugate_gradient`; the full step scaled to ``trpo_max_kl`` (`trust_region_step`).
        4. `backtracking_line_search`: the largest halving of the step whose mean per-token KL(pi_old || pi_new)
           (k3 estimator on the rollout tokens) is within ``trpo_max_kl`` and whose surrogate improves; none
           passing, the policy is left as it was.

        The policy's log-probs are computed in fp32 without the fused log-prob kernel, and attention in PyTorch's
        math backend (the fused kernels have no double backward). One process only;
        the full-batch double backward holds the graph of the whole rollout, so with a full model it needs a small
        batch: it is practical with LoRA (only the adapter's parameters are in theta) or small models.

        Source: Schulman et al. 2015, https://arxiv.org/abs/1502.05477, Sec. 6 and Appendix C.
        """
        args = self.args
        stats: dict[str, float] = {}
        if self.use_value_model:
            stats |= self._value_updates(data)
        policy = self.policy
        policy.train()
        params = [p for p in policy.parameters() if p.requires_grad]
        mask = data.mask
        old = data.logprobs

        def logprobs() -> torch.Tensor:
            out = policy(input_ids=data.query_responses, attention_mask=data.attention_mask,
                         position_ids=_position_ids(data.attention_mask), use_cache=False)
            logits = out.logits[:, data.context_length - 1: -1].float() / args.temperature
            tokens = data.query_responses[:, data.context_length:]
            return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

        def surrogate(new: torch.Tensor) -> torch.Tensor:
            return masked_mean(torch.exp(new - old) * data.advantages, mask)

        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no double backward
            new = logprobs()
        objective = surrogate(new)
        g = flat_grad(objective, params, retain_graph=True)
        start = objective.item()
        if not torch.any(g != 0):  # every advantage 0 (or no valid token): no direction, the policy stays
            del new, objective
            policy.zero_grad(set_to_none=True)
            return stats | {"loss/policy": -start, "policy/trpo_step_fraction": 0.0, "policy/trpo_kl": 0.0,
                            "policy/trpo_improvement": 0.0, "policy/trpo_backtracks": 0.0,
                            "policy/trpo_expected_improvement": 0.0}
        fvp = fisher_vector_product(masked_mean(0.5 * (new - new.detach()) ** 2, mask), params,
                                    damping=args.trpo_damping)
        direction = conjugate_gradient(fvp, g, iterations=args.trpo_cg_iterations)
        full_step = trust_region_step(direction, fvp(direction).detach(), args.trpo_max_kl)
        theta = torch.nn.utils.parameters_to_vector(params).detach()
        del new, objective, fvp

        @torch.no_grad()
        def evaluate(step: torch.Tensor) -> tuple[float, float]:
            torch.nn.utils.vector_to_parameters(theta + step, params)
            trial = logprobs()
            return surrogate(trial).item() - start, masked_mean(per_token_kl(old, trial, "k3"), mask).item()

        step, info = backtracking_line_search(evaluate, full_step, (g @ full_step).item(), args.trpo_max_kl,
                                              max_backtracks=args.trpo_max_backtracks)
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(theta if step is None else theta + step, params)
        policy.zero_grad(set_to_none=True)
        return stats | {"loss/policy": -start, "policy/trpo_step_fraction": info["fraction"],
                        "policy/trpo_kl": info["kl"] if step is not None else 0.0,
                        "policy/trpo_improvement": info["improvement"] if step is not None else 0.0,
                        "policy/trpo_backtracks": float(info["backtracks"]),
                        "policy/trpo_expected_improvement": (g @ full_step).item()}

    def _value_updates(self, data: Rollout) -> dict[str, float]:
        """TRPO's value-model training: ``num_ppo_epochs`` passes of AdamW on the clipped value loss
        (`ppo_value_loss`) over minibatches of the rollout; the policy's parameters get no gradient."""
        args = self.args
        value_model = self.value_model
        value_model.train()
        n = data.query_responses.shape[0]
        losses, errors = [], []
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(n).tolist()
            for mb_start in range(0, n, args.mini_batch_size):
                idx = torch.tensor(order[mb_start:mb_start + args.mini_batch_size], device=data.mask.device)
                self.optimizer.zero_grad()
                values = token_values(value_model, data.query_responses[idx], data.attention_mask[idx],
                                      data.context_length)
                loss, vf_stats = ppo_value_loss(values, data.values[idx], data.returns[idx], data.mask[idx],
                                                args.cliprange_value)
                self.accelerator.backward(args.vf_coef * loss)
                if args.max_grad_norm and args.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(value_model.parameters(), args.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                losses.append(loss.item())
                errors.append(vf_stats["error"].item())
        return {"loss/value": sum(losses) / len(losses), "value/error": sum(errors) / len(errors)}

    # -- loop ------------------------------------------------------------------------------------------------
    def _rollout_metrics(self, data: Rollout) -> dict[str, float]:
        """The logged rollout statistics, over the global batch (every process)."""
        ones = torch.ones_like(data.raw_scores)
        terms = {
            "objective/scores": (data.raw_scores, ones),
            "objective/kl": (data.kl.sum(1), ones),
            "objective/entropy": (data.entropy * data.mask, data.mask),
            "objective/non_score_reward": (data.non_score_reward, ones),
            "objective/rlhf_reward": (data.scores + data.non_score_reward, ones),
            "response/length": (data.mask.sum(1), ones),
            "response/eos_rate": (data.has_eos.float(), ones),
        }
        if self.use_value_model:
            terms["value/mean"] = (data.values * data.mask, data.mask)
        if data.step_rewards is not None:  # the summed process reward of a response (-coef per wrong step)
            terms["objective/step_rewards"] = (data.step_rewards.sum(1), ones)
        k = self.args.num_samples_per_prompt
        if k > 1:  # groups whose responses all score the same: no signal under a group baseline
            groups = data.raw_scores.view(-1, k)
            same = (groups == groups[:, :1]).all(dim=1).float()
            terms["objective/zero_variance_groups"] = (same, torch.ones_like(same))
        return self._global_means(terms)

    def train(self, resume_from_checkpoint: str | None = None) -> list[dict]:
        """Run ``num_updates`` PPO updates, checkpointing every ``save_steps``; returns the log history.

        Every update's metrics go to ``log_history`` (and ``trainer_state.json``); every ``logging_steps`` they
        are also printed and sent to the ``report_to`` integrations. ``logging_steps`` and ``save_steps`` below 1
        are fractions of the run, as in `transformers.TrainingArguments`.

        Args:
            resume_from_checkpoint (`str`, *optional*): a ``checkpoint-N`` folder written by this trainer; the
                run continues at update N+1 with the same weights, optimizer, scheduler, KL coefficient and
                random state, so the result equals an uninterrupted run.
        """
        args = self.args
        if resume_from_checkpoint:
            self._load_checkpoint(resume_from_checkpoint)
        self.state.global_step = self.global_step
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        bar = tqdm(total=self.num_updates, initial=self.global_step,
                   desc="PPO" if self.use_value_model else "REINFORCE++",
                   disable=not self.accelerator.is_local_main_process, dynamic_ncols=True)
        while self.global_step < self.num_updates:
            start = time.perf_counter()
            indices = self._batch_indices(self.global_step)
            data = self.rollout(self.train_dataset[indices], indices)
            train_start = time.perf_counter()
            opt_stats = self.optimize(data)
            train_time = time.perf_counter() - train_start
            self.global_step += 1
            self.episode += self.batch_size
            rollout_stats = self._rollout_metrics(data)
            self.kl_ctl.update(rollout_stats["objective/kl"], self.batch_size)  # the global mean KL
            n_tokens = data.query_responses.numel()
            log = {
                "step": self.global_step,
                "episode": self.episode,
                **rollout_stats,
                **opt_stats,
                "kl_coef": self.kl_ctl.value,
                "learning_rate": self.lr_scheduler.get_last_lr()[0],
                # timings are this process's (the main one's in the log)
                "time/generate": data.timings["generate"],
                "time/score": data.timings["score"],
                "time/forward": data.timings["forward"],
                "time/train": train_time,
                "time/step": time.perf_counter() - start,
                "tokens_per_second": n_tokens * (1 + args.num_ppo_epochs) / (time.perf_counter() - start),
            }
            self.log_history.append(log)
            self.state.global_step, self.state.epoch = self.global_step, self.episode / len(self.train_dataset)
            if args.logging_strategy != "no" and self.global_step % self.logging_every == 0:
                if self.accelerator.is_main_process:
                    bar.write(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v
                                          for k, v in log.items()}))
                    for text in data.texts[: args.num_sample_generations]:
                        bar.write(f"  sample: {text[:200]!r}")
                self.control = self.callback_handler.on_log(args, self.state, self.control,
                                                            {k: v for k, v in log.items() if k != "step"})
            bar.set_postfix(score=f"{log['objective/scores']:.3f}", kl=f"{log['objective/kl']:.3f}",
                            loss=f"{log['loss/policy']:.3g}")
            bar.update(1)
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            if args.save_strategy != "no" and self.global_step % self.save_every == 0 \
                    and self.global_step < self.num_updates:
                self._save_checkpoint()
        bar.close()
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        return self.log_history

    # -- saving ----------------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"global_step": self.global_step, "episode": self.episode, "kl_coef": self.kl_ctl.value,
                "num_updates": self.num_updates, "log_history": self.log_history,
                "config": {k: v for k, v in asdict(self.args).items() if isinstance(v, (int, float, str, bool))}}

    def _save_checkpoint(self) -> Path:
        """Write ``checkpoint-<step>/`` atomically: a temp folder renamed into place once complete."""
        output_dir = Path(self.args.output_dir)
        final = output_dir / f"{CHECKPOINT_PREFIX}{self.global_step}"
        tmp = output_dir / f".tmp-{CHECKPOINT_PREFIX}{self.global_step}"
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # only our own half-written temp folder
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp), safe_serialization=False)
        if self.accelerator.is_main_process:
            (tmp / TRAINER_STATE_NAME).write_text(json.dumps(self._state(), indent=1))
            if final.exists():
                raise FileExistsError(f"{final} already exists; refusing to overwrite a checkpoint.")
            os.replace(tmp, final)
            self._rotate_checkpoints()
        self.accelerator.wait_for_everyone()
        return final

    def _rotate_checkpoints(self) -> None:
        limit = self.args.save_total_limit
        if not limit:
            return
        checkpoints = sorted(Path(self.args.output_dir).glob(f"{CHECKPOINT_PREFIX}*"),
                             key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))
        for old in checkpoints[:-limit]:
            shutil.rmtree(old)

    def _load_checkpoint(self, checkpoint: str) -> None:
        state_file = Path(checkpoint) / TRAINER_STATE_NAME
        if not state_file.is_file():
            raise FileNotFoundError(f"{checkpoint} is not a PPO checkpoint of this trainer (no {TRAINER_STATE_NAME}).")
        self.accelerator.load_state(str(checkpoint))
        state = json.loads(state_file.read_text())
        if state["num_updates"] != self.num_updates:
            raise ValueError(
                f"{checkpoint} was written by a run of {state['num_updates']} updates; this run has "
                f"{self.num_updates}. Resume with the same max_steps / total_episodes / batch sizes."
            )
        self.global_step, self.episode = state["global_step"], state["episode"]
        self.kl_ctl.value = state["kl_coef"]
        self.log_history = state["log_history"]
        logger.info("Resumed from %s at update %d.", checkpoint, self.global_step)

    def save_model(self, output_dir: str | None = None) -> None:
        """Save the policy (``save_pretrained``: a full model, or the LoRA adapter) with its tokenizer, the value
        model (PPO only) under ``value_model/``, and ``trainer_state.json`` with the log history."""
        output_dir = Path(output_dir or self.args.output_dir)
        self.accelerator.wait_for_everyone()
        # Sharded parameters (FSDP, ZeRO-3): every process takes part in gathering the full state dict.
        full = self.accelerator.get_state_dict(self.wrapper) if self.is_fsdp or self.is_zero3 else None
        if not self.accelerator.is_main_process:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        parts = {"policy": None, "value_model": None}
        if full is not None:  # split by module; a tied parameter (LM head = embeddings) is saved once, as usual
            modules = {"policy": self.policy, "value_model": self.value_model}
            for name, module in modules.items():
                if module is not None:
                    keep = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}
                    parts[name] = {k[len(name) + 1:]: v for k, v in full.items()
                                   if k.startswith(name + ".") and k[len(name) + 1:] in keep}
        self.policy.save_pretrained(output_dir, state_dict=parts["policy"], safe_serialization=True)
        self.tokenizer.save_pretrained(output_dir)
        if self.use_value_model:
            self.value_model.save_pretrained(output_dir / "value_model", state_dict=parts["value_model"],
                                             safe_serialization=True)
        (output_dir / TRAINER_STATE_NAME).write_text(json.dumps(self._state(), indent=1))

