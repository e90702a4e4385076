"""N samples per prompt in batched ``generate`` calls.

One call generates ``n`` continuations of each of up to ``batch_size // n`` prompts (``num_return_sequences``),
left-padded, so the prompt's prefill is shared by its samples in the KV cache layout transformers uses. Every
sample carries its generated token count (up to and including its stop token), which is the compute unit the
strategies report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from open_rlhf.models import stop_token_ids
from open_rlhf.rl_math import response_mask_after_eos


@dataclass
class Sample:
    """One generated response.

    Attributes:
        text (`str`): the decoded response (special tokens removed, cut at the first stop token).
        num_tokens (`int`): generated tokens, the stop token included.
        finished (`bool`): it ended with a stop token (False: cut at ``max_new_tokens``).
    """

    text: str
    num_tokens: int
    finished: bool


def as_messages(prompt) -> list[dict[str, str]]:
    """A prompt as chat messages: a string becomes one user turn; a list of messages is kept.

    Raises:
        ValueError: for anything else, or an empty list.
    """
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, Sequence) and prompt and all(isinstance(m, dict) for m in prompt):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise ValueError(f"a prompt must be a string or a non-empty list of chat messages, got {prompt!r:.80}")


def decoding_kwargs(temperature: float, top_p: float = 1.0) -> dict:
    """``generate`` kwargs: greedy for ``temperature == 0``, else ancestral/nucleus sampling (top-k off).

    Raises:
        ValueError: for a negative temperature or ``top_p`` outside (0, 1].
    """
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {temperature} and {top_p}")
    if temperature == 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p), "top_k": 0}


@torch.inference_mode()
def sample(model, tokenizer, prompts: Sequence, n: int = 1, max_new_tokens: int = 256, temperature: float = 1.0,
           top_p: float = 1.0, batch_size: int = 16, desc: str | None = None) -> list[list[Sample]]:
    """Generate ``n`` responses for each prompt.

    Args:
        model: a causal LM (eval mode); tokenizer: its tokenizer, with a chat template.
        prompts: `P` prompts, each a string or a list of chat messages (`as_messages`).
        n (`int`): responses per prompt (>= 1).
        max_new_tokens (`int`): the cap of each response.
        temperature, top_p: see `decoding_kwargs` (0 = greedy: one generation, repeated ``n`` times).
        batch_size (`int`): sequences per ``generate`` call (at least ``n``: one prompt's samples are one call).
        desc (`str`, *optional*): a progress-bar label (tqdm, shown when given).

    Returns:
        `list[list[Sample]]`: `P` lists of ``n`` samples, in prompt order.

    Raises:
        ValueError: for ``n < 1``, ``max_new_tokens < 1`` or bad decoding settings.
    """
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"n and max_new_tokens must be >= 1, got {n} and {max_new_tokens}")
    kwargs = decoding_kwargs(temperature, top_p)
    stop_ids = stop_token_ids(tokenizer, model.generation_config)
    per_call = max(1, batch_size // n)
    results: list[list[Sample]] = []
    chunks = range(0, len(prompts), per_call)
    for start in tqdm(chunks, desc=desc, disable=desc is None, leave=False):
        texts = [tokenizer.apply_chat_template(as_messages(p), tokenize=False, add_generation_prompt=True)
                 for p in prompts[start:start + per_call]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        enc = enc.to(model.device)
        copies = n if kwargs["do_sample"] else 1  # greedy: one generation, repeated n times
        out = model.generate(**enc, max_new_tokens=max_new_tokens, num_return_sequences=copies, eos_token_id=stop_ids,
                             pad_token_id=tokenizer.pad_token_id, **kwargs)
        responses = out[:, enc["input_ids"].shape[1]:].repeat_interleave(n // copies, dim=0)
        mask, has_stop = response_mask_after_eos(responses, stop_ids)
        samples = [Sample(tokenizer.decode(responses[i][mask[i]], skip_special_tokens=True), int(mask[i].sum()),
                          bool(has_stop[i])) for i in range(responses.shape[0])]
        results.extend(samples[i:i + n] for i in range(0, len(samples), n))
    return results
