"""Helpers of ``scripts/bench_merge.py``: noisy model copies, the naive merge, child-process measurement.

Each measured approach runs in its own child process (``python -m open_rlhf.merging.bench <approach> ...``) that
reports its own peak RSS (``VmHWM``), so the number covers that approach alone, not the benchmark driver.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from open_rlhf.merging.io import AUX_FILE_PATTERNS, SafetensorsCheckpoint


def make_noisy_copies(source: str | Path, dest_root: str | Path, n: int = 3, relative_std: float = 0.01,
                      seed: int = 0) -> list[Path]:
    """Write ``n`` "fine-tuned" copies of a model: each tensor plus N(0, (relative_std * tensor.std())^2) noise.

    Args:
        source (`str` or `Path`): a model folder with ``model.safetensors``.
        dest_root (`str` or `Path`): folder to write ``copy_0`` ... ``copy_{n-1}`` into.
        n (`int`): number of copies.
        relative_std (`float`): noise std relative to each tensor's std.
        seed (`int`): copy i uses generator seed ``seed + i``.

    Returns:
        `list[Path]`: the copies' folders.
    """
    source, dest_root = Path(source), Path(dest_root)
    paths = []
    for i in range(n):
        dest = dest_root / f"copy_{i}"
        dest.mkdir(parents=True)
        generator = torch.Generator().manual_seed(seed + i)
        tensors = {}
        with safe_open(str(source / "model.safetensors"), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                if t.is_floating_point() and t.numel() > 1:
                    t = t + torch.randn(t.shape, generator=generator, dtype=t.dtype) * (relative_std * t.std())
                tensors[name] = t.contiguous()
        save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        for pattern in AUX_FILE_PATTERNS:
            for file in source.glob(pattern):
                shutil.copy2(file, dest / file.name)
        paths.append(dest)
    return paths


def naive_merge(models: list[str], output_dir: str) -> None:
    """The load-everything baseline: N ``from_pretrained`` models in RAM, average their parameters, save."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = [AutoModelForCausalLM.from_pretrained(m, dtype=torch.float32) for m in models]
    state_dicts = [m.state_dict() for m in loaded]
    # A new dict, not in-place: tied weights (embed_tokens = lm_head) share storage and would be averaged twice.
    average = {name: sum(sd[name] for sd in state_dicts) / len(state_dicts) for name in state_dicts[0]}
    loaded[0].load_state_dict(average)
    loaded[0].save_pretrained(output_dir)
    AutoTokenizer.from_pretrained(models[0]).save_pretrained(output_dir)


def measure(cmd: list[str]) -> dict:
    """Run a worker ``cmd`` in a child process; return its wall time (s) and peak RSS (MB).

    The worker prints ``PEAK_RSS_MB=<x>`` (`open_rlhf.memory.peak_memory`: its own ``VmHWM``, not the driver's)
    as its last stdout line.

    Raises:
        RuntimeError: when the child fails (its stderr tail is in the message).
    """
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    peak = [line for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_MB=")]
    return {"wall_s": wall, "peak_rss_mb": float(peak[-1].split("=")[1])}


def max_abs_diff(a: str | Path, b: str | Path) -> float:
    """Largest absolute difference between two saved models' tensors (read one tensor at a time)."""
    ca, cb = SafetensorsCheckpoint(a), SafetensorsCheckpoint(b)
    if set(ca) != set(cb):
        raise ValueError(f"{a} and {b} have different tensor names: {sorted(set(ca) ^ set(cb))[:5]}")
    return max(float((ca[n].float() - cb[n].float()).abs().max()) for n in ca)


def _worker(argv: list[str]) -> None:
    approach, output_dir, *models = argv
    if approach == "imports":
        import transformers  # noqa: F401
    elif approach == "naive":
        naive_merge(models, output_dir)
    elif approach.startswith("streaming"):
        from open_rlhf.merging.merge import merge_models

        shard_mb = float(approach.split(":")[1]) if ":" in approach else 5000
        merge_models(models, output_dir, "linear", max_shard_size_mb=shard_mb)
    else:
        raise SystemExit(f"unknown approach {approach!r}")
    from open_rlhf.memory import peak_memory

    print(f"PEAK_RSS_MB={peak_memory()['peak_rss_mb']:.1f}", flush=True)


if __name__ == "__main__":
    _worker(sys.argv[1:])
