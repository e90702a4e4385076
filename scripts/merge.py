"""Merge fine-tuned models (full models or LoRA adapters on a shared base) into one save_pretrained folder.

Methods: linear (weighted average / uniform soup), task_arithmetic, ties, dare_linear, dare_ties, slerp; see
open_rlhf/merging/README.md. Our own code (TRL 1.16 has no merging). Runs on CPU; no accelerate needed.

    python scripts/merge.py --config config/merge/ties.yaml
    python scripts/merge.py --config config/merge/ties.yaml --density 0.5 --output_dir runs/merge/ties-d05
    python scripts/merge.py --method linear --models runs/a/policy runs/b/policy --output_dir runs/merge/soup
    python scripts/merge.py --method task_arithmetic --base_model default --models runs/a/policy runs/b/policy \
        --lambda_ 0.7 --output_dir runs/merge/ta
    python scripts/merge.py --method slerp --models runs/a/policy runs/b/policy --t 0.0 0.5 1.0 \
        --output_dir runs/merge/slerp-layerwise

The output folder must not exist; it holds model.safetensors, config, tokenizer and merge_record.json, and
loads with AutoModelForCausalLM.from_pretrained.
"""

from trl import TrlParser

from open_rlhf.merging import MergeArguments, merge_from_arguments


def main(merge_args: MergeArguments) -> None:
    output_dir = merge_from_arguments(merge_args)
    print(f"Merged {len(merge_args.models)} models with {merge_args.method} into {output_dir} "
          f"(record: {output_dir / 'merge_record.json'})")


def make_parser() -> TrlParser:
    return TrlParser((MergeArguments,))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
