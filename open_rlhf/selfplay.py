"""Data construction of the self-play and step-level preference methods (issue 14): SPIN and Step-DPO pairs.

Both feed TRL's `DPOTrainer` (`train_dpo.py`); only the pairs are ours.

- **SPIN** (Chen et al. 2024, "Self-Play Fine-Tuning Converts Weak Language Models to Strong Language Models",
  https://arxiv.org/abs/2401.01335, Sec. 4, Eq. 4.7 and Alg. 1): in round t the chosen answer is the SFT
  demonstration y and the rejected one is the round-(t-1) policy's own answer y' to the same prompt; the DPO-style
  loss then raises the demonstration's likelihood ratio over the policy's. The reference model of round t is the
  round-(t-1) policy. `spin_pairs` builds one round's pairs.
- **Step-DPO** (Lai et al. 2024, "Step-DPO: Step-wise Preference Optimization for Long-chain Reasoning of LLMs",
  https://arxiv.org/abs/2406.18629, Sec. 3.1, Eq. 2): the prompt is the question plus the correct steps so far,
  the chosen completion is the correct next step and the rejected one is the first wrong step. On the built-in
  task the slip's position is known (`open_rlhf.tasks.arithmetic.slip_step_labels`): `step_dpo_pairs` cuts each
  one-slip pair at it. The prompt continues the assistant's turn, so it is text rendered with the policy's chat
  template (TRL's standard, non-conversational preference format), not a list of messages.
"""

from __future__ import annotations

from collections.abc import Sequence


def spin_pairs(prompts: Sequence, demonstrations: Sequence[str], policy_answers: Sequence[str],
               verified: Sequence[bool] | None = None) -> tuple[list[dict], int]:
    """One SPIN round's pairs: chosen = the demonstration, rejected = the current policy's answer.

    Args:
        prompts: `N` prompts (strings or chat messages; `open_rlhf.inference.sampling.as_messages`).
        demonstrations: the `N` SFT answers (the "human" data of the paper).
        policy_answers: the `N` answers the previous round's policy generated for the same prompts.
        verified: optional, `N` flags: the policy's answer was accepted by a verifier. Such a prompt gives no pair
            (not in the paper, which assumes every demonstration beats the policy's answer; with a verifiable task
            the policy is often right, and SPIN would then push a right answer down).

    Returns:
        `(rows, identical)`: conversational rows ``{"prompt", "chosen", "rejected"}``, and how many prompts were
        left out because the policy already reproduces its demonstration word for word (the pair would carry no
        signal; the paper's fixed point, p_theta = p_data).

    Raises:
        ValueError: when the three sequences differ in length.
    """
    from open_rlhf.inference.sampling import as_messages

    verified = [False] * len(policy_answers) if verified is None else list(verified)
    if not len(prompts) == len(demonstrations) == len(policy_answers) == len(verified):
        raise ValueError(f"spin_pairs needs one demonstration, one policy answer (and one verified flag) per prompt, "
                         f"got {len(prompts)} prompts, {len(demonstrations)} demonstrations, {len(policy_answers)} "
                         f"answers and {len(verified)} flags")
    rows, identical = [], 0
    for prompt, gold, own, right in zip(prompts, demonstrations, policy_answers, verified, strict=True):
        if gold.strip() == own.strip():
            identical += 1
            continue
        if right:
            continue
        rows.append({"prompt": as_messages(prompt), "chosen": [{"role": "assistant", "content": gold}],
                     "rejected": [{"role": "assistant", "content": own}]})
    return rows, identical


def first_wrong_step(chosen_steps: Sequence[str], rejected_steps: Sequence[str]) -> int:
    """Index of the first step where a rejected solution departs from the correct one.

    Raises:
        ValueError: when the two are equal, or one is a prefix of the other (no step to prefer).
    """
    for k, (good, bad) in enumerate(zip(chosen_steps, rejected_steps, strict=False)):
        if good != bad:
            return k
    raise ValueError("no wrong step: the rejected solution repeats the correct one (or a prefix of it)")


def step_dpo_pairs(pairs, tokenizer) -> list[dict]:
    """Step-level pairs from one-slip solution pairs: prompt + correct steps so far -> correct vs wrong next step.

    A step is a line of the solution. For a pair whose solutions agree on steps 0..k-1 and differ at step k:
    ``prompt`` is the question rendered with ``tokenizer``'s chat template (generation prompt added) followed by
    steps 0..k-1, each ending with a newline; ``chosen`` is the correct step k and ``rejected`` the wrong one. At
    the final ``#### N`` line, the step is that line alone.

    Args:
        pairs: rows with conversational ``prompt``, ``chosen`` and ``rejected`` (`open_rlhf.data`'s preference
            format, e.g. the built-in pairs).
        tokenizer: the policy's tokenizer (its chat template renders the question).

    Returns:
        `list[dict]`: rows ``{"prompt": str, "chosen": str, "rejected": str, "step": k}`` (TRL's standard
        preference format), one per input pair.

    Raises:
        ValueError: a pair without a wrong step, named by its index.
    """
    rows = []
    for i, pair in enumerate(pairs):
        good = pair["chosen"][-1]["content"].split("\n")
        bad = pair["rejected"][-1]["content"].split("\n")
        try:
            k = first_wrong_step(good, bad)
        except ValueError as err:
            raise ValueError(f"step_dpo_pairs: pair {i}: {err}") from None
        prompt = tokenizer.apply_chat_template(list(pair["prompt"]), tokenize=False, add_generation_prompt=True)
        rows.append({"prompt": prompt + "".join(step + "\n" for step in good[:k]), "chosen": good[k],
                     "rejected": bad[k], "step": k})
    return rows
