"""EWC in the offline policy stages: TRL's SFT, DPO (so IPO and SimPO) and KTO trainers with the elastic weight
consolidation penalty of `open_rlhf.ewc` added to their training loss (``--ewc_lambda``, issue 14).

Ours because TRL 1.16 has no EWC (nor any parameter-space anchor other than its reference-model KL terms).

What ``--ewc_lambda L`` actually does (Kirkpatrick et al. 2017, https://arxiv.org/abs/1612.00796, Eq. 3):

1. Once, after the trainer is built and before ``train()``: the diagonal empirical Fisher F of the *input policy*
   (`open_rlhf.ewc.diagonal_fisher`): the mean over ``--ewc_fisher_batches`` batches of the squared gradient of
   the batch's mean token NLL of

   - SFT: the demonstration's completion tokens (the SFT loss itself, prompt masked);
   - DPO, IPO, SimPO: the *chosen* completions (the input policy's own likelihood of the preferred answers);
   - KTO: the desirable completions (the rows labelled desirable).

   Batches hold ``per_device_train_batch_size`` examples, the first ones of the stage's (tokenized) training set
   in order, collated by the trainer's own collator; the policy is in eval mode (no dropout). theta* is a copy of
   the same parameters (`open_rlhf.ewc.EWCPenalty`).
2. Every training step: ``loss + 0.5 * L * sum_i F_i (theta_i - theta*_i)^2``, scaled so that one optimizer step
   counts the penalty once whatever the gradient accumulation. The penalty's mean since the last log is logged as
   ``ewc_penalty``; the logged ``loss`` is the total. Evaluation losses do not include it.

Resume: F and theta* are recomputed, not stored. `open_rlhf.stages.run_stage` builds them right after the trainer,
before ``train(resume_from_checkpoint=...)`` loads a checkpoint's weights, so they always come from
``model_name_or_path`` and the same first training examples, and no random numbers are drawn (no DataLoader, no
dropout): the resumed run anchors exactly where the first did, and a run with ``ewc_lambda`` 0 or > 0 sees the
same data order. Storing them instead would cost two fp32 copies of the trainable parameters on disk per run;
recomputing costs ``ewc_fisher_batches`` forward and backward passes.

Several processes: every process computes the same F on the same (not sharded) batches, so F, theta* and the
penalty are identical on every rank (no communication); DDP's gradient average leaves the penalty's gradient as it
is. FSDP and DeepSpeed ZeRO-3 (sharded parameters) are refused.

LoRA (``--use_peft``): only the trainable adapter parameters are anchored (the base weights are frozen anyway). At
the start LoRA's B is 0, so the gradient, hence the Fisher, of every A is 0: in practice the B matrices are
anchored. Memory: F and theta* are two fp32 copies of the trainable parameters.
"""

from __future__ import annotations

import functools
import itertools
import logging

import torch

from open_rlhf.errors import ConfigError
from open_rlhf.ewc import EWCPenalty, diagonal_fisher

logger = logging.getLogger(__name__)

FISHER_DATA_KINDS = ("sft", "preference", "unpaired")  # `open_rlhf.data.load_splits` kinds with a Fisher loss


class EWCTrainerMixin:
    """Adds ``self.ewc`` (an `open_rlhf.ewc.EWCPenalty`, None: off) to a TRL trainer's training loss.

    Shadows two methods of `transformers.Trainer` that TRL 1.16's `SFTTrainer`, `DPOTrainer` and `KTOTrainer`
    override: ``compute_loss`` (the trainer's loss, plus the penalty in training) and ``log`` (adds
    ``ewc_penalty``). Put it first in the bases: ``ewc_trainer_class(DPOTrainer)``.
    """

    ewc: EWCPenalty | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Shadows `compute_loss` (TRL 1.16 / transformers): the base class's loss, plus in training the penalty."""
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        if self.ewc is None or not self.model.training:
            return result
        penalty = self.ewc(self.model)  # scalar with a graph to the parameters; the same on every process
        self._ewc_values = getattr(self, "_ewc_values", [])
        self._ewc_values.append(penalty.detach())  # read back at log time: no device sync per micro-step
        # `Trainer.training_step` divides the loss by the accumulation steps unless it is "scaled for GA" (a loss
        # already normalised over the whole accumulated batch): then each micro-batch carries 1/steps of the penalty
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or \
                self.compute_loss_func is not None
        if scaled:
            penalty = penalty / self.current_gradient_accumulation_steps
        if return_outputs:
            loss, outputs = result
            return loss + penalty, outputs
        return result + penalty

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Shadows `log` (TRL 1.16 / transformers): adds ``ewc_penalty`` to a training log, then the base's."""
        values = getattr(self, "_ewc_values", None)
        if values and "loss" in logs:  # a training log: the mean penalty of the micro-steps since the last one
            logs["ewc_penalty"] = torch.stack(values).float().mean().item()
            values.clear()
        super().log(logs, start_time)


@functools.cache
def ewc_trainer_class(base: type) -> type:
    """``base`` (a TRL trainer class) with `EWCTrainerMixin`: a subclass named ``EWC<base name>``, one per base."""
    return type(f"EWC{base.__name__}", (EWCTrainerMixin, base), {
        "__module__": __name__,
        "__doc__": f"TRL's `{base.__name__}` with the EWC penalty in its training loss (`EWCTrainerMixin`).",
    })


_COMPLETION_KEYS = ("input_ids", "attention_mask", "completion_mask")  # TRL's preference collators


def _completion_nll(model, input_ids, attention_mask, completion_mask) -> torch.Tensor:
    """Mean NLL (nats/token) of the completion tokens (``completion_mask`` 1) of (B, T) right-padded rows."""
    labels = input_ids.masked_fill(completion_mask == 0, -100)
    return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False).loss


def fisher_loss(data_kind: str):
    """``f(model, batch) -> scalar`` of a stage's collated batch: the NLL the Fisher is the squared gradient of.

    Args:
        data_kind (`str`): ``"sft"`` (the batch's ``labels``: the SFT loss), ``"preference"`` (TRL's
            `DataCollatorForPreference`: 2B rows, the B chosen first; their completion NLL) or ``"unpaired"``
            (TRL's `DataCollatorForUnpairedPreference`; the completion NLL of all rows: give it desirable rows only).

    Raises:
        ConfigError: for another data kind (a stage EWC does not support).
    """
    if data_kind == "sft":
        keys = ("input_ids", "attention_mask", "position_ids", "labels")
        return lambda model, batch: model(**{k: batch[k] for k in keys if k in batch}, use_cache=False).loss
    if data_kind == "preference":
        def chosen_nll(model, batch):
            rows = batch["input_ids"].shape[0] // 2  # B chosen rows, then B rejected rows
            return _completion_nll(model, *(batch[k][:rows] for k in _COMPLETION_KEYS))

        return chosen_nll
    if data_kind == "unpaired":
        return lambda model, batch: _completion_nll(model, *(batch[k] for k in _COMPLETION_KEYS))
    raise ConfigError(f"--ewc_lambda: no EWC Fisher for {data_kind!r} data (supported: {', '.join(FISHER_DATA_KINDS)}"
                      "; the SFT, DPO, SimPO and KTO stages). Fix: drop --ewc_lambda.")


def fisher_batches(trainer, data_kind: str, num_batches: int, batch_size: int) -> list[dict]:
    """The first ``num_batches`` batches of ``batch_size`` examples of ``trainer.train_dataset`` (in order; for
    ``"unpaired"`` data its desirable rows only), collated by ``trainer.data_collator``, on the policy's device.

    No DataLoader, so no random number is drawn. The last batch may be short; fewer batches when the data runs out.
    """
    rows = iter(trainer.train_dataset)
    if data_kind == "unpaired":
        rows = (row for row in rows if row["label"])
    device = trainer.args.device
    batches = []
    for _ in range(num_batches):
        chunk = list(itertools.islice(rows, batch_size))
        if not chunk:
            break
        batch = trainer.data_collator(chunk)
        batches.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    return batches


def anchor_ewc(trainer, data_kind: str, ewc_lambda: float, num_batches: int) -> EWCPenalty:
    """Estimate the input policy's diagonal Fisher and set ``trainer.ewc`` (see the module docstring).

    Call it after building the trainer (so that PEFT adapters exist) and before ``trainer.train()`` (so that a
    resumed run's checkpoint is not loaded yet).

    Args:
        trainer: an instance of ``ewc_trainer_class(<TRL trainer>)``, holding the input policy.
        data_kind (`str`): the stage's data kind (`fisher_loss`).
        ewc_lambda (`float`): lambda (> 0).
        num_batches (`int`): Fisher batches of ``per_device_train_batch_size`` examples (>= 1).

    Returns:
        `open_rlhf.ewc.EWCPenalty`: the penalty, also set as ``trainer.ewc``.

    Raises:
        ConfigError: for FSDP or DeepSpeed ZeRO-3, or a data kind without a Fisher loss.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not isinstance(trainer, EWCTrainerMixin):
        raise TypeError(f"anchor_ewc: {type(trainer).__name__} has no EWC hook; build it from ewc_trainer_class().")
    if trainer.is_fsdp_enabled or is_deepspeed_zero3_enabled():
        raise ConfigError("--ewc_lambda needs whole parameters on every process; FSDP and DeepSpeed ZeRO-3 shard "
                          "them. Fix: use DDP (config/accelerate/multi_gpu.yaml) or ZeRO-2, or drop --ewc_lambda.")
    loss_fn = fisher_loss(data_kind)
    batches = fisher_batches(trainer, data_kind, num_batches, trainer.args.per_device_train_batch_size)
    fisher = diagonal_fisher(trainer.model, batches, loss_fn=loss_fn)
    trainer.ewc = EWCPenalty(trainer.model, fisher, ewc_lambda)
    total = sum(f.sum().item() for f in fisher.values())
    logger.info("ewc: Fisher of the input policy from %d batches of %d examples (%d parameter tensors, %d values, "
                "sum %.4g); lambda %g", len(batches), trainer.args.per_device_train_batch_size, len(fisher),
                sum(f.numel() for f in fisher.values()), total, ewc_lambda)
    return trainer.ewc
