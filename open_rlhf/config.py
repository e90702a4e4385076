"""Script arguments shared by every stage script, and the stage configs' added fields.

Config flow (every script): dataclass default < ``--config config/<stage>/<x>.yaml`` < CLI flags; unknown YAML
keys are an error (TRL's `TrlParser`). TRL's own configs (`SFTConfig`, `RewardConfig`, `DPOConfig`) are
used as they are; our PPO has its own `open_rlhf.trainers.ppo.PPOConfig` because TRL 1.13 removed PPO.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    data_seed: int = field(default=42, metadata={"help": "Seed of the train/eval split and sample selection."})
    use_fused_rmsnorm: bool = field(
        default=False,
        metadata={"help": "Replace the model's RMSNorm modules with our fused Triton kernel (open_rlhf.kernels)."},
    )
