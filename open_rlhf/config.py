"""Script arguments shared by every stage script, and the stage configs' added fields.

Config flow (every script): dataclass default < ``--config config/<stage>/<x>.yaml`` < CLI flags; unknown YAML
keys are an error (TRL's `TrlParser`). TRL's own configs (`SFTConfig`, `RewardConfig`, `DPOConfig`) are
used as they are; our PPO has its own `open_rlhf.trainers.ppo.PPOConfig` because TRL 1.13 removed PPO.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trl
from trl import ScriptArguments as TRLScriptArguments


@dataclass
class ScriptArguments(TRLScriptArguments):
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
    use_fused_rmsnorm: bool = field(
        default=False,
        metadata={"help": "Replace the model's RMSNorm modules with our fused Triton kernel (open_rlhf.kernels)."},
    )


def _no_accelerator() -> bool:
    import torch

    return not (torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
                or torch.backends.mps.is_available())


class CPUFallbackMixin:
    """Sets ``use_cpu=True`` when the machine has no GPU/XPU/MPS.

    TRL's configs default to bf16, which transformers refuses on a machine without a GPU unless ``use_cpu`` is set;
    with this mixin the same preset runs unchanged on a laptop CPU and on a GPU cluster. bf16 autocast on a CPU
    with AVX512-BF16 gives TRL's SFT of the default model 1.35x the fp32 throughput (scripts/bench_sft.py).
    """

    def __post_init__(self):
        if not self.use_cpu and _no_accelerator():
            self.use_cpu = True
        super().__post_init__()


@dataclass
class SFTConfig(CPUFallbackMixin, trl.SFTConfig):
    """TRL's `SFTConfig`; on a machine without an accelerator it runs on the CPU (see `CPUFallbackMixin`)."""


@dataclass
class RewardConfig(CPUFallbackMixin, trl.RewardConfig):
    """TRL's `RewardConfig`; on a machine without an accelerator it runs on the CPU (see `CPUFallbackMixin`)."""


@dataclass
class DPOConfig(CPUFallbackMixin, trl.DPOConfig):
    """TRL's `DPOConfig`; on a machine without an accelerator it runs on the CPU (see `CPUFallbackMixin`)."""


@dataclass
class KTOConfig(CPUFallbackMixin, trl.KTOConfig):
    """TRL's `KTOConfig`; on a machine without an accelerator it runs on the CPU (see `CPUFallbackMixin`)."""


_REWARD_HELP = ("Reward spec (open_rlhf.rewards.build_reward_functions): comma-separated [weight*]name[:arg] terms, "
                "names accuracy | math | format | length[:target_chars] | model:PATH, e.g. 'math,0.1*format' or "
                "'model:runs/default/reward'.")


@dataclass
class GRPOConfig(CPUFallbackMixin, trl.GRPOConfig):
    """TRL's `GRPOConfig` plus ``reward`` (the reward spec); CPU fallback as `CPUFallbackMixin`.

    The spec's weights become TRL's ``reward_weights``; TRL logs each term separately.
    """

    reward: str = field(default="math", metadata={"help": _REWARD_HELP})


@dataclass
class RLOOConfig(CPUFallbackMixin, trl.RLOOConfig):
    """TRL's `RLOOConfig` plus ``reward`` (the reward spec); CPU fallback as `CPUFallbackMixin`."""

    reward: str = field(default="math", metadata={"help": _REWARD_HELP})
