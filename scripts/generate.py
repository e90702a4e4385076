"""Inference-time compute from the command line: greedy, sampling, best-of-N, self-consistency, adaptive
consistency, PRM-guided beam search, MCTS, speculative decoding, iterative refinement (see
open_rlhf/inference/run.py).

    python scripts/generate.py --model runs/default/ppo --prompts builtin --num_prompts 32 --strategy self_consistency --n 8
    python scripts/generate.py --model runs/default/ppo --prompts FILE --strategy best_of_n --n 8 --reward model:runs/default/reward
    python scripts/generate.py --model runs/default/ppo --strategy mcts --prm runs/default/prm --num_simulations 16
"""

from open_rlhf.inference.run import generate_main

if __name__ == "__main__":
    generate_main()
