"""Plot the attention maps of a causal LM on one prompt: a grid per selected layer (rows) and head (columns), and
the map averaged over them; see `open_rlhf.interpretability`.

    python interpret/attention_viz.py --prompt "What is 17 + 25?" --layers 0,14,29
    python interpret/attention_viz.py --model runs/default/ppo --prompt "What is 17 + 25?" --chat --heads 0,1,2
    python interpret/attention_viz.py --model runs/default/sft --prompt "Hi" --output_dir runs/interpret/sft-hi

Writes attention_layers.png, attention_mean.png and attention.json into --output_dir (default: a new
runs/interpret/<UTC timestamp>/; an existing non-empty folder is refused).
"""

import argparse

from open_rlhf.errors import user_errors
from open_rlhf.interpretability import add_common_arguments, run_attention_viz


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="Model or PEFT adapter folder, or hub id; default (or 'default'): SmolLM2-135M-Instruct.")
    add_common_arguments(parser)
    parser.add_argument("--layers", default=None,
                        help="Comma-separated decoder layers, e.g. 0,14,29 (negative: from the end); default: all "
                             "of a model with at most 4 layers, else the first, middle and last.")
    parser.add_argument("--heads", default=None, help="Comma-separated attention (query) heads; default: all.")
    return parser


def main(argv: list[str] | None = None) -> None:
    with user_errors():
        args = make_parser().parse_args(argv)
        result = run_attention_viz(args.model, args.prompt, layers=args.layers, heads=args.heads, chat=args.chat,
                                   output_dir=args.output_dir, device=args.device)
    print(f"{len(result.tokens)} tokens, layers {result.layers}, heads {result.heads}")
    for path in result.files:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
