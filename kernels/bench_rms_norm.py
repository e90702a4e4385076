"""Benchmark the fused Triton RMSNorm against torch eager, torch.compile and Liger-Kernel (if installed).

    python kernels/bench_rms_norm.py                                   # bf16, 2048 rows, H = 1024 .. 32768
    python kernels/bench_rms_norm.py --dtype float32 --hidden 4096 --modes full --rows 8192

Providers: ``eager`` (transformers' LlamaRMSNorm, the issue's baseline), ``compile`` (the same module through
``torch.compile``), ``liger`` (``liger_kernel.transformers.LigerRMSNorm`` with its defaults), ``ours``
(`open_rlhf.kernels.FusedRMSNorm`). Modes: ``forward``; ``backward`` (one backward through a retained graph);
``full`` (forward + backward). Times are the p20/p50/p80 of ``triton.testing.do_bench`` in ms; ``peak_mb`` is
``torch.cuda.max_memory_allocated`` during one call of the mode, inputs (x, dy, weight) included, in MB
(2**20 bytes). Speed-ups are p50 ratios against eager and Liger measured in the same run (>1: ours is faster).
Every row is also appended to a CSV (``--csv``) with the GPU name and library versions.

Without a CUDA GPU it prints that it needs one and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import time
from pathlib import Path

import torch

PROVIDERS = ("eager", "compile", "liger", "ours")
MODES = ("forward", "backward", "full")
QUANTILES = (0.2, 0.5, 0.8)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def make_module(provider: str, hidden: int, dtype: torch.dtype, eps: float = 1e-6) -> torch.nn.Module | None:
    """A fresh RMSNorm module of the provider on the GPU, weight ~ 1 + N(0, 0.1); None if not installed."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from open_rlhf.kernels import FusedRMSNorm

    if provider == "liger":
        try:
            from liger_kernel.transformers import LigerRMSNorm
        except ImportError:
            return None
        module = LigerRMSNorm(hidden, eps=eps)
    elif provider == "ours":
        module = FusedRMSNorm(hidden, eps=eps)
    else:
        module = LlamaRMSNorm(hidden, eps=eps)
    module = module.to(device="cuda", dtype=dtype)
    with torch.no_grad():
        module.weight.add_(0.1 * torch.randn_like(module.weight))
    return torch.compile(module, dynamic=False) if provider == "compile" else module


def measure(module, x: torch.Tensor, dy: torch.Tensor, mode: str, rep_ms: int) -> tuple[list[float], float]:
    """Returns ([p20, p50, p80] in ms, peak MB) of one mode for one module."""
    from triton.testing import do_bench

    params = [x, *module.parameters()]
    if mode == "forward":
        def fn():
            return module(x)
    elif mode == "backward":
        y = module(x)

        def fn():
            y.backward(dy, retain_graph=True)
    else:
        def fn():
            module(x).backward(dy)
    times = do_bench(fn, quantiles=list(QUANTILES), grad_to_none=params, rep=rep_ms)
    for p in params:
        p.grad = None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak_mb = torch.cuda.max_memory_allocated() / 2**20
    return list(times), peak_mb


def run(args: argparse.Namespace) -> list[dict]:
    dtype = getattr(torch, args.dtype)
    rows = []
    for hidden in args.hidden:
        g = torch.Generator(device="cuda").manual_seed(0)
        x0 = torch.randn(args.rows, hidden, device="cuda", dtype=dtype, generator=g)
        dy0 = torch.randn(args.rows, hidden, device="cuda", dtype=dtype, generator=g)
        modules = {p: make_module(p, hidden, dtype) for p in args.providers}
        modules = {p: m for p, m in modules.items() if m is not None}
        if "ours" in modules and "eager" in modules:  # never time a wrong kernel
            with torch.no_grad():
                modules["ours"].weight.copy_(modules["eager"].weight)
                torch.testing.assert_close(modules["ours"](x0), modules["eager"](x0), rtol=2e-2, atol=2e-2)
        for mode in args.modes:
            results = {}
            for provider, module in modules.items():
                # Own copies: Liger writes dX into dy in place by default.
                x, dy = x0.clone().requires_grad_(mode != "forward"), dy0.clone()
                results[provider] = measure(module, x, dy, mode, args.rep_ms)
            p50 = {provider: times[1] for provider, (times, _) in results.items()}
            for provider, (times, peak_mb) in results.items():
                rows.append({
                    "mode": mode, "hidden": hidden, "provider": provider, "p20_ms": times[0], "p50_ms": times[1],
                    "p80_ms": times[2], "peak_mb": peak_mb,
                    "speedup_vs_eager": p50["eager"] / times[1] if "eager" in p50 else float("nan"),
                    "speedup_vs_liger": p50["liger"] / times[1] if "liger" in p50 else float("nan"),
                })
    return rows


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    print(f"{'mode':<9}{'H':>7}  {'provider':<9}{'p20 ms':>9}{'p50 ms':>9}{'p80 ms':>9}{'peak MB':>10}"
          f"{'x eager':>9}{'x liger':>9}")
    for r in rows:
        print(f"{r['mode']:<9}{r['hidden']:>7}  {r['provider']:<9}{r['p20_ms']:>9.4f}{r['p50_ms']:>9.4f}"
              f"{r['p80_ms']:>9.4f}{r['peak_mb']:>10.1f}{r['speedup_vs_eager']:>9.2f}{r['speedup_vs_liger']:>9.2f}")


def append_csv(rows: list[dict], path: Path, context: dict) -> None:
    from open_rlhf import atomic

    rounded = [{k: round(v, 5) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    atomic.append_csv(rounded, path, context)  # atomic rewrite; earlier rows kept


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048, help="N = B * T rows")
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--rep_ms", type=int, default=100, help="do_bench's target time per measurement")
    parser.add_argument("--csv", type=Path, default=Path(__file__).with_name("bench_rms_norm.csv"))
    return parser


def main(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print("bench_rms_norm.py needs a CUDA GPU (none found); nothing was measured.")
        return 0
    import triton

    context = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__, "triton": triton.__version__, "transformers": _version("transformers"),
        "liger_kernel": _version("liger-kernel"), "cuda": torch.version.cuda, "dtype": args.dtype,
        "rows": args.rows,
    }
    rows = run(args)
    print_table(rows, " | ".join(f"{k}={v}" for k, v in context.items()))
    append_csv(rows, args.csv, context)
    print(f"appended {len(rows)} rows to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main(make_parser().parse_args()))
