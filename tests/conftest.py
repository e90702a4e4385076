"""Shared fixtures: the real SmolLM2 tokenizer and tiny random Llama models built offline from a config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (with its chat template) from the bootstrapped default model."""
    from open_rlhf.models import ensure_default_model, load_tokenizer

    return load_tokenizer(str(ensure_default_model()), padding_side="left")


def tiny_llama_config(tokenizer, **overrides):
    from transformers import LlamaConfig

    kwargs = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def save_tiny_model(path: Path, tokenizer, seed: int, reward: bool = False, **overrides) -> Path:
    """Save a tiny random Llama (a causal LM, or with ``reward`` a scalar-head reward model) and the tokenizer."""
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(seed)
    if reward:
        model = LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=1, **overrides))
    else:
        model = LlamaForCausalLM(tiny_llama_config(tokenizer, **overrides))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny random Llama (H=32, 2 layers) with the real tokenizer: a stand-in for the default model."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer))
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} (the project's shared public data) is not beside the checkout")
    return SHARED_DATA
