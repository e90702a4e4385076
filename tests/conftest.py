"""Shared fixtures: the real SmolLM2 tokenizer and tiny random Llama models built offline from a config."""

from __future__ import annotations

from pathlib import Path

import pytest

from open_rlhf.models import save_tiny_model, tiny_llama_config  # noqa: F401 (tests import them from here)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (with its chat template) from the bootstrapped default model."""
    from open_rlhf.models import ensure_default_model, load_tokenizer

    return load_tokenizer(str(ensure_default_model()), padding_side="left")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny random Llama (H=32, 2 layers) with the real tokenizer: a stand-in for the default model."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), tokenizer, seed=0)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} (the project's shared public data) is not beside the checkout")
    return SHARED_DATA
