"""PPO (RLHF) of a chat policy against a reward model or a verifiable reward (our `open_rlhf.trainers.ppo`);
with ``--advantage_estimator reinforce_pp`` it is REINFORCE++ (no value model), with ``--advantage_estimator
reinforce_pp_baseline --num_samples_per_prompt 4`` REINFORCE++-baseline (4 responses per prompt, group-mean baseline).

With no flags it trains the default model on the built-in arithmetic prompts with the verifiable accuracy
reward (PPO with verifiable rewards) into ``runs/ppo``: one pass over the 2000 built-in prompts, 250 updates of
8 rollouts (about 3 hours on 2 CPU cores; add ``--max_steps 6`` for a 5-minute run). ``--reward_model_path``
switches to a trained reward model; ``--reward`` takes any reward spec (`open_rlhf.rewards`).

    python scripts/train_ppo.py
    python scripts/train_ppo.py --config config/ppo/default.yaml --model_name_or_path runs/default/sft \
        --reward_model_path runs/default/reward --output_dir runs/default/ppo
    python scripts/train_ppo.py --config config/ppo/default.yaml --use_peft --lora_r 16   # LoRA: no reference copy
    python scripts/train_ppo.py --config config/ppo/reinforce_pp.yaml --model_name_or_path runs/default/sft  # REINFORCE++
    accelerate launch --config_file config/accelerate/multi_gpu.yaml scripts/train_ppo.py --config config/ppo/default.yaml
"""

from open_rlhf.cli import stage_main

if __name__ == "__main__":
    stage_main("ppo")
