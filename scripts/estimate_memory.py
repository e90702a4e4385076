"""Per-device training memory of a hardware preset (parameters, gradients, AdamW states, activations), and whether
it fits the preset's device; the logic is `open_rlhf.memory_estimate`.

    python scripts/estimate_memory.py --preset config/hardware/gpu_8x80gb_7b.yaml
    python scripts/estimate_memory.py --preset config/hardware/*.yaml          # one table per preset
    python scripts/estimate_memory.py --preset config/hardware/cpu_laptop.yaml --measure --batch 1 --seq 128
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from open_rlhf.memory_estimate import (  # noqa: E402
    estimate,
    fits,
    format_table,
    load_hardware_preset,
    measure_training_step,
)


def main(args: argparse.Namespace) -> int:
    ok = True
    for path in args.preset:
        preset = load_hardware_preset(path)
        print(format_table(preset, estimate(preset)), "\n")
        ok &= fits(preset)
        if args.measure:
            small = dataclasses.replace(preset, per_device_batch_size=args.batch, sequence_length=args.seq)
            m = measure_training_step(small)
            print(f"measured one fp32 step on this CPU (batch {args.batch} x {args.seq} tokens): "
                  f"{m['measured_mb']:.0f} MB ({m['source']}); estimated {m['estimated_mb']:.0f} MB; "
                  f"estimated / measured = {m['ratio']:.2f}\n")
    return 0 if ok else 1


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", required=True, help="config/hardware/<name>.yaml (one or more)")
    parser.add_argument("--measure", action="store_true",
                        help="also measure one training step on this CPU (cpu / fp32 / full presets only)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the measured step")
    parser.add_argument("--seq", type=int, default=128, help="sequence length of the measured step")
    return parser


if __name__ == "__main__":
    sys.exit(main(make_parser().parse_args()))
