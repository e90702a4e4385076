"""Merge two policies the pipeline produced with every merging method and compare all of them on held-out prompts.

Writes the merged folders and ``merge_comparison.{csv,md,png}`` under ``--output_dir``.

    python scripts/compare_merges.py --model_a runs/default/sft --model_b runs/default/ppo \
        --reward_model_path runs/default/reward --output_dir runs/merge-compare
"""

from dataclasses import dataclass, field

from trl import TrlParser

from open_rlhf.merging.compare import compare_merges
from open_rlhf.models import resolve_model_path


@dataclass
class CompareMergesArguments:
    model_a: str = field(default="runs/default/sft", metadata={"help": "First policy folder."})
    model_b: str = field(default="runs/default/ppo", metadata={"help": "Second policy folder (same base)."})
    base_model: str | None = field(default=None, metadata={"help": "Shared base. Default: embedded default model."})
    reward_model_path: str | None = field(default=None, metadata={"help": "Also score with this reward model."})
    output_dir: str = field(default="runs/merge-compare", metadata={"help": "Merged models and the comparison."})
    eval_dataset: str = field(default="builtin", metadata={"help": "Held-out prompts (as the pipeline's rl_dataset)."})
    eval_prompts: int = field(default=64, metadata={"help": "Number of held-out prompts."})
    split_seed: int = field(default=42, metadata={"help": "The pipeline's split seed."})


def main(args: CompareMergesArguments) -> None:
    compare_merges({"a: " + args.model_a.rstrip("/").split("/")[-1]: args.model_a,
                    "b: " + args.model_b.rstrip("/").split("/")[-1]: args.model_b},
                   resolve_model_path(args.base_model), args.output_dir, args.eval_dataset, args.eval_prompts,
                   args.split_seed, args.reward_model_path)


def make_parser() -> TrlParser:
    return TrlParser((CompareMergesArguments,))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
