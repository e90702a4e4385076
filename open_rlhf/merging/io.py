"""Lazy, tensor-by-tensor access to saved models and LoRA adapters, and the atomic writer of merged folders.

* `SafetensorsCheckpoint` reads a ``save_pretrained`` folder (``model.safetensors`` or sharded with
  ``model.safetensors.index.json``). It is a read-only `Mapping` from names to tensors that opens the file with
  `safetensors.safe_open` on each access, so only the tensors a caller holds are in memory.
* `LoraAdapterCheckpoint` presents a PEFT LoRA adapter folder as the full model it stands for:
  ``W + scaling * B @ A`` on the shared base model, tensor by tensor (what PEFT's ``merge_and_unload`` computes).
* `open_rlhf.atomic.atomic_output_dir` + `ShardedSafetensorsWriter` write the result into a temporary folder next to the target
  and move it into place with `os.replace`, so a half-written merge never appears under the final name, and
  an existing folder is never overwritten.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
# Files copied next to the merged weights (config, generation config, tokenizer, chat template).
AUX_FILE_PATTERNS = ("config.json", "generation_config.json", "tokenizer*.json", "tokenizer.model", "vocab.*",
                     "merges.txt", "special_tokens_map.json", "added_tokens.json", "chat_template.*",
                     "preprocessor_config.json")

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None),
}


def dtype_from_name(name: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"`` / ``"bf16"`` / ``torch.bfloat16`` -> ``torch.bfloat16``; None stays None.

    Raises:
        ValueError: when the name is not a torch floating dtype.
    """
    if name is None or isinstance(name, torch.dtype):
        return name
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32",
               "fp64": "float64", "double": "float64"}
    dtype = getattr(torch, aliases.get(name, name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype={name!r} is not a torch floating dtype; use float32, bfloat16 or float16.")
    return dtype


def is_adapter_folder(path: str | Path) -> bool:
    """True when ``path`` is a PEFT adapter folder (has ``adapter_config.json``)."""
    return (Path(path) / ADAPTER_CONFIG_NAME).is_file()


class SafetensorsCheckpoint(Mapping):
    """A read-only, lazy `Mapping[str, torch.Tensor]` over a ``save_pretrained`` safetensors folder.

    Shapes and dtypes come from the file headers without reading tensor data. ``checkpoint[name]`` opens the
    file that holds ``name`` with `safetensors.safe_open` and returns that one tensor (memory-mapped pages,
    released when the caller drops it). The last tensor read is kept, so reading the same name twice in a row
    (the base model, then a LoRA adapter on it) costs one read. Do not modify returned tensors in place.

    Args:
        path (`str` or `Path`): a model folder with ``model.safetensors`` or ``model.safetensors.index.json``,
            or a single ``.safetensors`` file.

    Raises:
        FileNotFoundError: when the folder has no safetensors weights (e.g. only ``pytorch_model.bin``: re-save
            it with ``model.save_pretrained(path)``, which writes safetensors).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_file() and self.path.suffix == ".safetensors":
            folder, files = self.path.parent, [self.path]
            weight_map = None
        elif (self.path / SAFE_WEIGHTS_INDEX_NAME).is_file():
            folder = self.path
            weight_map = json.loads((self.path / SAFE_WEIGHTS_INDEX_NAME).read_text())["weight_map"]
            files = sorted({folder / f for f in weight_map.values()})
        elif (self.path / SAFE_WEIGHTS_NAME).is_file():
            folder, files, weight_map = self.path, [self.path / SAFE_WEIGHTS_NAME], None
        else:
            present = sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else "no such folder"
            raise FileNotFoundError(
                f"{self.path} has no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME} (found: {present}). Merging "
                "reads safetensors only: load the model and re-save it with `model.save_pretrained(path)`."
            )
        self.folder = folder
        self._file_of: dict[str, Path] = {}
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    if weight_map is not None and folder / weight_map.get(name, "") != file:
                        continue
                    sl = f.get_slice(name)
                    self._file_of[name] = file
                    self._meta[name] = (tuple(sl.get_shape()), _SAFETENSORS_DTYPES.get(sl.get_dtype()))
        self._last: tuple[str, torch.Tensor] | None = None

    @property
    def config(self) -> dict:
        """``config.json`` of the folder, or {} when there is none."""
        file = self.folder / "config.json"
        return json.loads(file.read_text()) if file.is_file() else {}

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name][0]

    def dtype(self, name: str) -> torch.dtype:
        return self._meta[name][1]

    @property
    def files(self) -> list[Path]:
        return sorted(set(self._file_of.values()))

    def __getitem__(self, name: str) -> torch.Tensor:
        if self._last is not None and self._last[0] == name:
            return self._last[1]
        if name not in self._file_of:
            raise KeyError(f"{name!r} is not a tensor of {self.path}")
        with safe_open(str(self._file_of[name]), framework="pt") as f:
            tensor = f.get_tensor(name)
        self._last = (name, tensor)
        return tensor

    def release(self) -> None:
        """Drop the cached last tensor."""
        self._last = None

    def __iter__(self) -> Iterator[str]:
        return iter(self._file_of)

    def __len__(self) -> int:
        return len(self._file_of)

    def __repr__(self) -> str:
        return f"SafetensorsCheckpoint({str(self.path)!r}, {len(self)} tensors)"


_LORA_PREFIX = "base_model.model."
_LORA_KEY_RE = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)\.weight$")
_LORA_EMB_KEY_RE = re.compile(r"^(?P<module>.+)\.(?P<part>lora_embedding_A|lora_embedding_B)$")


def _pattern_value(patterns: dict, module: str, default):
    # PEFT's get_pattern_key: a pattern matches a module name as a dotted suffix (regex allowed).
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _same_model_name(a: str, b: str) -> bool:
    if a == b:
        return True
    with contextlib.suppress(OSError):
        if Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve():
            return True
    # A hub id and a local copy of it (``HuggingFaceTB/SmolLM2-135M-Instruct`` vs ``.../SmolLM2-135M-Instruct``).
    return Path(a.rstrip("/")).name.lower() == Path(b.rstrip("/")).name.lower()


class LoraAdapterCheckpoint(Mapping):
    """A PEFT LoRA adapter seen as the full fine-tuned model it defines on its base model, tensor by tensor.

    ``adapter[name] = W_base + scaling * (B @ A)`` for a LoRA-wrapped ``nn.Linear`` (transposed when
    ``fan_in_fan_out``), ``W_base + scaling * (B @ A)^T`` for a LoRA ``nn.Embedding``, the saved tensor for a
    ``modules_to_save`` module, and ``W_base`` for every other name. ``scaling = lora_alpha / r`` (``/ sqrt(r)``
    with ``use_rslora``), with PEFT's ``rank_pattern`` / ``alpha_pattern`` overrides. This is what PEFT's
    ``merge_and_unload`` writes, computed one tensor at a time; results are in the base model's dtype.

    Args:
        path (`str` or `Path`): a folder with ``adapter_config.json`` and ``adapter_model.safetensors``.
        base (`SafetensorsCheckpoint`): the base model the adapter was trained on.

    Raises:
        ValueError: when the adapter was trained on another base model (``base_model_name_or_path`` names a
            different model, or a saved copy of a base weight differs from ``base``), or an adapter tensor names
            a module the base does not have or has the wrong shape.
        NotImplementedError: for adapter kinds other than plain LoRA (DoRA, LoRA biases, trainable tokens, ...):
            merge those with PEFT's ``merge_and_unload`` and pass the saved full model instead.
    """

    def __init__(self, path: str | Path, base: SafetensorsCheckpoint):
        self.path = Path(path)
        self.base = base
        config = json.loads((self.path / ADAPTER_CONFIG_NAME).read_text())
        self.adapter_config = config
        if config.get("peft_type", "LORA") != "LORA":
            raise NotImplementedError(f"{self.path}: peft_type={config.get('peft_type')!r}; only LoRA adapters "
                                      "can be merged here. Merge it with PEFT's merge_and_unload and save the model.")
        for flag in ("use_dora", "lora_bias"):
            if config.get(flag):
                raise NotImplementedError(f"{self.path}: {flag}=True is not supported; merge the adapter with PEFT's "
                                          "merge_and_unload, save the full model and merge that.")
        claimed = config.get("base_model_name_or_path")
        if claimed and not _same_model_name(str(claimed), str(base.path)):
            raise ValueError(
                f"{self.path} was trained on base model {claimed!r} but base_model is {str(base.path)!r}; adapters "
                "only merge onto the base they were trained on. Pass that model as base_model."
            )
        weights_file = self.path / ADAPTER_WEIGHTS_NAME
        if not weights_file.is_file():
            raise FileNotFoundError(f"{self.path} has no {ADAPTER_WEIGHTS_NAME}; save the adapter with "
                                    "`peft_model.save_pretrained(path)` (safetensors).")
        self._file = weights_file
        self._lora: dict[str, dict[str, str]] = {}  # base tensor name -> {"A": key, "B": key, "kind": ...}
        self._replaced: dict[str, str] = {}  # base tensor name -> adapter key of a full replacement tensor
        self._base_copies: dict[str, str] = {}  # base tensor name -> adapter key of a saved copy of the base weight
        with safe_open(str(weights_file), framework="pt") as f:
            keys = list(f.keys())
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
        for key in keys:
            name = key[len(_LORA_PREFIX):] if key.startswith(_LORA_PREFIX) else key
            if m := _LORA_KEY_RE.match(name):
                entry = self._lora.setdefault(m["module"] + ".weight", {"kind": "linear", "module": m["module"]})
                entry[m["part"][-1]] = key
            elif m := _LORA_EMB_KEY_RE.match(name):
                entry = self._lora.setdefault(m["module"] + ".weight", {"kind": "embedding", "module": m["module"]})
                entry[m["part"][-1]] = key
            elif ".base_layer." in name:
                self._base_copies[name.replace(".base_layer.", ".")] = key
            elif "lora_" in name or "trainable_tokens" in name:
                raise NotImplementedError(f"{self.path}: adapter tensor {key!r} is of a kind this merger does not "
                                          "handle; merge with PEFT's merge_and_unload and pass the saved model.")
            else:
                self._replaced[name] = key
        for name, entry in self._lora.items():
            if "A" not in entry or "B" not in entry:
                raise ValueError(f"{self.path}: {entry['module']} has only one of its LoRA A/B matrices.")
            if name not in base:
                raise ValueError(f"{self.path}: the adapter targets {entry['module']!r}, but the base model "
                                 f"{base.path} has no tensor {name!r}; it was trained on another architecture.")
            r = shapes[entry["A"]][0]  # lora_A is (r, in_features), lora_embedding_A is (r, num_embeddings)
            alpha = _pattern_value(config.get("alpha_pattern"), entry["module"], config.get("lora_alpha", 8))
            entry["scaling"] = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
            out_in = (shapes[entry["B"]][0], shapes[entry["A"]][1])
            expected = out_in if entry["kind"] == "linear" else out_in[::-1]
            if entry["kind"] == "linear" and config.get("fan_in_fan_out"):
                expected = expected[::-1]
            if tuple(base.shape(name)) != expected:
                raise ValueError(f"{self.path}: LoRA on {entry['module']!r} gives a delta of shape {expected} but "
                                 f"the base tensor has shape {base.shape(name)}; another base model?")
        for name, key in {**self._replaced, **self._base_copies}.items():
            if name not in base:
                raise ValueError(f"{self.path}: adapter tensor {key!r} has no counterpart {name!r} in {base.path}.")
            if shapes[key] != tuple(base.shape(name)):
                raise ValueError(f"{self.path}: adapter tensor {key!r} has shape {shapes[key]} but {name!r} in the "
                                 f"base model has {base.shape(name)}; another base model?")
        self._checked_copies: set[str] = set()

    @property
    def config(self) -> dict:
        return self.base.config

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self.base.dtype(name)

    @property
    def files(self) -> list[Path]:
        return [self._file]

    def _adapter_tensor(self, key: str) -> torch.Tensor:
        with safe_open(str(self._file), framework="pt") as f:
            return f.get_tensor(key)

    def delta(self, name: str) -> torch.Tensor | None:
        """The LoRA update ``scaling * B @ A`` for ``name`` in float32 (shape of the base tensor), or None."""
        entry = self._lora.get(name)
        if entry is None:
            return None
        a = self._adapter_tensor(entry["A"]).float()  # (r, in) or (r, num_embeddings)
        b = self._adapter_tensor(entry["B"]).float()  # (out, r) or (embedding_dim, r)
        delta = b @ a
        if entry["kind"] == "embedding" or self.adapter_config.get("fan_in_fan_out"):
            delta = delta.T
        return delta * entry["scaling"]

    def __getitem__(self, name: str) -> torch.Tensor:
        base_tensor = self.base[name]
        if name in self._base_copies and name not in self._checked_copies:
            saved = self._adapter_tensor(self._base_copies[name])
            if not torch.equal(saved.to(base_tensor.dtype), base_tensor):
                raise ValueError(f"{self.path} saved its base weight {name!r}, and it differs from {self.base.path}: "
                                 "the adapter was trained on another base model. Pass that model as base_model.")
            self._checked_copies.add(name)
        if name in self._replaced:
            return self._adapter_tensor(self._replaced[name]).to(base_tensor.dtype)
        delta = self.delta(name)
        if delta is None:
            return base_tensor
        return (base_tensor.float() + delta).to(base_tensor.dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self.base)

    def __len__(self) -> int:
        return len(self.base)

    def __repr__(self) -> str:
        return f"LoraAdapterCheckpoint({str(self.path)!r}, base={str(self.base.path)!r})"


def open_checkpoint(path: str | Path, base: SafetensorsCheckpoint | None = None):
    """Open a model folder or a LoRA adapter folder lazily.

    Args:
        path (`str` or `Path`): a ``save_pretrained`` model folder, or a PEFT LoRA adapter folder.
        base (`SafetensorsCheckpoint`, *optional*): the shared base model; required for adapters.

    Returns:
        `SafetensorsCheckpoint` or `LoraAdapterCheckpoint`.

    Raises:
        FileNotFoundError: when ``path`` does not exist or holds no safetensors weights.
        ValueError: when ``path`` is an adapter and no base model was given.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass a saved model folder or a LoRA adapter folder.")
    if is_adapter_folder(path):
        if base is None:
            raise ValueError(f"{path} is a LoRA adapter; pass the base model it was trained on as base_model.")
        return LoraAdapterCheckpoint(path, base)
    return SafetensorsCheckpoint(path)


class ShardedSafetensorsWriter:
    """Collect merged tensors and write them as ``model.safetensors`` or HF-style shards with an index.

    A shard is flushed to disk as soon as adding the next tensor would exceed ``max_shard_bytes``, so the
    writer holds at most one shard in memory. With a single shard the file is ``model.safetensors``; otherwise
    ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``, the layout of ``save_pretrained``.

    Args:
        folder (`Path`): where to write (the temporary folder of `open_rlhf.atomic.atomic_output_dir`).
        max_shard_bytes (`int`): shard size limit in bytes.
        metadata (`dict[str, str]`, *optional*): safetensors header metadata; ``format: pt`` is always set.
    """

    def __init__(self, folder: Path, max_shard_bytes: int, metadata: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.max_shard_bytes = max(1, int(max_shard_bytes))
        self.metadata = {**(metadata or {}), "format": "pt"}
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        path = self.folder / f".shard-{len(self._shards):05d}.safetensors"
        save_file(self._pending, str(path), metadata=self.metadata)
        self._shards.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def finish(self) -> list[str]:
        """Write what is pending, give the shards their final names; returns the weight file names."""
        if self._pending or not self._shards:
            self._flush()
        if len(self._shards) == 1:
            os.replace(self._shards[0][0], self.folder / SAFE_WEIGHTS_NAME)
            return [SAFE_WEIGHTS_NAME]
        n = len(self._shards)
        weight_map, names = {}, []
        for i, (path, keys) in enumerate(self._shards, start=1):
            final = f"model-{i:05d}-of-{n:05d}.safetensors"
            os.replace(path, self.folder / final)
            names.append(final)
            weight_map.update({k: final for k in keys})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return names


def copy_aux_files(source: str | Path, dest: Path, dtype: torch.dtype | None = None) -> list[str]:
    """Copy config, generation config, tokenizer and chat template files from ``source`` into ``dest``.

    Args:
        source (`str` or `Path`): a model folder.
        dest (`Path`): the output folder.
        dtype (`torch.dtype`, *optional*): when given, ``config.json``'s ``dtype`` (and legacy ``torch_dtype``)
            is set to it, so transformers loads the merged weights in the dtype they were written in.

    Returns:
        `list[str]`: names of the copied files.
    """
    source = Path(source)
    copied = []
    for pattern in AUX_FILE_PATTERNS:
        for file in sorted(source.glob(pattern)):
            if file.is_file() and not (dest / file.name).exists():
                shutil.copy2(file, dest / file.name)
                copied.append(file.name)
    config_file = dest / "config.json"
    if dtype is not None and config_file.is_file():
        config = json.loads(config_file.read_text())
        config["dtype"] = str(dtype).removeprefix("torch.")
        if "torch_dtype" in config:
            config["torch_dtype"] = config["dtype"]
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return copied
