"""The logit lens of one or more causal LMs on one prompt: each layer's residual stream read out through the final
norm and the LM head (nostalgebraist 2020); see `open_rlhf.interpretability`.

    python interpret/logit_lens.py --prompt "The capital of France is"
    python interpret/logit_lens.py --model runs/default/sft --model runs/default/ppo \
        --prompt "The capital of France is" --target " Paris"
    python interpret/logit_lens.py --model runs/default/ppo --prompt "What is 17 + 25?" --chat

Writes lens_top_tokens.png (top-1 token per layer and position, one panel per model), lens_target_prob.png (the
target token's probability per layer, one line per model) and logit_lens.json into --output_dir (default: a new
runs/interpret/<UTC timestamp>/; an existing non-empty folder is refused).
"""

import argparse

from open_rlhf.errors import user_errors
from open_rlhf.interpretability import add_common_arguments, run_logit_lens


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", nargs="+", default=None,
                        help="Model or PEFT adapter folder, or hub id; repeat (or list several) to compare models, "
                             "e.g. --model runs/x/sft --model runs/x/ppo. Default (or 'default'): SmolLM2-135M-Instruct.")
    add_common_arguments(parser)
    parser.add_argument("--target", default=None,
                        help="Text of the next token to follow, e.g. ' Paris' (its first token if it has several); "
                             "default: the (first) model's greedy next token.")
    parser.add_argument("--max_positions", type=int, default=16, help="The heatmap shows the last N positions.")
    return parser


def main(argv: list[str] | None = None) -> None:
    with user_errors():
        args = make_parser().parse_args(argv)
        model_paths = [m for group in args.model for m in group] if args.model else [None]
        result = run_logit_lens(model_paths, args.prompt, target=args.target, chat=args.chat,
                                output_dir=args.output_dir, device=args.device, max_positions=args.max_positions)
    for name, lens in zip(result.names, result.lenses, strict=True):
        probs = lens.target_probs.tolist()
        first = next((f"first >= 0.1 at layer {i}" for i, p in enumerate(probs) if p >= 0.1), "never >= 0.1")
        print(f"{name}: target {lens.target_note}; P = {probs[-1]:.3f} at the output (layer {lens.num_layers}), "
              f"{first}; greedy next token {lens.top_tokens[-1][-1]!r}")
    for path in result.files:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
