"""Merge whole models: validation, the per-tensor dispatch, the in-memory API and the streaming file API.

* `merge_state_dicts` merges in-memory state dicts (or the lazy checkpoints of `open_rlhf.merging.io`) and
  returns the merged state dict: the Python API for use inside the pipeline.
* `merge_models` merges saved model folders or LoRA adapters tensor by tensor and writes a ``save_pretrained``
  folder (safetensors, config, tokenizer, ``merge_record.json``) atomically. Peak memory is about one output
  model (one shard with ``max_shard_size_mb``) plus one tensor per input, not N models.

Both check, before touching tensor data, that all inputs have the same tensor names, shapes and dtypes, and,
while merging, that the inputs share their base: the relative L2 distance of each model's weight matrices
(tensors with >= 2 dims) to the base model (or to the first model when there is no base) must stay below
``max_relative_distance``. Fine-tunes of one base typically sit well under 0.1; independently trained models of
the same architecture sit near sqrt(2) ~ 1.41, where averaging or task vectors are meaningless.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

from open_rlhf.atomic import atomic_output_dir
from open_rlhf.merging import methods
from open_rlhf.merging.io import (
    LoraAdapterCheckpoint,
    SafetensorsCheckpoint,
    ShardedSafetensorsWriter,
    copy_aux_files,
    dtype_from_name,
    open_checkpoint,
)

logger = logging.getLogger(__name__)

METHODS = ("linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp")
#: Methods that merge task vectors ``theta_i - theta_base`` and so need a base model.
TASK_VECTOR_METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties")
MERGE_RECORD_NAME = "merge_record.json"
DEFAULT_MAX_RELATIVE_DISTANCE = 0.5

Schedule = float | Sequence[float]


def _as_schedule(value: Schedule | None, name: str) -> list[float] | None:
    if value is None:
        return None
    values = [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]
    if not values:
        raise ValueError(f"{name} is empty; pass one value or a list of layer-wise anchors.")
    return values


def validate_merge_args(method: str, num_models: int, has_base: bool, has_adapters: bool = False,
                        weights: Sequence[float] | None = None, density: float = 1.0,
                        t: Schedule | None = None, dare_rescale: str = "density") -> None:
    """Check that a method and its parameters fit together before any tensor is read.

    Raises:
        ValueError: naming the argument to change: an unknown method; too few models (SLERP takes exactly 2);
            a task-vector method or a LoRA adapter input without ``base_model``; ``base_model`` given to linear
            or SLERP on full models (it would be ignored); weights of the wrong length; density outside (0, 1];
            ``t`` with a method that does not interpolate two models.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}.")
    if num_models < 1:
        raise ValueError("No models to merge; pass the fine-tuned models (or LoRA adapters) as models.")
    if method == "slerp" and num_models != 2:
        raise ValueError(f"slerp interpolates exactly 2 models, got {num_models}; use linear or ties for more.")
    if method == "linear" and num_models < 2:
        raise ValueError("linear needs at least 2 models.")
    if method in TASK_VECTOR_METHODS and not has_base:
        raise ValueError(f"{method} merges task vectors theta_i - theta_base; pass the shared base model as base_model.")
    if has_adapters and not has_base:
        raise ValueError("LoRA adapter inputs need the base model they were trained on; pass it as base_model.")
    if method in ("linear", "slerp") and has_base and not has_adapters:
        raise ValueError(f"{method} does not use base_model (it only serves to apply LoRA adapters); drop it, or "
                         "use task_arithmetic / ties / dare_* to merge task vectors relative to it.")
    if weights is not None and len(weights) != num_models:
        raise ValueError(f"Got {len(weights)} weights for {num_models} models; pass one weight per model.")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density={density} is outside (0, 1]; it is the fraction of task-vector entries kept.")
    if t is not None:
        if method == "linear" and (num_models != 2 or weights is not None):
            raise ValueError("t (a layer-wise interpolation schedule) works for linear only with exactly 2 models "
                             "and no weights; it sets the weights to (1 - t, t) per layer.")
        if method not in ("linear", "slerp"):
            raise ValueError(f"t is the interpolation factor of slerp / two-model linear; {method} uses lambda_.")
    if dare_rescale not in methods.DARE_RESCALE_MODES:
        raise ValueError(f"dare_rescale={dare_rescale!r} is not one of {methods.DARE_RESCALE_MODES}.")


def _shape(sd: Mapping, name: str) -> tuple[int, ...]:
    return tuple(sd.shape(name)) if hasattr(sd, "shape") and callable(sd.shape) else tuple(sd[name].shape)


def _dtype(sd: Mapping, name: str) -> torch.dtype:
    return sd.dtype(name) if hasattr(sd, "dtype") and callable(sd.dtype) else sd[name].dtype


def check_compatible(state_dicts: Mapping[str, Mapping]) -> list[str]:
    """Check that all inputs have the same tensor names, shapes and dtypes (metadata only for lazy inputs).

    Args:
        state_dicts (`Mapping[str, Mapping[str, torch.Tensor]]`): label (a path or ``models[i]``) -> state dict;
            the first entry is the reference.

    Returns:
        `list[str]`: the tensor names in the reference's order.

    Raises:
        ValueError: naming the input and up to 5 tensors, when names differ (a different architecture or a
            model with an extra head), shapes differ (another size of the architecture), or dtypes differ
            (re-save one of the models in the other's dtype).
    """
    labels = list(state_dicts)
    reference_label = labels[0]
    reference = state_dicts[reference_label]
    names = list(reference.keys())
    name_set = set(names)
    for label in labels[1:]:
        sd = state_dicts[label]
        keys = set(sd.keys())
        if keys != name_set:
            missing, extra = sorted(name_set - keys), sorted(keys - name_set)
            raise ValueError(
                f"{label} and {reference_label} have different tensor names: {len(missing)} missing in {label} "
                f"(e.g. {missing[:5]}), {len(extra)} extra (e.g. {extra[:5]}). Merged models must share one "
                "architecture (same config, same heads)."
            )
        bad_shape = [(n, _shape(sd, n), _shape(reference, n)) for n in names if _shape(sd, n) != _shape(reference, n)]
        if bad_shape:
            raise ValueError(
                f"{len(bad_shape)} tensors of {label} differ in shape from {reference_label}, e.g. "
                + "; ".join(f"{n}: {a} vs {b}" for n, a, b in bad_shape[:5])
                + ". Merged models must share one architecture size."
            )
        bad_dtype = [(n, _dtype(sd, n), _dtype(reference, n)) for n in names if _dtype(sd, n) != _dtype(reference, n)]
        if bad_dtype:
            raise ValueError(
                f"{len(bad_dtype)} tensors of {label} differ in dtype from {reference_label}, e.g. "
                + "; ".join(f"{n}: {a} vs {b}" for n, a, b in bad_dtype[:5])
                + ". Load one model and re-save it in the other's dtype (model.to(dtype).save_pretrained)."
            )
    return names


def num_layers_of(config: Mapping, names: Sequence[str]) -> int:
    """Number of decoder layers: ``num_hidden_layers`` (or ``n_layer``) of the config, else from tensor names."""
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    indices = [i for i in (methods.layer_index(n) for n in names) if i is not None]
    return max(indices) + 1 if indices else 1


def tensor_seed(seed: int, name: str) -> int:
    """Seed of a tensor's DARE masks: depends only on the merge seed and the tensor name, not on the order."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def merge_tensor(name: str, tensors: Sequence[torch.Tensor], base: torch.Tensor | None, *, method: str,
                 position: float = 0.0, weights: Sequence[float] | None = None, density: float = 1.0,
                 lambda_: Schedule = 1.0, t: Schedule | None = None, normalize: bool = True, seed: int = 0,
                 dare_rescale: str = "density", dot_threshold: float = methods.SLERP_DOT_THRESHOLD) -> torch.Tensor:
    """Merge one tensor with one method; layer-wise schedules are evaluated at ``position``.

    Args:
        name (`str`): the tensor's name (seeds DARE's masks).
        tensors (sequence of `torch.Tensor`, each of shape `(*S)`): the tensor in each input model.
        base (`torch.Tensor` of shape `(*S)`, *optional*): the base model's tensor (task-vector methods).
        method (`str`): one of `METHODS`.
        position (`float` in [0, 1]): `methods.layer_position` of the tensor.
        weights, density, normalize, dare_rescale, dot_threshold: see `merge_state_dicts`.
        lambda_ (`float` or anchors): task-vector scaling, possibly layer-wise.
        t (`float` or anchors, *optional*): SLERP / two-model linear factor, possibly layer-wise.
        seed (`int`): merge seed for DARE.

    Returns:
        `torch.Tensor` of shape `(*S)`, the inputs' dtype.
    """
    lam = methods.schedule_value(lambda_, position)
    if method == "linear":
        if t is not None:
            t_value = methods.schedule_value(t, position)
            return methods.linear(tensors, [1.0 - t_value, t_value], normalize=False)
        return methods.linear(tensors, weights, normalize=normalize)
    if method == "slerp":
        t_value = methods.schedule_value(0.5 if t is None else t, position)
        return methods.slerp(t_value, tensors[0], tensors[1], dot_threshold=dot_threshold)
    if method == "task_arithmetic":
        return methods.task_arithmetic(base, tensors, weights, lambda_=lam)
    if method == "ties":
        return methods.ties(base, tensors, density, weights, lambda_=lam)
    if method in ("dare_linear", "dare_ties"):
        generator = torch.Generator().manual_seed(tensor_seed(seed, name))
        return methods.dare(base, tensors, density, weights, lambda_=lam, combine=method.removeprefix("dare_"),
                            generator=generator, rescale=dare_rescale)
    raise ValueError(f"method={method!r} is not one of {METHODS}.")


class _DistanceMeter:
    """Relative L2 distance of each model's weight matrices to a reference, accumulated tensor by tensor."""

    def __init__(self, labels: Sequence[str], reference_label: str):
        self.labels = list(labels)
        self.reference_label = reference_label
        self.sq_diff = [0.0] * len(labels)
        self.sq_ref = 0.0

    def add(self, reference: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
        if reference.dim() < 2 or not reference.is_floating_point():
            return  # norms and biases: tiny, and often identical (all ones) across unrelated models
        ref = reference.float()
        self.sq_ref += float(ref.square().sum())
        for i, tensor in enumerate(tensors):
            self.sq_diff[i] += float(torch.dist(tensor.float(), ref)) ** 2

    def distances(self) -> dict[str, float]:
        denom = math.sqrt(self.sq_ref) if self.sq_ref > 0 else 1.0
        return {label: math.sqrt(d) / denom for label, d in zip(self.labels, self.sq_diff, strict=True)}

    def check(self, max_relative_distance: float | None) -> dict[str, float]:
        distances = self.distances()
        if max_relative_distance is None:
            return distances
        far = {label: d for label, d in distances.items() if d > max_relative_distance}
        if far:
            raise ValueError(
                f"These inputs do not share a base with {self.reference_label}: relative L2 distance of their "
                f"weight matrices {', '.join(f'{k}: {v:.3f}' for k, v in far.items())} > max_relative_distance="
                f"{max_relative_distance} (fine-tunes of one base are typically < 0.1; unrelated models ~1.41). "
                "Merge only models fine-tuned from the same base; raise max_relative_distance if these really are."
            )
        return distances


def _merge_stream(sources: dict[str, Mapping], base: Mapping | None, *, method: str,
                  num_layers: int | None, names: list[str], out_dtype: torch.dtype | None,
                  meter: _DistanceMeter | None, **params) -> Iterator[tuple[str, torch.Tensor]]:
    inputs = list(sources.values())
    for name in names:
        tensors = [sd[name] for sd in inputs]
        base_tensor = base[name] if base is not None else None
        if not tensors[0].is_floating_point():
            # Integer buffers (e.g. position ids) are copied, and only when every input agrees.
            for label, tensor in zip(sources, tensors, strict=True):
                if not torch.equal(tensor, tensors[0]):
                    raise ValueError(f"Non-floating tensor {name!r} differs between the inputs ({label}); it cannot "
                                     "be averaged. These models are not one architecture's fine-tunes.")
            yield name, tensors[0]
            continue
        if meter is not None:
            if base_tensor is not None:
                meter.add(base_tensor, tensors)
            else:
                meter.add(tensors[0], tensors[1:])
        position = methods.layer_position(name, num_layers or 1)
        merged = merge_tensor(name, tensors, base_tensor, method=method, position=position, **params)
        if out_dtype is not None:
            merged = merged.to(out_dtype)
        yield name, merged
        del tensors, base_tensor


def merge_state_dicts(state_dicts: Sequence[Mapping[str, torch.Tensor]], method: str = "linear", *,
                      base: Mapping[str, torch.Tensor] | None = None, weights: Sequence[float] | None = None,
                      density: float = 1.0, lambda_: Schedule = 1.0, t: Schedule | None = None,
                      normalize: bool = True, seed: int = 0, dare_rescale: str = "density",
                      dot_threshold: float = methods.SLERP_DOT_THRESHOLD, num_layers: int | None = None,
                      max_relative_distance: float | None = DEFAULT_MAX_RELATIVE_DISTANCE,
                      dtype: str | torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Merge N state dicts of one architecture into one, tensor by tensor.

    Args:
        state_dicts (sequence of `Mapping[str, torch.Tensor]`): the fine-tuned models (``model.state_dict()``,
            or lazy `SafetensorsCheckpoint` / `LoraAdapterCheckpoint`); same names, shapes and dtypes.
        method (`str`): ``linear`` (weighted average / uniform soup), ``task_arithmetic``, ``ties``,
            ``dare_linear``, ``dare_ties`` or ``slerp`` (exactly 2 models).
        base (`Mapping[str, torch.Tensor]`, *optional*): the shared base model; required by the task-vector
            methods.
        weights (sequence of `float`, length N, *optional*): per-model weights (default all 1).
        density (`float` in (0, 1]): fraction of task-vector entries kept (TIES: by magnitude; DARE: at random).
        lambda_ (`float` or list of `float`): scaling of the merged task vector; a list is a layer-wise schedule
            (anchors spread evenly from the embeddings to the output, linearly interpolated over layer index).
        t (`float` or list of `float`, *optional*): SLERP factor (default 0.5), or for ``linear`` with 2 models
            the weights ``(1 - t, t)``; a list is a layer-wise schedule.
        normalize (`bool`): ``linear`` divides by the sum of weights.
        seed (`int`): DARE seed; each tensor's masks depend only on (seed, tensor name, model order).
        dare_rescale (`str`): ``"density"`` (the paper's 1/(1-p)), ``"l1"`` (mergekit) or ``"none"``.
        dot_threshold (`float`): SLERP's colinearity threshold on the cosine.
        num_layers (`int`, *optional*): decoder layers, for schedules; default: from the tensor names.
        max_relative_distance (`float`, *optional*): shared-base check threshold (see the module docstring);
            None disables it.
        dtype (`str` or `torch.dtype`, *optional*): dtype of the output (default: the inputs').

    Returns:
        `dict[str, torch.Tensor]`: the merged state dict, in the first input's key order.

    Raises:
        ValueError: on mismatched names, shapes or dtypes (`check_compatible`), a non-shared base, or
            inconsistent arguments (`validate_merge_args`).
    """
    has_adapters = any(isinstance(sd, LoraAdapterCheckpoint) for sd in state_dicts)
    validate_merge_args(method, len(state_dicts), base is not None, has_adapters, weights, density, t, dare_rescale)
    sources = {f"models[{i}]": sd for i, sd in enumerate(state_dicts)}
    names = check_compatible({"base": base, **sources} if base is not None else sources)
    if num_layers is None:
        num_layers = num_layers_of({}, names)
    labels = list(sources) if base is not None else list(sources)[1:]
    meter = _DistanceMeter(labels, "base" if base is not None else "models[0]")
    merged = dict(_merge_stream(sources, base, method=method, num_layers=num_layers, names=names,
                                out_dtype=dtype_from_name(dtype), meter=meter, weights=weights, density=density,
                                lambda_=lambda_, t=t, normalize=normalize, seed=seed, dare_rescale=dare_rescale,
                                dot_threshold=dot_threshold))
    meter.check(max_relative_distance)
    return merged


def _describe_input(path: Path, checkpoint) -> dict:
    return {
        "path": str(path.resolve()),
        "kind": "lora_adapter" if isinstance(checkpoint, LoraAdapterCheckpoint) else "full_model",
        "files": [{"name": f.name, "bytes": f.stat().st_size} for f in checkpoint.files],
    }


def merge_models(models: Sequence[str | Path], output_dir: str | Path, method: str = "linear", *,
                 base_model: str | Path | None = None, weights: Sequence[float] | None = None,
                 density: float = 1.0, lambda_: Schedule = 1.0, t: Schedule | None = None, normalize: bool = True,
                 seed: int = 0, dare_rescale: str = "density", dot_threshold: float = methods.SLERP_DOT_THRESHOLD,
                 max_relative_distance: float | None = DEFAULT_MAX_RELATIVE_DISTANCE, dtype: str | None = None,
                 tokenizer_source: str | Path | None = None, max_shard_size_mb: float = 5000) -> Path:
    """Merge saved models (or LoRA adapters on a shared base) into a new ``save_pretrained`` folder.

    Streams tensor by tensor from the safetensors files: peak memory is about the output (or one output shard
    with a small ``max_shard_size_mb``) plus one tensor per input. Writes, atomically, ``model.safetensors``
    (or shards + index), ``config.json`` and the tokenizer/chat-template files of ``tokenizer_source`` (default:
    the base model, else the first model), and ``merge_record.json`` (method, inputs with file sizes, parameters,
    shared-base distances, library versions). ``AutoModelForCausalLM.from_pretrained(output_dir)`` loads it.

    Args:
        models (sequence of `str` or `Path`): model folders and/or LoRA adapter folders (adapters need
            ``base_model``).
        output_dir (`str` or `Path`): the folder to create; it must not exist.
        method (`str`): see `merge_state_dicts`.
        base_model (`str` or `Path`, *optional*): the shared base model folder.
        weights, density, lambda_, t, normalize, seed, dare_rescale, dot_threshold, max_relative_distance:
            see `merge_state_dicts`.
        dtype (`str`, *optional*): output dtype (``float32``, ``bfloat16``, ``float16``); default: the inputs'.
        tokenizer_source (`str` or `Path`, *optional*): folder whose config and tokenizer files are copied.
        max_shard_size_mb (`float`): shard size limit of the output in MB (10^6 bytes).

    Returns:
        `Path`: ``output_dir``.

    Raises:
        FileExistsError: when ``output_dir`` exists (nothing is ever overwritten).
        FileNotFoundError: when an input folder is missing or has no safetensors weights.
        ValueError: on mismatched names, shapes or dtypes, a non-shared base (relative distance above
            ``max_relative_distance``, or an adapter trained on another base), or inconsistent arguments.
    """
    output_dir = Path(output_dir)
    if output_dir.exists():
        raise FileExistsError(f"{output_dir} already exists; merging never overwrites an output folder. Pass a new "
                              "output_dir or remove the old folder yourself.")
    model_paths = [Path(m) for m in models]
    base_path = Path(base_model) if base_model is not None else None
    base = open_checkpoint(base_path) if base_path is not None else None
    if isinstance(base, LoraAdapterCheckpoint):
        raise ValueError(f"base_model {base_path} is a LoRA adapter; pass the full model it was trained on.")
    checkpoints = [open_checkpoint(p, base) for p in model_paths]
    has_adapters = any(isinstance(c, LoraAdapterCheckpoint) for c in checkpoints)
    validate_merge_args(method, len(checkpoints), base is not None, has_adapters, weights, density, t, dare_rescale)
    out_dtype = dtype_from_name(dtype)
    lambda_schedule, t_schedule = _as_schedule(lambda_, "lambda_"), _as_schedule(t, "t")

    sources = {str(p): c for p, c in zip(model_paths, checkpoints, strict=True)}
    if len(sources) != len(checkpoints):
        raise ValueError(f"models lists the same folder twice: {[str(p) for p in model_paths]}; pass it once with "
                         "a larger weight instead.")
    names = check_compatible({str(base_path): base, **sources} if base is not None else sources)
    reference = base if base is not None else checkpoints[0]
    num_layers = num_layers_of(reference.config, names)
    config_source = Path(tokenizer_source) if tokenizer_source else (base_path or model_paths[0])
    reference_label = str(base_path) if base is not None else str(model_paths[0])
    labels = list(sources) if base is not None else list(sources)[1:]
    meter = _DistanceMeter(labels, reference_label)

    params = dict(weights=list(weights) if weights is not None else None, density=density, lambda_=lambda_schedule,
                  t=t_schedule, normalize=normalize, seed=seed, dare_rescale=dare_rescale,
                  dot_threshold=dot_threshold)
    with atomic_output_dir(output_dir) as tmp:
        writer = ShardedSafetensorsWriter(tmp, max_shard_bytes=int(max_shard_size_mb * 1e6),
                                          metadata={"merge_method": method, "merged_by": "open_rlhf.merging"})
        for name, tensor in _merge_stream(sources, base, method=method, num_layers=num_layers, names=names,
                                          out_dtype=out_dtype, meter=meter, **params):
            writer.add(name, tensor)
            for checkpoint in (*checkpoints, base):
                if isinstance(checkpoint, SafetensorsCheckpoint):
                    checkpoint.release()
        distances = meter.check(max_relative_distance)
        weight_files = writer.finish()
        copied = copy_aux_files(config_source, tmp, dtype=out_dtype)
        if "config.json" not in copied:
            logger.warning("%s has no config.json; the merged folder will not load with from_pretrained.",
                           config_source)
        if not any(name.startswith("tokenizer") for name in copied):
            logger.warning("%s has no tokenizer files; pass tokenizer_source to copy them from elsewhere.",
                           config_source)
        record = {
            "method": method,
            "merged_by": "open_rlhf.merging (our own code; TRL has no merging)",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "inputs": [_describe_input(p, c) for p, c in zip(model_paths, checkpoints, strict=True)],
            "base_model": _describe_input(base_path, base) if base is not None else None,
            "parameters": {**params, "max_relative_distance": max_relative_distance,
                           "dtype": str(out_dtype).removeprefix("torch.") if out_dtype else None,
                           "num_layers": num_layers},
            "shared_base_check": {"reference": reference_label, "relative_l2_distance": distances},
            "output": {"weight_files": weight_files, "num_tensors": len(names), "total_bytes": writer.total_bytes,
                       "copied_files": copied, "config_source": str(config_source)},
            "versions": _versions(),
        }
        (tmp / MERGE_RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return output_dir


def _versions() -> dict[str, str]:
    import safetensors

    import open_rlhf

    return {"open_rlhf": open_rlhf.__version__, "torch": torch.__version__, "safetensors": safetensors.__version__}
