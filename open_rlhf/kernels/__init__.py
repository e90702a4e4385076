"""Custom kernels: what TRL 1.16 lacks. Importing this package never imports Triton (it is loaded on first use).

- `FusedRMSNorm`, `RMSNormFunction`, `fused_rms_norm`: a fused Triton RMSNorm (forward + backward), drop-in for
  transformers' LlamaRMSNorm/Qwen2RMSNorm (and GemmaRMSNorm with ``offset=1.0``).
- `patch_rms_norm(model)`: swap every ``*RMSNorm`` module of a loaded model for `FusedRMSNorm`, in place.
- `rms_norm_reference`: the pure-torch implementation the kernel is tested against.

Benchmark and method notes: ``kernels/bench_rms_norm.py`` and ``kernels/README.md``.
"""

from open_rlhf.kernels.rms_norm import (
    FusedRMSNorm,
    RMSNormFunction,
    fused_rms_norm,
    patch_rms_norm,
    rms_norm_reference,
)

__all__ = ["FusedRMSNorm", "RMSNormFunction", "fused_rms_norm", "patch_rms_norm", "rms_norm_reference"]
