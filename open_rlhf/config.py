"""Script arguments shared by every stage script, and the stage configs' added fields.

Config flow (every script): dataclass default < ``--config config/<stage>/<x>.yaml`` < CLI flags; unknown YAML
keys are an error (TRL's `TrlParser`). TRL's own configs are used as they are plus `HardwareDefaultsMixin`
(device and bf16 from the hardware) and, for SFT, DPO (so SimPO) and KTO, `EWCArguments`; our PPO has its own
`open_rlhf.trainers.ppo.PPOConfig` (with the same mixin) because TRL 1.13 removed PPO.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import trl
from trl import ScriptArguments as TRLScriptArguments

from open_rlhf import hardware
from open_rlhf.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class CurveArguments:
    """Learning-curve options (`open_rlhf.curves`) of the policy stages and of the round-based methods
    (`open_rlhf.iterative`)."""

    curve_every: int = field(default=0, metadata={
        "help": "Learning curve: evaluate held-out accuracy / reward / KL every K steps (0: off; the round-based "
                "methods of train_iterative.py: at the start and after every round, for any K > 0)."})
    curve_prompts: int = field(default=64, metadata={"help": "Learning curve: held-out prompts per point."})
    curve_dataset: str | None = field(
        default=None,
        metadata={"help": "Learning curve: prompt source (default: the stage's data for RL stages, else builtin)."},
    )
    curve_reward_model: str | None = field(
        default=None, metadata={"help": "Learning curve: a reward model folder that scores the greedy responses."}
    )
    curve_kl_prompts: int = field(default=16, metadata={"help": "Learning curve: prompts of the KL estimate (0: no KL)."})
    curve_max_new_tokens: int = field(default=96, metadata={"help": "Learning curve: generation length."})


@dataclass
class ScriptArguments(TRLScriptArguments, CurveArguments):
    """TRL's `ScriptArguments` plus the data and model options our stage scripts add.

    ``dataset_name`` (from TRL) is any source `open_rlhf.data` can read: ``builtin`` (the built-in arithmetic
    task), a local ``.jsonl``/``.json``/``.jsonl.gz``/``.parquet`` file or folder, or a hub id.
    """

    dataset_name: str | None = field(
        default="builtin",
        metadata={"help": "Data source: 'builtin' (built-in arithmetic task), a local file/folder path, or a hub id."},
    )
    eval_size: float = field(
        default=64,
        metadata={"help": "Held-out examples: a count (>= 1) or a fraction (< 1) of the data; 0 disables eval."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep at most this many training examples (after a seeded shuffle)."}
    )
    split_seed: int = field(default=42, metadata={"help": "Seed of the train/eval split and sample selection."})
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream the training data from --dataset_name (.jsonl, .jsonl.gz, .parquet, a folder of "
                          "them, or a hub id) instead of loading it into memory: SFT, reward, DPO and KTO; needs "
                          "--max_steps; the eval set is the first --eval_size examples (open_rlhf.data."
                          "load_streaming_splits). TRL's --dataset_streaming does the same."},
    )
    use_fused_rmsnorm: bool = field(
        default=False,
        metadata={"help": "Replace the model's RMSNorm modules with our fused Triton kernel (open_rlhf.kernels)."},
    )


class HardwareDefaultsMixin:
    """Device and precision defaults chosen from the machine, so one preset runs well on any of them.

    - ``use_cpu=True`` when the machine has no GPU/XPU/MPS (transformers refuses bf16 on a GPU-less machine
      otherwise).
    - ``bf16`` unset (None, the default; presets do not set it): bf16 autocast only where the hardware runs bf16
      natively, fp32 otherwise (`open_rlhf.hardware.auto_bf16`). ``--bf16 true`` / ``--bf16 false`` force
      either. ``precision_reason`` keeps the one-line reason (None when it was set explicitly), which the
      stage runner prints.

    Measured on a 2-core AMD EPYC: with AVX512-BF16, bf16 autocast gives TRL's SFT of the default model 1.35x
    the fp32 throughput (``scripts/bench_sft.py``); with AVX2 only, a bf16 step is about 10x slower than fp32.
    """

    def __post_init__(self):
        if not self.use_cpu and not hardware.accelerator_available():
            self.use_cpu = True
        self.precision_reason = None
        if self.bf16 is None:
            if self.fp16:
                self.bf16 = False
            else:
                self.bf16, self.precision_reason = hardware.auto_bf16(self.use_cpu)
        super().__post_init__()

    @property
    def precision_line(self) -> str:
        """One line: the precision in use and why (`open_rlhf.hardware.precision_line`)."""
        return hardware.precision_line(self.bf16, self.fp16, self.precision_reason)


@dataclass
class EWCArguments:
    """Elastic weight consolidation of the offline policy stages (`open_rlhf.trainers.ewc`): ``--ewc_lambda`` and
    ``--ewc_fisher_batches``, added to the SFT, DPO (DPO, IPO, SimPO) and KTO configs.

    Raises:
        ConfigError: when ``ewc_lambda < 0`` or ``ewc_fisher_batches < 1``.
    """

    ewc_lambda: float = field(
        default=0.0,
        metadata={"help": "EWC (Kirkpatrick et al. 2017): add 0.5 * ewc_lambda * sum_i F_i (theta_i - theta*_i)^2 to "
                          "the loss, theta* the input policy and F its diagonal Fisher on this stage's training data "
                          "(0: off)."},
    )
    ewc_fisher_batches: int = field(
        default=16,
        metadata={"help": "EWC: batches (of per_device_train_batch_size examples, the first of the training data) "
                          "that estimate the input policy's diagonal Fisher, once, before training."},
    )

    def __post_init__(self):
        if self.ewc_lambda < 0:
            raise ConfigError(f"--ewc_lambda={self.ewc_lambda} must be >= 0. Fix: 0 turns EWC off; a positive value "
                              "(e.g. 1000) pulls the policy towards the input policy.")
        if self.ewc_fisher_batches < 1:
            raise ConfigError(f"--ewc_fisher_batches={self.ewc_fisher_batches} must be >= 1 (the batches that estimate "
                              "the input policy's Fisher). Fix: give a positive count, e.g. 16 (the default).")
        super().__post_init__()


@dataclass
class SFTConfig(HardwareDefaultsMixin, EWCArguments, trl.SFTConfig):
    """TRL's `SFTConfig`; device and precision from the hardware (`HardwareDefaultsMixin`); EWC (`EWCArguments`)."""


@dataclass
class RewardConfig(HardwareDefaultsMixin, trl.RewardConfig):
    """TRL's `RewardConfig`; device and precision from the hardware (`HardwareDefaultsMixin`)."""


@dataclass
class DPOConfig(HardwareDefaultsMixin, EWCArguments, trl.DPOConfig):
    """TRL's `DPOConfig`; device and precision from the hardware (`HardwareDefaultsMixin`); EWC (`EWCArguments`)."""


@dataclass
class KTOConfig(HardwareDefaultsMixin, EWCArguments, trl.KTOConfig):
    """TRL's `KTOConfig`; device and precision from the hardware (`HardwareDefaultsMixin`); EWC (`EWCArguments`)."""


_REWARD_HELP = ("Reward spec (open_rlhf.rewards.build_reward_functions): comma-separated [weight*]name[:arg] terms, "
                "names accuracy | math | format | length[:target_chars] | model:PATH, e.g. 'math,0.1*format' or "
                "'model:runs/default/reward'.")


def generation_cycle_warning(args) -> str | None:
    """Why a GRPO/RLOO checkpoint would not resume exactly, or None.

    TRL 1.16's GRPO and RLOO trainers generate once per ``steps_per_generation * num_iterations`` micro-batches and
    replay a buffer of those completions until the next generation; the buffer is not in the checkpoint. A checkpoint
    saved inside a cycle therefore resumes with freshly generated completions, and the resumed run drifts from an
    uninterrupted one (found by ``scripts/chaos_resume.py``: identical to step 3, weights off by up to 1.4e-3 after a
    resume at step 3 of 2-step cycles). Exact when ``save_steps * gradient_accumulation_steps`` is a multiple of the
    cycle, in micro-batches.
    """
    steps = args.save_steps
    if args.save_strategy != "steps" or not float(steps).is_integer() or steps < 1:
        return None
    cycle = args.steps_per_generation * args.num_iterations
    if (int(steps) * args.gradient_accumulation_steps) % cycle == 0:
        return None
    return (f"save_steps={int(steps)} x gradient_accumulation_steps={args.gradient_accumulation_steps} is not a "
            f"multiple of steps_per_generation={args.steps_per_generation} x num_iterations={args.num_iterations}: a "
            "resume from a checkpoint inside a generation cycle regenerates completions TRL had buffered, so it will "
            "not equal an uninterrupted run. Fix: make save_steps a multiple of "
            f"{cycle // math.gcd(cycle, args.gradient_accumulation_steps)}.")


class GenerationCycleCheckMixin:
    """Warns (once, at config time) when ``save_steps`` cuts a GRPO/RLOO generation cycle
    (`generation_cycle_warning`)."""

    def __post_init__(self):
        super().__post_init__()
        message = generation_cycle_warning(self)
        if message:
            logger.warning(message)


@dataclass
class GRPOConfig(GenerationCycleCheckMixin, HardwareDefaultsMixin, trl.GRPOConfig):
    """TRL's `GRPOConfig` plus ``reward`` (the reward spec); device and precision from the hardware
    (`HardwareDefaultsMixin`).

    The spec's weights become TRL's ``reward_weights``; TRL logs each term separately.
    """

    reward: str = field(default="math", metadata={"help": _REWARD_HELP})


@dataclass
class RLOOConfig(GenerationCycleCheckMixin, HardwareDefaultsMixin, trl.RLOOConfig):
    """TRL's `RLOOConfig` plus ``reward`` (the reward spec); device and precision from the hardware
    (`HardwareDefaultsMixin`)."""

    reward: str = field(default="math", metadata={"help": _REWARD_HELP})
