"""Tasks: each owns its prompt format, answer extraction, accuracy and verifiable reward check.

- `open_rlhf.tasks.gsm8k`: the GSM8K answer format (``#### N``), shared by GSM8K and the built-in task.
- `open_rlhf.tasks.arithmetic`: the built-in task, multi-step arithmetic word problems generated from a seed.
"""
