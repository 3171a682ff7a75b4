"""Knowledge of the three course tasks, kept in one place.

`templates` holds the exact served prompt templates, `router` tells which task an unlabelled
prompt belongs to, and `generate` makes fresh prompts of each task for tests and benchmarks.
"""

from tasks.router import LABELS, TASKS, classify

__all__ = ["LABELS", "TASKS", "classify"]
