"""Context compression: shorten long prompts before generation by dropping the tokens a small LM finds most
predictable (LLMLingua's token-level compression, Jiang et al. 2023, "LLMLingua: Compressing Prompts for
Accelerated Inference of Large Language Models", EMNLP, Sec. 3.3).

TRL 1.16 has no prompt compression; this is ours. The `llmlingua` package (0.2.2, the authors' library) does not
fit here: its `PromptCompressor.__init__` calls ``tiktoken.encoding_for_model("gpt-3.5-turbo")``, which downloads
the BPE file from openaipublic.blob.core.windows.net (unreachable offline), and its perplexity loop indexes the KV
cache as legacy tuples (``past_key_values[0][0].shape[2]``), which transformers 5's `Cache` objects are not.

The variant implemented (`ContextCompressor`):

- **self-information**: ``s_i = -log p(x_i | x_<i)`` in nats under the small LM, for every token of the text to
  compress (LLMLingua Eq. 4-5 keep the tokens whose perplexity is above a threshold);
- **iterative, segment by segment** (LLMLingua Sec. 3.3): the text is cut into segments of ``segment_tokens``;
  a segment's self-information is computed conditioned on the *compressed* previous segments, so a token that is
  predictable only because of something already dropped is kept;
- **budget**: in every segment the ``ceil(ratio * n)`` tokens of highest self-information are kept (ties to the
  earlier token), protected tokens first: tokens holding a digit (``protect_digits``; a math prompt without its
  numbers is useless), a ``#`` (the ``####`` answer marker) or a newline (the layout);
- **budget controller** (in the spirit of LLMLingua Sec. 3.1, which compresses demonstrations harder than the
  question): `compress_prompt` never compresses the question. Of chat messages, the last user message's final
  paragraph (after its last blank line; the whole message if it has none) is kept verbatim, and every earlier
  message, the assistant's included, and the rest of the last one are compressed.

The first token of the text is always kept (it has no context). Token counts are the tokenizer's (the small LM
must share the target model's tokenizer to report the target's counts: use the target's own tokenizer, as
``scripts/generate.py --compress_ratio`` does with the policy itself as the small LM).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from open_rlhf.inference.sampling import as_messages


@dataclass
class CompressedText:
    """A compressed text: ``text``, and the token counts before (``original_tokens``) and after (``kept_tokens``)."""

    text: str
    original_tokens: int
    kept_tokens: int


@torch.no_grad()
def self_information(model, ids: Sequence[int], context: Sequence[int] = ()) -> torch.Tensor:
    """``-log p(x_i | context, x_<i)`` of every token of ``ids``, in nats.

    Args:
        model: a causal LM; ids: `L` token ids; context: token ids before them (not scored).

    Returns:
        `torch.FloatTensor` of shape `(L,)`; the first token gets ``+inf`` when there is no context.
    """
    x = torch.tensor([list(context) + list(ids)], device=model.device)
    logp = model(input_ids=x).logits[0].float().log_softmax(-1)
    n = len(context)
    targets = x[0, max(n, 1):]
    scores = -logp[max(n, 1) - 1:-1].gather(1, targets[:, None])[:, 0].cpu()
    return torch.cat([torch.tensor([math.inf]), scores]) if n == 0 else scores


class ContextCompressor:
    """LLMLingua-style token dropping (see the module docstring for the exact variant and its source).

    Args:
        model, tokenizer: the small causal LM that judges predictability (eval mode) and its tokenizer.
        ratio (`float`): the share of tokens kept, in (0, 1]; 1 returns texts unchanged.
        protect_digits (`bool`): always keep tokens holding a digit.
        segment_tokens (`int`): tokens per segment of the iterative compression.

    Raises:
        ValueError: for ``ratio`` outside (0, 1] or ``segment_tokens < 1``.
    """

    def __init__(self, model, tokenizer, ratio: float = 0.5, protect_digits: bool = True, segment_tokens: int = 256):
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio (the share of tokens kept) must be in (0, 1], got {ratio}")
        if segment_tokens < 1:
            raise ValueError(f"segment_tokens must be >= 1, got {segment_tokens}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.ratio, self.protect_digits, self.segment_tokens = ratio, protect_digits, segment_tokens
        self._protected: dict[int, bool] = {}
        self._done: dict[str, CompressedText] = {}  # shared demonstrations are compressed once

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def protected(self, token_id: int) -> bool:
        """Whether a token is always kept: it holds a newline or ``#``, or a digit with ``protect_digits``."""
        if token_id not in self._protected:
            piece = self.tokenizer.decode([token_id])
            self._protected[token_id] = "\n" in piece or "#" in piece or (
                self.protect_digits and any(c.isdigit() for c in piece))
        return self._protected[token_id]

    def keep_mask(self, ids: Sequence[int], context: Sequence[int] = ()) -> list[bool]:
        """Which tokens of one segment are kept: the protected ones, then the highest self-information ones, up to
        ``ceil(ratio * len(ids))`` in all (more when more are protected)."""
        budget = math.ceil(self.ratio * len(ids))
        info = self_information(self.model, ids, context)
        keep = [self.protected(t) or math.isinf(float(info[i])) for i, t in enumerate(ids)]
        order = sorted((i for i in range(len(ids)) if not keep[i]), key=lambda i: (-float(info[i]), i))
        for i in order[:max(0, budget - sum(keep))]:
            keep[i] = True
        return keep

    def compress(self, text: str) -> CompressedText:
        """Compress a whole text (no part of it protected besides the protected tokens). Deterministic, so a text
        seen before (the same few-shot demonstrations in every prompt) is not compressed again.

        Returns:
            `CompressedText`: ``kept_tokens`` counts the compressed text re-tokenized (what a model is given).
        """
        if text in self._done:
            return self._done[text]
        ids = self._tokens(text)
        if self.ratio == 1 or not ids:
            return CompressedText(text, len(ids), len(ids))
        kept: list[int] = []
        for start in range(0, len(ids), self.segment_tokens):
            segment = ids[start:start + self.segment_tokens]
            mask = self.keep_mask(segment, kept)
            kept.extend(t for t, k in zip(segment, mask, strict=True) if k)
        out = self.tokenizer.decode(kept)
        self._done[text] = CompressedText(out, len(ids), len(self._tokens(out)))
        return self._done[text]

    def compress_prompt(self, prompt) -> tuple[list[dict[str, str]], int, int]:
        """Compress a prompt (a string or chat messages), keeping its question verbatim (the module docstring).

        Returns:
            ``(messages, original_tokens, kept_tokens)``: the same roles and number of messages; token counts of
            the message contents.
        """
        messages = as_messages(prompt)
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=len(messages) - 1)
        out, before, after = [], 0, 0
        for i, message in enumerate(messages):
            content = message["content"]
            head, tail = content, ""
            if i == last_user:
                cut = content.rfind("\n\n")
                head, tail = (content[:cut], content[cut:]) if cut >= 0 else ("", content)
            done = self.compress(head) if head else CompressedText("", 0, 0)
            text = done.text + tail
            before += len(self._tokens(content))
            after += len(self._tokens(text))
            out.append({"role": message["role"], "content": text})
        return out, before, after


def compress_prompts(prompts: Sequence, compressor: ContextCompressor) -> tuple[list[list[dict[str, str]]], dict]:
    """`ContextCompressor.compress_prompt` over prompts.

    Returns:
        ``(messages per prompt, stats)`` with ``stats = {"original_tokens", "kept_tokens", "kept_share"}`` (totals
        over the prompts' message contents).
    """
    out, before, after = [], 0, 0
    for prompt in prompts:
        messages, b, a = compressor.compress_prompt(prompt)
        out.append(messages)
        before, after = before + b, after + a
    return out, {"original_tokens": before, "kept_tokens": after, "kept_share": after / before if before else 1.0}
