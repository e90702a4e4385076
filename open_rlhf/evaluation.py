"""Held-out evaluation of policies and reward models: task accuracy, reward-model score, KL to a reference.

Used by the pipeline's report; each function works on any saved model folder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from open_rlhf.models import stop_token_ids
from open_rlhf.rewards import RewardModelScorer, completion_text
from open_rlhf.rl_math import response_mask_after_eos
from open_rlhf.tasks import gsm8k


def held_out_prompts(source: str, eval_prompts: int, seed: int) -> tuple[list, list[str] | None]:
    """The held-out prompts every stage kept out of training (`open_rlhf.data.load_splits`, kind ``"prompt"``).

    Returns:
        `(prompts, answers)`: `N` conversational prompts and their `N` gold answers (None when the data has none).
    """
    from open_rlhf import data

    _, prompts_ds = data.load_splits(source, "prompt", eval_size=eval_prompts, seed=seed)
    answers = list(prompts_ds["answer"]) if "answer" in prompts_ds.column_names else None
    return list(prompts_ds["prompt"]), answers


@torch.no_grad()
def generate(
    model, tokenizer, prompts: Sequence, max_new_tokens: int = 96, batch_size: int = 16, do_sample: bool = False,
    temperature: float = 1.0, desc: str = "generate",
) -> tuple[list[str], list[torch.Tensor], list[torch.Tensor]]:
    """Generate one response per conversational prompt with the chat template.

    Args:
        prompts: `N` prompts, each a list of messages.
        do_sample (`bool`): greedy when False; ancestral sampling at ``temperature`` (top-k/top-p off) when True.

    Returns:
        `(texts, prompt_ids, response_ids)`: `N` decoded responses (up to the first stop id: the tokenizer's EOS or
        any EOS of the model's generation config; special tokens removed), and per example the prompt token ids
        `(P_i,)` and response token ids `(R_i,)` including the stop id if any.
    """
    model.eval()
    stop_ids = stop_token_ids(tokenizer, model.generation_config)
    texts, prompt_ids, response_ids = [], [], []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
        chunk = [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True)
                 for p in prompts[i:i + batch_size]]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        enc = enc.to(model.device)
        kwargs = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if do_sample else dict(
            do_sample=False)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=stop_ids,
                             pad_token_id=tokenizer.pad_token_id, **kwargs)
        responses = out[:, enc["input_ids"].shape[1]:]
        mask, _ = response_mask_after_eos(responses, stop_ids)
        for row in range(responses.shape[0]):
            ids = responses[row][mask[row]]
            response_ids.append(ids.cpu())
            prompt_ids.append(enc["input_ids"][row][enc["attention_mask"][row].bool()].cpu())
            texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    return texts, prompt_ids, response_ids


@torch.no_grad()
def sequence_logprobs(model, prompt_ids: list[torch.Tensor], response_ids: list[torch.Tensor]) -> torch.Tensor:
    """Summed log-probability (nats) of each response given its prompt, one sequence at a time.

    Returns:
        `torch.Tensor` of shape `(N,)`.
    """
    model.eval()
    totals = []
    for p, r in zip(prompt_ids, response_ids, strict=True):
        ids = torch.cat([p, r]).unsqueeze(0).to(model.device)
        logits = model(input_ids=ids).logits[0, p.shape[0] - 1: -1].float()
        totals.append(torch.log_softmax(logits, -1).gather(-1, r.to(model.device).unsqueeze(-1)).sum().item())
    return torch.tensor(totals)


def kl_to_reference(policy, reference, tokenizer, prompts: Sequence, max_new_tokens: int = 96,
                    batch_size: int = 16, seed: int = 0) -> float:
    """Monte-Carlo estimate of the sequence-level KL(policy || reference) on held-out prompts, in nats.

    ``KL ~= mean_x [log pi(y|x) - log pi_ref(y|x)]`` with ``y ~ pi(.|x)`` sampled at temperature 1 (the same
    quantity PPO's KL penalty controls, summed over tokens).
    """
    torch.manual_seed(seed)
    _, prompt_ids, response_ids = generate(policy, tokenizer, prompts, max_new_tokens, batch_size, do_sample=True,
                                           desc="sample for KL")
    return (sequence_logprobs(policy, prompt_ids, response_ids)
            - sequence_logprobs(reference, prompt_ids, response_ids)).mean().item()


def pass_at_k_summary(sampled_correct: Sequence[Sequence[float]], greedy_correct: Sequence[float]) -> dict:
    """What sampling finds that greedy decoding does not: per-prompt correctness of ``k`` samples against the greedy
    answer's.

    Args:
        sampled_correct: `N` lists of `k` 0/1 scores (the samples of one prompt).
        greedy_correct: `N` 0/1 scores of the greedy answers to the same prompts, in the same order.

    Returns:
        dict of shares of the `N` prompts (0..1): ``sampled_accuracy`` (mean over all `N * k` samples),
        ``pass_at_k`` (some sample right), ``greedy_accuracy``, ``greedy_wrong_sample_right`` (the prompts RL can
        fix from its own samples), ``greedy_right_sample_wrong``, ``samples_agree`` (all `k` scored alike), and
        ``k``, ``prompts``.

    Raises:
        ValueError: when the two lists differ in length, or the prompts have different or no sample counts.

    Source: pass@k as in Chen et al. 2021 (Codex, Sec. 2.1) with ``n = k`` (the unbiased estimator reduces to "some
    of the k samples is right"); greedy against sampled coverage as in Yue et al. 2025 ("Does reinforcement
    learning really incentivize reasoning capacity beyond the base model?").
    """
    if len(sampled_correct) != len(greedy_correct) or not sampled_correct:
        raise ValueError(f"pass_at_k_summary: {len(sampled_correct)} prompts with samples but {len(greedy_correct)} "
                         "greedy scores; both must cover the same prompts.")
    k = len(sampled_correct[0])
    if k < 1 or any(len(row) != k for row in sampled_correct):
        raise ValueError("pass_at_k_summary: every prompt needs the same number (>= 1) of samples.")
    n = len(sampled_correct)
    right = [[bool(x) for x in row] for row in sampled_correct]
    greedy = [bool(g) for g in greedy_correct]
    pairs = list(zip(right, greedy, strict=True))
    return {"k": k, "prompts": n, "sampled_accuracy": sum(map(sum, right)) / (n * k),
            "pass_at_k": sum(any(row) for row in right) / n, "greedy_accuracy": sum(greedy) / n,
            "greedy_wrong_sample_right": sum(any(row) and not g for row, g in pairs) / n,
            "greedy_right_sample_wrong": sum(g and not all(row) for row, g in pairs) / n,
            "samples_agree": sum(all(row) or not any(row) for row in right) / n}


@torch.no_grad()
def sampled_correctness(model, tokenizer, prompts: Sequence, answers: Sequence[str], k: int, temperature: float,
                        max_new_tokens: int = 96, batch_size: int = 16) -> list[list[float]]:
    """``k`` responses per prompt sampled at ``temperature`` (`generate`), each scored like `evaluate_policy`'s
    greedy answers: `N` lists of `k` 0/1 scores. Seed torch's RNG first for a repeatable draw."""
    texts, _, _ = generate(model, tokenizer, [p for p in prompts for _ in range(k)], max_new_tokens, batch_size,
                           do_sample=True, temperature=temperature, desc=f"sample {k} per prompt")
    scores = [float(gsm8k.is_correct(completion_text(t), str(answers[i // k]))) for i, t in enumerate(texts)]
    return [scores[i * k:(i + 1) * k] for i in range(len(prompts))]


def evaluate_policy(model, tokenizer, prompts: Sequence, answers: Sequence[str] | None = None,
                    reward_scorer: RewardModelScorer | None = None, max_new_tokens: int = 96,
                    batch_size: int = 16) -> dict:
    """Greedy responses on held-out prompts, scored by task accuracy and/or a reward model.

    Returns:
        dict with ``accuracy`` (share of ``#### N`` answers equal to the gold answer; None without answers),
        ``reward_score`` (mean reward-model score; None without a scorer), ``response_length`` (mean tokens),
        ``eos_rate`` (share of responses that ended with EOS), and ``responses`` (the texts).
    """
    texts, _, response_ids = generate(model, tokenizer, prompts, max_new_tokens, batch_size, desc="evaluate")
    stop_ids = stop_token_ids(tokenizer, model.generation_config)
    result = {
        "responses": texts,
        "response_length": float(sum(len(r) for r in response_ids) / max(1, len(response_ids))),
        "eos_rate": float(sum(bool(len(r)) and r[-1].item() in stop_ids for r in response_ids)
                          / max(1, len(response_ids))),
        "accuracy": None,
        "reward_score": None,
    }
    if answers is not None:
        correct = [float(gsm8k.is_correct(completion_text(t), str(gold))) for t, gold in zip(texts, answers, strict=True)]
        result["accuracy"] = sum(correct) / len(correct)
        result["correct"] = correct
    if reward_scorer is not None:
        scores = reward_scorer(prompts, texts)
        result["reward_score"] = sum(scores) / len(scores)
        result["scores"] = scores
    return result


def reward_model_accuracy(scorer: RewardModelScorer, pairs) -> dict:
    """Held-out pairwise accuracy of a reward model: the share of pairs with r(chosen) > r(rejected).

    Args:
        pairs: a dataset with conversational ``prompt``, ``chosen``, ``rejected`` columns.

    Returns:
        dict with ``accuracy``, ``mean_margin`` (mean r(chosen) - r(rejected)), and ``margins`` (per pair).
    """
    chosen = scorer(pairs["prompt"], pairs["chosen"])
    rejected = scorer(pairs["prompt"], pairs["rejected"])
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {"accuracy": sum(m > 0 for m in margins) / len(margins), "mean_margin": sum(margins) / len(margins),
            "margins": margins}
