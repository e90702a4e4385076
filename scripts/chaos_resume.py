"""Kill anywhere, resume, lose nothing: SIGKILL each stage (SFT, DPO, GRPO, PPO on a tiny random model) at seeded
random points, one of them inside a checkpoint save, resume it, and compare weights and per-step logs with an
uninterrupted run (`open_rlhf.chaos`). Prints one table row per stage; exits 1 when a stage differs.

    python scripts/chaos_resume.py                                   # 5 kills per stage, ~15 min on 2 CPU cores
    python scripts/chaos_resume.py --stages sft,ppo --kills 2 --workdir runs/chaos
"""

import sys

from open_rlhf.chaos import chaos_main

if __name__ == "__main__":
    sys.exit(chaos_main())
