"""Speculative decoding through transformers' assisted generation: a cheap draft proposes tokens, the target model
verifies them in one forward pass, and (greedy) the output is the target's own greedy output.

Three drafts, all through ``model.generate`` (the verification loop is transformers', not ours):

- a **draft model** (``assistant_model=``, e.g. a smaller model of the same tokenizer): Leviathan et al. 2023,
  "Fast Inference from Transformers via Speculative Decoding", ICML; Chen et al. 2023 (speculative sampling);
- **prompt lookup** (``prompt_lookup_num_tokens=``): the draft is the continuation of the last n-gram's earlier
  occurrence in the prompt, fast on input-grounded tasks (rewriting, extraction, code edits): Saxena 2023,
  "Prompt Lookup Decoding";
- a **self-speculative** draft: the target's own first ``k`` decoder layers plus its final norm and LM head
  (`LayerSkipDraft`), sharing the target's weights (no copy): the early-exit draft of Elhoushi et al. 2024,
  "LayerSkip: Enabling Early Exit Inference and Self-Speculative Decoding", ACL, Sec. 4, without its training recipe.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from open_rlhf.inference.sampling import as_messages
from open_rlhf.models import stop_token_ids

METHODS = ("none", "draft_model", "prompt_lookup", "self_speculative")


def layer_skip_draft(model, num_layers: int):
    """A draft model made of ``model``'s first ``num_layers`` decoder layers, its final norm and its LM head.

    The modules are shared with ``model`` (the draft adds no weights): a shallow copy of the model object whose
    decoder's layer list is cut, with ``config.num_hidden_layers`` set to match (the KV cache is sized from it).
    Works for decoders laid out as ``model.model.layers`` (Llama, Mistral, Qwen, Gemma, SmolLM).

    Raises:
        ValueError: when ``num_layers`` is not in ``[1, L)`` or the model has no ``model.layers``.
    """
    decoder = getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no model.layers: a self-speculative draft needs a decoder "
                         "laid out as Llama's")
    if not 1 <= num_layers < len(layers):
        raise ValueError(f"the draft needs 1 <= num_layers < {len(layers)} (the target's depth), got {num_layers}")
    # A shallow copy shares `_modules` with the original: give each copy its own dict before replacing a child,
    # so the target keeps all its layers.
    draft = copy.copy(model)
    draft._modules = dict(model._modules)
    draft.model = copy.copy(decoder)
    draft.model._modules = dict(decoder._modules)
    draft.model.layers = torch.nn.ModuleList(list(layers)[:num_layers])
    draft.config = copy.deepcopy(model.config)
    draft.config.num_hidden_layers = num_layers
    draft.model.config = draft.config
    if hasattr(draft.config, "layer_types") and draft.config.layer_types is not None:
        draft.config.layer_types = list(draft.config.layer_types)[:num_layers]
    draft.generation_config = copy.deepcopy(model.generation_config)
    return draft


@dataclass
class SpeculativeResult:
    """One prompt's output: the text, its token ids `(R,)`, the new-token count and the wall time (s)."""

    text: str
    token_ids: torch.Tensor
    num_tokens: int
    seconds: float


@torch.inference_mode()
def generate(model, tokenizer, prompt, method: str = "none", max_new_tokens: int = 128, draft=None,
             num_assistant_tokens: int = 5, prompt_lookup_num_tokens: int = 10) -> SpeculativeResult:
    """Greedy generation of one prompt, plain (``method="none"``) or speculative.

    Args:
        prompt: a string or chat messages (the chat template is applied).
        method (`str`): one of `METHODS`.
        draft: the draft model for ``"draft_model"`` (same tokenizer), or the draft of ``"self_speculative"``
            (`layer_skip_draft`; built from the first quarter of the layers when None).
        num_assistant_tokens (`int`): tokens the draft proposes per step (transformers' starting value; it adapts).
        prompt_lookup_num_tokens (`int`): tokens proposed by prompt lookup.

    Returns:
        `SpeculativeResult`. For greedy decoding every method returns the target's greedy output.

    Raises:
        ValueError: for an unknown method, or ``"draft_model"`` without a draft.
    """
    if method not in METHODS:
        raise ValueError(f"unknown speculative method {method!r}; choose one of {', '.join(METHODS)}")
    kwargs = {}
    if method == "draft_model":
        if draft is None:
            raise ValueError("method 'draft_model' needs a draft model (--draft_model PATH)")
        kwargs["assistant_model"] = draft
    elif method == "self_speculative":
        depth = len(model.model.layers)
        kwargs["assistant_model"] = draft if draft is not None else layer_skip_draft(model, max(1, depth // 4))
    elif method == "prompt_lookup":
        kwargs["prompt_lookup_num_tokens"] = prompt_lookup_num_tokens
    if "assistant_model" in kwargs:
        kwargs["assistant_model"].generation_config.num_assistant_tokens = num_assistant_tokens
    ids = tokenizer.apply_chat_template(as_messages(prompt), add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"].to(model.device)
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=max_new_tokens, eos_token_id=stop_token_ids(tokenizer, model.generation_config),
                         pad_token_id=tokenizer.pad_token_id, **kwargs)
    seconds = time.perf_counter() - start
    response = out[0, ids.shape[1]:].cpu()
    return SpeculativeResult(tokenizer.decode(response, skip_special_tokens=True), response, int(response.numel()),
                             seconds)
