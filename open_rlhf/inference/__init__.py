"""Inference-time compute: spend more generation at test time to get better answers.

TRL 1.16 has none of this any more: it removed its ``BestOfNSampler`` (``trl.extras.best_of_n_sampler``) and its
PRM trainer, so these modules are ours.

- `sampling`: N samples per prompt in batched ``generate`` calls, with their token counts.
- `strategies`: greedy, sampling, best-of-N with any reward spec, self-consistency (majority vote over final answers)
  and adaptive consistency (sample until the answers agree with a stated confidence, or a budget is spent).
- `prm`: process reward models (a score per solution step) and Math-Shepherd Monte-Carlo step labels; training is
  `open_rlhf.trainers.prm` (``scripts/train_prm.py``).
- `search`: step-level search: PRM-guided beam search and MCTS (`MCTSGenerator`), valued by a PRM, a PPO value model
  or verifier-scored rollouts.
- `refine`: iterative refinement (`IterativeRefiner`, Self-Refine with an external judge): answer, get feedback (a
  reward spec's score and optionally the policy's own critique), rewrite, until the judge accepts or the rounds run out.
- `speculative`: speculative decoding through transformers' assisted generation (a draft model, prompt lookup, or a
  self-speculative draft made of the target's first layers).

``scripts/generate.py`` runs any strategy over a prompts file.
"""
