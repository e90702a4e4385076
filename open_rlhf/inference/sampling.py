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
    """One generated response (or, with ``stop="line"``, one generated step).

    Attributes:
        text (`str`): the decoded text (special tokens removed, cut at the first stop token; with ``stop="line"``
            also cut before the first newline).
        num_tokens (`int`): generated tokens, the stop token included.
        finished (`bool`): it ended with a stop token (False: cut at ``max_new_tokens``). With ``stop="line"`` a
            newline counts as a stop token.
        eos (`bool`): it ended with the model's end-of-turn token: the response is over.
    """

    text: str
    num_tokens: int
    finished: bool
    eos: bool = False


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


def completion_text(completion) -> str:
    """The text of a completion given as a string or as a conversational list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if m.get("role", "assistant") == "assistant")


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


_NEWLINE_IDS: dict[int, list[int]] = {}


def newline_token_ids(tokenizer) -> list[int]:
    """Every token id whose text contains a newline (a step ends at the first one; cached per tokenizer)."""
    key = id(tokenizer)
    if key not in _NEWLINE_IDS:
        vocab = tokenizer.get_vocab()
        _NEWLINE_IDS[key] = sorted(i for t, i in vocab.items() if "\n" in tokenizer.convert_tokens_to_string([t]))
    return _NEWLINE_IDS[key]


def prompt_text(tokenizer, prompt, prefix: str = "") -> str:
    """The model input of a prompt: its chat template with the generation prompt, then ``prefix``, the part of the
    assistant turn already written (steps of a solution being continued)."""
    return tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True) + prefix


@torch.inference_mode()
def sample(model, tokenizer, prompts: Sequence, n: int = 1, max_new_tokens: int = 256, temperature: float = 1.0,
           top_p: float = 1.0, batch_size: int = 16, desc: str | None = None, prefixes: Sequence[str] | None = None,
           stop: str = "eos") -> list[list[Sample]]:
    """Generate ``n`` responses for each prompt.

    Args:
        model: a causal LM (eval mode); tokenizer: its tokenizer, with a chat template.
        prompts: `P` prompts, each a string or a list of chat messages (`as_messages`).
        n (`int`): responses per prompt (>= 1).
        max_new_tokens (`int`): the cap of each response.
        temperature, top_p: see `decoding_kwargs` (0 = greedy: one generation, repeated ``n`` times).
        batch_size (`int`): sequences per ``generate`` call (at least ``n``: one prompt's samples are one call).
        desc (`str`, *optional*): a progress-bar label (tqdm, shown when given).
        prefixes (`Sequence[str]`, *optional*): per prompt, the assistant text already written, which the samples
            continue (`prompt_text`); the samples do not repeat it.
        stop (`str`): ``"eos"`` (a whole response) or ``"line"`` (one step: also stop at the first newline).

    Returns:
        `list[list[Sample]]`: `P` lists of ``n`` samples, in prompt order.

    Raises:
        ValueError: for ``n < 1``, ``max_new_tokens < 1``, bad decoding settings, an unknown ``stop`` or
            ``prefixes`` of the wrong length.
    """
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"n and max_new_tokens must be >= 1, got {n} and {max_new_tokens}")
    if stop not in ("eos", "line"):
        raise ValueError(f"stop must be 'eos' or 'line', got {stop!r}")
    if prefixes is not None and len(prefixes) != len(prompts):
        raise ValueError(f"{len(prefixes)} prefixes for {len(prompts)} prompts")
    kwargs = decoding_kwargs(temperature, top_p)
    eos_ids = stop_token_ids(tokenizer, model.generation_config)
    stop_ids = eos_ids + (newline_token_ids(tokenizer) if stop == "line" else [])
    per_call = max(1, batch_size // n)
    results: list[list[Sample]] = []
    chunks = range(0, len(prompts), per_call)
    for start in tqdm(chunks, desc=desc, disable=desc is None, leave=False):
        texts = [prompt_text(tokenizer, p, prefixes[start + i] if prefixes is not None else "")
                 for i, p in enumerate(prompts[start:start + per_call])]
        enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        enc = enc.to(model.device)
        copies = n if kwargs["do_sample"] else 1  # greedy: one generation, repeated n times
        if stop == "line":  # a step is never empty: no newline as its first token
            kwargs["begin_suppress_tokens"] = newline_token_ids(tokenizer)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, num_return_sequences=copies, eos_token_id=stop_ids,
                             pad_token_id=tokenizer.pad_token_id, **kwargs)
        responses = out[:, enc["input_ids"].shape[1]:].repeat_interleave(n // copies, dim=0)
        mask, has_stop = response_mask_after_eos(responses, stop_ids)
        samples = []
        for i in range(responses.shape[0]):
            ids = responses[i][mask[i]]
            text = tokenizer.decode(ids, skip_special_tokens=True)
            if stop == "line":
                text = text.split("\n", 1)[0]
            samples.append(Sample(text, int(mask[i].sum()), bool(has_stop[i]),
                                  bool(has_stop[i]) and int(ids[-1]) in eos_ids))
        results.extend(samples[i:i + n] for i in range(0, len(samples), n))
    return results
