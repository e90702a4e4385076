"""The test-time scaling study: accuracy against generated tokens for greedy, majority@N, best-of-N with the outcome
reward model and with the PRM, PRM beam search, MCTS and adaptive consistency, on built-in and GSM8K prompts
(see open_rlhf/inference/scaling.py).

    python scripts/test_time_scaling.py --policy runs/default/ppo --reward_model runs/default/reward --prm runs/default/prm
"""

from open_rlhf.inference.scaling import scaling_main

if __name__ == "__main__":
    scaling_main()
