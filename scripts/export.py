"""Export a trained model folder: a merged LoRA model, ONNX (checked against PyTorch), or a llama.cpp GGUF file.

The output folder must not exist (or be empty); it appears complete or not at all. See `open_rlhf.export` for each
format, its checks and its limits (GGUF: Llama architecture, f32/f16/bf16; ONNX: logits only, no KV cache).

    python scripts/export.py --model runs/default/sft-lora --format merged --output runs/export/sft-merged
    python scripts/export.py --model runs/default/ppo --format onnx --output runs/export/ppo-onnx
    python scripts/export.py --model runs/default/ppo --format gguf --gguf_dtype f16 --output runs/export/ppo-gguf
    python scripts/export.py --format gguf --output runs/export/default-gguf       # the embedded default model
"""

from dataclasses import dataclass, field

from trl import TrlParser

from open_rlhf.errors import user_errors
from open_rlhf.export import FORMATS, GGUF_DTYPES, ONNX_ATOL, export_model


@dataclass
class ExportArguments:
    output: str = field(metadata={"help": "The new output folder (must not exist, or be empty)."})
    format: str = field(metadata={"help": "merged, onnx or gguf.", "choices": list(FORMATS)})
    model: str | None = field(default=None, metadata={"help": "A model or PEFT adapter folder; none: the default model."})
    gguf_dtype: str = field(default="f16", metadata={"help": "gguf: f32, f16 or bf16.", "choices": list(GGUF_DTYPES)})
    onnx_atol: float = field(default=ONNX_ATOL, metadata={"help": "onnx: largest accepted |logit difference|."})


def main(args: ExportArguments) -> None:
    result = export_model(args.model, args.format, args.output, gguf_dtype=args.gguf_dtype, onnx_atol=args.onnx_atol)
    print(f"Exported {args.model or 'the default model'} as {args.format} into {result.output_dir}: "
          f"{', '.join(result.files)}")


def make_parser() -> TrlParser:
    return TrlParser((ExportArguments,))


if __name__ == "__main__":
    with user_errors():
        main(*make_parser().parse_args_and_config())
