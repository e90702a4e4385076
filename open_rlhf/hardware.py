"""What the machine runs fast: which device a stage uses and whether bf16 autocast pays off there.

The same preset must be fast everywhere, so no preset hard-codes ``bf16``: a config whose ``bf16`` is unset
(None) gets `auto_bf16`'s answer, and an explicit ``--bf16 true`` / ``--bf16 false`` still forces either.

- CUDA: bf16 where the GPU has native bf16 (Ampere and newer; `torch.cuda.is_bf16_supported` without
  emulation).
- CPU: bf16 only where oneDNN runs bf16 natively: ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` (oneDNN's
  own ISA check, AVX512-BF16 / AMX / AVX-NE-CONVERT on x86, bf16 on Arm) and ATen's kernels are at least
  AVX-512 on x86 (``torch.backends.cpu.get_cpu_capability()``). Measured on a 2-core AMD EPYC: with
  AVX512-BF16, bf16 autocast gave TRL's SFT of the default model 1.35x the fp32 throughput; with AVX2 only,
  a bf16 SFT step took about 10x as long as an fp32 one, because oneDNN emulates bf16 there.
- MPS and anything else: fp32.

Both CPU checks honour the environment variables that limit the instruction set (``ATEN_CPU_CAPABILITY=avx2``,
``ONEDNN_MAX_CPU_ISA=AVX2``), which is how a machine with AVX512-BF16 can be made to behave like one without.

This module is a leaf: it imports nothing from the project.
"""

from __future__ import annotations

import os
import platform

import torch

_WEAK_X86_CAPABILITIES = ("DEFAULT", "AVX2", "NO AVX")


def accelerator_available() -> bool:
    """Whether a CUDA, XPU or MPS device is present (else the stages run on the CPU)."""
    return bool(torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
                or torch.backends.mps.is_available())


def default_device() -> str:
    """Where inference runs by default: ``"cuda"`` when a CUDA GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_capability() -> str:
    """ATen's CPU kernel level, e.g. ``"AVX512"`` or ``"AVX2"`` (`torch.backends.cpu.get_cpu_capability`)."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_native_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (see the module docstring for the two checks)."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    is_x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    return not (is_x86 and cpu_capability() in _WEAK_X86_CAPABILITIES)


def auto_bf16(use_cpu: bool) -> tuple[bool, str]:
    """Whether bf16 autocast should be on by default, and a one-line reason naming the hardware.

    Args:
        use_cpu (`bool`): the stage runs on the CPU (``TrainingArguments.use_cpu``, or no accelerator present).

    Returns:
        `(bf16, reason)`: e.g. ``(False, "the CPU has no native bf16 (ATen AVX2, oneDNN bf16: no)")``.
    """
    if not use_cpu and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{name} has native bf16"
        return False, f"{name} has no native bf16"
    if not use_cpu and hasattr(torch, "xpu") and torch.xpu.is_available():
        return True, "Intel XPU has native bf16"
    if not use_cpu and torch.backends.mps.is_available():
        return False, "bf16 autocast is not used on Apple MPS"
    onednn = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    detail = f"ATen {cpu_capability()}, oneDNN bf16: {'yes' if onednn else 'no'}"
    if cpu_native_bf16():
        return True, f"the CPU has native bf16 ({detail})"
    return False, f"the CPU has no native bf16 ({detail}); bf16 would be emulated and several times slower"


def precision_line(bf16: bool, fp16: bool, reason: str | None) -> str:
    """The one line a stage prints about its precision: what it uses and why (chosen or forced)."""
    used = "bf16 autocast" if bf16 else "fp16 autocast" if fp16 else "fp32"
    why = reason if reason is not None else "set explicitly (--bf16 / --fp16)"
    return f"precision: {used} ({why})"


def describe_cpu() -> str:
    """The CPU as a benchmark or README figure should name it: model name, cores, ATen level, native bf16."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    bf16 = "native bf16" if cpu_native_bf16() else "no native bf16"
    return f"{name}, {cores} cores, {cpu_capability()}, {bf16}"
