"""Task-aware answer fix-ups for whole (unstreamed) responses: pick the best of several candidates,
rewrite GraphDev answers to their verified paths, and make MMLU answers end with a letter the grader
reads, never one that contradicts the model's own."""

from __future__ import annotations

import asyncio

from api.choice import ChoiceState
from api.planning import PromptPlan
from models.sampler import SamplingParams
from tasks import answer_format, graph_verifier


async def finish_prompt(plan: PromptPlan, candidates: list[ChoiceState], request_id: str) -> list[ChoiceState]:
    """The returned choices of one prompt: the best of each group of candidates, its answer fixed up.

    Every candidate's tokens stay counted in `generated` of the chosen one, so usage reports what
    was generated.
    """
    policy, prompt = plan.policy, plan.visible_text
    chosen = []
    for start in range(0, len(candidates), plan.samples):
        group = candidates[start:start + plan.samples]
        best = group[graph_verifier.pick_best(prompt, [c.text for c in group])] if len(group) > 1 else group[0]
        best.generated = sum(len(c.token_ids) for c in group)
        if policy.verify_graph_paths:
            best.text = graph_verifier.rewrite(prompt, best.text)
        if policy.enforce_answer_format and answer_format.needs_answer(best.text):
            await _enforce_answer(plan, best, f"{request_id}-{plan.index}-answer{start}")
        chosen.append(best)
    return chosen


async def _enforce_answer(plan: PromptPlan, choice: ChoiceState, request_id: str) -> None:
    """Append "The answer is (X)." with the letter the text commits to, else one the model picks now
    (a single token constrained to A-D after the answer cue), if the context has room for it."""
    letter = answer_format.committed_letter(choice.text)
    if letter is None:
        letter = await _pick_letter(plan, choice, request_id)
    if letter is not None:
        choice.text = answer_format.with_answer(choice.text, letter)


async def _pick_letter(plan: PromptPlan, choice: ChoiceState, request_id: str) -> str | None:
    tokenizer, engine = plan.engine.tokenizer, plan.engine
    if tokenizer is None or plan.engine_prompt is None:
        return None
    prompt = answer_format.continuation_prompt(plan.engine_prompt, choice.text)
    prompt_ids = (await asyncio.to_thread(tokenizer, prompt)).input_ids
    if len(prompt_ids) >= engine.max_model_len:  # no room for one more token: leave the answer as it is
        return None
    letter_ids = answer_format.letter_token_ids(tokenizer)
    params = SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=letter_ids)
    out = await engine.complete(prompt_ids, params, request_id=request_id, task=plan.task, priority=plan.priority)
    choice.generated += 1
    return answer_format.LETTERS[letter_ids.index(out.outputs[0].token_ids[0])]
