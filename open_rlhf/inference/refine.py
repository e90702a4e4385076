"""Iterative refinement: generate -> feedback -> refine, until a judge accepts the answer or the rounds run out.

`IterativeRefiner` is Self-Refine (Madaan et al. 2023, "Self-Refine: Iterative Refinement with Self-Feedback",
https://arxiv.org/abs/2303.17651, Sec. 2, Algorithm 1) with the stopping test and part of the feedback taken
from an external judge, as Reflexion does with its evaluator (Shinn et al. 2023, "Reflexion: Language Agents with
Verbal Reinforcement Learning", https://arxiv.org/abs/2303.11366, Sec. 3). TRL 1.16 has no such loop. Per prompt:

1. round 0: the policy answers the prompt (greedy or sampled, as set by ``temperature`` / ``top_p``; critiques and
   rewrites use ``refine_temperature`` when it is given, e.g. a greedy first answer and sampled rewrites);
2. the judge, any reward function ``judge(prompts, completions, **columns) -> list[float]`` (a reward spec of
   `open_rlhf.rewards`: ``arith``, ``math``, ``model:PATH``, ...), scores the answer; a score ``>= threshold``
   accepts it and the prompt stops;
3. otherwise the feedback is the judge's score as text and, with ``critique=True``, the policy's own check of its
   steps (the policy is shown the question and its answer and asked to recompute every step: Self-Refine's
   FEEDBACK step, Sec. 2);
4. the refine prompt is a conversation: the prompt, the previous answer as the assistant's turn, and a
   user turn with the feedback, the request to correct it and the question again (Self-Refine's REFINE step with the
   last answer and its feedback only, not the whole history); the policy's reply is the next answer, and the loop
   goes back to 2, for at most ``max_rounds`` refinements.

The kept answer is the best-scored one (``keep="best"``, the default; ties go to the earlier answer, so a rewrite
the judge scores no higher never replaces an answer), or the last one (``keep="last"``, Self-Refine's choice). The
default is ``best`` so that a rewrite the judge scores lower never replaces an answer; with a judge the policy can
game this also keeps the gamed rewrite (see below).

Which judge: with ``math`` and the gold answer the judge *is* the answer key, so the loop stops exactly when the
answer is right and keeps a right answer whenever one round found it. That is an oracle-feedback upper bound
(``pass@(max_rounds + 1)`` over a chain of rewrites), not a test-time method, like `search.RolloutValue` with
``math``. ``arith`` (the share of ``a <op> b = c`` equations that are right, `open_rlhf.rewards`) reads no gold
answer and is the honest judge on the built-in task: it catches the arithmetic slips of a small policy, not a wrong
plan, and it can be gamed: a rewrite made of trivially true equations scores 1.0 and is accepted. With the feedback
closing the refine prompt, the default run's SFT policy did exactly that (``0.50 * 10 = 5``, about the checker's
score) in 19 of 64 kept answers; with the question closing it (`refine_prompt`), in none. A ``model:PATH`` reward
model is deployable too; its scores are not in [0, 1], so set ``threshold`` for it.

Compute: every generated token counts, answers and critiques, in every round (``Result.num_tokens``), so the
strategy sits in the same accuracy-vs-tokens tables as the others. Judge calls are scoring passes, not generation,
and are not counted (as the PRM's in `search`). All open prompts advance together: one round is one batched
``generate`` call for the critiques (if any) and one for the new answers (`open_rlhf.inference.sampling.sample`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from open_rlhf.inference.sampling import as_messages, sample
from open_rlhf.inference.strategies import Result
from open_rlhf.tasks.gsm8k import extract_final_answer

KEEP = ("best", "last")
CRITIQUE_INSTRUCTION = ("Check this solution step by step. Recompute every calculation and say which step is "
                        "wrong, or say that all steps are right.")
REFINE_INSTRUCTION = "Correct the wrong steps and solve it again."


def critique_prompt(prompt, answer: str, instruction: str = CRITIQUE_INSTRUCTION) -> list[dict[str, str]]:
    """The policy's self-check prompt: the question's turns, then one user turn with the proposed solution and
    ``instruction``. A fresh user turn rather than a continuation of the conversation, so the policy reads the
    answer as someone else's to check (Self-Refine's FEEDBACK prompt shows the output as an input, Sec. 2)."""
    messages = as_messages(prompt)
    question = messages[-1]["content"]
    check = f"Question:\n{question}\n\nProposed solution:\n{answer}\n\n{instruction}"
    return messages[:-1] + [{"role": "user", "content": check}]


def feedback_text(score: float, threshold: float, critique: str | None = None) -> str:
    """The feedback of one round as the policy reads it: the judge's score against the threshold and, when given,
    the policy's own critique."""
    text = f"A checker scored this solution {score:.2f}; it accepts {threshold:.2f} or more, so it is not accepted."
    if critique is not None:
        text += f"\nYour own check of the steps:\n{critique.strip()}"
    return text


def refine_prompt(prompt, answer: str, feedback: str, instruction: str = REFINE_INSTRUCTION
                  ) -> list[dict[str, str]]:
    """The refine prompt: the prompt's turns, the previous ``answer`` as the assistant's turn, then a user turn with
    the ``feedback``, ``instruction`` and the question again (Self-Refine's REFINE step, Sec. 2, with the last answer
    only). The question closes the turn because a policy tuned on question -> solution otherwise answers the
    feedback itself (see the module docstring on gaming ``arith``)."""
    messages = as_messages(prompt)
    question = messages[-1]["content"]
    return messages + [{"role": "assistant", "content": answer},
                       {"role": "user", "content": f"{feedback}\n\n{instruction}\n{question}"}]


@dataclass
class RefineTrace:
    """Everything one prompt went through.

    Attributes:
        answers (`list[str]`): the answer of each round, round 0 first (``R + 1`` entries after ``R`` refinements).
        answer_tokens (`list[int]`): tokens generated for each answer.
        scores (`list[float]`): the judge's score of each answer.
        critiques (`list[str]`): the policy's critique before each refinement (empty without ``critique``).
        critique_tokens (`list[int]`): tokens generated for each critique.
        feedback (`list[str]`): the feedback text of each refinement (``R`` entries).
        refine_prompts (`list[list[dict]]`): the chat messages the policy answered in each refinement.
        accepted (`bool`): the judge accepted an answer (else ``max_rounds`` ran out).
    """

    answers: list[str] = field(default_factory=list)
    answer_tokens: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    critiques: list[str] = field(default_factory=list)
    critique_tokens: list[int] = field(default_factory=list)
    feedback: list[str] = field(default_factory=list)
    refine_prompts: list[list[dict]] = field(default_factory=list)
    accepted: bool = False

    @property
    def num_tokens(self) -> int:
        """Every token generated for this prompt: answers and critiques of all rounds."""
        return sum(self.answer_tokens) + sum(self.critique_tokens)

    def chosen(self, keep: str = "best") -> int:
        """The index of the kept answer: the highest score, ties to the earliest (``best``), or the last."""
        if keep == "last":
            return len(self.answers) - 1
        return max(range(len(self.answers)), key=lambda r: (self.scores[r], -r))


class IterativeRefiner:
    """Generate, get feedback, refine; stop when the judge accepts or after ``max_rounds`` (see the module
    docstring).

    Args:
        model, tokenizer: the policy (eval mode) and its tokenizer (chat template, padding set).
        judge: ``judge(prompts, completions, **columns) -> list[float]``, e.g.
            ``open_rlhf.rewards.build_reward_functions("arith")``; called once per round for the open prompts.
        max_rounds (`int`): the most refinements after round 0 (>= 0; 0 is round 0 alone, judged).
        threshold (`float`): a score ``>= threshold`` accepts the answer.
        critique (`bool`): add the policy's own step check to the feedback (one more generation per round).
        keep (`str`): ``"best"`` (default: the best-scored answer, ties to the earlier) or ``"last"``.
        max_new_tokens (`int`): the cap of each answer and each critique.
        temperature, top_p: decoding of every generation (0 = greedy), `sampling.decoding_kwargs`.
        refine_temperature (`float`, *optional*): the temperature of critiques and rewrites (rounds >= 1); None:
            ``temperature``. A policy that was never trained to revise tends to copy its answer, and a greedy copy of
            a greedy answer changes nothing.
        batch_size (`int`): sequences per ``generate`` call.
        extract: the final-answer extractor of the results.

    Raises:
        ValueError: for ``max_rounds < 0``, an unknown ``keep`` or ``max_new_tokens < 1``.
    """

    def __init__(self, model, tokenizer, judge: Callable[..., list[float]], max_rounds: int = 2,
                 threshold: float = 1.0, critique: bool = False, keep: str = "best", max_new_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, refine_temperature: float | None = None,
                 batch_size: int = 16, extract: Callable[[str], str | None] = extract_final_answer):
        if max_rounds < 0:
            raise ValueError(f"max_rounds must be >= 0, got {max_rounds}")
        if keep not in KEEP:
            raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model, self.tokenizer, self.judge = model, tokenizer, judge
        self.max_rounds, self.threshold, self.critique, self.keep = max_rounds, threshold, critique, keep
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.refine_temperature = temperature if refine_temperature is None else refine_temperature
        self.batch_size, self.extract = batch_size, extract

    def _generate(self, prompts: list, temperature: float) -> list[tuple[str, int]]:
        out = sample(self.model, self.tokenizer, prompts, 1, self.max_new_tokens, temperature, self.top_p,
                     self.batch_size)
        return [(group[0].text, group[0].num_tokens) for group in out]

    def _score(self, prompts: Sequence, ids: list[int], texts: list[str], columns: dict) -> list[float]:
        picked = {name: [values[i] for i in ids] for name, values in columns.items()}
        scores = [float(s) for s in self.judge([as_messages(prompts[i]) for i in ids], texts, **picked)]
        if len(scores) != len(texts):
            raise ValueError(f"the judge returned {len(scores)} scores for {len(texts)} answers")
        return scores

    def trace(self, prompts: Sequence, columns: dict[str, Sequence] | None = None) -> list[RefineTrace]:
        """Run the loop for every prompt and return what each went through.

        Args:
            prompts: `P` prompts (strings or chat messages).
            columns (`dict`, *optional*): per-prompt columns the judge reads (``{"answer": [...]}`` for ``math``),
                `P` values each.

        Returns:
            `list[RefineTrace]`, one per prompt.

        Raises:
            ValueError: for a ``columns`` entry whose length is not `P`, or a judge returning the wrong number of
                scores.
        """
        columns = dict(columns or {})
        for name, values in columns.items():
            if len(values) != len(prompts):
                raise ValueError(f"column {name!r} has {len(values)} values for {len(prompts)} prompts")
        traces = [RefineTrace() for _ in prompts]
        open_ids = list(range(len(prompts)))
        for round_ in range(self.max_rounds + 1):
            if round_ == 0:
                asked = list(prompts)
            else:
                critiques: list[str | None] = [None] * len(open_ids)
                if self.critique:
                    made = self._generate([critique_prompt(prompts[i], traces[i].answers[-1]) for i in open_ids],
                                          self.refine_temperature)
                    for j, (i, (text, tokens)) in enumerate(zip(open_ids, made, strict=True)):
                        traces[i].critiques.append(text)
                        traces[i].critique_tokens.append(tokens)
                        critiques[j] = text
                asked = []
                for i, critique in zip(open_ids, critiques, strict=True):
                    feedback = feedback_text(traces[i].scores[-1], self.threshold, critique)
                    messages = refine_prompt(prompts[i], traces[i].answers[-1], feedback)
                    traces[i].feedback.append(feedback)
                    traces[i].refine_prompts.append(messages)
                    asked.append(messages)
            answers = self._generate(asked, self.temperature if round_ == 0 else self.refine_temperature)
            scores = self._score(prompts, open_ids, [text for text, _ in answers], columns)
            still_open = []
            for i, (text, tokens), score in zip(open_ids, answers, scores, strict=True):
                trace = traces[i]
                trace.answers.append(text)
                trace.answer_tokens.append(tokens)
                trace.scores.append(score)
                if score >= self.threshold:
                    trace.accepted = True
                else:
                    still_open.append(i)
            open_ids = still_open
            if not open_ids:
                break
        return traces

    def result(self, trace: RefineTrace) -> Result:
        """A trace as a strategy `Result`: the kept answer and its judge score; ``num_samples`` the answers
        generated (critiques not counted there), ``num_tokens`` every generated token, critiques included;
        ``candidates`` / ``scores`` every answer and its score, round 0 first."""
        k = trace.chosen(self.keep)
        return Result(trace.answers[k], self.extract(trace.answers[k]), trace.scores[k], len(trace.answers),
                      trace.num_tokens, list(trace.answers), list(trace.scores))

    def generate(self, prompts: Sequence, columns: dict[str, Sequence] | None = None) -> list[Result]:
        """`trace` for every prompt, then each prompt's kept answer as a `Result` (see `result`)."""
        return [self.result(t) for t in self.trace(prompts, columns)]
