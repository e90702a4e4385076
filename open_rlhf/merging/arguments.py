"""`MergeArguments`: the command-line / YAML arguments of ``scripts/merge.py`` (parsed by TRL's `TrlParser`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from open_rlhf.merging.merge import DEFAULT_MAX_RELATIVE_DISTANCE, merge_models
from open_rlhf.merging.methods import SLERP_DOT_THRESHOLD

# Fields of MergeArguments that only `--method greedy_soup` uses (not arguments of `merge_models`)
GREEDY_SOUP_FIELDS = ("eval_dataset", "eval_prompts", "split_seed", "tolerance")


@dataclass
class MergeArguments:
    """Arguments of ``scripts/merge.py``; each field maps 1:1 to a keyword of `merge_models`.

    ``default`` as a model path means the project's default model (SmolLM2-135M-Instruct, built on first use).
    """

    # Inputs and output
    models: list[str] = field(metadata={"help": "Fine-tuned model folders and/or LoRA adapter folders to merge."})
    output_dir: str = field(metadata={"help": "Folder to create for the merged model; must not exist."})
    base_model: str | None = field(default=None, metadata={
        "help": "Shared base model folder (or 'default'): required by task_arithmetic/ties/dare_* and by LoRA "
                "adapter inputs; not used otherwise."})
    # Method
    method: Literal["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "greedy_soup"] = field(
        default="linear", metadata={"help": "Merge method. greedy_soup scores soups by held-out task accuracy."})
    weights: list[float] | None = field(default=None, metadata={
        "help": "One weight per model (default all 1). linear divides by their sum unless --normalize false."})
    normalize: bool = field(default=True, metadata={"help": "linear: divide by the sum of weights."})
    density: float = field(default=1.0, metadata={
        "help": "Fraction of task-vector entries kept, in (0, 1]: by magnitude for ties, at random for dare_*."})
    lambda_: list[float] = field(default_factory=lambda: [1.0], metadata={
        "help": "Scaling of the merged task vector; several values form a layer-wise schedule (embeddings to "
                "output, linearly interpolated over layer index)."})
    t: list[float] | None = field(default=None, metadata={
        "help": "slerp factor (default 0.5; 0 = first model), or for linear with 2 models the weights (1-t, t); "
                "several values form a layer-wise schedule."})
    seed: int = field(default=0, metadata={"help": "Seed of DARE's random drop masks."})
    dare_rescale: Literal["density", "l1", "none"] = field(default="density", metadata={
        "help": "DARE rescaling: 'density' = the paper's 1/(1-p), 'l1' = mergekit's L1-norm matching, 'none'."})
    dot_threshold: float = field(default=SLERP_DOT_THRESHOLD, metadata={
        "help": "slerp: |cosine| above which it falls back to linear interpolation."})
    # Safety checks
    max_relative_distance: float = field(default=DEFAULT_MAX_RELATIVE_DISTANCE, metadata={
        "help": "Refuse inputs whose weight matrices are farther than this (relative L2) from the base model "
                "(or the first model): they do not share a base. 'inf' disables the check."})
    # Output format
    dtype: str | None = field(default=None, metadata={
        "help": "Output dtype (float32, bfloat16, float16); default: the inputs' dtype."})
    tokenizer_source: str | None = field(default=None, metadata={
        "help": "Folder to copy config and tokenizer from (default: base model, else the first model)."})
    max_shard_size_mb: float = field(default=5000, metadata={
        "help": "Shard size limit of the output (MB); smaller shards lower peak memory."})
    # greedy_soup only: the held-out accuracy that decides which ingredients stay
    eval_dataset: str = field(default="builtin", metadata={
        "help": "greedy_soup: held-out prompts with gold answers (builtin, or GSM8K-style data)."})
    eval_prompts: int = field(default=32, metadata={"help": "greedy_soup: number of held-out prompts."})
    split_seed: int = field(default=42, metadata={"help": "greedy_soup: the pipeline's split seed."})
    tolerance: float = field(default=0.0, metadata={
        "help": "greedy_soup: minimum accuracy gain for a candidate to be added (0: not worse)."})


def _resolve(path: str | None) -> str | None:
    if path == "default":
        from open_rlhf.models import ensure_default_model

        return str(ensure_default_model())
    return path


def merge_from_arguments(args: MergeArguments) -> Path:
    """Run `merge_models` with the fields of ``args`` (``default`` paths resolved to the default model).

    Returns:
        `Path`: the created output folder.
    """
    if args.method == "greedy_soup":
        from open_rlhf.merging.soup import greedy_soup_from_folders

        greedy_soup_from_folders([_resolve(m) for m in args.models], args.output_dir, args.eval_dataset,
                                 args.eval_prompts, args.split_seed, tolerance=args.tolerance)
        return Path(args.output_dir)
    kwargs = {k: v for k, v in dataclasses.asdict(args).items() if k not in GREEDY_SOUP_FIELDS}
    kwargs["models"] = [_resolve(m) for m in args.models]
    kwargs["base_model"] = _resolve(args.base_model)
    kwargs["tokenizer_source"] = _resolve(args.tokenizer_source)
    return merge_models(**kwargs)
