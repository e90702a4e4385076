"""open_rlhf: an open, reproducible RLHF pipeline over Hugging Face TRL.

Stages (SFT, reward model, DPO, PPO) are thin wrappers of TRL's trainers in ``scripts/``; this package holds
only what TRL lacks: data conversion, the default-model bootstrap, our PPO trainer, reports.
"""

__version__ = "0.1.0"
