"""Train K reward models that differ only in their seed (head initialisation and data order) with one command, for
the ``ensemble:P1|P2|...[@LAMBDA]`` reward term (`open_rlhf.rewards.RewardModelEnsemble`; Coste et al. 2023 train
their ensembles the same way, from different seeds).

    python scripts/train_reward_ensemble.py --k 3 --output_dir runs/default/reward-ensemble -- \\
        --config config/reward/default.yaml --model_name_or_path runs/default/sft

Everything after ``--`` goes to ``scripts/train_reward.py`` unchanged, except ``--seed`` and ``--output_dir``, which
this script sets per member (``<output_dir>/rm-<i>``, seed ``<base_seed> + i``; the held-out split keeps its own
``--split_seed``, so every member is evaluated on the same pairs). Members that already finished are skipped, so a
stopped run resumes. At the end it prints the reward spec that uses the ensemble.
"""

import argparse
import subprocess
import sys
from pathlib import Path

from open_rlhf import outputs
from open_rlhf.errors import ConfigError, user_errors

TRAIN_REWARD = Path(__file__).resolve().parent / "train_reward.py"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    ours, theirs = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=3, help="ensemble members (>= 2)")
    p.add_argument("--output_dir", required=True, help="members go to <output_dir>/rm-<i>")
    p.add_argument("--base_seed", type=int, default=42)
    args = p.parse_args(ours)
    with user_errors():
        if args.k < 2:
            raise ConfigError(f"--k must be >= 2 (an ensemble of one is a reward model), got {args.k}")
        clash = [flag for flag in ("--seed", "--output_dir") if any(a.split("=")[0] == flag for a in theirs)]
        if clash:
            raise ConfigError(f"{', '.join(clash)} after '--' would be overridden per member; leave them out")
        members = [Path(args.output_dir) / f"rm-{i}" for i in range(args.k)]
        for i, member in enumerate(members):
            if outputs.is_complete(member):
                print(f"=== member {i}: {member} is finished; skipped", flush=True)
                continue
            command = [sys.executable, str(TRAIN_REWARD), *theirs, "--seed", str(args.base_seed + i),
                       "--output_dir", str(member)]
            print(f"=== member {i}: {' '.join(command)}", flush=True)
            code = subprocess.call(command)
            if code != 0:
                print(f"error: member {i} failed with exit status {code}", file=sys.stderr)
                return code
    print("reward spec: ensemble:" + "|".join(str(m) for m in members) + "@1.0   (mean - 1.0 * std)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
