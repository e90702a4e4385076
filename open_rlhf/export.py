"""Export a trained model folder: a merged LoRA model, ONNX (with an output-equivalence check), or GGUF.

Three formats, each written into a new folder that appears complete or not at all (`open_rlhf.atomic`):

- ``merged``: a PEFT adapter folder merged into its base model (peft's ``merge_and_unload``) and saved with
  ``save_pretrained`` plus the tokenizer, so transformers, vLLM and `scripts/serve.py` load it as a plain model.
  A plain model folder has nothing to merge and is refused (copying it would only duplicate it).
- ``onnx``: ``model.onnx`` computing ``logits`` (B, T, V) from ``input_ids`` and ``attention_mask`` (B, T), dynamic
  in B and T, no KV cache, beside ``config.json`` and the tokenizer. Written by PyTorch's own exporter
  (``torch.onnx.export(dynamo=True)``, onnxscript), not by Hugging Face Optimum: ``optimum-onnx`` 0.1.0, the
  exporter's current home, requires ``transformers<4.58`` and fails to import under transformers 5.23
  (``transformers.modeling_utils.get_parameter_dtype`` is gone). Before the folder is published, onnxruntime and
  PyTorch run the same left-padded prompts and the largest absolute logit difference over the attended positions
  must stay under ``atol`` (padded positions have no defined logits: their attention row is fully masked).
- ``gguf``: ``model-<dtype>.gguf`` in llama.cpp's layout, written with the ``gguf`` package (llama.cpp's own
  Python library) for Llama-architecture models (SmolLM2 is one) with a byte-level BPE tokenizer, in f32, f16
  or bf16 (norms stay f32, as llama.cpp's ``convert_hf_to_gguf.py`` does; the converted tensors are held in memory
  until the file is written, about the file's size). Q and K projections are permuted
  the way llama.cpp's converter does (its rotary embedding pairs adjacent dimensions where transformers pairs
  halves); transformers' GGUF loader undoes it, so `open_rlhf.models.convert_gguf_to_safetensors` round-trips
  the file. Other architectures are refused.

Every exporter takes a plain model folder or a PEFT adapter folder (merged in memory first), or None for the
embedded default model. Our own code: TRL 1.16 has no export.

    python scripts/export.py --model runs/default/sft-lora --format merged --output runs/export/sft-merged
    python scripts/export.py --model runs/default/ppo --format onnx --output runs/export/ppo-onnx
    python scripts/export.py --model runs/default/ppo --format gguf --gguf_dtype f16 --output runs/export/ppo-gguf
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from open_rlhf.atomic import atomic_output_dir
from open_rlhf.errors import ConfigError, ModelNotFoundError, OutputDirError
from open_rlhf.models import adapter_base, load_inference_model, resolve_model_path

logger = logging.getLogger(__name__)

FORMATS = ("merged", "onnx", "gguf")
GGUF_DTYPES = ("f32", "f16", "bf16")
ONNX_FILE = "model.onnx"
# fp32 logits through two runtimes (different matmul kernels and op fusions) are not bit-identical: measured 1.3e-4
# on the default model (30 layers), 2e-7 on the tests' tiny model. 1e-3 still catches a wrong graph (order 1).
ONNX_ATOL = 1e-3
CHECK_PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain in two sentences why the sky is blue, and what happens at sunset.",
)


class ExportCheckError(RuntimeError):
    """An exported model whose outputs differ from the PyTorch model's beyond the tolerance (nothing is written)."""


@dataclass
class ExportResult:
    """What an export wrote.

    Attributes:
        output_dir (`Path`): the new folder.
        files (`list[str]`): the names of the files in it.
        max_abs_diff (`float`, *optional*): ONNX only: the largest absolute logit difference between onnxruntime
            and PyTorch over the check prompts' attended positions (logits are in nats, unnormalized).
    """

    output_dir: Path
    files: list[str]
    max_abs_diff: float | None = None


@contextmanager
def _new_output_dir(output_dir: str | Path) -> Iterator[Path]:
    """`atomic_output_dir` that also accepts an existing *empty* folder (removed first) and raises `OutputDirError`
    for a non-empty one."""
    target = Path(output_dir)
    if target.exists():
        if not target.is_dir() or any(target.iterdir()):
            raise OutputDirError(f"output {target} already exists and is not an empty folder; refusing to overwrite "
                                 "it. Fix: pass a new --output folder, or move the old one away yourself.")
        target.rmdir()
    try:
        with atomic_output_dir(target) as tmp:
            yield tmp
    except FileExistsError as error:
        if isinstance(error, OutputDirError):
            raise
        raise OutputDirError(str(error)) from error


def _load(model_name_or_path: str | None):
    """(model, tokenizer, resolved path) in fp32 on the CPU, with a pad token; an adapter folder merged first."""
    path = resolve_model_path(model_name_or_path)  # a missing local folder raises ModelNotFoundError here
    model, tokenizer = load_inference_model(path, dtype=torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, path


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------------------- merged
def export_merged(model_name_or_path: str, output_dir: str | Path) -> ExportResult:
    """Merge a LoRA adapter folder into its base model and save a plain model folder (fp32) with the tokenizer.

    Args:
        model_name_or_path (`str`): a PEFT adapter folder (``adapter_config.json`` naming a reachable base model).
        output_dir (`str` or `Path`): the new folder; it must not exist or be empty.

    Returns:
        `ExportResult`: the folder, holding ``config.json``, ``model.safetensors``, the tokenizer files.

    Raises:
        ConfigError: when the folder is a plain model (no ``adapter_config.json``): there is nothing to merge.
        ModelNotFoundError: when the folder or the adapter's base model cannot be loaded.
        OutputDirError: when ``output_dir`` exists and is not empty.

    Source: PEFT, ``LoraModel.merge_and_unload`` (W <- W + B A * alpha / r), https://huggingface.co/docs/peft.
    """
    path = resolve_model_path(model_name_or_path)
    if not Path(path).exists():
        raise ModelNotFoundError(f"model folder {path} does not exist. Fix: pass a PEFT adapter folder.")
    if adapter_base(path) is None:
        raise ConfigError(f"{path} is a plain model folder (no adapter_config.json): there is no LoRA adapter to "
                          "merge. Fix: use the folder as it is, or pass an adapter folder (a stage run with "
                          "--use_peft); --format onnx and gguf take plain folders.")
    with _new_output_dir(output_dir) as tmp:
        model, tokenizer = load_inference_model(path, dtype=torch.float32)  # PEFT load + merge_and_unload
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = _files(tmp)
    return ExportResult(Path(output_dir), files)


# ------------------------------------------------------------------------------------------------------------ onnx
class _LogitsOnly(torch.nn.Module):
    """``(input_ids, attention_mask) -> logits``: the causal LM without its KV cache, for a single-graph export."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def _check_inputs(tokenizer, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """The check prompts in the chat template, left-padded into one batch (int64 (B, T))."""
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) if tokenizer.chat_template else p
             for p in prompts]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=tokenizer.chat_template is None)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def onnx_max_abs_diff(model, onnx_path: str | Path, inputs: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between the PyTorch model's and onnxruntime's logits on ``inputs``.

    Args:
        model: the causal LM (eval mode, CPU, fp32).
        onnx_path (`str` or `Path`): a ``model.onnx`` written by `export_onnx`.
        inputs (`dict`): ``input_ids`` and ``attention_mask``, int64 (B, T).

    Returns:
        `float`: max |logits_torch - logits_ort| over batch rows, attended positions and the vocabulary (nats).
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        reference = _LogitsOnly(model)(**inputs).float().numpy()  # (B, T, V)
    (logits,) = session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})
    attended = inputs["attention_mask"].numpy().astype(bool)  # (B, T)
    return float(np.abs(logits - reference)[attended].max())


def export_onnx(model_name_or_path: str | None, output_dir: str | Path, atol: float = ONNX_ATOL,
                prompts: Sequence[str] = CHECK_PROMPTS, opset: int = 18) -> ExportResult:
    """Export a causal LM to ONNX (logits only) and check onnxruntime against PyTorch before publishing.

    Args:
        model_name_or_path (`str`, *optional*): a model folder, an adapter folder (merged first), or None for the
            default model.
        output_dir (`str` or `Path`): the new folder; it must not exist or be empty.
        atol (`float`): the largest absolute logit difference (nats) accepted on the check prompts.
        prompts (`Sequence[str]`): the check prompts (chat template applied, batched with left padding).
        opset (`int`): the ONNX opset.

    Returns:
        `ExportResult`: the folder (``model.onnx``, possibly ``model.onnx.data``, ``config.json``, the tokenizer)
        and ``max_abs_diff``.

    Raises:
        ExportCheckError: when the difference exceeds ``atol`` (no folder is written).
        ModelNotFoundError: when the model cannot be loaded.
        OutputDirError: when ``output_dir`` exists and is not empty.

    Source: PyTorch, ``torch.onnx.export(..., dynamo=True)``, https://docs.pytorch.org/docs/stable/onnx.html;
    onnxruntime, https://onnxruntime.ai.
    """
    with _new_output_dir(output_dir) as tmp:  # checked before loading: a taken folder fails fast
        model, tokenizer, _ = _load(model_name_or_path)
        inputs = _check_inputs(tokenizer, prompts)
        batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("sequence", min=1, max=1 << 16)
        # Tensors over 2 GB cannot live inside a protobuf; keep big models' weights in model.onnx.data.
        external = sum(p.numel() * p.element_size() for p in model.parameters()) > 1 << 30
        with torch.no_grad():
            torch.onnx.export(_LogitsOnly(model).eval(), (inputs["input_ids"], inputs["attention_mask"]), tmp / ONNX_FILE,
                              dynamo=True, opset_version=opset, input_names=["input_ids", "attention_mask"],
                              output_names=["logits"], external_data=external, verbose=False,
                              dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
        diff = onnx_max_abs_diff(model, tmp / ONNX_FILE, inputs)
        print(f"ONNX check: max |logits_torch - logits_onnxruntime| = {diff:.3g} over {len(prompts)} prompts "
              f"({int(inputs['attention_mask'].sum())} tokens; tolerance {atol:g})")
        if not diff <= atol:  # also catches NaN
            raise ExportCheckError(f"the ONNX model's logits differ from PyTorch's by up to {diff:.3g} (> tolerance "
                                   f"{atol:g}); nothing was written. Fix: report the model's architecture, or raise "
                                   "the tolerance with --onnx_atol if the difference is understood.")
        model.config.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = _files(tmp)
    return ExportResult(Path(output_dir), files, max_abs_diff=diff)


# ------------------------------------------------------------------------------------------------------------ gguf
def _permute_for_llama_cpp(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder a Q or K projection's rows (out_features, in) from transformers' rotary layout (pairs of halves)
    to llama.cpp's (pairs of adjacent dimensions), per head.

    Source: llama.cpp, ``convert_hf_to_gguf.py``, ``LlamaModel.permute``; the inverse is transformers'
    ``LlamaTensorProcessor._reverse_permute_weights``.
    """
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _gguf_pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization (``tokenizer.ggml.pre``)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    parts = pre.get("pretokenizers") or []
    types = [p.get("type") for p in parts]
    if types == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"  # SmolLM/SmolLM2's hub tokenizer: single digits, then GPT-2's split
    logger.warning("unrecognized pre-tokenizer %s; writing tokenizer.ggml.pre = 'default' (llama.cpp may split "
                   "text differently from transformers)", types or pre.get("type"))
    return "default"


def _add_gguf_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """Write a byte-level BPE tokenizer in llama.cpp's ``gpt2`` form: tokens by id, types, merges, special ids.

    Raises:
        ConfigError: when the tokenizer is not byte-level BPE or has more tokens than the model's vocabulary.
    """
    import gguf

    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model = data.get("model") or {}
    if model.get("type") != "BPE" or (data.get("decoder") or {}).get("type") != "ByteLevel":
        raise ConfigError(f"GGUF export supports byte-level BPE tokenizers (GPT-2 style, as SmolLM2's); this one is "
                          f"{model.get('type')} with a {(data.get('decoder') or {}).get('type')} decoder.")
    tokens: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    types = {i: gguf.TokenType.NORMAL for i in tokens}
    for added in data.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
    if max(tokens) >= vocab_size:
        raise ConfigError(f"the tokenizer has token id {max(tokens)} but the model's vocabulary is {vocab_size}; "
                          "resize the embeddings (model.resize_token_embeddings) before exporting.")
    # llama.cpp pads a vocabulary smaller than the embedding matrix with unused [PAD<i>] tokens.
    token_list = [tokens.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    type_list = [types.get(i, gguf.TokenType.UNUSED) for i in range(vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_gguf_pre_tokenizer(data))
    writer.add_token_list(token_list)
    writer.add_token_types(type_list)
    writer.add_token_merges(merges)
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            add(int(token_id))
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id and len(probe) > 1)
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)


def _gguf_tensor_names(num_layers: int) -> dict[str, str]:
    """transformers' Llama parameter names -> llama.cpp's tensor names (``gguf.TENSOR_NAMES``)."""
    import gguf

    t, names = gguf.MODEL_TENSOR, gguf.TENSOR_NAMES
    mapping = {"model.embed_tokens.weight": names[t.TOKEN_EMBD] + ".weight",
               "model.norm.weight": names[t.OUTPUT_NORM] + ".weight",
               "lm_head.weight": names[t.OUTPUT] + ".weight"}
    per_layer = {"input_layernorm": t.ATTN_NORM, "self_attn.q_proj": t.ATTN_Q, "self_attn.k_proj": t.ATTN_K,
                 "self_attn.v_proj": t.ATTN_V, "self_attn.o_proj": t.ATTN_OUT, "post_attention_layernorm": t.FFN_NORM,
                 "mlp.gate_proj": t.FFN_GATE, "mlp.up_proj": t.FFN_UP, "mlp.down_proj": t.FFN_DOWN}
    for i in range(num_layers):
        for hf, tensor in per_layer.items():
            mapping[f"model.layers.{i}.{hf}.weight"] = names[tensor].format(bid=i) + ".weight"
    return mapping


def export_gguf(model_name_or_path: str | None, output_dir: str | Path, dtype: str = "f16") -> ExportResult:
    """Write a Llama-architecture model as a llama.cpp GGUF file (f32, f16 or bf16; norms stay f32).

    Args:
        model_name_or_path (`str`, *optional*): a model folder, an adapter folder (merged first), or None for the
            default model.
        output_dir (`str` or `Path`): the new folder; it receives ``model-<dtype>.gguf``.
        dtype (`str`): ``"f32"``, ``"f16"`` or ``"bf16"``: the type of the 2-D weight matrices.

    Returns:
        `ExportResult`: the folder and its single file.

    Raises:
        ConfigError: when ``dtype`` is unknown, the model is not a plain ``LlamaForCausalLM`` (biases, rope
            scaling and other architectures are refused), or its tokenizer is not byte-level BPE.
        ModelNotFoundError: when the model cannot be loaded.
        OutputDirError: when ``output_dir`` exists and is not empty.

    Source: GGUF specification, https://github.com/ggml-org/ggml/blob/master/docs/gguf.md; llama.cpp's
    ``convert_hf_to_gguf.py`` (``LlamaModel``) for the metadata keys, tensor names and the Q/K permutation.
    """
    import gguf

    if dtype not in GGUF_DTYPES:
        raise ConfigError(f"gguf dtype {dtype!r} is not supported; choose one of {', '.join(GGUF_DTYPES)}.")
    with _new_output_dir(output_dir) as tmp:
        model, tokenizer, path = _load(model_name_or_path)
        config = model.config
        if type(model).__name__ != "LlamaForCausalLM" or config.model_type != "llama":
            raise ConfigError(f"GGUF export supports Llama-architecture causal LMs (LlamaForCausalLM, e.g. SmolLM2); "
                              f"{path} is a {type(model).__name__} ({config.model_type}). Fix: use --format onnx or "
                              "merged, or llama.cpp's own convert_hf_to_gguf.py.")
        rope = getattr(config, "rope_parameters", None) or {"rope_type": "default",
                                                            "rope_theta": getattr(config, "rope_theta", 10000.0)}
        if rope.get("rope_type", "default") != "default" or config.attention_bias or config.mlp_bias:
            raise ConfigError(f"{path} uses rope scaling {rope.get('rope_type')!r} or attention/MLP biases, which "
                              "this GGUF writer does not handle. Fix: use llama.cpp's convert_hf_to_gguf.py.")
        n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
        qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
                 "bf16": gguf.GGMLQuantizationType.BF16}[dtype]
        file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "bf16": gguf.LlamaFileType.MOSTLY_BF16}[dtype]
        target = tmp / f"model-{dtype}.gguf"
        writer = gguf.GGUFWriter(target, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        writer.add_name(Path(path).name)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_rope_dimension_count(head_dim)
        if head_dim != config.hidden_size // n_head:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        writer.add_rope_freq_base(float(rope["rope_theta"]))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(file_type)
        _add_gguf_tokenizer(writer, tokenizer, config.vocab_size)

        names = _gguf_tensor_names(config.num_hidden_layers)
        state = model.state_dict()
        if config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # llama.cpp omits output.weight for tied embeddings
        unknown = sorted(set(state) - set(names))
        if unknown:
            raise ConfigError(f"{path} has parameters the Llama GGUF layout has no place for: {unknown[:5]}.")
        for hf_name, tensor in state.items():
            tensor = tensor.detach().float()
            if hf_name.endswith("self_attn.q_proj.weight"):
                tensor = _permute_for_llama_cpp(tensor, n_head)
            elif hf_name.endswith("self_attn.k_proj.weight"):
                tensor = _permute_for_llama_cpp(tensor, n_kv)
            array = tensor.numpy()
            tensor_type = qtype if array.ndim > 1 else gguf.GGMLQuantizationType.F32
            writer.add_tensor(names[hf_name], gguf.quants.quantize(array, tensor_type), raw_dtype=tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        files = _files(tmp)
    return ExportResult(Path(output_dir), files)


def export_model(model_name_or_path: str | None, fmt: str, output_dir: str | Path, gguf_dtype: str = "f16",
                 onnx_atol: float = ONNX_ATOL) -> ExportResult:
    """Export in ``fmt`` (``merged``, ``onnx`` or ``gguf``): the one entry point of `scripts/export.py`.

    Raises:
        ConfigError: when ``fmt`` is unknown (and see `export_merged`, `export_onnx`, `export_gguf`).
    """
    if fmt == "merged":
        return export_merged(model_name_or_path, output_dir)
    if fmt == "onnx":
        return export_onnx(model_name_or_path, output_dir, atol=onnx_atol)
    if fmt == "gguf":
        return export_gguf(model_name_or_path, output_dir, dtype=gguf_dtype)
    raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")

