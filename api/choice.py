"""One returned choice, assembled from an engine's deltas."""

from __future__ import annotations

import dataclasses

from api.planning import PromptPlan
from scheduler.outputs import CompletionOutput
from tasks.thinking import ThinkingFilter


@dataclasses.dataclass(slots=True)
class ChoiceState:
    """A choice being built: its text (think spans removed if the policy says so), tokens, logprobs."""

    index: int
    plan: PromptPlan
    text: str = ""
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list = dataclasses.field(default_factory=list)
    finish_reason: str | None = None
    filter: ThinkingFilter | None = None
    generated: int = 0        # tokens generated for this choice: its candidates' and any enforced answer

    @classmethod
    def for_plans(cls, plans: list[PromptPlan], n: int) -> list[list[ChoiceState]]:
        """Per plan, its engine candidates: `samples` of them for each of its n returned choices, in order."""
        return [[cls(plan.index * n + j // plan.samples, plan,
                     filter=ThinkingFilter() if plan.policy.strip_thinking else None)
                 for j in range(n * plan.samples)] for plan in plans]

    def apply(self, delta: CompletionOutput) -> str:
        """Fold one engine delta in; returns the text it adds to what the client sees."""
        text = delta.text
        if self.filter is not None:
            text = self.filter.feed(text)
            if delta.finish_reason is not None:
                text += self.filter.finish()
        self.text += text
        self.token_ids += delta.token_ids
        if delta.logprobs:
            self.logprobs += delta.logprobs
        self.finish_reason = delta.finish_reason or self.finish_reason
        return text
