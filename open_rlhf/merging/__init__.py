"""Model merging: our own code (TRL 1.16 has none; mergekit serves only as a test reference).

Layers, bottom up:

* `methods`: pure per-tensor functions (`linear`, `task_arithmetic`, `ties`, `dare`, `slerp`, their building
  blocks `task_vector`, `trim_magnitude`, `dare_drop`, `elect_sign`, `disjoint_mean`, and the layer-wise
  `schedule_value`);
* `io`: lazy safetensors checkpoints (`SafetensorsCheckpoint`), LoRA adapters seen as full models on their base
  (`LoraAdapterCheckpoint`), the atomic sharded writer;
* `merge`: `merge_state_dicts` (in memory, for use inside the pipeline) and `merge_models` (streams saved
  folders tensor by tensor into a new ``save_pretrained`` folder with a ``merge_record.json``);
* `soup.greedy_soup` (needs a user eval function, so Python only) and `ensemble.EnsemblePolicy` (output-space
  ensembling by log-prob averaging or token vote);
* `arguments.MergeArguments`: the CLI of ``scripts/merge.py``.
"""

from open_rlhf.merging.arguments import MergeArguments, merge_from_arguments
from open_rlhf.merging.ensemble import EnsemblePolicy
from open_rlhf.merging.io import LoraAdapterCheckpoint, SafetensorsCheckpoint, open_checkpoint
from open_rlhf.merging.merge import METHODS, check_compatible, merge_models, merge_state_dicts, merge_tensor
from open_rlhf.merging.methods import (
    dare,
    dare_drop,
    disjoint_mean,
    elect_sign,
    layer_position,
    linear,
    schedule_value,
    slerp,
    task_arithmetic,
    task_vector,
    ties,
    trim_magnitude,
)
from open_rlhf.merging.soup import GreedySoupResult, greedy_soup

__all__ = [
    "METHODS",
    "EnsemblePolicy",
    "GreedySoupResult",
    "LoraAdapterCheckpoint",
    "MergeArguments",
    "SafetensorsCheckpoint",
    "check_compatible",
    "dare",
    "dare_drop",
    "disjoint_mean",
    "elect_sign",
    "greedy_soup",
    "layer_position",
    "linear",
    "merge_from_arguments",
    "merge_models",
    "merge_state_dicts",
    "merge_tensor",
    "open_checkpoint",
    "schedule_value",
    "slerp",
    "task_arithmetic",
    "task_vector",
    "ties",
    "trim_magnitude",
]
