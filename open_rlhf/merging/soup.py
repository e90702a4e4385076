"""Greedy soup: average fine-tuned models one at a time, keeping each only if a held-out score does not drop."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from open_rlhf.merging.merge import check_compatible

StateDict = Mapping[str, torch.Tensor]


@dataclass
class GreedySoupResult:
    """What `greedy_soup` did.

    Attributes:
        state_dict (`dict[str, torch.Tensor]`): the uniform average of the accepted ingredients.
        individual_scores (`list[float]`): eval score of each candidate alone, in input order.
        order (`list[int]`): candidate indices by decreasing individual score (the order they were tried in).
        ingredients (`list[int]`): indices of the accepted candidates, in the order they were added.
        trials (`list[dict]`): per tried candidate: ``{"candidate", "score", "accepted"}``.
        score (`float`): eval score of the final soup.
    """

    state_dict: dict[str, torch.Tensor]
    individual_scores: list[float]
    order: list[int]
    ingredients: list[int]
    trials: list[dict] = field(default_factory=list)
    score: float = float("nan")


def _average(total: dict[str, torch.Tensor], count: int, dtypes: dict[str, torch.dtype]) -> dict[str, torch.Tensor]:
    return {name: (t / count).to(dtypes[name]) if t.is_floating_point() else t for name, t in total.items()}


def greedy_soup(candidates: Sequence[StateDict], eval_fn: Callable[[dict[str, torch.Tensor]], float],
                tolerance: float = 0.0) -> GreedySoupResult:
    """Greedy soup over fine-tuned models of one architecture (usually one base, several hyperparameters).

    1. score every candidate alone with ``eval_fn`` and sort by decreasing score;
    2. start the soup with the best one;
    3. for each next candidate, score the uniform average of the soup plus it, and keep it when
       ``score >= best_score + tolerance`` (the paper's Recipe 1 uses ``>=``, i.e. ``tolerance=0``: a candidate
       that leaves the score unchanged is added; pass a small positive ``tolerance`` to require an improvement).

    Calls ``eval_fn`` 2N - 1 times. Memory: the running sum (float32), the trial soup and one candidate.

    Args:
        candidates (sequence of `Mapping[str, torch.Tensor]`): N >= 1 state dicts (or lazy checkpoints from
            `open_rlhf.merging.io.open_checkpoint`) with identical names, shapes and dtypes.
        eval_fn (callable): takes a state dict, returns a held-out score where higher is better (accuracy,
            mean reward, minus loss). Typically ``model.load_state_dict(sd); return evaluate(model)``. It must not
            keep or modify the dict it is given.
        tolerance (`float`): minimum gain over the current soup's score for a candidate to be added.

    Returns:
        `GreedySoupResult`: the soup and a record of every decision.

    Raises:
        ValueError: when there are no candidates, names/shapes/dtypes differ, or ``eval_fn`` returns a
            non-finite score (a NaN would silently reject every candidate).

    Source: Model soups, Wortsman et al. 2022, https://huggingface.co/papers/2203.05482, Recipe 1 (GreedySoup).
    """
    if len(candidates) == 0:
        raise ValueError("greedy_soup needs at least one candidate state dict.")
    names = check_compatible({f"candidates[{i}]": c for i, c in enumerate(candidates)})

    def score(sd: dict[str, torch.Tensor], what: str) -> float:
        value = float(eval_fn(sd))
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"eval_fn returned {value} for {what}; it must return a finite score (higher = better).")
        return value

    individual = [score({n: c[n] for n in names}, f"candidates[{i}]") for i, c in enumerate(candidates)]
    order = sorted(range(len(candidates)), key=lambda i: -individual[i])
    best = order[0]
    dtypes = {n: candidates[best][n].dtype for n in names}
    total = {n: candidates[best][n].float() if candidates[best][n].is_floating_point() else candidates[best][n]
             for n in names}
    ingredients, best_score = [best], individual[best]
    trials = [{"candidate": best, "score": best_score, "accepted": True}]
    for i in order[1:]:
        candidate = candidates[i]
        trial_total = {n: t + candidate[n].float() if t.is_floating_point() else t for n, t in total.items()}
        trial_score = score(_average(trial_total, len(ingredients) + 1, dtypes), f"soup + candidates[{i}]")
        accepted = trial_score >= best_score + tolerance
        trials.append({"candidate": i, "score": trial_score, "accepted": accepted})
        if accepted:
            total, best_score = trial_total, trial_score
            ingredients.append(i)
        del trial_total
    return GreedySoupResult(state_dict=_average(total, len(ingredients), dtypes), individual_scores=individual,
                            order=order, ingredients=ingredients, trials=trials, score=best_score)


def greedy_soup_from_folders(models: Sequence[str], output_dir: str, eval_dataset: str = "builtin",
                             eval_prompts: int = 32, split_seed: int = 42, max_new_tokens: int = 96,
                             tolerance: float = 0.0) -> GreedySoupResult:
    """Greedy soup of saved model folders, scored by held-out task accuracy (what ``scripts/merge.py
    --method greedy_soup`` runs).

    The eval function loads each trial soup into one model and measures greedy-decoding accuracy of the
    ``#### N`` answer on the ``eval_prompts`` held-out prompts of ``eval_dataset`` (the pipeline's evaluation
    split, so use prompts the candidates were not trained on). The soup is written like any merge:
    ``model.safetensors``, config, tokenizer, and ``merge_record.json`` with the trials.

    Args:
        models (sequence of `str`): N >= 1 full-model folders of one architecture (LoRA adapters: merge them
            onto their base first).
        output_dir (`str`): the folder to create; it must not exist.
        eval_dataset, eval_prompts, split_seed: held-out prompts with gold answers (see `open_rlhf.data.load_splits`).

    Returns:
        `GreedySoupResult`.

    Raises:
        FileExistsError: when ``output_dir`` exists. ValueError: when the eval data has no gold ``answer``.
    """
    import json

    from safetensors.torch import save_file

    from open_rlhf import data, evaluation
    from open_rlhf import models as model_io
    from open_rlhf.atomic import atomic_output_dir
    from open_rlhf.merging.io import copy_aux_files, open_checkpoint

    _, prompts_ds = data.load_splits(eval_dataset, "prompt", eval_size=eval_prompts, seed=split_seed)
    if "answer" not in prompts_ds.column_names:
        raise ValueError(f"greedy_soup scores by accuracy, but {eval_dataset!r} has no gold 'answer' column. Use "
                         "the built-in task or GSM8K-style data.")
    tokenizer = model_io.load_tokenizer(models[0])
    model = model_io.load_causal_lm(models[0])

    def accuracy(state_dict) -> float:
        model.load_state_dict(state_dict, strict=False)  # tied lm_head may be absent from the file
        return evaluation.evaluate_policy(model, tokenizer, list(prompts_ds["prompt"]), list(prompts_ds["answer"]),
                                          max_new_tokens=max_new_tokens)["accuracy"]

    result = greedy_soup([open_checkpoint(m) for m in models], accuracy, tolerance)
    with atomic_output_dir(output_dir) as tmp:
        save_file({k: v.contiguous() for k, v in result.state_dict.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        copy_aux_files(models[0], tmp)
        record = {"method": "greedy_soup", "models": [str(m) for m in models], "eval_dataset": eval_dataset,
                  "eval_prompts": eval_prompts, "split_seed": split_seed, "tolerance": tolerance,
                  "individual_scores": result.individual_scores, "ingredients": result.ingredients,
                  "trials": result.trials, "score": result.score}
        (tmp / "merge_record.json").write_text(json.dumps(record, indent=2) + "\n")
    return result
