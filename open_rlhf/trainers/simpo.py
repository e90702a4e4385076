"""SimPO: reference-free preference optimisation with a length-normalised implicit reward.

Ours because TRL 1.16 has no SimPO in its core: only `trl.experimental.cpo` (``loss_type="simpo"``), which is
experimental (it may vanish in a minor release) and is its own trainer with its own data pipeline. This one is a
thin subclass of TRL's `DPOTrainer` (same data format, collator, fused log-prob head, PEFT, metrics names).

What one step actually does (Meng et al. 2024, https://huggingface.co/papers/2405.14734, Eq. 6):

1. One forward pass of the policy over the batch of 2B sequences ``prompt + chosen`` then ``prompt + rejected``
   (TRL's `DataCollatorForPreference`), giving the log-prob of every completion token; prompt and padding
   tokens are masked out.
2. **Length-normalised reward**: ``r(x, y) = beta / |y| * log pi(y | x)``, i.e. beta times the *average*
   per-token log-prob of the completion (nats/token). No reference model: nothing is copied, loaded or run
   besides the policy.
3. **Loss** with a target reward margin ``gamma`` (`SimPOConfig.simpo_gamma`):
   ``-log sigmoid(r(x, y_w) - r(x, y_l) - gamma)``, averaged over the B pairs; with ``label_smoothing`` eps,
   ``-(1 - eps) log sigmoid(z) - eps log sigmoid(-z)`` (the conservative form of the authors' code and of CPO).
4. Optionally (``cpo_alpha`` > 0) plus ``cpo_alpha`` times the NLL of the chosen completions, the mean over all
   their tokens (nats/token): CPO-SimPO (the SimPO authors' CPO combination; TRL's CPO with ``loss_type="simpo"``
   and ``cpo_alpha``). It keeps the chosen answer's likelihood up where the pairs share most of their tokens.

Our ``gamma`` is the paper's: a margin in reward units, subtracted *after* scaling by beta. TRL's CPO uses the
same convention (``simpo_gamma``, divided by beta inside); the authors' code instead takes
``gamma_beta_ratio = gamma / beta``. Defaults: ``beta=2.0``, ``simpo_gamma=1.0`` (gamma/beta = 0.5, the
authors' recommended starting point and their Llama-3-Base setting).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import trl.trainer.dpo_trainer as trl_dpo_trainer
from accelerate.utils import is_peft_model
from trl import DPOTrainer

from open_rlhf.config import DPOConfig

# DPOConfig fields that only mean something with a reference model or another loss; SimPOConfig rejects them
_UNUSED_DPO_FIELDS = {
    "precompute_ref_log_probs": False,
    "sync_ref_model": False,
    "ld_alpha": None,
    "f_divergence_type": "reverse_kl",
    "use_weighting": False,
    "loss_weights": None,
}


def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO loss of a batch of preference pairs, from the policy's length-averaged log-probs.

    ``z = beta * (policy_chosen_logps - policy_rejected_logps) - gamma``;
    ``losses = -(1 - label_smoothing) * log sigmoid(z) - label_smoothing * log sigmoid(-z)``.

    Args:
        policy_chosen_logps (`torch.Tensor` of shape `(B,)`): average per-token log-prob of each chosen completion
            under the policy, in nats/token (sum over completion tokens divided by their count).
        policy_rejected_logps (`torch.Tensor` of shape `(B,)`): the same for the rejected completions.
        beta (`float`): reward scale (> 0); the reward is ``beta * average log-prob``. Paper: 2.0 to 2.5 (up to 10).
        gamma (`float`): target reward margin, in reward units (the paper's gamma, *not* gamma / beta).
        label_smoothing (`float`, defaults to 0.0): probability that a pair's label is flipped, in [0, 0.5).

    Returns:
        `tuple[torch.Tensor, torch.Tensor, torch.Tensor]`: ``(losses, chosen_rewards, rejected_rewards)``, each of
        shape `(B,)`: the per-pair loss (nats), and ``beta * logps`` of the chosen and rejected completions
        (detached, for logging).

    Raises:
        ValueError: when the two log-prob tensors are not 1-D of the same shape, ``beta <= 0``, or
            ``label_smoothing`` is outside [0, 0.5).

    Source: SimPO, Meng et al. 2024, https://huggingface.co/papers/2405.14734, Eq. 6; label smoothing as in the
    authors' code (princeton-nlp/SimPO, `SimPOTrainer.simpo_loss`).
    """
    if policy_chosen_logps.dim() != 1 or policy_chosen_logps.shape != policy_rejected_logps.shape:
        raise ValueError(
            f"simpo_loss: policy_chosen_logps {tuple(policy_chosen_logps.shape)} and policy_rejected_logps "
            f"{tuple(policy_rejected_logps.shape)} must both have shape (B,), one average log-prob per pair."
        )
    if beta <= 0:
        raise ValueError(f"simpo_loss: beta={beta} must be > 0 (the paper uses 2.0 to 10).")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"simpo_loss: label_smoothing={label_smoothing} must be in [0, 0.5) (0 disables it).")
    logits = beta * (policy_chosen_logps - policy_rejected_logps) - gamma  # (B,)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, beta * policy_chosen_logps.detach(), beta * policy_rejected_logps.detach()


@dataclass
class SimPOConfig(DPOConfig):
    """Our `DPOConfig` (TRL's, with the CPU fallback) plus the SimPO target margin ``simpo_gamma``; ``beta``
    defaults to the paper's 2.0.

    Used from DPOConfig: ``beta``, ``label_smoothing`` and everything about data and training. Options that need a
    reference model or another loss (``precompute_ref_log_probs``, ``sync_ref_model``, ``ld_alpha``,
    ``f_divergence_type``, ``use_weighting``, ``loss_type``, ``loss_weights``) are an error when set.
    """

    beta: float = field(
        default=2.0,
        metadata={"help": "SimPO reward scale: reward = beta * average per-token log-prob. Paper: 2.0-2.5 (up to 10)."},
    )
    simpo_gamma: float = field(
        default=1.0,
        metadata={"help": "SimPO target reward margin gamma, in reward units (not gamma/beta). Default 1.0 = 0.5 * "
                          "beta, the authors' recommended starting point; they grid-search gamma/beta in [0, 1]."},
    )
    cpo_alpha: float = field(
        default=0.0,
        metadata={"help": "Weight of the NLL of the chosen completions (nats/token) added to the loss: CPO-SimPO "
                          "(TRL CPO's cpo_alpha with loss_type simpo). 0 (the default) is plain SimPO."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError(f"SimPOConfig.beta={self.beta} must be > 0 (the paper uses 2.0 to 10).")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"SimPOConfig.label_smoothing={self.label_smoothing} must be in [0, 0.5).")
        if self.cpo_alpha < 0:
            raise ValueError(f"SimPOConfig.cpo_alpha={self.cpo_alpha} must be >= 0 (0 is plain SimPO).")
        if self.loss_type != ["sigmoid"]:
            raise ValueError(f"SimPOConfig.loss_type={self.loss_type}: SimPO has one loss (simpo_loss); remove "
                             "loss_type, or train with DPOConfig/DPOTrainer for the other losses.")
        for name, default in _UNUSED_DPO_FIELDS.items():
            if getattr(self, name) != default:
                raise ValueError(f"SimPOConfig.{name}={getattr(self, name)!r} has no effect in SimPO (no reference "
                                 f"model, one loss); remove it (default {default!r}).")


@contextlib.contextmanager
def _reference_model_not_loaded(trainer: SimPOTrainer):
    """While `DPOTrainer.__init__` runs, make its reference-model load a no-op.

    TRL 1.16's `DPOTrainer.__init__` loads a second copy of the policy as the reference model
    (``create_model_from_path(<policy path>)``) whenever ``ref_model`` is None, the policy is not PEFT and
    ``precompute_ref_log_probs`` is off, and has no switch to skip it. The same function loads the policy when
    ``model`` is a path, but that happens before `Trainer.__init__` creates ``trainer.accelerator``; a call after
    that is the reference load, and returns None (TRL guards every later use with ``if self.ref_model is not None``).
    """
    if not hasattr(trl_dpo_trainer, "create_model_from_path"):
        raise ImportError("SimPOTrainer targets TRL 1.16's DPOTrainer, which loads its reference model with "
                          "trl.trainer.dpo_trainer.create_model_from_path; the installed TRL has no such function. "
                          "Install the pinned trl (requirements.txt) or update open_rlhf/trainers/simpo.py.")
    load = trl_dpo_trainer.create_model_from_path

    def load_policy_only(*args, **kwargs):
        return None if "accelerator" in vars(trainer) else load(*args, **kwargs)

    trl_dpo_trainer.create_model_from_path = load_policy_only
    try:
        yield
    finally:
        trl_dpo_trainer.create_model_from_path = load


class SimPOTrainer(DPOTrainer):
    """TRL's `DPOTrainer` with the SimPO loss and no reference model (see the module docstring).

    Same call as `DPOTrainer` without ``ref_model``; ``args`` is a `SimPOConfig`. Shadows two methods of TRL 1.16's
    `DPOTrainer`: ``__init__`` (skips the reference-model load, see `_reference_model_not_loaded`) and
    ``_compute_loss`` (one policy forward, `simpo_loss` on length-averaged log-probs). Logs TRL's metric names;
    ``logps/chosen`` and ``logps/rejected`` are the *average* per-token log-probs (nats/token), as in TRL's CPO.
    """

    # Model card (written with each checkpoint): ours, not DPOTrainer's DPO citation
    _tag_names = ["trl", "simpo"]
    _name = "SimPO"
    _paper = {
        "title": "SimPO: Simple Preference Optimization with a Reference-Free Reward",
        "id": "2405.14734",
        "citation": "@inproceedings{meng2024simpo,\n"
                    "    title     = {{SimPO: Simple Preference Optimization with a Reference-Free Reward}},\n"
                    "    author    = {Yu Meng and Mengzhou Xia and Danqi Chen},\n"
                    "    year      = 2024,\n"
                    "    booktitle = {Advances in Neural Information Processing Systems 37 (NeurIPS 2024)},\n"
                    "}",
    }

    def __init__(self, model, args: SimPOConfig | None = None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, compute_metrics=None, callbacks=None,
                 optimizers=(None, None), quantization_config=None, peft_config=None):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = SimPOConfig(output_dir=f"{str(name).rstrip('/').split('/')[-1]}-SimPO")
        if not isinstance(args, SimPOConfig):
            raise TypeError(f"SimPOTrainer: args must be a SimPOConfig (it holds simpo_gamma), got "
                            f"{type(args).__name__}.")
        self.simpo_gamma, self.cpo_alpha = args.simpo_gamma, args.cpo_alpha
        with _reference_model_not_loaded(self):
            super().__init__(model=model, ref_model=None, args=args, data_collator=data_collator,
                             train_dataset=train_dataset, eval_dataset=eval_dataset,
                             processing_class=processing_class, compute_metrics=compute_metrics, callbacks=callbacks,
                             optimizers=optimizers, quantization_config=quantization_config, peft_config=peft_config)
        if self.ref_model is not None:
            raise RuntimeError("SimPOTrainer: TRL's DPOTrainer built a reference model anyway; the installed TRL does "
                               "not match the pinned 1.16 (requirements.txt).")
        # A policy passed already wrapped in PEFT gets a frozen copy of its adapter as "ref"; SimPO never uses it,
        # and it would be saved beside the trained adapter
        if is_peft_model(self.model) and "ref" in self.model.peft_config:
            self.model.delete_adapter("ref")

    def _compute_loss(self, model, inputs, return_outputs):
        """Shadows `DPOTrainer._compute_loss` (TRL 1.16): the policy forward only, then `simpo_loss`."""
        mode = "train" if self.model.training else "eval"
        model_kwargs = {k: v for k, v in inputs.items()
                        if k not in {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]  # (2B, T): B chosen rows, then B rejected rows
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)

        # Token t+1 is scored at position t. Prompt-learning PEFT prepends virtual tokens: keep the last T-1
        mask = completion_mask[:, 1:]  # (2B, T-1)
        seq_len = mask.size(1)
        per_token_logps = outputs.log_probs[:, -seq_len:]  # (2B, T-1), 0 outside the completion
        # fp32 sum: under bf16, summing hundreds of log-probs loses ~3 significant digits
        logps = per_token_logps.float().sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (2B,) nats/token
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)  # (B,) each
        losses, chosen_rewards, rejected_rewards = simpo_loss(
            chosen_logps, rejected_logps, self.beta, self.simpo_gamma, self.label_smoothing)
        loss = losses.mean()
        chosen_mask = mask.chunk(2, dim=0)[0]
        if self.cpo_alpha:  # CPO-SimPO: the chosen tokens' NLL, a mean over all of them (as TRL's CPO)
            nll = -per_token_logps.chunk(2, dim=0)[0].float().sum() / chosen_mask.sum().clamp(min=1)
            loss = loss + self.cpo_alpha * nll
            self._metrics[mode]["nll_loss"].append(self.accelerator.gather_for_metrics(nll.detach()).mean().item())
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(outputs.aux_loss).mean().item())

        # Metrics, in DPOTrainer's names; token-level ones are pooled over all processes' tokens
        metrics = self._metrics[mode]
        rejected_mask = mask.chunk(2, dim=0)[1]
        metrics["entropy"].append(self._masked_mean(outputs.entropy[:, -seq_len:], mask))
        if mode == "train":
            num_tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += num_tokens // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        chosen_mean_logits, rejected_mean_logits = outputs.mean_logits[:, -seq_len:].chunk(2, dim=0)
        metrics["logits/chosen"].append(self._masked_mean(chosen_mean_logits, chosen_mask))
        metrics["logits/rejected"].append(self._masked_mean(rejected_mean_logits, rejected_mask))
        chosen_is_top1 = outputs.is_top1[:, -seq_len:].chunk(2, dim=0)[0]
        metrics["mean_token_accuracy"].append(self._masked_mean(chosen_is_top1.float(), chosen_mask))
        gather = self.accelerator.gather
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean().item())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())

        if return_outputs:
            # As DPOTrainer: the fused head returns no logits, so `compute_metrics` gets them from a second forward
            with torch.no_grad():
                outputs = model(**model_kwargs)
            return loss, outputs
        return loss

    def _masked_mean(self, values: torch.Tensor, mask: torch.Tensor) -> float:
        """Mean of ``values`` over the positions where ``mask`` is 1, over all processes' tokens (0.0 if none)."""
        total = self.accelerator.gather_for_metrics(values[mask.bool()].float().sum()).sum()
        count = self.accelerator.gather_for_metrics(mask.sum()).sum()
        return (total / count).item() if count > 0 else 0.0
