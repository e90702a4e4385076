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
4. **GAE** (Schulman et al. 2016, Eq. 16) with the value model's per-token values -> advantages, returns;
   advantages are whitened over the valid tokens of the batch.
5. **Optimise** for ``num_ppo_epochs`` epochs over ``num_mini_batches`` shuffled minibatches: the clipped
   surrogate policy loss (Schulman et al. 2017, Eq. 7) plus ``vf_coef`` times the clipped value loss, one
   optimizer over the policy's trainable parameters and the value model.
6. **KL coefficient**: fixed, or adapted towards ``target_kl`` (Ziegler et al. 2019, Sec. 2.2).

**REINFORCE++** (``advantage_estimator="reinforce_pp"``; Hu et al. 2025, https://huggingface.co/papers/2501.03262,
Sec. 3): no value model is loaded or trained. Step 3 is unchanged (token-level KL penalty in the reward), and the
advantage of response token ``t`` is the undiscounted reward-to-go ``A_t = score - beta * sum_{i>=t} KL_i`` (GAE
with values 0 and ``gamma = lam = 1``), normalised to zero mean and unit variance over all valid tokens of the
*global* batch (every process). The clipped surrogate of step 5 is kept, as in the paper. TRL 1.16's GRPO cannot
express this exactly (its KL is a loss term, not a per-token reward, and its advantage is one scalar per
sequence), so it lives here.

Advantages (both estimators) are whitened over the global batch: the statistics are all-reduced across processes.

Implementation choices follow Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO"
(https://huggingface.co/papers/2403.17031): log-probs of the rollout are recomputed with a forward pass (not
taken from ``generate``), logits are divided by the sampling temperature, the value of the state before each
response token is read at the previous position, the reward model is frozen.

With a PEFT (LoRA) policy and no explicit reference model, the reference is the policy with its adapters
disabled, so no second copy of the weights is held.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import TrainingArguments, get_scheduler
from trl.trainer.utils import disable_dropout_in_model, selective_log_softmax_and_entropy

from open_rlhf.config import HardwareDefaultsMixin
from open_rlhf.errors import ConfigError
from open_rlhf.rl_math import (
    AdaptiveKLController,
    FixedKLController,
    compute_gae,
    compute_rewards,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    reinforce_pp_advantages,
    response_mask_after_eos,
)

logger = logging.getLogger(__name__)

INVALID_LOGPROB = 1.0  # fill value for masked positions; never read by a loss (all losses are masked)
TRAINER_STATE_NAME = "trainer_state.json"
ADVANTAGE_ESTIMATORS = ("gae", "reinforce_pp")
CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class PPOConfig(HardwareDefaultsMixin, TrainingArguments):
    """`transformers.TrainingArguments` plus the PPO hyper-parameters.

    Batch sizes (per process): one rollout holds ``rollout_batch_size = per_device_train_batch_size *
    gradient_accumulation_steps * num_mini_batches`` prompts; each optimizer step sees one minibatch of
    ``per_device_train_batch_size * gradient_accumulation_steps`` of them. ``max_steps`` counts rollouts
    (updates); if it is not set, ``total_episodes`` (default: ``num_train_epochs`` passes over the prompts)
    decides.
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
    total_episodes: int | None = field(default=None, metadata={"help": "Total rollouts (prompts) to train on."})
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
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten per-token rewards before GAE."})
    advantage_estimator: str = field(
        default="gae",
        metadata={"help": "'gae': PPO with a value model (GAE); 'reinforce_pp': REINFORCE++ (no value model, "
                          "reward-to-go advantages normalised over the global batch)."},
    )
    num_sample_generations: int = field(
        default=2, metadata={"help": "Sample generations printed in the log per update (0 = none)."}
    )

    def __post_init__(self):
        super().__post_init__()  # HardwareDefaultsMixin (device, bf16), then TrainingArguments
        if self.advantage_estimator not in ADVANTAGE_ESTIMATORS:
            raise ConfigError(f"--advantage_estimator must be one of {ADVANTAGE_ESTIMATORS}, got "
                              f"{self.advantage_estimator!r}.")
        if self.kl_estimator not in ("k1", "k3"):
            raise ConfigError(f"--kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}.")
        for name in ("num_mini_batches", "num_ppo_epochs", "response_length", "local_rollout_forward_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        if self.temperature <= 0:
            raise ConfigError(f"--temperature must be > 0 (sampling is required for PPO), got {self.temperature}.")

    @property
    def rollout_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches

    @property
    def mini_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps


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

    Returns:
        `torch.Tensor` of shape `(B, R)`.
    """
    backbone = getattr(value_model, value_model.base_model_prefix)
    hidden = backbone(input_ids=query_responses, attention_mask=attention_mask,
                      position_ids=_position_ids(attention_mask), use_cache=False).last_hidden_state
    head = value_model.score if hasattr(value_model, "score") else value_model.get_output_embeddings()
    return head(hidden[:, context_length - 1: -1]).squeeze(-1).float()


class PolicyAndValue(nn.Module):
    """One module holding both trained networks, so one optimizer and one DDP wrapper cover both.

    ``value_model`` is None for REINFORCE++; ``forward`` then returns None for the values.
    """

    def __init__(self, policy: nn.Module, value_model: nn.Module | None):
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    def forward(self, query_responses, attention_mask, context_length: int, temperature: float):
        logprobs, entropy = policy_logprobs(self.policy, query_responses, attention_mask, context_length, temperature)
        values = None
        if self.value_model is not None:
            values = token_values(self.value_model, query_responses, attention_mask, context_length)
        return logprobs, entropy, values


# ----------------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------------


class PPOTrainer:
    """PPO trainer for causal-LM policies (see the module docstring for the algorithm).

    Args:
        args (`PPOConfig`): hyper-parameters and output options.
        processing_class: the policy's tokenizer (with a chat template and a pad token; padding side left).
        model: the policy, a causal LM (a `peft.PeftModel` for LoRA).
        ref_model: the frozen reference model; None with a PEFT policy (adapter-disabled policy is used).
        reward_funcs: one callable or a list, each ``f(prompts, completions, **columns) -> list[float]``;
            their scores are summed (a `RewardModelScorer`, `accuracy_reward`, ...).
        value_model: a sequence classifier with one output (num_labels=1), trained with the policy; must be None
            with ``advantage_estimator="reinforce_pp"`` (REINFORCE++ has no value model).
        train_dataset: a `datasets.Dataset` with a conversational ``prompt`` column; other columns (e.g.
            ``answer``) are passed to the reward functions.

    Raises:
        ValueError: when the dataset has no ``prompt`` column or is smaller than one rollout batch, when
            ``ref_model`` is None for a non-PEFT policy, or when ``value_model`` is given for REINFORCE++ / missing
            for GAE.
    """

    def __init__(self, args: PPOConfig, processing_class, model, ref_model, reward_funcs, value_model, train_dataset):
        self.args = args
        self.tokenizer = processing_class
        if "prompt" not in train_dataset.column_names:
            raise ValueError(f"The PPO dataset needs a 'prompt' column; it has {train_dataset.column_names}.")
        if len(train_dataset) < args.rollout_batch_size:
            raise ValueError(
                f"The PPO dataset has {len(train_dataset)} prompts, fewer than one rollout batch "
                f"({args.rollout_batch_size} = per_device_train_batch_size * gradient_accumulation_steps * "
                "num_mini_batches). Use more prompts or a smaller batch."
            )
        self.is_peft = hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
        if ref_model is None and not self.is_peft:
            raise ValueError("ref_model is required unless the policy is a PEFT model (adapter-disabled reference).")
        self.use_value_model = args.advantage_estimator == "gae"
        if self.use_value_model and value_model is None:
            raise ValueError("advantage_estimator='gae' (PPO) needs a value model; pass one, or use "
                             "advantage_estimator='reinforce_pp' (REINFORCE++), which has none.")
        if not self.use_value_model and value_model is not None:
            raise ValueError("advantage_estimator='reinforce_pp' (REINFORCE++) trains no value model; pass "
                             "value_model=None.")
        self.reward_funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
        self.train_dataset = train_dataset
        self.accelerator = Accelerator(cpu=args.use_cpu,
                                       mixed_precision="bf16" if args.bf16 else "fp16" if args.fp16 else "no")
        set_seed(args.seed)

        for m in (model, value_model, ref_model):
            if m is not None:
                disable_dropout_in_model(m)  # dropout would make the rollout and training log-probs disagree
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
            ref_model.to(self.accelerator.device)
        self.ref_model = ref_model
        self.eos_token_id = self.tokenizer.eos_token_id
        model.generation_config.eos_token_id = self.eos_token_id
        model.generation_config.pad_token_id = self.tokenizer.pad_token_id

        # Schedule: one update = one rollout batch.
        world = self.accelerator.num_processes
        self.batch_size = args.rollout_batch_size * world
        if args.max_steps and args.max_steps > 0:
            self.num_updates = args.max_steps
        else:
            episodes = args.total_episodes or int(args.num_train_epochs * len(train_dataset))
            self.num_updates = max(1, episodes // self.batch_size)
        num_optimizer_steps = self.num_updates * args.num_ppo_epochs * args.num_mini_batches

        self.wrapper = PolicyAndValue(model, value_model)
        params = [p for p in self.wrapper.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                      eps=args.adam_epsilon, weight_decay=args.weight_decay)
        scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                                  num_warmup_steps=args.get_warmup_steps(num_optimizer_steps),
                                  num_training_steps=num_optimizer_steps)
        self.wrapper, self.optimizer, self.lr_scheduler = self.accelerator.prepare(self.wrapper, optimizer, scheduler)
        self.kl_ctl = (AdaptiveKLController(args.kl_coef, args.target_kl, args.kl_horizon) if args.adaptive_kl
                       else FixedKLController(args.kl_coef))
        self.global_step = 0
        self.episode = 0
        self.log_history: list[dict] = []

    # -- properties ------------------------------------------------------------------------------------------
    @property
    def policy(self):
        return self.accelerator.unwrap_model(self.wrapper).policy

    @property
    def value_model(self):
        return self.accelerator.unwrap_model(self.wrapper).value_model

    def _reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over processes (identity with one process): global-batch statistics for advantage whitening."""
        return self.accelerator.reduce(tensor, "sum") if self.accelerator.num_processes > 1 else tensor

    # -- data ------------------------------------------------------------------------------------------------
    def _batch_indices(self, step: int) -> list[int]:
        """Prompt indices of update ``step`` for this process: a seeded permutation per pass over the data."""
        per_epoch = len(self.train_dataset) // self.batch_size
        epoch, offset = divmod(step, per_epoch)
        generator = torch.Generator().manual_seed(self.args.seed + epoch)
        perm = torch.randperm(len(self.train_dataset), generator=generator).tolist()
        start = offset * self.batch_size + self.accelerator.process_index * self.args.rollout_batch_size
        return perm[start:start + self.args.rollout_batch_size]

    def _encode_prompts(self, prompts: list) -> dict[str, torch.Tensor]:
        texts = [p if isinstance(p, str) else
                 self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        side = self.tokenizer.truncation_side
        self.tokenizer.truncation_side = "left"
        try:
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", truncation=True,
                                 max_length=self.args.max_prompt_length, add_special_tokens=False)
        finally:
            self.tokenizer.truncation_side = side
        return {k: v.to(self.accelerator.device) for k, v in enc.items()}

    # -- rollout ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, batch: dict) -> dict:
        """Generate, score and compute advantages for one batch of prompts (steps 1-4 of the module docstring).

        Returns a dict of tensors (`(B, R)` unless noted) and the decoded responses, plus timings in seconds.
        """
        args = self.args
        timings = {}
        enc = self._encode_prompts(batch["prompt"])
        context_length = enc["input_ids"].shape[1]
        policy = self.policy
        policy.eval()
        start = time.perf_counter()
        autocast = self.accelerator.autocast
        with autocast():
            query_responses = policy.generate(
                **enc, max_new_tokens=args.response_length, do_sample=True, temperature=args.temperature,
                top_p=args.top_p, top_k=0, eos_token_id=self.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
            )
        timings["generate"] = time.perf_counter() - start
        responses = query_responses[:, context_length:]
        mask, has_eos = response_mask_after_eos(responses, self.eos_token_id)
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
        timings["score"] = time.perf_counter() - start

        start = time.perf_counter()
        logprobs, ref_logprobs, values, entropies = [], [], [], []
        step = args.local_rollout_forward_batch_size
        for i in range(0, query_responses.shape[0], step):
            qr, am = query_responses[i:i + step], attention_mask[i:i + step]
            with autocast():
                lp, ent = policy_logprobs(policy, qr, am, context_length, args.temperature)
                if self.ref_model is None:
                    with policy.disable_adapter():
                        ref_lp, _ = policy_logprobs(policy, qr, am, context_length, args.temperature)
                else:
                    ref_lp, _ = policy_logprobs(self.ref_model, qr, am, context_length, args.temperature)
                if self.use_value_model:
                    values.append(token_values(self.value_model, qr, am, context_length))
                else:  # REINFORCE++: no value model
                    values.append(torch.zeros(qr.shape[0], qr.shape[1] - context_length, device=qr.device))
            logprobs.append(lp)
            ref_logprobs.append(ref_lp)
            entropies.append(ent)
        logprobs, ref_logprobs = torch.cat(logprobs), torch.cat(ref_logprobs)
        values, entropy = torch.cat(values), torch.cat(entropies)
        maskf = mask.float()
        logprobs = torch.where(mask, logprobs, INVALID_LOGPROB)
        ref_logprobs = torch.where(mask, ref_logprobs, INVALID_LOGPROB)
        values = values * maskf

        rewards, kl = compute_rewards(scores, logprobs, ref_logprobs, maskf, self.kl_ctl.value, args.kl_estimator)
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, maskf, shift_mean=False)
        if self.use_value_model:
            advantages, returns = compute_gae(rewards, values, maskf, args.gamma, args.lam)
            advantages = masked_whiten(advantages, maskf, reduce_sum=self._reduce_sum)
        else:
            advantages = reinforce_pp_advantages(rewards, maskf, reduce_sum=self._reduce_sum)
            returns = torch.zeros_like(advantages)  # no value model to fit
        timings["forward"] = time.perf_counter() - start

        return dict(
            query_responses=query_responses, attention_mask=attention_mask, context_length=context_length,
            mask=maskf, has_eos=has_eos, logprobs=logprobs, values=values, advantages=advantages,
            returns=returns, scores=scores, raw_scores=raw_scores, kl=kl, entropy=entropy,
            non_score_reward=(-self.kl_ctl.value * kl).sum(1), texts=texts, timings=timings,
        )

    # -- optimisation ----------------------------------------------------------------------------------------
    def optimize(self, data: dict) -> dict[str, float]:
        """PPO epochs over minibatches of one rollout (step 5). Returns averaged loss statistics."""
        args = self.args
        self.wrapper.train()
        stats = defaultdict(list)
        n = data["query_responses"].shape[0]
        micro = args.per_device_train_batch_size
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(n).tolist()
            for mb_start in range(0, n, args.mini_batch_size):
                mb = order[mb_start:mb_start + args.mini_batch_size]
                self.optimizer.zero_grad()
                for mc_start in range(0, len(mb), micro):
                    idx = torch.tensor(mb[mc_start:mc_start + micro], device=self.accelerator.device)
                    m = data["mask"][idx]
                    new_logprobs, entropy, new_values = self.wrapper(
                        data["query_responses"][idx], data["attention_mask"][idx], data["context_length"],
                        args.temperature)
                    pg_loss, pg_stats = ppo_policy_loss(new_logprobs, data["logprobs"][idx],
                                                        data["advantages"][idx], m, args.cliprange)
                    loss = pg_loss
                    if self.use_value_model:
                        vf_loss, vf_stats = ppo_value_loss(new_values, data["values"][idx], data["returns"][idx], m,
                                                           args.cliprange_value)
                        loss = pg_loss + args.vf_coef * vf_loss
                        stats["loss/value"].append(vf_loss.item())
                        stats["value/clipfrac"].append(vf_stats["clipfrac"].item())
                        stats["value/error"].append(vf_stats["error"].item())
                    self.accelerator.backward(loss * len(idx) / len(mb))
                    stats["loss/policy"].append(pg_loss.item())
                    stats["policy/clipfrac"].append(pg_stats["clipfrac"].item())
                    stats["policy/approxkl"].append(pg_stats["approxkl"].item())
                    stats["policy/ratio"].append(pg_stats["ratio"].item())
                if args.max_grad_norm and args.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(self.wrapper.parameters(), args.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
        return {k: sum(v) / len(v) for k, v in stats.items()}

    # -- loop ------------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | None = None) -> list[dict]:
        """Run ``num_updates`` PPO updates, checkpointing every ``save_steps``; returns the log history.

        Args:
            resume_from_checkpoint (`str`, *optional*): a ``checkpoint-N`` folder written by this trainer; the
                run continues at update N+1 with the same weights, optimizer, scheduler, KL coefficient and
                random state, so the result equals an uninterrupted run.
        """
        args = self.args
        if resume_from_checkpoint:
            self._load_checkpoint(resume_from_checkpoint)
        bar = tqdm(total=self.num_updates, initial=self.global_step,
                   desc="PPO" if self.use_value_model else "REINFORCE++",
                   disable=not self.accelerator.is_local_main_process)
        while self.global_step < self.num_updates:
            start = time.perf_counter()
            batch = self.train_dataset[self._batch_indices(self.global_step)]
            data = self.rollout(batch)
            train_start = time.perf_counter()
            opt_stats = self.optimize(data)
            train_time = time.perf_counter() - train_start
            self.global_step += 1
            self.episode += self.batch_size
            mean_kl = data["kl"].sum(1).mean().item()
            self.kl_ctl.update(mean_kl, self.batch_size)
            n_tokens = data["query_responses"].numel()
            lengths = data["mask"].sum(1)
            log = {
                "step": self.global_step,
                "episode": self.episode,
                "objective/scores": data["raw_scores"].mean().item(),
                "objective/kl": mean_kl,
                "objective/entropy": masked_mean(data["entropy"], data["mask"]).item(),
                "objective/non_score_reward": data["non_score_reward"].mean().item(),
                "objective/rlhf_reward": (data["scores"] + data["non_score_reward"]).mean().item(),
                **opt_stats,
                **({"value/mean": masked_mean(data["values"], data["mask"]).item()} if self.use_value_model else {}),
                "response/length": lengths.mean().item(),
                "response/eos_rate": data["has_eos"].float().mean().item(),
                "kl_coef": self.kl_ctl.value,
                "learning_rate": self.lr_scheduler.get_last_lr()[0],
                "time/generate": data["timings"]["generate"],
                "time/score": data["timings"]["score"],
                "time/forward": data["timings"]["forward"],
                "time/train": train_time,
                "time/step": time.perf_counter() - start,
                "tokens_per_second": n_tokens * (1 + args.num_ppo_epochs) / (time.perf_counter() - start),
            }
            self.log_history.append(log)
            if self.accelerator.is_main_process and args.logging_strategy != "no" and self.global_step % max(
                    1, int(args.logging_steps)) == 0:
                bar.write(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in log.items()}))
                for text in data["texts"][: args.num_sample_generations]:
                    bar.write(f"  sample: {text[:200]!r}")
            bar.set_postfix(score=f"{log['objective/scores']:.3f}", kl=f"{mean_kl:.3f}")
            bar.update(1)
            if args.save_strategy != "no" and args.save_steps and self.global_step % int(args.save_steps) == 0 \
                    and self.global_step < self.num_updates:
                self._save_checkpoint()
        bar.close()
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
        if not self.accelerator.is_main_process:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(output_dir, safe_serialization=True)
        self.tokenizer.save_pretrained(output_dir)
        if self.use_value_model:
            self.value_model.save_pretrained(output_dir / "value_model", safe_serialization=True)
        (output_dir / TRAINER_STATE_NAME).write_text(json.dumps(self._state(), indent=1))

