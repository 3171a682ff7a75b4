"""Per-task serving policy: which model, which priority class, how to prompt and how to decode.

One table, overridable with a JSON file (`python -m api --policy FILE`), e.g.
    {"infobench": {"model": "small", "sampling": {"temperature": 0.5}}, "mmlu_med": {"priority": 0}}
The course clients send no decoding settings, so these defaults are what they get; a request's own
sampling fields still win, except that `max_tokens` is capped by the policy.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from models.sampler import SamplingParams

MODEL_CHOICES = ("large", "small", "auto")
# The request fields a policy may give defaults for.
SAMPLING_DEFAULTS = frozenset({"max_tokens", "min_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop",
                               "stop_token_ids", "ignore_eos"})


@dataclasses.dataclass(frozen=True)
class TaskPolicy:
    model: str = "large"              # "large", "small", or "auto": small below `auto_small_below_chars`
    auto_small_below_chars: int = 400
    priority: int = 1                 # lower is served first; waiting requests age towards 0
    max_tokens: int | None = None     # cap on what a request may ask for
    chat_template: bool = False       # send the prompt as one user turn through the chat template
    enable_thinking: bool | None = None  # passed to the chat template (Qwen3); None: template default
    strip_thinking: bool = False      # return only what follows the model's <think>...</think>
    sampling: dict = dataclasses.field(default_factory=dict)  # defaults for unset request fields
    # Task-aware answer handling (whole responses only; a streamed answer is sent as generated):
    enforce_answer_format: bool = False  # MMLU: force "The answer is (X)" if none parses (tasks/answer_format.py)
    verify_graph_paths: bool = False     # GraphDev: keep only valid proposed paths, rewritten (tasks/graph_verifier.py)
    best_of: int = 1                     # candidates per answer, the graph verifier picks one (verify_graph_paths)
    best_of_temperature: float = 0.7     # the candidates' default temperature when best_of > 1
    length_from_instruction: bool = False  # cap max_tokens by the instruction's length words (tasks/length_budget.py)

    def __post_init__(self):
        if self.model not in MODEL_CHOICES:
            raise ValueError(f"model must be one of {MODEL_CHOICES}, got {self.model!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not (isinstance(self.best_of, int) and self.best_of >= 1):
            raise ValueError(f"best_of must be an integer >= 1, got {self.best_of!r}")
        if self.best_of > 1 and not self.verify_graph_paths:
            raise ValueError("best_of > 1 needs verify_graph_paths, the only verifier that can pick a candidate")
        # A typo here would otherwise load silently and fail every request of the task later.
        unknown = sorted(set(self.sampling) - SAMPLING_DEFAULTS)
        if unknown:
            raise ValueError(f"sampling: unknown fields {unknown}; allowed: {sorted(SAMPLING_DEFAULTS)}")
        try:
            SamplingParams(**self.sampling)
        except (TypeError, ValueError) as e:
            raise ValueError(f"sampling: {e}") from e

    def choose_model(self, prompt_text: str) -> str:
        if self.model == "auto":
            return "small" if len(prompt_text) < self.auto_small_below_chars else "large"
        return self.model


# Starting points, not tuned results: the evaluation issue measures and revises them.
DEFAULT_POLICIES: dict[str, TaskPolicy] = {
    # Short answers: served first, so the many quick requests are not stuck behind long ones.
    # Enforcing the answer format and verifying paths can only add score (see their modules).
    "mmlu_med": TaskPolicy(model="large", priority=0, max_tokens=512, chat_template=True, enable_thinking=False,
                           strip_thinking=True, sampling={"temperature": 0.0}, enforce_answer_format=True),
    "graph": TaskPolicy(model="large", priority=1, max_tokens=1024, chat_template=True, enable_thinking=False,
                        strip_thinking=True, sampling={"temperature": 0.0}, verify_graph_paths=True),
    "infobench": TaskPolicy(model="auto", priority=2, max_tokens=1024, chat_template=True, enable_thinking=False,
                            strip_thinking=True, sampling={"temperature": 0.7, "top_p": 0.8, "top_k": 20}),
    # Anything else is continued raw, as the completions API means.
    "general": TaskPolicy(model="large", priority=1),
}


def load_policies(path: str | Path | None = None) -> dict[str, TaskPolicy]:
    """The default table, with the overrides of a JSON file applied field by field."""
    policies = dict(DEFAULT_POLICIES)
    if path is None:
        return policies
    try:
        overrides = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"policy file {path}: {e}") from e
    if not isinstance(overrides, dict):
        raise ValueError(f"policy file {path}: expected an object of task -> fields")
    fields = {f.name for f in dataclasses.fields(TaskPolicy)}
    for task, changes in overrides.items():
        if task not in policies:
            raise ValueError(f"policy file {path}: unknown task {task!r} (tasks: {sorted(policies)})")
        if not isinstance(changes, dict) or not set(changes) <= fields:
            raise ValueError(f"policy file {path}: {task}: fields must be among {sorted(fields)}")
        try:
            policies[task] = dataclasses.replace(policies[task], **changes)
        except (TypeError, ValueError) as e:
            raise ValueError(f"policy file {path}: {task}: {e}") from e
    return policies
