"""`EnsemblePolicy`: generate from several causal LMs at once, without merging their weights.

The output-space alternative to weight merging: every model runs on the same prefix (each with its own KV
cache) and one next token is chosen per step from all of them, by averaging their log-probabilities or by a
token-level vote. Costs N forward passes per token; works for models that do not share a base, as long as they
share the tokenizer (same vocabulary, same ids).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

ENSEMBLE_MODES = ("logit_average", "majority_vote")


class EnsemblePolicy:
    """Decode from N causal LMs that share a vocabulary, combining their next-token distributions.

    * ``logit_average``: ``log p(v) = sum_i w_i log_softmax(z_i)(v) / sum_i w_i`` (a weighted product of experts,
      renormalized before sampling). Averaging log-probabilities rather than raw logits makes models with
      differently scaled logits count by their weights only.
    * ``majority_vote``: each model proposes a token (its argmax, or a sample from its own distribution when
      ``do_sample``), each vote counts ``w_i``, the token with the most votes wins; ties go to the tied token with
      the highest averaged log-probability.

    Args:
        models (sequence of `transformers.PreTrainedModel`): causal LMs returning ``logits`` of shape `(B, T, V)`
            with the same V; put them in eval mode on one device.
        weights (sequence of `float`, *optional*): per-model weights, default all 1.
        mode (`str`): ``"logit_average"`` or ``"majority_vote"``.

    Raises:
        ValueError: when there are no models, the vocabulary sizes differ (different tokenizers: merge only
            models that share one), the number of weights is not N, or the mode is unknown.

    Source: log-probability averaging is a product of experts (Hinton 2002, "Training Products of Experts by
        Minimizing Contrastive Divergence", Eq. 1); the token vote is plain plurality voting.
    """

    def __init__(self, models: Sequence[torch.nn.Module], weights: Sequence[float] | None = None,
                 mode: Literal["logit_average", "majority_vote"] = "logit_average"):
        if len(models) == 0:
            raise ValueError("EnsemblePolicy needs at least one model.")
        if mode not in ENSEMBLE_MODES:
            raise ValueError(f"mode={mode!r} is not one of {ENSEMBLE_MODES}.")
        vocab = [m.get_output_embeddings().weight.shape[0] for m in models]
        if len(set(vocab)) != 1:
            raise ValueError(f"The models have different vocabulary sizes {vocab}; an ensemble needs one tokenizer "
                             "shared by all models.")
        weights = [1.0] * len(models) if weights is None else [float(w) for w in weights]
        if len(weights) != len(models):
            raise ValueError(f"Got {len(weights)} weights for {len(models)} models; pass one weight per model.")
        if sum(weights) <= 0:
            raise ValueError(f"weights {weights} must sum to a positive number.")
        self.models = list(models)
        self.weights = weights
        self.mode = mode
        self.vocab_size = vocab[0]

    def _combine_logprobs(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        # logits: N x (B, V) -> (B, V) weighted mean of log-softmax, float32
        total = sum(w * torch.log_softmax(z.float(), dim=-1) for w, z in zip(self.weights, logits, strict=True))
        return total / sum(self.weights)

    def _step(self, logits: Sequence[torch.Tensor], do_sample: bool, temperature: float,
              generator: torch.Generator | None) -> torch.Tensor:
        combined = self._combine_logprobs(logits)  # (B, V)
        if self.mode == "logit_average":
            if not do_sample:
                return combined.argmax(dim=-1)
            probs = torch.softmax(combined / temperature, dim=-1)
            return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        votes = torch.zeros_like(combined)  # (B, V) vote mass per token
        for w, z in zip(self.weights, logits, strict=True):
            if do_sample:
                choice = torch.multinomial(torch.softmax(z.float() / temperature, dim=-1), 1, generator=generator)
            else:
                choice = z.argmax(dim=-1, keepdim=True)
            votes.scatter_add_(1, choice, torch.full_like(choice, w, dtype=votes.dtype))
        top = votes.max(dim=-1, keepdim=True).values
        tied = votes == top
        return torch.where(tied, combined, torch.finfo(combined.dtype).min).argmax(dim=-1)

    @torch.no_grad()
    def next_token_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Averaged next-token log-probabilities after each sequence (for scoring).

        Args:
            input_ids (`torch.LongTensor` of shape `(B, T)`): left-padded prompts.
            attention_mask (`torch.LongTensor` of shape `(B, T)`, *optional*): 1 for tokens, 0 for padding.

        Returns:
            `torch.Tensor` of shape `(B, V)`, float32, in nats (the weighted mean of the models' log-softmax).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = [m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits[:, -1]
                  for m in self.models]
        return self._combine_logprobs(logits)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 32,
                 do_sample: bool = False, temperature: float = 1.0, eos_token_id: int | Sequence[int] | None = None,
                 pad_token_id: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode up to ``max_new_tokens`` tokens, one combined choice per step, with a KV cache per model.

        Args:
            input_ids (`torch.LongTensor` of shape `(B, T)`): prompts, left-padded (as for ``model.generate``).
            attention_mask (`torch.LongTensor` of shape `(B, T)`, *optional*): 1 for tokens, 0 for padding.
            max_new_tokens (`int`): decoding budget.
            do_sample (`bool`): sample (from the averaged distribution, or per model for the vote) instead of argmax.
            temperature (`float`): sampling temperature (> 0).
            eos_token_id (`int` or list of `int`, *optional*): a sequence stops after emitting one of these.
            pad_token_id (`int`, *optional*): filler after a sequence has stopped (default: the first eos id, or 0).
            generator (`torch.Generator`, *optional*): random source when sampling.

        Returns:
            `torch.LongTensor` of shape `(B, T + n)`, n <= ``max_new_tokens``: the prompts followed by the
            generated tokens.

        Raises:
            ValueError: when ``temperature <= 0`` with ``do_sample``, or ``max_new_tokens < 0``.
        """
        if do_sample and temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0 when sampling; use do_sample=False for greedy.")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0.")
        eos_ids = [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
        if pad_token_id is None:
            pad_token_id = eos_ids[0] if eos_ids else 0
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        sequences, mask = input_ids, attention_mask
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        caches: list = [None] * len(self.models)
        step_ids = input_ids
        eos = torch.tensor(eos_ids, device=input_ids.device) if eos_ids else None
        for step in range(max_new_tokens):
            # Left padding: positions count only real tokens; on cached steps only the new position is passed.
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            if step > 0:
                position_ids = position_ids[:, -1:]
            logits = []
            for i, model in enumerate(self.models):
                out = model(input_ids=step_ids, attention_mask=mask, position_ids=position_ids,
                            past_key_values=caches[i], use_cache=True)
                caches[i] = out.past_key_values
                logits.append(out.logits[:, -1])
            next_tokens = self._step(logits, do_sample, temperature, generator)
            next_tokens = torch.where(finished, torch.full_like(next_tokens, pad_token_id), next_tokens)
            sequences = torch.cat([sequences, next_tokens[:, None]], dim=-1)
            mask = torch.cat([mask, (~finished).to(mask.dtype)[:, None]], dim=-1)
            if eos is not None:
                finished |= torch.isin(next_tokens, eos)
                if bool(finished.all()):
                    break
            step_ids = next_tokens[:, None]
        return sequences
