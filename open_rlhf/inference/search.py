"""Step-level search: PRM-guided beam search and Monte-Carlo tree search (MCTS) over solution steps.

A *step* is one line of the solution. A step policy proposes next steps (`LMStepPolicy`: samples from the
policy, one line each, batched over every open prefix of every prompt) and an evaluator gives a prefix of steps a
value (`PRMValue`: the process reward model's score of the last step; `ValueModelValue`: a PPO value model at the
prefix's last token; `RolloutValue`: complete the prefix with the policy and score the solution with a reward
spec, e.g. the ``math`` verifier). Compute is counted as generated tokens (steps and rollouts; scoring passes of
the PRM or value model are not generation and are not counted, as in Snell et al. 2024).

- `beam_search` (Snell et al. 2024, "Scaling LLM Test-Time Compute Optimally", Sec. 5.2, "beam search"): keep
  ``beam_width`` prefixes; every round each open one gets ``expand`` sampled next steps; all children are scored
  and the best ``beam_width`` open ones continue, finished ones are set aside; the answer is the finished solution
  with the best score.
- `MCTSGenerator`: AlphaZero-style search (Silver et al. 2017, "Mastering the game of Go without human
  knowledge", Methods, "Search algorithm") over steps, with sampled actions as in Sampled MuZero (Hubert et al.
  2021, Sec. 4: the prior of a sampled child is its empirical share among the ``expand`` samples) and every new
  child evaluated at once, as in ReST-MCTS* (Zhang et al. 2024, Sec. 3.2). One simulation:

  1. **selection**: from the root, go to the child maximising PUCT
     ``Q(s, a) + c_puct * P(s, a) * sqrt(N(s)) / (1 + N(s, a))`` (Silver et al. 2017, Eq. in Methods; ``Q`` the
     mean value of the child's subtree), until a node that is unexpanded, finished, or due for widening:
     progressive widening (Couetoux et al. 2011, "Continuous Upper Confidence Trees", Sec. 2) lets a node with
     ``N`` visits be expanded ``max(1, widening * N ** 0.5)`` times, so a node whose first samples were all bad
     still gets new ones (with sampled actions a node could otherwise never try a step its first samples missed);
  2. **expansion**: sample ``expand`` next steps from that node with the policy (a finished node is not expanded);
     a sample equal to an existing child adds to its count, and every child's prior is its share of all samples
     drawn at the node;
  3. **evaluation**: value every new child with the evaluator (a finished node is valued again);
  4. **backpropagation**: each new child starts with ``N = 1, W = v``; every ancestor adds the children's count
     and values to its ``N`` and ``W``.

  The budget is ``num_simulations`` simulations or ``max_tokens`` generated tokens per prompt, whichever ends
  first. The answer is the finished solution with the highest mean value ``Q``; if none finished, the path of
  most visits from the root. All prompts' trees advance together, so one simulation round is one batched
  ``generate`` call and one batched scoring call.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from open_rlhf.inference.prm import ProcessRewardModel, aggregate_scores, steps_prefix
from open_rlhf.inference.sampling import as_messages, prompt_text, sample
from open_rlhf.inference.strategies import Result
from open_rlhf.tasks.gsm8k import extract_final_answer


@dataclass(frozen=True)
class Step:
    """One proposed step: its text (one line), the tokens generated for it, and whether the solution ends with it
    (it holds the ``####`` answer, the policy ended its turn, or the depth limit is reached)."""

    text: str
    num_tokens: int
    terminal: bool


def is_final_step(text: str) -> bool:
    """Whether a step states the final answer (GSM8K's ``#### N`` line)."""
    return "####" in text


class LMStepPolicy:
    """Next steps sampled from a causal LM, one line each, and rollouts that complete a prefix.

    Args:
        model, tokenizer: the policy (eval mode) and its tokenizer (with a chat template; padding set).
        max_step_tokens (`int`): the cap of one step.
        max_steps (`int`): the depth limit; a step at this depth ends the solution.
        temperature, top_p: sampling of steps and rollouts.
        rollout_tokens (`int`): the cap of a rollout.
        batch_size (`int`): sequences per ``generate`` call.
    """

    def __init__(self, model, tokenizer, max_step_tokens: int = 64, max_steps: int = 10, temperature: float = 1.0,
                 top_p: float = 1.0, rollout_tokens: int = 256, batch_size: int = 32):
        self.model, self.tokenizer = model, tokenizer
        self.max_step_tokens, self.max_steps = max_step_tokens, max_steps
        self.temperature, self.top_p = temperature, top_p
        self.rollout_tokens, self.batch_size = rollout_tokens, batch_size

    def propose(self, prompts: Sequence, prefixes: Sequence[Sequence[str]], k: int) -> list[list[Step]]:
        """``k`` sampled next steps for each (prompt, prefix of steps)."""
        if not prompts:
            return []
        out = sample(self.model, self.tokenizer, prompts, k, self.max_step_tokens, self.temperature, self.top_p,
                     self.batch_size, prefixes=[steps_prefix(p) for p in prefixes], stop="line")
        return [[Step(s.text.strip(), s.num_tokens, s.eos or is_final_step(s.text) or len(prefix) + 1 >= self.max_steps)
                 for s in group] for prefix, group in zip(prefixes, out, strict=True)]

    def rollout(self, prompts: Sequence, prefixes: Sequence[Sequence[str]]) -> list[tuple[str, int]]:
        """One sampled completion of each prefix: ``(the rest of the solution, tokens generated)``."""
        if not prompts:
            return []
        out = sample(self.model, self.tokenizer, prompts, 1, self.rollout_tokens, self.temperature, self.top_p,
                     self.batch_size, prefixes=[steps_prefix(p) for p in prefixes])
        return [(group[0].text, group[0].num_tokens) for group in out]


# Evaluators: (prompts, prefixes of steps, finished flags) -> (values, tokens generated)
class PRMValue:
    """A prefix's value is the PRM's score of its steps, aggregated (``last``: the last step's ``P(correct)``,
    Snell et al. 2024, Sec. 5.2; or ``min`` / ``prod``, `open_rlhf.inference.prm.aggregate_scores`)."""

    def __init__(self, prm: ProcessRewardModel, aggregate: str = "last"):
        self.prm, self.aggregate = prm, aggregate

    def __call__(self, prompts, prefixes, finished) -> tuple[list[float], int]:
        scores = self.prm.step_scores(prompts, prefixes)
        return [aggregate_scores(s, self.aggregate) for s in scores], 0


class ValueModelValue:
    """A prefix's value is a value model's output at the prefix's last token (the PPO critic ``V(s)``, a scalar-head
    sequence classifier saved in ``<ppo run>/value_model``)."""

    def __init__(self, model, tokenizer, batch_size: int = 16):
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size

    @classmethod
    def from_pretrained(cls, path: str, device=None) -> ValueModelValue:
        from open_rlhf import models

        tokenizer = models.load_tokenizer(path, padding_side="left")
        model = models.load_scalar_head_model(path, tokenizer.pad_token_id, use_safetensors=True)
        return cls(model.to(device) if device is not None else model, tokenizer)

    def __call__(self, prompts, prefixes, finished) -> tuple[list[float], int]:
        import torch

        texts = [prompt_text(self.tokenizer, p, steps_prefix(s)) for p, s in zip(prompts, prefixes, strict=True)]
        values: list[float] = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[i:i + self.batch_size], return_tensors="pt", padding=True,
                                     padding_side="right", add_special_tokens=False).to(self.model.device)
                values.extend(self.model(**enc).logits[:, 0].float().tolist())
        return values, 0


class RolloutValue:
    """A prefix's value is the reward of one policy rollout from it (a finished prefix is scored as it is), e.g.
    the ``math`` verifier against the gold answer (Monte-Carlo evaluation; with gold answers this is an oracle
    verifier, not a test-time method).

    Args:
        policy (`LMStepPolicy`): completes the prefixes.
        reward: a reward function ``reward(prompts, completions, **columns) -> list[float]``.
        columns (`dict`, *optional*): per-prompt columns of the reward (``{"answer": [...]}``), indexed by the
            prompt positions given to `__call__` through ``index``.
    """

    def __init__(self, policy: LMStepPolicy, reward: Callable[..., list[float]], columns: dict | None = None):
        self.policy, self.reward, self.columns = policy, reward, dict(columns or {})

    def __call__(self, prompts, prefixes, finished, index=None) -> tuple[list[float], int]:
        open_ids = [i for i, done in enumerate(finished) if not done]
        rollouts = dict(zip(open_ids, self.policy.rollout([prompts[i] for i in open_ids],
                                                          [prefixes[i] for i in open_ids]), strict=True))
        texts = [steps_prefix(s) + (rollouts[i][0] if i in rollouts else "") for i, s in enumerate(prefixes)]
        columns = {k: [v[j] for j in index] for k, v in self.columns.items()} if index is not None else {}
        values = [float(x) for x in self.reward([as_messages(p) for p in prompts], texts, **columns)]
        return values, sum(t for _, t in rollouts.values())


def _evaluate(evaluator, prompts, prefixes, finished, index) -> tuple[list[float], int]:
    if isinstance(evaluator, RolloutValue):
        return evaluator(prompts, prefixes, finished, index=index)
    return evaluator(prompts, prefixes, finished)


def _check(**values) -> None:
    bad = {k: v for k, v in values.items() if v is not None and v < 1}
    if bad:
        raise ValueError(f"search settings must be >= 1, got {bad}")


def _text(steps: Sequence[str]) -> str:
    return "\n".join(steps)


@dataclass
class _Beam:
    steps: tuple[str, ...]
    score: float
    finished: bool


def beam_search(policy: LMStepPolicy, evaluator, prompts: Sequence, beam_width: int = 4, expand: int = 4,
                extract: Callable[[str], str | None] = extract_final_answer, desc: str | None = "beam search"
                ) -> list[Result]:
    """Step-level beam search guided by a step evaluator (see the module docstring).

    Args:
        policy (`LMStepPolicy`, or any object with its ``propose`` and ``max_steps``): proposes steps; its
            ``max_steps`` bounds the rounds.
        evaluator: `PRMValue`, `ValueModelValue` or `RolloutValue`.
        prompts: `P` prompts.
        beam_width (`int`): prefixes kept per round (>= 1).
        expand (`int`): next steps sampled per kept prefix (>= 1); the first round samples
            ``beam_width * expand`` first steps.

    Returns:
        `list[Result]`: the best finished solution per prompt (the best open one if none finished) with its score;
        ``num_samples`` is the number of steps sampled, ``num_tokens`` every generated token; ``candidates`` the
        finished solutions.

    Raises:
        ValueError: for ``beam_width < 1`` or ``expand < 1``.
    """
    _check(beam_width=beam_width, expand=expand)
    beams: list[list[_Beam]] = [[_Beam((), 0.0, False)] for _ in prompts]
    done: list[list[_Beam]] = [[] for _ in prompts]
    tokens, sampled = [0] * len(prompts), [0] * len(prompts)
    bar = tqdm(total=policy.max_steps, desc=desc, disable=desc is None, leave=False)
    for _ in range(policy.max_steps):
        jobs = [(i, b) for i, group in enumerate(beams) for b in group]
        if not jobs:
            break
        k = [beam_width * expand if not b.steps else expand for _, b in jobs]
        children: list[tuple[int, _Beam]] = []
        for kk in sorted(set(k)):  # one generate call per distinct k (the root's round differs)
            part = [job for job, kj in zip(jobs, k, strict=True) if kj == kk]
            proposed = policy.propose([prompts[i] for i, _ in part], [list(b.steps) for _, b in part], kk)
            for (i, beam), steps in zip(part, proposed, strict=True):
                for step in steps:
                    tokens[i] += step.num_tokens
                    sampled[i] += 1
                    children.append((i, _Beam(beam.steps + (step.text,), 0.0, step.terminal)))
        values, extra = _evaluate(evaluator, [prompts[i] for i, _ in children], [list(c.steps) for _, c in children],
                                  [c.finished for _, c in children], [i for i, _ in children])
        _spread(tokens, [i for i, _ in children], extra)
        beams = [[] for _ in prompts]
        for (i, child), value in zip(children, values, strict=True):
            child.score = value
            (done[i] if child.finished else beams[i]).append(child)
        for i in range(len(prompts)):
            beams[i] = sorted(beams[i], key=lambda b: -b.score)[:max(0, beam_width - len(done[i]))]
        bar.update(1)
    bar.close()
    results = []
    for i in range(len(prompts)):
        pool = done[i] or beams[i] or [_Beam((), 0.0, False)]
        best = max(pool, key=lambda b: b.score)
        text = _text(best.steps)
        results.append(Result(text, extract(text), best.score, sampled[i], tokens[i], [_text(b.steps) for b in done[i]]))
    return results


def _spread(tokens: list[int], owners: list[int], extra: int) -> None:
    """Add ``extra`` evaluation tokens (rollouts) to the prompts in ``owners``, in proportion to their share."""
    if extra and owners:
        counts = Counter(owners)
        for i, c in counts.items():
            tokens[i] += round(extra * c / len(owners))


@dataclass
class Node:
    """A node of the search tree: a prefix of steps.

    Attributes:
        steps: the steps from the root; prior: ``P(s, a)``; visits: ``N``; value_sum: ``W`` (``Q = W / N``);
        finished: the solution ends here; children: the expanded next steps; samples: how often the parent's
        expansions drew this step; expansions: how often this node was expanded.
    """

    steps: tuple[str, ...]
    prior: float = 1.0
    samples: int = 0
    expansions: int = 0
    visits: int = 0
    value_sum: float = 0.0
    finished: bool = False
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)

    @property
    def q(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0


class MCTSGenerator:
    """Monte-Carlo tree search over solution steps (see the module docstring for the variant and its sources).

    Args:
        policy (`LMStepPolicy` or any object with its ``propose`` method): proposes next steps.
        evaluator: `PRMValue`, `ValueModelValue`, `RolloutValue`, or any ``(prompts, prefixes, finished) ->
            (values, tokens)`` callable.
        num_simulations (`int`): simulations (expansions or re-evaluations) per prompt (>= 1).
        expand (`int`): next steps sampled per expansion (>= 1).
        c_puct (`float`): the exploration constant of PUCT (> 0).
        widening (`float`): progressive widening's constant: a node with ``N`` visits may be expanded
            ``widening * sqrt(N)`` times (at least once; 0 turns widening off: one expansion per node).
        max_tokens (`int`, *optional*): a budget of generated tokens per prompt; a tree stops once it is spent (the
            expansion that crosses it completes, so a tree may pass it by up to one expansion).

    Raises:
        ValueError: for a setting below 1, ``c_puct <= 0`` or ``widening < 0``.
    """

    def __init__(self, policy, evaluator, num_simulations: int = 16, expand: int = 4, c_puct: float = 1.0,
                 widening: float = 1.0, max_tokens: int | None = None):
        _check(num_simulations=num_simulations, expand=expand, max_tokens=max_tokens)
        if not c_puct > 0 or widening < 0:
            raise ValueError(f"c_puct must be > 0 and widening >= 0, got {c_puct} and {widening}")
        self.policy, self.evaluator = policy, evaluator
        self.num_simulations, self.expand, self.c_puct, self.max_tokens = num_simulations, expand, c_puct, max_tokens
        self.widening = widening

    def _select(self, root: Node) -> Node:
        node = root
        while node.children and not node.finished:
            if node.expansions < self.widening * math.sqrt(node.visits):
                return node  # progressive widening: sample more next steps here
            scale = self.c_puct * math.sqrt(node.visits)
            node = max(node.children, key=lambda c: c.q + scale * c.prior / (1 + c.visits))
        return node

    @staticmethod
    def _add_children(node: Node, steps: Sequence[Step]) -> list[Node]:
        """Merge sampled steps into ``node``'s children; priors become the empirical shares. Returns the new ones."""
        node.expansions += 1
        known = {(c.steps[-1], c.finished): c for c in node.children}
        new = []
        for step in steps:
            key = (step.text, step.terminal)
            if key in known:
                known[key].samples += 1
            else:
                child = Node(node.steps + (step.text,), finished=step.terminal, parent=node, samples=1)
                known[key] = child
                node.children.append(child)
                new.append(child)
        total = sum(c.samples for c in node.children)
        for c in node.children:
            c.prior = c.samples / total
        return new

    @staticmethod
    def _backpropagate(node: Node, visits: int, value: float) -> None:
        while node is not None:
            node.visits += visits
            node.value_sum += value
            node = node.parent

    def search(self, prompts: Sequence, desc: str | None = "MCTS") -> tuple[list[Node], list[int], list[int]]:
        """Run the search for every prompt; returns the roots, the generated tokens and the simulations per prompt."""
        roots = [Node(()) for _ in prompts]
        tokens, sims = [0] * len(prompts), [0] * len(prompts)
        bar = tqdm(total=self.num_simulations, desc=desc, disable=desc is None, leave=False)
        for _ in range(self.num_simulations):
            active = [i for i in range(len(prompts)) if self.max_tokens is None or tokens[i] < self.max_tokens]
            if not active:
                break
            leaves = {i: self._select(roots[i]) for i in active}
            grow = [i for i in active if not leaves[i].finished]
            proposed = self.policy.propose([prompts[i] for i in grow], [list(leaves[i].steps) for i in grow],
                                           self.expand)
            new: list[tuple[int, Node]] = []
            for i, steps in zip(grow, proposed, strict=True):
                tokens[i] += sum(s.num_tokens for s in steps)
                added = self._add_children(leaves[i], steps)
                new.extend((i, child) for child in added)
                if not added:  # every sample was a known child: value the node again, as a finished one is
                    new.append((i, leaves[i]))
            new.extend((i, leaves[i]) for i in active if leaves[i].finished)  # a finished leaf is valued again
            values, extra = _evaluate(self.evaluator, [prompts[i] for i, _ in new], [list(n.steps) for _, n in new],
                                      [n.finished for _, n in new], [i for i, _ in new])
            _spread(tokens, [i for i, _ in new], extra)
            for (_, node), value in zip(new, values, strict=True):
                self._backpropagate(node, 1, value)  # the node (N = 1, W = v when new) and every ancestor
            for i in active:
                sims[i] += 1
            bar.update(1)
        bar.close()
        return roots, tokens, sims

    def generate(self, prompts: Sequence, extract: Callable[[str], str | None] = extract_final_answer,
                 desc: str | None = "MCTS") -> list[Result]:
        """Search, then answer each prompt with its finished solution of highest ``Q`` (else the most-visited
        path). ``score`` is that ``Q``; ``num_samples`` the simulations; ``candidates`` every finished solution."""
        roots, tokens, sims = self.search(prompts, desc)
        results = []
        for root, t, s in zip(roots, tokens, sims, strict=True):
            finished = [n for n in _walk(root) if n.finished and n.visits]
            if finished:
                best = max(finished, key=lambda n: n.q)
            else:
                best = root
                while best.children:
                    best = max(best.children, key=lambda c: c.visits)
            text = _text(best.steps)
            results.append(Result(text, extract(text), best.q, s, t, [_text(n.steps) for n in finished]))
        return results


def _walk(node: Node):
    yield node
    for child in node.children:
        yield from _walk(child)
