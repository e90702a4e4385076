"""open_rlhf: an open, reproducible RLHF pipeline over Hugging Face TRL.

Nine stages (SFT, reward model, DPO/IPO, KTO, ORPO, SimPO, GRPO, RLOO, PPO/REINFORCE++) run through one runner
(`open_rlhf.stages`, the ``open-rlhf <stage>`` command and ``scripts/train_<stage>.py``); the pipeline
(`open_rlhf.pipeline`) chains them and reports. The package holds only what TRL lacks: the data layer and the
built-in task, the default-model bootstrap, our PPO and SimPO trainers, rewards, evaluation and reports, model
merging and a fused Triton RMSNorm. Layers, bottom up (a module imports only those below it):

- ``errors``, ``atomic``, ``memory``, ``hardware``, ``logs``, ``rl_math``, ``tasks``: leaves;
- ``models``, ``config``, ``data``, ``outputs``, ``progress``, ``kernels``;
- ``rewards``, ``trainers``, ``evaluation``, ``merging``, ``benchmark``;
- ``stages``, ``report``; then ``pipeline``, ``compare``; ``cli`` on top.
"""

import logging as _logging

__version__ = "0.1.0"

# bitsandbytes (imported with transformers and TRL) tries at import, on AVX512-BF16 CPUs, to fetch an optional
# 4-bit CPU kernel through the `kernels` package from the Hub and warns (three times per process) when it cannot; it
# then uses its own kernel, which is what an offline machine needs. The warning is noise in every command.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
