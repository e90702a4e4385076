"""Interpretability of a causal LM: attention maps and the logit lens, as tensors and as PNGs.

* **Attention maps.** The model is loaded with ``attn_implementation="eager"`` (SDPA and flash attention never
  materialise the weights, so ``output_attentions=True`` would return nothing) and run once on the prompt;
  `attention_weights` returns the softmaxed weights of the selected layers and heads, shape ``(L_sel, heads, T, T)``
  (query position first, each row sums to 1; with grouped-query attention there is one map per *query* head).
* **Logit lens.** Each layer's residual stream (``output_hidden_states=True``; index 0 is the embedding output,
  index ``l`` the output of decoder layer ``l``) is read out through the model's final norm and its LM head, as
  if the network stopped there (`lens_log_probs`, `logit_lens`). The readout of the last layer is exactly the
  model's own output logits. transformers 5 returns ``hidden_states[-1]`` *after* the final norm, so the last
  residual stream is taken from a forward pre-hook on that norm instead, and the norm is applied once.

`run_attention_viz` and `run_logit_lens` load the models, compute, plot and write the results (PNGs and a JSON
of the numbers) into a fresh output folder; `interpret/attention_viz.py` and `interpret/logit_lens.py` are their
command lines. Our own code: TRL and transformers have no plotting of either. matplotlib runs headless (Agg).

This module imports `open_rlhf.errors`, `open_rlhf.atomic`, `open_rlhf.hardware` and `open_rlhf.models` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402

from open_rlhf import models  # noqa: E402
from open_rlhf.atomic import atomic_save_figure, atomic_write_text  # noqa: E402
from open_rlhf.errors import ConfigError, ModelNotFoundError  # noqa: E402
from open_rlhf.hardware import default_device  # noqa: E402

# Attribute names of the final norm (the one applied just before the LM head) on a decoder stack:
# Llama/Mistral/Qwen/Gemma `norm`, Phi/Falcon `final_layernorm`, GPT-2/GPT-J/BLOOM `ln_f`, Mamba `norm_f`, OPT.
FINAL_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "norm_f", "final_layer_norm")
LOG_FLOOR = 1e-16  # the lowest probability the log-scale panel shows
MAX_LABEL_CHARS = 12  # a token label longer than this is cut (with an ellipsis) so that axes stay readable


# ----------------------------------------------------------------------------------------------------------------
# Loading and inputs
# ----------------------------------------------------------------------------------------------------------------


def model_dims(model_name_or_path: str | None) -> tuple[str, int, int]:
    """Resolve a model argument and read its depth and head count from the config alone (no weights loaded).

    Args:
        model_name_or_path (`str`, *optional*): a model folder, a PEFT adapter folder, a hub id, or None /
            ``"default"`` for the embedded default model.

    Returns:
        `tuple[str, int, int]`: the resolved path, the number of decoder layers ``L`` and of attention heads.

    Raises:
        ModelNotFoundError: when the path does not exist or holds no model config (and is no reachable hub id).
    """
    from transformers import AutoConfig

    path = models.resolve_model_path(model_name_or_path)
    source = models.adapter_base(path) or path
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelNotFoundError(f"cannot load the model config from {source!r} ({first}). Fix: pass a folder a "
                                 "stage wrote (it has config.json), a PEFT adapter folder, or a hub id.") from error
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return path, int(config.num_hidden_layers), int(config.num_attention_heads)


load_model_and_tokenizer = models.load_inference_model  # one loader for analysis and the web demo


def encode_prompt(tokenizer, prompt: str, chat: bool = False) -> torch.Tensor:
    """Token ids of ``prompt``, as the model reads it.

    Args:
        tokenizer: the model's tokenizer.
        prompt (`str`): the text.
        chat (`bool`): wrap the prompt as one user turn with the chat template and the generation prompt (the
            assistant header), as a chat policy sees it; otherwise the plain text with the tokenizer's own
            special tokens.

    Returns:
        `torch.LongTensor` of shape `(1, T)`.

    Raises:
        ConfigError: when the prompt is empty, or ``chat`` is set and the tokenizer has no chat template.
    """
    if not prompt:
        raise ConfigError("--prompt is empty. Fix: pass some text, e.g. --prompt \"The capital of France is\".")
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"--chat: the tokenizer of {tokenizer.name_or_path} has no chat template. Fix: drop "
                              "--chat, or use an instruct model or one our SFT stage saved.")
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise ConfigError(f"--prompt {prompt!r} encodes to no tokens. Fix: pass some text.")
    return torch.tensor([ids], dtype=torch.long)


def token_label(text: str, max_chars: int = MAX_LABEL_CHARS) -> str:
    """A token's text made visible on a plot axis: a space as ``␣``, a newline as ``↵``, a tab as ``⇥``, cut to
    ``max_chars`` characters with an ellipsis."""
    label = text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥").replace("\r", "")
    label = label or "∅"  # a token that decodes to nothing (e.g. part of a multi-byte character)
    return label if len(label) <= max_chars else label[: max_chars - 1] + "…"


def token_texts(tokenizer, ids) -> list[str]:
    """Each id decoded on its own (special tokens kept), e.g. ``[" Paris", "<|im_end|>"]``."""
    return [tokenizer.decode([int(i)]) for i in ids]


def parse_indices(text: str | None, flag: str) -> list[int] | None:
    """``"0,14,29"`` -> ``[0, 14, 29]``; None or ``""`` -> None (the default selection).

    Raises:
        ConfigError: when ``text`` is not a comma-separated list of integers (the message names ``flag``).
    """
    if text is None or not text.strip():
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a comma-separated list of integers, e.g. {flag} 0,14,29.") from None


def check_indices(indices: list[int] | None, count: int, flag: str, what: str, default: list[int]) -> list[int]:
    """Validate layer or head indices against ``count``; negative indices count from the end (-1 = the last).

    Args:
        indices (`list[int]`, *optional*): the requested indices; None gives ``default``.
        count (`int`): how many exist (valid: ``0 .. count-1``).
        flag (`str`), what (`str`): the command-line flag and the noun, for the message.
        default (`list[int]`): the selection without ``indices``.

    Returns:
        `list[int]`: the indices, non-negative, in the order given, duplicates removed.

    Raises:
        ConfigError: when an index is out of range (the message names the valid range).
    """
    if indices is None:
        return default
    bad = [i for i in indices if not -count <= i < count]
    if bad:
        raise ConfigError(f"{flag}: {what} {', '.join(map(str, bad))} out of range; the model has {count} {what}s, "
                          f"valid indices are 0..{count - 1} (or -{count}..-1 from the end).")
    return list(dict.fromkeys(i % count for i in indices))


def default_layers(num_layers: int) -> list[int]:
    """All layers of a model with at most 4; else the first, the middle and the last (0, 14, 29 for 30 layers)."""
    return list(range(num_layers)) if num_layers <= 4 else [0, (num_layers - 1) // 2, num_layers - 1]


# ----------------------------------------------------------------------------------------------------------------
# Attention maps
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def attention_weights(model, input_ids: torch.Tensor, layers: list[int] | None = None,
                      heads: list[int] | None = None) -> torch.Tensor:
    """The attention weights of one prompt, for the selected layers and heads.

    Args:
        model: a causal LM loaded with ``attn_implementation="eager"``.
        input_ids (`torch.LongTensor` of shape `(1, T)`): one prompt, no padding.
        layers (`list[int]`, *optional*): decoder layers (0-based); default all.
        heads (`list[int]`, *optional*): query heads; default all.

    Returns:
        `torch.Tensor` of shape `(L_sel, heads, T, T)`, fp32 on the CPU: entry ``[l, h, i, j]`` is how much query
        position ``i`` attends to key position ``j`` (a probability: each row sums to 1, zero above the diagonal).

    Raises:
        ConfigError: when the model returns no attention weights (it runs SDPA or flash attention: load it with
            ``attn_implementation="eager"``).
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must have shape (1, T), got {tuple(input_ids.shape)}.")
    device = next(model.parameters()).device
    outputs = model(input_ids=input_ids.to(device), output_attentions=True, use_cache=False)
    attentions = outputs.attentions
    if not attentions or any(a is None for a in attentions):
        raise ConfigError(f"the model ({model.config._attn_implementation} attention) returned no attention weights. "
                          "Fix: load it with attn_implementation='eager'.")
    layers = list(range(len(attentions))) if layers is None else layers
    stacked = torch.stack([attentions[i][0] for i in layers]).float()  # (L_sel, heads, T, T)
    if heads is not None:
        stacked = stacked[:, heads]
    return stacked.cpu()


def _tick_positions(count: int, max_labels: int) -> list[int]:
    """Every position when they fit, else every k-th one (the last one always shown)."""
    step = max(1, -(-count // max_labels))
    ticks = list(range(0, count, step))
    if ticks[-1] != count - 1:
        ticks.append(count - 1)
    return ticks


def _fontsize(inches: float, labels: int, largest: float = 9.0) -> float:
    """A tick-label font size (pt) so that ``labels`` labels fit along ``inches``."""
    return float(np.clip(0.8 * 72 * inches / max(labels, 1), 4.0, largest))


def _causal_masked(weights: np.ndarray) -> np.ma.MaskedArray:
    """(T, T) weights with the never-attended upper triangle masked (drawn as the axes' grey background)."""
    return np.ma.masked_where(np.triu(np.ones_like(weights, dtype=bool), k=1), weights)


def attention_grid_figure(attentions: torch.Tensor, tokens: list[str], layers: list[int], heads: list[int],
                          title: str | None = None, max_labels: int = 40):
    """A grid of attention maps: one row per selected layer, one column per selected head.

    Args:
        attentions (`torch.Tensor` of shape `(L_sel, heads, T, T)`): from `attention_weights`.
        tokens (`list[str]`): the T token texts (`token_texts`), shown on the outer axes (keys below, queries left).
        layers (`list[int]`), heads (`list[int]`): the indices the rows and columns stand for (titles).
        title (`str`, *optional*): the figure title.
        max_labels (`int`): at most this many token labels per axis (every k-th otherwise).

    Returns:
        `matplotlib.figure.Figure`: ``len(layers) x len(heads)`` map axes (a gridspec of that geometry) and a
        colour bar. Colours use a square-root scale so that weights away from the attention sink stay visible.
    """
    n_rows, n_cols = attentions.shape[0], attentions.shape[1]
    if (n_rows, n_cols) != (len(layers), len(heads)) or attentions.shape[2] != len(tokens):
        raise ValueError(f"attentions of shape {tuple(attentions.shape)} do not match {len(layers)} layers, "
                         f"{len(heads)} heads and {len(tokens)} tokens.")
    num_tokens = len(tokens)
    cell = float(np.clip(0.11 * num_tokens, 1.8, 4.5))  # inches per map
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols + 1.6, cell * n_rows + 1.4), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
    ticks = _tick_positions(num_tokens, max_labels)
    labels = [token_label(tokens[i]) for i in ticks]
    size = _fontsize(cell, len(ticks))
    image = None
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r][c]
            ax.set_facecolor("0.85")
            image = ax.imshow(_causal_masked(attentions[r, c].numpy()), cmap="viridis", norm=norm,
                              interpolation="nearest")
            ax.set_title(f"layer {layer}, head {head}", fontsize=9)
            ax.set_xticks(ticks, labels, rotation=90, fontsize=size)
            ax.set_yticks(ticks, labels, fontsize=size)
    for ax in axes.flat:
        ax.label_outer()
    fig.supxlabel("key token (attended to)", fontsize=10)
    fig.supylabel("query token", fontsize=10)
    fig.colorbar(image, ax=axes, shrink=min(1.0, 4.0 / (cell * n_rows)) if n_rows * cell > 4 else 0.9,
                 label="attention weight (square-root colour scale)")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def attention_mean_figure(attentions: torch.Tensor, tokens: list[str], title: str | None = None,
                          max_labels: int = 60):
    """One attention map averaged over all the selected heads and layers, with every token labelled.

    Args:
        attentions (`torch.Tensor` of shape `(L_sel, heads, T, T)`): from `attention_weights`.
        tokens (`list[str]`): the T token texts.
        title (`str`, *optional*): the figure title.
        max_labels (`int`): at most this many token labels per axis.

    Returns:
        `matplotlib.figure.Figure`: one map (cells annotated with the weight when T <= 16) and a colour bar.
    """
    mean = attentions.mean(dim=(0, 1)).numpy()  # (T, T); rows still sum to 1
    num_tokens = len(tokens)
    side = float(np.clip(0.22 * num_tokens + 2.0, 5.0, 14.0))
    fig, ax = plt.subplots(figsize=(side + 1.4, side), layout="constrained")
    ax.set_facecolor("0.85")
    image = ax.imshow(_causal_masked(mean), cmap="viridis", norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0),
                      interpolation="nearest")
    ticks = _tick_positions(num_tokens, max_labels)
    labels = [token_label(tokens[i]) for i in ticks]
    size = _fontsize(side, len(ticks), largest=10.0)
    ax.set_xticks(ticks, labels, rotation=90, fontsize=size)
    ax.set_yticks(ticks, labels, fontsize=size)
    if num_tokens <= 16:
        for i in range(num_tokens):
            for j in range(i + 1):
                ax.text(j, i, f"{mean[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if mean[i, j] > 0.36 else "white")  # sqrt scale: light above 0.6
    ax.set_xlabel("key token (attended to)")
    ax.set_ylabel("query token")
    fig.colorbar(image, ax=ax, shrink=0.8, label="mean attention weight (square-root colour scale)")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Logit lens
# ----------------------------------------------------------------------------------------------------------------


def final_norm(model) -> torch.nn.Module:
    """The norm the model applies to its last hidden state before the LM head, found by name on its decoder.

    Looks for ``norm``, ``final_layernorm``, ``ln_f``, ``norm_f``, ``final_layer_norm`` on
    ``model.get_decoder()``, then on ``model.base_model`` and the model itself (``model.model.norm`` for Llama).

    Raises:
        ConfigError: when none is found (the message names the class and where it looked).
    """
    owners = []
    with_decoder = getattr(model, "get_decoder", None)
    if with_decoder is not None:
        try:
            owners.append(with_decoder())
        except (AttributeError, NotImplementedError, ValueError):
            pass
    owners += [getattr(model, "base_model", None), model]
    for owner in owners:
        for name in FINAL_NORM_NAMES:
            module = getattr(owner, name, None) if owner is not None else None
            if isinstance(module, torch.nn.Module):
                return module
    raise ConfigError(f"cannot find the final norm of {type(model).__name__}: none of {', '.join(FINAL_NORM_NAMES)} "
                      "on model.get_decoder(), model.base_model or the model. The logit lens supports decoder-only "
                      "models whose last hidden state goes through one of these before the LM head.")


@torch.no_grad()
def _residual_streams(model, input_ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The residual stream after the embeddings and after each of the L layers, ``L+1`` tensors of shape (T, H),
    and the model's own output logits (T, V)."""
    device = next(model.parameters()).device
    norm = final_norm(model)
    captured = []
    # transformers 5 ties hidden_states[-1] to the *normed* last hidden state; the norm's input is the raw one.
    handle = norm.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        outputs = model(input_ids=input_ids.to(device), output_hidden_states=True, use_cache=False)
    finally:
        handle.remove()
    assert len(captured) == 1, f"the final norm ran {len(captured)} times in one forward pass"
    streams = [h[0] for h in outputs.hidden_states[:-1]] + [captured[0][0]]
    return streams, outputs.logits[0]


def _read_out(model, hidden: torch.Tensor) -> torch.Tensor:
    """(T, H) residual stream -> (T, V) fp32 logits through the final norm and the LM head."""
    return model.get_output_embeddings()(final_norm(model)(hidden)).float()


@torch.no_grad()
def lens_log_probs(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The logit lens: every layer's residual stream decoded through the final norm and the LM head.

    Args:
        model: a causal LM with a findable final norm (`final_norm`) and ``get_output_embeddings()``.
        input_ids (`torch.LongTensor` of shape `(1, T)`): one prompt.

    Returns:
        `torch.Tensor` of shape `(L+1, T, V)`, fp32 on the CPU: log-probabilities (nats) of the next token at each
        position; index 0 reads the embedding output, index ``l`` the output of decoder layer ``l``, and index
        ``L`` equals ``log_softmax`` of the model's output logits. ``(L+1) * T * V * 4`` bytes: use `logit_lens`
        for long prompts.

    Raises:
        ConfigError: when the model has no findable final norm.

    Source: nostalgebraist 2020, "interpreting GPT: the logit lens", LessWrong,
        https://www.lesswrong.com/posts/AcKRB8wDpdaN6v6ru/interpreting-gpt-the-logit-lens
    """
    streams, _ = _residual_streams(model, input_ids)
    return torch.stack([torch.log_softmax(_read_out(model, h), dim=-1) for h in streams]).cpu()


@dataclass
class LogitLens:
    """The logit lens of one model on one prompt, reduced to what is plotted (no `(L+1, T, V)` tensor kept).

    Attributes:
        tokens (`list[str]`): the T input token texts.
        top_ids (`torch.LongTensor` of shape `(L+1, T)`): the most probable next token per layer and position.
        top_probs (`torch.Tensor` of shape `(L+1, T)`): its probability (0..1).
        top_tokens (`list[list[str]]`): ``top_ids`` decoded, ``(L+1)`` lists of T texts.
        target_id (`int`), target_token (`str`): the token followed at the last position.
        target_probs (`torch.Tensor` of shape `(L+1,)`): its probability per layer at the last position (0..1).
        target_note (`str`): how the target was chosen (the greedy token, or which token of ``--target`` is used).
        final_logits (`torch.Tensor` of shape `(T, V)`): the model's own output logits (the check of the lens).
    """

    tokens: list[str]
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    top_tokens: list[list[str]]
    target_id: int
    target_token: str
    target_probs: torch.Tensor
    target_note: str
    final_logits: torch.Tensor

    @property
    def num_layers(self) -> int:
        """L, the number of decoder layers (the lens has L+1 rows)."""
        return self.top_ids.shape[0] - 1

    def to_json(self) -> dict:
        return {"tokens": self.tokens, "num_layers": self.num_layers,
                "target": {"id": self.target_id, "token": self.target_token, "note": self.target_note},
                "target_probs": [round(float(p), 6) for p in self.target_probs],
                "greedy_next_token": self.top_tokens[-1][-1],
                "top_tokens": self.top_tokens,
                "top_probs": [[round(float(p), 4) for p in row] for row in self.top_probs]}


def target_token_id(tokenizer, target: str | int | None, greedy_id: int) -> tuple[int, str]:
    """The token whose probability the lens follows, and a note saying how it was chosen.

    Args:
        tokenizer: the model's tokenizer.
        target (`str`, `int` or None): a text (its first token is used when it has several), a token id, or None
            for ``greedy_id``.
        greedy_id (`int`): the model's greedy next token at the last position.

    Returns:
        `tuple[int, str]`: the token id and the note.

    Raises:
        ConfigError: when ``target`` encodes to no token, or is an id outside the vocabulary.
    """
    if target is None:
        return greedy_id, f"the model's greedy next token {tokenizer.decode([greedy_id])!r}"
    if isinstance(target, int):
        if not 0 <= target < len(tokenizer):
            raise ConfigError(f"target token id {target} is outside the vocabulary (0..{len(tokenizer) - 1}).")
        return target, f"token id {target} ({tokenizer.decode([target])!r})"
    ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"--target {target!r} encodes to no token. Fix: pass the text of the expected next token, "
                          "e.g. --target \" Paris\" (mind the leading space).")
    pieces = token_texts(tokenizer, ids)
    if len(ids) == 1:
        return ids[0], f"--target {target!r} (one token, id {ids[0]})"
    return ids[0], (f"--target {target!r} is {len(ids)} tokens {pieces}; following the first, {pieces[0]!r} "
                    f"(id {ids[0]})")


@torch.no_grad()
def logit_lens(model, tokenizer, input_ids: torch.Tensor, target: str | int | None = None) -> LogitLens:
    """The logit lens of one prompt, reduced layer by layer: top-1 next token per layer and position, and the
    probability of one target token per layer at the last position.

    Args:
        model: a causal LM with a findable final norm (`final_norm`) and ``get_output_embeddings()``.
        tokenizer: its tokenizer (decodes the tokens).
        input_ids (`torch.LongTensor` of shape `(1, T)`): one prompt.
        target (`str`, `int` or None): the token to follow (`target_token_id`); default the model's greedy next
            token.

    Returns:
        `LogitLens`: ``top_ids``/``top_probs`` of shape `(L+1, T)`, ``target_probs`` of shape `(L+1,)`
        (probabilities, 0..1), ``final_logits`` of shape `(T, V)`; row ``L`` is the model's own prediction.

    Raises:
        ConfigError: when the model has no findable final norm, or the target is not a token.

    Source: nostalgebraist 2020, "interpreting GPT: the logit lens", LessWrong,
        https://www.lesswrong.com/posts/AcKRB8wDpdaN6v6ru/interpreting-gpt-the-logit-lens
    """
    streams, final_logits = _residual_streams(model, input_ids)
    target_id, note = target_token_id(tokenizer, target, int(final_logits[-1].argmax()))
    top_log_probs, top_ids, target_log_probs = [], [], []
    for hidden in streams:  # one (T, V) readout at a time: (L+1) * T * V floats never exist together
        log_probs = torch.log_softmax(_read_out(model, hidden), dim=-1)
        best = log_probs.max(dim=-1)
        top_log_probs.append(best.values)
        top_ids.append(best.indices)
        target_log_probs.append(log_probs[-1, target_id])
    top_ids = torch.stack(top_ids).cpu()
    target_probs = torch.stack(target_log_probs).exp().cpu()
    return LogitLens(tokens=token_texts(tokenizer, input_ids[0]), top_ids=top_ids,
                     top_probs=torch.stack(top_log_probs).exp().cpu(),
                     top_tokens=[token_texts(tokenizer, row) for row in top_ids], target_id=target_id,
                     target_token=tokenizer.decode([target_id]), target_probs=target_probs, target_note=note,
                     final_logits=final_logits.float().cpu())


def _layer_labels(num_rows: int) -> list[str]:
    return ["emb"] + [str(i) for i in range(1, num_rows)]


def lens_top_tokens_figure(lenses: list[tuple[str, LogitLens]], max_positions: int = 16, title: str | None = None):
    """Heatmaps of the logit lens, one panel per model side by side: the top-1 next token per layer (rows,
    embeddings at the bottom) and input position (columns), the cell coloured by its probability.

    Args:
        lenses (`list[tuple[str, LogitLens]]`): (model name, its lens); models may differ in depth (each panel
            has its own layer axis).
        max_positions (`int`): show only the last this many positions of a longer prompt.
        title (`str`, *optional*): the figure title.

    Returns:
        `matplotlib.figure.Figure`: one heatmap axes per model and a colour bar.
    """
    num_positions = min(max_positions, len(lenses[0][1].tokens))
    max_rows = max(lens.num_layers + 1 for _, lens in lenses)
    width = 0.85 * num_positions + 1.6
    height = float(np.clip(0.3 * max_rows + 2.0, 3.0, 16.0))
    fig, axes = plt.subplots(1, len(lenses), figsize=(width * len(lenses) + 1.2, height), squeeze=False,
                             layout="constrained")
    image = None
    for ax, (name, lens) in zip(axes[0], lenses, strict=True):
        probs = lens.top_probs[:, -num_positions:].numpy()
        rows, cols = probs.shape
        image = ax.imshow(probs, cmap="Blues", vmin=0.0, vmax=1.0, origin="lower", aspect="auto",
                          interpolation="nearest")
        cell_pt = 72 * (height - 2.0) / max_rows  # vertical room of a cell, points
        size = float(np.clip(min(cell_pt * 0.6, 7.0), 4.0, 7.0))
        for r in range(rows):
            for c in range(cols):
                text = token_label(lens.top_tokens[r][len(lens.tokens) - num_positions + c], max_chars=8)
                ax.text(c, r, text, ha="center", va="center", fontsize=size,
                        color="white" if probs[r, c] > 0.55 else "black")
        shown = lens.tokens[-num_positions:]
        ax.set_xticks(range(cols), [token_label(t) for t in shown], rotation=45, ha="right", fontsize=8)
        yticks = _tick_positions(rows, 40)
        ax.set_yticks(yticks, [_layer_labels(rows)[i] for i in yticks], fontsize=7)
        skipped = len(lens.tokens) - num_positions
        ax.set_xlabel("input token (each cell: the predicted next token)"
                      + (f"; last {num_positions} of {len(lens.tokens)}" if skipped else ""), fontsize=9)
        ax.set_ylabel("layer (emb = embeddings)", fontsize=9)
        ax.set_title(name, fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.8, label="probability of the top-1 token")
    fig.suptitle(title or "Logit lens: top-1 next token read out through the final norm and LM head", fontsize=11)
    return fig


def lens_target_figure(lenses: list[tuple[str, LogitLens]], title: str | None = None):
    """The probability of the target token at the last position per layer, one line per model; linear scale on
    the left, log scale on the right. Models of different depth are drawn against relative depth (layer / L).

    Args:
        lenses (`list[tuple[str, LogitLens]]`): (model name, its lens).
        title (`str`, *optional*): the figure title.

    Returns:
        `matplotlib.figure.Figure`: two axes.
    """
    depths = {lens.num_layers for _, lens in lenses}
    relative = len(depths) > 1
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    clipped = False
    for name, lens in lenses:
        probs = lens.target_probs.numpy()
        x = np.arange(len(probs)) / (lens.num_layers if relative else 1)
        label = f"{name}: P({lens.target_token!r}) = {probs[-1]:.3f} at the output"
        axes[0].plot(x, probs, marker="o", markersize=3, label=label)
        # below ~1e-16 a probability is fp32 noise (or underflow to 0) and would stretch the log axis
        clipped |= bool((probs < LOG_FLOOR).any())
        axes[1].plot(x, np.clip(probs, LOG_FLOOR, None), marker="o", markersize=3, label=label)
    for ax in axes:
        ax.set_xlabel("relative depth (layer / L; 0 = embeddings)" if relative else "layer (0 = embeddings)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("probability at the last position")
    axes[0].set_ylim(0, 1)
    axes[1].set_yscale("log")
    axes[1].set_ylim(LOG_FLOOR / 3, 1.5)
    axes[1].set_ylabel("probability (log scale)" + (f"; < {LOG_FLOOR:g} drawn at {LOG_FLOOR:g}" if clipped else ""))
    axes[0].legend(fontsize=8, loc="upper left")
    targets = list(dict.fromkeys(repr(lens.target_token) for _, lens in lenses))
    fig.suptitle(title or f"Logit lens: probability of the target token {', '.join(targets)} per layer", fontsize=11)
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Outputs and the two commands
# ----------------------------------------------------------------------------------------------------------------


def prepare_output_dir(output_dir: str | Path | None) -> Path:
    """Choose the output folder: ``output_dir`` when given (it may exist only if empty), else a new
    ``runs/interpret/<UTC timestamp>/`` (`open_rlhf.outputs.new_results_dir`). Nothing is created yet
    (`save_png` creates it with the first file), so a run that fails before writing leaves no empty folder behind.

    Raises:
        OutputDirError: when ``output_dir`` is a file or a folder that is not empty (nothing is overwritten).
    """
    from open_rlhf.outputs import new_results_dir

    return new_results_dir(None if output_dir is None else str(output_dir), "interpret")


def save_png(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically and close it (`open_rlhf.atomic.atomic_save_figure`)."""
    return atomic_save_figure(fig, path, dpi=dpi)


def model_display_names(arguments: list[str | None]) -> list[str]:
    """Short names for plot titles: the folder name (its last two parts when two models share it), a hub id as
    is, ``default`` for the default model."""
    def parts(arg, n):
        if arg in (None, "", "default"):
            return f"default ({models.DEFAULT_MODEL_DIRNAME})"
        path = Path(arg).expanduser()
        return "/".join(path.resolve().parts[-n:]) if path.exists() else arg

    names = [parts(a, 1) for a in arguments]
    duplicated = {n for n in names if names.count(n) > 1}
    names = [parts(a, 2) if n in duplicated else n for a, n in zip(arguments, names, strict=True)]
    return [f"{n} [{i + 1}]" if names.count(n) > 1 else n for i, n in enumerate(names)]


@dataclass
class AttentionVizResult:
    """What `run_attention_viz` computed and wrote.

    Attributes:
        attentions (`torch.Tensor` of shape `(L_sel, heads, T, T)`), tokens (`list[str]`), layers, heads: the maps.
        files (`list[Path]`): the grid PNG, the mean-map PNG and the JSON.
    """

    attentions: torch.Tensor
    tokens: list[str]
    layers: list[int]
    heads: list[int]
    files: list[Path]


def run_attention_viz(model_name_or_path: str | None, prompt: str, layers: str | None = None,
                      heads: str | None = None, chat: bool = False, output_dir: str | Path | None = None,
                      device: str | None = None) -> AttentionVizResult:
    """Attention maps of one prompt: ``attention_layers.png`` (rows = layers, columns = heads),
    ``attention_mean.png`` (mean over the selected heads and layers) and ``attention.json`` in ``output_dir``.

    Args:
        model_name_or_path (`str`, *optional*): model or adapter folder, hub id, or None / ``"default"``.
        prompt (`str`): the text.
        layers (`str`, *optional*): comma-separated decoder layers, e.g. ``"0,14,29"``; default `default_layers`.
        heads (`str`, *optional*): comma-separated query heads; default all.
        chat (`bool`): wrap the prompt in the chat template (`encode_prompt`).
        output_dir (`str`, *optional*): a new or empty folder; default ``runs/interpret/<UTC timestamp>/``.
        device (`str`, *optional*): default CUDA when available, else the CPU.

    Raises:
        ConfigError: for a bad ``layers`` / ``heads`` value (the message names the valid range) or prompt.
        ModelNotFoundError: when the model cannot be found or loaded.
        OutputDirError: when ``output_dir`` exists and is not empty.
    """
    layer_request, head_request = parse_indices(layers, "--layers"), parse_indices(heads, "--heads")
    path, num_layers, num_heads = model_dims(model_name_or_path)  # validate before loading any weights
    layers_sel = check_indices(layer_request, num_layers, "--layers", "layer", default_layers(num_layers))
    heads_sel = check_indices(head_request, num_heads, "--heads", "head", list(range(num_heads)))
    out = prepare_output_dir(output_dir)
    model, tokenizer = load_model_and_tokenizer(path, attn_implementation="eager", device=device or default_device())
    input_ids = encode_prompt(tokenizer, prompt, chat=chat)
    attentions = attention_weights(model, input_ids, layers_sel, heads_sel)
    tokens = token_texts(tokenizer, input_ids[0])
    name = model_display_names([model_name_or_path])[0]
    shown = f"{prompt!r}" + (" in the chat template" if chat else "")
    grid = save_png(attention_grid_figure(attentions, tokens, layers_sel, heads_sel,
                                          title=f"Attention of {name} on {shown}"), out / "attention_layers.png")
    mean = save_png(attention_mean_figure(attentions, tokens, title=f"{name}: mean over heads {_span(heads_sel)} "
                                          f"of layers {_span(layers_sel)}"), out / "attention_mean.png")
    record = {"model": str(path), "prompt": prompt, "chat": chat, "tokens": tokens, "layers": layers_sel,
              "heads": heads_sel, "num_layers": num_layers, "num_heads": num_heads,
              "mean_attention": [[round(float(v), 5) for v in row] for row in attentions.mean(dim=(0, 1))]}
    atomic_write_text(out / "attention.json", json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return AttentionVizResult(attentions, tokens, layers_sel, heads_sel, [grid, mean, out / "attention.json"])


def _span(indices: list[int]) -> str:
    return ",".join(map(str, indices)) if len(indices) <= 8 else f"{indices[0]}..{indices[-1]} ({len(indices)})"


@dataclass
class LogitLensResult:
    """What `run_logit_lens` computed and wrote.

    Attributes:
        names (`list[str]`): the models' display names; lenses (`list[LogitLens]`): one per model, same order.
        files (`list[Path]`): the top-token heatmap PNG, the target-probability PNG and the JSON.
    """

    names: list[str]
    lenses: list[LogitLens]
    files: list[Path]


def run_logit_lens(model_names_or_paths: list[str | None], prompt: str, target: str | None = None,
                   chat: bool = False, output_dir: str | Path | None = None, device: str | None = None,
                   max_positions: int = 16) -> LogitLensResult:
    """The logit lens of one or more models (e.g. SFT and PPO policies) on one prompt: ``lens_top_tokens.png``
    (side-by-side panels), ``lens_target_prob.png`` (one line per model) and ``logit_lens.json`` in ``output_dir``.

    Every model follows the same target: ``target``, else the first model's greedy next token (its id for models
    with the same vocabulary, its text re-encoded for the others).

    Args:
        model_names_or_paths (`list`): model or adapter folders, hub ids, None / ``"default"``; loaded one at a time.
        prompt (`str`): the text.
        target (`str`, *optional*): the expected next token's text (its first token when it has several).
        chat (`bool`): wrap the prompt in the chat template (`encode_prompt`).
        output_dir (`str`, *optional*): a new or empty folder; default ``runs/interpret/<UTC timestamp>/``.
        device (`str`, *optional*): default CUDA when available, else the CPU.
        max_positions (`int`): the heatmap shows the last this many positions.

    Raises:
        ConfigError: for an empty prompt or target, or a model without a findable final norm.
        ModelNotFoundError: when a model cannot be found or loaded.
        OutputDirError: when ``output_dir`` exists and is not empty.
    """
    model_names_or_paths = list(model_names_or_paths) or [None]
    if max_positions < 1:
        raise ConfigError(f"--max_positions {max_positions} must be at least 1.")
    paths = [model_dims(m)[0] for m in model_names_or_paths]  # every model exists before anything is loaded
    out = prepare_output_dir(output_dir)
    names = model_display_names(model_names_or_paths)
    lenses, first_tokenizer = [], None
    for path in paths:
        model, tokenizer = load_model_and_tokenizer(path, device=device or default_device())
        follow: str | int | None = target
        if lenses and target is None:
            first = lenses[0].target_id
            same_vocab = (len(tokenizer) == len(first_tokenizer)
                          and tokenizer.convert_ids_to_tokens(first) == first_tokenizer.convert_ids_to_tokens(first))
            follow = first if same_vocab else lenses[0].target_token
        lenses.append(logit_lens(model, tokenizer, encode_prompt(tokenizer, prompt, chat=chat), target=follow))
        first_tokenizer = first_tokenizer or tokenizer
        del model
    panels = list(zip(names, lenses, strict=True))
    shown = f"{prompt!r}" + (" in the chat template" if chat else "")
    heatmap = save_png(lens_top_tokens_figure(panels, max_positions=max_positions,
                                              title=f"Logit lens on {shown}: top-1 next token per layer"),
                       out / "lens_top_tokens.png")
    curve = save_png(lens_target_figure(panels), out / "lens_target_prob.png")
    record = {"prompt": prompt, "chat": chat, "target": target,
              "models": [{"name": n, "path": str(p), **lens.to_json()} for n, p, lens in zip(names, paths, lenses,
                                                                                            strict=True)]}
    atomic_write_text(out / "logit_lens.json", json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return LogitLensResult(names, lenses, [heatmap, curve, out / "logit_lens.json"])


def add_common_arguments(parser) -> None:
    """The flags both ``interpret/`` scripts take: ``--prompt``, ``--chat``, ``--output_dir``, ``--device``."""
    parser.add_argument("--prompt", required=True, help="The text the model reads.")
    parser.add_argument("--chat", action="store_true", help="Wrap the prompt as a user turn in the chat template.")
    parser.add_argument("--output_dir", default=None, help="New or empty folder; default runs/interpret/<UTC time>/.")
    parser.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
