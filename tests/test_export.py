"""open_rlhf.export and scripts/export.py: merged LoRA, ONNX (checked against PyTorch), GGUF (round-tripped through
open_rlhf.models.convert_gguf_to_safetensors), and the errors a user can cause. Tiny random Llamas only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from open_rlhf.errors import ConfigError, ModelNotFoundError, OutputDirError
from open_rlhf.export import (
    ExportCheckError,
    _permute_for_llama_cpp,
    export_gguf,
    export_merged,
    export_model,
    export_onnx,
    onnx_max_abs_diff,
)
from open_rlhf.models import convert_gguf_to_safetensors

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model_dir, tokenizer) -> Path:
    """A LoRA adapter on the tiny model with non-zero B (PEFT's default init would make it a no-op)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                 init_lora_weights=False))
    path = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _batch(tokenizer, texts=("Hello there", "The capital of France is a city called")):
    tokenizer.padding_side = "left"
    return tokenizer(list(texts), return_tensors="pt", padding=True)


# ---------------------------------------------------------------------------------------------------------- merged
def test_merged_model_matches_the_peft_model(adapter_dir, tiny_model_dir, tokenizer, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    result = export_merged(str(adapter_dir), tmp_path / "merged")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(result.files)
    assert not (result.output_dir / "adapter_config.json").exists()
    batch = _batch(tokenizer)
    with torch.no_grad():
        peft_logits = AutoPeftModelForCausalLM.from_pretrained(adapter_dir).eval()(**batch).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(result.output_dir).eval()(**batch).logits
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(**batch).logits
    assert (peft_logits - base_logits).abs().max() > 1e-3  # the adapter does change the model
    torch.testing.assert_close(merged_logits, peft_logits, atol=1e-5, rtol=1e-5)


def test_merged_refuses_a_plain_model_folder(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="no LoRA adapter to merge"):
        export_merged(str(tiny_model_dir), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_existing_output_folder_is_never_overwritten(tiny_model_dir, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="refusing to overwrite"):
        export_gguf(str(tiny_model_dir), taken, dtype="f32")
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder may be written into
    assert export_gguf(str(tiny_model_dir), empty, dtype="f32").files == ["model-f32.gguf"]


def test_bad_inputs_give_clear_errors(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        export_model(str(tiny_model_dir), "tflite", tmp_path / "a")
    with pytest.raises(ConfigError, match="gguf dtype 'q4_0' is not supported"):
        export_gguf(str(tiny_model_dir), tmp_path / "b", dtype="q4_0")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        export_onnx(str(tmp_path / "missing-model"), tmp_path / "c")
    assert not any(tmp_path.iterdir())  # nothing left behind, not even a temporary folder


# ------------------------------------------------------------------------------------------------------------ onnx
@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory, tiny_model_dir):
    return export_onnx(str(tiny_model_dir), tmp_path_factory.mktemp("onnx") / "out")


def test_onnx_logits_match_pytorch(onnx_export, tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    assert {"model.onnx", "config.json", "tokenizer.json"} <= set(onnx_export.files)
    assert onnx_export.max_abs_diff < 1e-4
    # Other batch and sequence sizes than the export's example (the axes are dynamic), with left padding.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    texts = ("a", "one two three four five six seven eight nine ten", "Why?", "Write a poem about the sea, please")
    diff = onnx_max_abs_diff(model, onnx_export.output_dir / "model.onnx", dict(_batch(tokenizer, texts)))
    assert diff < 1e-4


def test_onnx_tolerance_is_enforced(tiny_model_dir, tmp_path):
    # fp32 logits through two runtimes are not bit-identical (about 1e-7 here), so a 1e-12 tolerance must fail.
    with pytest.raises(ExportCheckError, match="nothing was written"):
        export_onnx(str(tiny_model_dir), tmp_path / "out", atol=1e-12)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------------------ gguf
def test_llama_cpp_permutation_by_hand():
    """One head of 4 rows: transformers pairs rows (0, 2) and (1, 3) (halves), llama.cpp pairs adjacent rows, so
    rows [r0, r1, r2, r3] are written as [r0, r2, r1, r3]; with 2 heads each head is reordered on its own."""
    rows = torch.arange(4.0).unsqueeze(1)
    assert _permute_for_llama_cpp(rows, n_head=1).squeeze(1).tolist() == [0.0, 2.0, 1.0, 3.0]
    rows = torch.arange(8.0).unsqueeze(1)
    assert _permute_for_llama_cpp(rows, n_head=2).squeeze(1).tolist() == [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]


@pytest.mark.parametrize("dtype, cast", [("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_gguf_tensors_are_llama_cpp_layout(tiny_model_dir, tmp_path, dtype, cast):
    """Read the file back with gguf's own reader; undo the Q/K permutation with transformers' GGUF loader's inverse
    (``LlamaTensorProcessor``); every tensor equals the original rounded to ``dtype``, norms stay f32."""
    import gguf
    import numpy as np
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    result = export_gguf(str(tiny_model_dir), tmp_path / "gguf", dtype=dtype)
    reader = gguf.GGUFReader(result.output_dir / f"model-{dtype}.gguf")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = model.config
    assert reader.get_field("general.architecture").contents() == "llama"
    assert reader.get_field("llama.attention.head_count_kv").contents() == config.num_key_value_heads
    inverse = LlamaTensorProcessor({"num_attention_heads": config.num_attention_heads,
                                    "num_key_value_heads": config.num_key_value_heads})
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == len(model.state_dict()) - 1 and "output.weight" not in tensors  # tied embeddings
    pairs = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "blk.1.attn_norm.weight": "model.layers.1.input_layernorm.weight",
             "blk.1.attn_q.weight": "model.layers.1.self_attn.q_proj.weight",
             "blk.1.attn_k.weight": "model.layers.1.self_attn.k_proj.weight",
             "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight"}
    for gguf_name, hf_name in pairs.items():
        stored = tensors[gguf_name]
        values = gguf.quants.dequantize(stored.data, stored.tensor_type).reshape(
            [int(d) for d in reversed(stored.shape)])  # GGUF lists dims innermost first
        values = inverse.process(values, gguf_name).weights
        original = model.state_dict()[hf_name]
        assert stored.tensor_type.name == ("F32" if original.ndim == 1 else dtype.upper()), gguf_name
        expected = original if original.ndim == 1 else original.to(cast).float()
        np.testing.assert_array_equal(np.asarray(values, dtype=np.float32), expected.numpy(), err_msg=gguf_name)


@pytest.mark.parametrize("dtype, cast", [pytest.param("f32", torch.float32, marks=pytest.mark.slow),
                                         pytest.param("f16", torch.float16, marks=pytest.mark.slow),
                                         pytest.param("bf16", torch.bfloat16, marks=pytest.mark.slow)])
def test_gguf_round_trips_through_the_project_converter(tiny_model_dir, tokenizer, tmp_path, dtype, cast):
    """Export, convert back with convert_gguf_to_safetensors (which undoes the Q/K permutation): every tensor equals
    the original rounded to ``dtype`` (norms stay f32), and config and tokenizer survive. About 25 s: the converter
    reads the 49,152-token vocabulary from the GGUF metadata twice (tokenizer and config), in Python."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export_gguf(str(tiny_model_dir), tmp_path / "gguf", dtype=dtype)
    gguf_file = result.output_dir / f"model-{dtype}.gguf"
    reader = gguf.GGUFReader(gguf_file)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.0.attn_q.weight"] == dtype.upper()
    assert "output.weight" not in types  # tied embeddings

    back = convert_gguf_to_safetensors(gguf_file, tmp_path / "back")
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    restored = AutoModelForCausalLM.from_pretrained(back)
    for key in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "head_dim", "rms_norm_eps", "vocab_size", "tie_word_embeddings"):
        assert getattr(restored.config, key) == pytest.approx(getattr(original.config, key)), key
    expected, actual = original.state_dict(), restored.state_dict()
    assert set(actual) == set(expected)
    for name, tensor in expected.items():
        rounded = tensor if tensor.ndim == 1 else tensor.to(cast).float()
        torch.testing.assert_close(actual[name], rounded, atol=0, rtol=0, msg=name)
    restored_tokenizer = AutoTokenizer.from_pretrained(back)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 17 + 25?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert restored_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert restored_tokenizer.eos_token == tokenizer.eos_token


def test_gguf_refuses_other_architectures(tokenizer, tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "qwen")
    tokenizer.save_pretrained(tmp_path / "qwen")
    with pytest.raises(ConfigError, match="supports Llama-architecture"):
        export_gguf(str(tmp_path / "qwen"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_script_writes_gguf_and_reports_user_errors(tiny_model_dir, tmp_path):
    env_cmd = [sys.executable, str(ROOT / "scripts" / "export.py")]
    ok = subprocess.run(env_cmd + ["--model", str(tiny_model_dir), "--format", "gguf", "--gguf_dtype", "f32",
                                   "--output", str(tmp_path / "g")], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "g" / "model-f32.gguf").is_file()
    again = subprocess.run(env_cmd + ["--model", str(tiny_model_dir), "--format", "gguf", "--output",
                                      str(tmp_path / "g")], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith("error: output")


@pytest.mark.slow
def test_two_concurrent_conversions_leave_one_complete_folder(tiny_model_dir, tmp_path):
    """Two processes convert the same GGUF to the same folder at once (two `make setup` runs sharing a cache): the
    loser raises FileExistsError, which `ensure_default_model` treats as "another process won", never a bare OSError
    from the rename, and the folder is complete. Slow: two conversions of the 49,152-token vocabulary at once (28 s on a 2-core AVX2 EPYC)."""
    result = export_gguf(str(tiny_model_dir), tmp_path / "gguf", dtype="f16")
    gguf_file, target = result.output_dir / "model-f16.gguf", tmp_path / "converted"
    code = ("import sys\nfrom open_rlhf.models import convert_gguf_to_safetensors\n"
            "try:\n    convert_gguf_to_safetensors(sys.argv[1], sys.argv[2])\nexcept FileExistsError:\n    sys.exit(3)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(gguf_file), str(target)], stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outcomes = sorted((p.wait(timeout=600), p.stderr.read()) for p in procs)
    assert [rc for rc, _ in outcomes] == [0, 3], outcomes
    assert (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file()
    assert not list(tmp_path.glob("converted.tmp-*"))  # the loser's half folder is gone
