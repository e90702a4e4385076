"""Per-device training memory, estimated from a model's shape before any weight is loaded (``config/hardware/``).

What one device holds during a training step (AdamW), in bytes:

- **parameters**: 2 per parameter in bf16 mixed precision (the compute copy), 4 in fp32; a frozen base under
  LoRA the same, under QLoRA 0.5 per quantised linear weight plus its quantisation constants (below).
- **gradients**: of the trainable parameters only, 2 (bf16 mixed) or 4 (fp32) per parameter.
- **optimizer states**: AdamW's two fp32 moments (8 bytes) per trainable parameter, plus the fp32 master weights
  (4 bytes) under mixed precision: 12 (mixed) or 8 (fp32). With the 2 + 2 above, full fine-tuning costs 16 bytes
  per parameter either way (ZeRO, Rajbhandari et al. 2020, https://arxiv.org/abs/1910.02054, Sec. 3.1: "2Psi +
  2Psi + 12Psi"); FSDP2's fp32 sharded parameters + bf16 compute cast split it 4 + 4 + 8, the same 16.
- **sharding** over N devices: DDP none; ZeRO-2 divides gradients and optimizer states by N; ZeRO-3 and FSDP
  (full shard) divide parameters too, and then hold up to two gathered decoder layers at a time (the one computing,
  the one prefetched) as a temporary.
- **activations** (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
  https://arxiv.org/abs/2205.05198, Sec. 4.1, Eq. 1): per layer ``s*b*h*(34 + 5*a*s/h)`` bytes with 16-bit
  activations (s tokens, b sequences, h hidden, a heads); the ``5*a*s/h`` term is the attention matrix (scores,
  softmax, dropout mask), which fused attention (FlashAttention, SDPA) does not store, leaving ``34*s*b*h``
  (the paper's selective recomputation, Table 2). fp32 training doubles it. With gradient checkpointing only each
  layer's input is kept (``2*s*b*h`` per layer, the paper's full recomputation) plus one layer's activations
  while it is recomputed. The formula is for a GPT block (4h GELU MLP, dropout); a Llama block (SwiGLU with
  ``intermediate_size`` ~2.7h, no dropout) is close but not equal, which is what `measure_training_step` checks.
- **logits**: ``b*s*V`` fp32 logits and their gradient (8 bytes each position and vocabulary entry): the loss
  upcasts them, and at a 128k vocabulary they rival a layer's activations.
- **runtime**: the CUDA context and kernels (1 GiB on a GPU; 0.5 GiB of libraries on a CPU).

QLoRA (Dettmers et al. 2023, https://arxiv.org/abs/2305.14314, Sec. 3): NF4 weights (4 bits) in blocks of 64 with
one absmax constant per block; double quantisation stores those constants in 8 bits with one fp32 constant per
256 blocks, ``8/64 + 32/(64*256) = 0.127`` bits per parameter (0.5 bits without it). Embeddings, LM head and norms
stay in the compute dtype. LoRA (Hu et al. 2021) adds ``r * (d_in + d_out)`` trainable parameters per adapted
linear layer.

This module is a leaf (plus PyYAML; torch and transformers only inside `measure_training_step`).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import yaml

from open_rlhf.errors import ConfigError

GiB = 2**30
PRECISIONS = ("bf16_mixed", "fp32")
FINETUNES = ("full", "lora", "qlora")
SHARDINGS = ("none", "zero2", "zero3", "fsdp")
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RUNTIME_BYTES = {"cuda": 1 * GiB, "cpu": GiB // 2}
NF4_BLOCK = 64  # QLoRA's block size for the absmax constants
DOUBLE_QUANT_BLOCK = 256  # blocks per second-level fp32 constant


@dataclass
class HardwarePreset:
    """One ``config/hardware/<name>.yaml``: the device, the model's shape and the training setup.

    Args:
        device (`str`): ``"cuda"`` or ``"cpu"``.
        device_memory_gb (`float`): memory of one device, GiB (GPU memory, or the RAM one process may use).
        num_devices (`int`): processes / GPUs over all machines (``accelerate launch --num_processes``).
        accelerate_config (`str` or None): the ``config/accelerate/`` preset; its ``distributed_type`` and ZeRO
            stage give the sharding. None: a single process (``python scripts/...``).
        model (`str`): the model's name (documentation only; nothing is downloaded).
        hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, vocab_size, intermediate_size
            (`int`): the Llama-architecture shape; ``tie_word_embeddings`` (`bool`) shares the LM head.
        precision (`str`): ``"bf16_mixed"`` or ``"fp32"``.
        finetune (`str`): ``"full"``, ``"lora"`` or ``"qlora"``; ``lora_r`` and ``lora_target_modules`` (the linear
            layers adapted, Llama names) for the latter two; ``double_quant`` for QLoRA.
        per_device_batch_size (`int`), sequence_length (`int`, tokens), gradient_checkpointing (`bool`),
        flash_attention (`bool`): the attention matrix is not stored (SDPA / FlashAttention).
    """

    device: str
    device_memory_gb: float
    num_devices: int
    accelerate_config: str | None
    model: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    intermediate_size: int
    tie_word_embeddings: bool
    precision: str
    finetune: str
    per_device_batch_size: int
    sequence_length: int
    gradient_checkpointing: bool
    flash_attention: bool = True
    lora_r: int = 16
    lora_target_modules: list[str] = field(default_factory=lambda: list(LINEAR_MODULES))
    double_quant: bool = True
    sharding: str = "none"  # derived from accelerate_config by `load_hardware_preset`
    path: str = ""


def sharding_of(accelerate_config: str | None, root: Path | None = None) -> str:
    """``"none"`` / ``"zero2"`` / ``"zero3"`` / ``"fsdp"`` from an accelerate preset (None: one process).

    Raises:
        ConfigError: when the file does not exist.
    """
    if accelerate_config is None:
        return "none"
    path = Path(accelerate_config)
    if not path.is_absolute() and root is not None:
        path = root / path
    if not path.is_file():
        raise ConfigError(f"accelerate_config: {accelerate_config} does not exist. Fix: name a file in "
                          "config/accelerate/, or null for one process.")
    cfg = yaml.safe_load(path.read_text()) or {}
    kind = cfg.get("distributed_type", "NO")
    if kind == "FSDP":
        return "fsdp"
    if kind == "DEEPSPEED":
        stage = int((cfg.get("deepspeed_config") or {}).get("zero_stage", 0))
        return {2: "zero2", 3: "zero3"}.get(stage, "none")  # ZeRO-1 (optimizer only) is not modelled
    return "none"


def load_hardware_preset(path: str | Path) -> HardwarePreset:
    """Read and check a hardware preset; relative ``accelerate_config`` paths are from the repository root.

    Raises:
        ConfigError: on an unknown or missing key, or a value outside its choices (the message names the file).
    """
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    names = {f.name for f in fields(HardwarePreset)} - {"sharding", "path"}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; known: {sorted(names)}.")
    required = {f.name for f in fields(HardwarePreset)
                if f.name in names and f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"{path}: missing key(s) {missing}.")
    for key, choices in (("precision", PRECISIONS), ("finetune", FINETUNES), ("device", tuple(RUNTIME_BYTES))):
        if data[key] not in choices:
            raise ConfigError(f"{path}: {key}: {data[key]!r} is not one of {choices}.")
    bad = sorted(set(data.get("lora_target_modules", [])) - set(LINEAR_MODULES))
    if bad:
        raise ConfigError(f"{path}: lora_target_modules {bad} are not Llama linear layers {LINEAR_MODULES}.")
    root = path.resolve().parents[2] if len(path.resolve().parents) > 2 else None
    preset = HardwarePreset(**data, path=str(path))
    preset.sharding = sharding_of(preset.accelerate_config, root)
    if preset.sharding != "none" and preset.num_devices < 2:
        raise ConfigError(f"{path}: {preset.accelerate_config} shards over processes but num_devices is "
                          f"{preset.num_devices}.")
    return preset


# ----------------------------------------------------------------------------------------------------------------
# Counting
# ----------------------------------------------------------------------------------------------------------------


def linear_shapes(p: HardwarePreset) -> dict[str, tuple[int, int]]:
    """``{name: (d_in, d_out)}`` of one decoder layer's linear layers (Llama; grouped-query attention)."""
    h, head_dim = p.hidden_size, p.hidden_size // p.num_attention_heads
    kv = p.num_key_value_heads * head_dim
    i = p.intermediate_size
    return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def parameter_counts(p: HardwarePreset) -> dict[str, int]:
    """Parameters by kind: ``linear`` (decoder linear layers, what QLoRA quantises), ``other`` (embeddings, LM head,
    norms), ``per_layer`` (one decoder layer), ``total``, and ``lora`` (the adapters; 0 for full fine-tuning)."""
    shapes = linear_shapes(p)
    per_layer_linear = sum(a * b for a, b in shapes.values())
    per_layer = per_layer_linear + 2 * p.hidden_size  # + the two RMSNorms
    embeddings = p.vocab_size * p.hidden_size * (1 if p.tie_word_embeddings else 2)
    linear = per_layer_linear * p.num_hidden_layers
    other = embeddings + 2 * p.hidden_size * p.num_hidden_layers + p.hidden_size
    lora = 0
    if p.finetune != "full":
        lora = p.lora_r * sum(sum(shapes[m]) for m in p.lora_target_modules) * p.num_hidden_layers
    return {"linear": linear, "other": other, "per_layer": per_layer, "total": linear + other, "lora": lora}


def quantized_bytes_per_param(double_quant: bool = True) -> float:
    """Bytes per NF4-quantised parameter: 0.5 for the 4-bit code plus the absmax constants (QLoRA Sec. 3).

    Returns:
        `float`: 0.5 + 8/64/8 + 32/(64*256)/8 = 0.51587 with double quantisation; 0.5 + 4/64 = 0.5625 without.
    """
    if double_quant:
        return 0.5 + 1 / NF4_BLOCK + 4 / (NF4_BLOCK * DOUBLE_QUANT_BLOCK)
    return 0.5 + 4 / NF4_BLOCK


def bytes_per_trainable_param(precision: str) -> dict[str, int]:
    """``{"parameters", "gradients", "optimizer"}`` bytes of one trained parameter under AdamW: bf16 mixed 2 / 2 /
    12 (fp32 moments + fp32 master), fp32 4 / 4 / 8; 16 in total either way."""
    if precision == "bf16_mixed":
        return {"parameters": 2, "gradients": 2, "optimizer": 12}
    if precision == "fp32":
        return {"parameters": 4, "gradients": 4, "optimizer": 8}
    raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")


def activation_bytes_per_layer(s: int, b: int, h: int, a: int, flash_attention: bool) -> float:
    """Korthikanti et al. 2022, Eq. 1: ``s*b*h*(34 + 5*a*s/h)`` bytes per layer (16-bit activations); without the
    ``5*a*s/h`` attention-matrix term when fused attention does not store it."""
    return s * b * h * (34 + (0 if flash_attention else 5 * a * s / h))


@dataclass
class MemoryEstimate:
    """Per-device bytes of each term; ``total`` is their sum. ``rows()`` gives ``(name, bytes)`` in table order."""

    parameters: float
    gradients: float
    optimizer: float
    gathered_layers: float
    activations: float
    logits: float
    runtime: float

    @property
    def states(self) -> float:
        return self.parameters + self.gradients + self.optimizer

    @property
    def total(self) -> float:
        return self.states + self.gathered_layers + self.activations + self.logits + self.runtime

    def rows(self) -> list[tuple[str, float]]:
        return [("parameters", self.parameters), ("gradients", self.gradients),
                ("optimizer states", self.optimizer), ("gathered layers (ZeRO-3/FSDP)", self.gathered_layers),
                ("activations", self.activations), ("logits", self.logits), ("runtime", self.runtime),
                ("total", self.total)]


def estimate(p: HardwarePreset, include_runtime: bool = True) -> MemoryEstimate:
    """Per-device memory of one training step of ``p`` (see the module docstring for every term).

    Returns:
        `MemoryEstimate`, bytes.
    """
    counts = parameter_counts(p)
    per_param = bytes_per_trainable_param(p.precision)
    compute_bytes = per_param["parameters"]  # bf16 mixed: 2; fp32: 4
    if p.finetune == "full":
        params = counts["total"] * compute_bytes
        trainable = counts["total"]
    else:
        base_linear = counts["linear"] * (quantized_bytes_per_param(p.double_quant) if p.finetune == "qlora"
                                          else compute_bytes)
        params = base_linear + counts["other"] * compute_bytes + counts["lora"] * compute_bytes
        trainable = counts["lora"]
    grads = trainable * per_param["gradients"]
    optim = trainable * per_param["optimizer"]
    n = p.num_devices
    gathered = 0.0
    if p.sharding in ("zero2", "zero3", "fsdp"):
        grads, optim = grads / n, optim / n
    if p.sharding in ("zero3", "fsdp"):
        params = params / n
        gathered = 2 * counts["per_layer"] * compute_bytes  # computing + prefetched layer
    s, b, h = p.sequence_length, p.per_device_batch_size, p.hidden_size
    scale = 2 if p.precision == "fp32" else 1  # the paper counts 16-bit activations
    layer = activation_bytes_per_layer(s, b, h, p.num_attention_heads, p.flash_attention) * scale
    if p.gradient_checkpointing:
        activations = 2 * s * b * h * scale * p.num_hidden_layers + layer
    else:
        activations = layer * p.num_hidden_layers
    logits = 8 * b * s * p.vocab_size
    runtime = RUNTIME_BYTES[p.device] if include_runtime else 0.0
    return MemoryEstimate(params, grads, optim, gathered, activations, logits, runtime)


def format_table(p: HardwarePreset, est: MemoryEstimate) -> str:
    """A Markdown table of the estimate, with the verdict against ``device_memory_gb``."""
    counts = parameter_counts(p)
    trainable = counts["total"] if p.finetune == "full" else counts["lora"]
    lines = [f"### {Path(p.path).stem or p.model}: {p.model}, {p.finetune}, {p.precision}, "
             f"{p.num_devices} x {p.device} ({p.sharding}), batch {p.per_device_batch_size} x "
             f"{p.sequence_length} tokens, gradient checkpointing {'on' if p.gradient_checkpointing else 'off'}",
             "",
             f"{counts['total'] / 1e9:.3f} B parameters, {trainable / 1e6:.1f} M trainable; "
             f"accelerate: {p.accelerate_config or 'none (one process)'}",
             "",
             "| per device | GiB |", "|---|---:|"]
    lines += [f"| {name} | {value / GiB:.2f} |" for name, value in est.rows()]
    verdict = "fits" if fits(p, est) else "DOES NOT FIT"
    lines += ["", f"{verdict}: {est.total / GiB:.2f} GiB of {p.device_memory_gb:g} GiB per device"]
    return "\n".join(lines)


def fits(p: HardwarePreset, est: MemoryEstimate | None = None) -> bool:
    return (est or estimate(p)).total <= p.device_memory_gb * GiB


# ----------------------------------------------------------------------------------------------------------------
# Validation against a measurement
# ----------------------------------------------------------------------------------------------------------------


def measure_training_step(p: HardwarePreset, seed: int = 0) -> dict[str, float]:
    """Measure one full fine-tuning step (forward, backward, AdamW step) of a random Llama of ``p``'s shape on the
    CPU in fp32, and the estimate of the same step without the runtime term.

    The measurement is the process's peak resident memory during model creation and the step minus the memory
    before (`open_rlhf.memory.PeakMemory`, VmHWM), so libraries already loaded do not count.

    Returns:
        dict: ``measured_mb``, ``estimated_mb`` and ``ratio`` (estimated / measured).

    Raises:
        ValueError: when ``p`` is not a CPU, fp32, full fine-tuning, unsharded preset (the only kind measurable here).
    """
    if (p.device, p.precision, p.finetune, p.sharding) != ("cpu", "fp32", "full", "none"):
        raise ValueError(f"{p.path}: measurable presets are cpu / fp32 / full / one process, not "
                         f"{p.device} / {p.precision} / {p.finetune} / {p.sharding}.")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from open_rlhf.memory import PeakMemory

    config = LlamaConfig(hidden_size=p.hidden_size, num_hidden_layers=p.num_hidden_layers,
                         num_attention_heads=p.num_attention_heads, num_key_value_heads=p.num_key_value_heads,
                         vocab_size=p.vocab_size, intermediate_size=p.intermediate_size,
                         tie_word_embeddings=p.tie_word_embeddings, max_position_embeddings=p.sequence_length,
                         attn_implementation="sdpa" if p.flash_attention else "eager")
    torch.manual_seed(seed)
    ids = torch.randint(0, p.vocab_size, (p.per_device_batch_size, p.sequence_length))
    with PeakMemory() as peak:
        model = LlamaForCausalLM(config)
        if p.gradient_checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=False)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
    del model, optimizer, loss
    estimated = estimate(p, include_runtime=False).total / 2**20
    return {"measured_mb": peak.delta_mb, "estimated_mb": estimated, "ratio": estimated / peak.delta_mb,
            "source": peak.source}
