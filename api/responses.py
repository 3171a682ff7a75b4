"""The OpenAI response bodies: whole completions, stream chunks, usage and logprobs.

Beyond OpenAI's fields each choice carries the `prompt` it answers and the routing decision
(`task`, `model`), and the response its `elapsed_time` and number of `requests` (prompts), which the
course's client reads.
"""

from __future__ import annotations

import json
import time

from api.choice import ChoiceState
from api.planning import PromptPlan
from api.protocol import GenerationRequest


def response_id(req: GenerationRequest, request_id: str) -> str:
    return f"{'chatcmpl' if req.chat else 'cmpl'}-{request_id}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(body: dict) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


class ResponseWriter:
    """Shapes one request's bodies; `names` maps a role to the model name clients see."""

    def __init__(self, req: GenerationRequest, request_id: str, served_name: str, names: dict[str, str]):
        self.req, self.names = req, names
        self.id = response_id(req, request_id)
        self.served_name = served_name
        self.created = int(time.time())
        # Every chunk of this response shares its head: framed once, so a token's event costs one
        # json.dumps of its text rather than of a nested body.
        head = json.dumps({"id": self.id, "object": "chat.completion.chunk" if req.chat else "text_completion",
                           "created": self.created, "model": served_name}, ensure_ascii=False)
        self._head = f"data: {head[:-1]}, \"choices\": ["

    def _routing(self, plan: PromptPlan) -> dict:
        return {"task": plan.task, "model": self.names[plan.role]}

    # ---- whole responses

    def completion(self, plans: list[PromptPlan], choices: list[ChoiceState], elapsed: float) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion" if self.req.chat else "text_completion",
            "created": self.created,
            "model": self.served_name,
            "choices": [self._choice(c) for c in choices],
            "usage": usage(sum(len(p.prompt_ids) for p in plans), sum(c.generated for c in choices)),
            "elapsed_time": round(elapsed, 4),
            "requests": len(plans),
        }

    def _choice(self, c: ChoiceState) -> dict:
        req, plan = self.req, c.plan
        if req.chat:
            return {"index": c.index, "message": {"role": "assistant", "content": c.text},
                    "finish_reason": c.finish_reason,
                    "logprobs": self._chat_logprobs(c) if req.logprobs is not None else None, **self._routing(plan)}
        echo = plan.original if req.echo and isinstance(plan.original, str) else ""
        return {"index": c.index, "text": echo + c.text, "finish_reason": c.finish_reason,
                "logprobs": self._completion_logprobs(c) if req.logprobs is not None else None,
                "prompt": plan.original, "completion_tokens": c.generated, **self._routing(plan)}

    # ---- streams

    def chunk(self, choices: list[dict], usage_body: dict | None = None) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk" if self.req.chat else "text_completion",
                "created": self.created, "model": self.served_name, "choices": choices}
        if usage_body is not None:
            body["usage"] = usage_body
        return sse(body)

    def role_chunk(self, choices: list[ChoiceState]) -> str:
        """A chat stream opens by naming the assistant role, as OpenAI's does."""
        return self.chunk([{"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None} for c in choices])

    def chunk_event(self, c: ChoiceState, text: str, finish_reason: str | None) -> str:
        """The SSE event of one choice's new text; the last one also names its finish reason and routing."""
        if finish_reason is not None:
            return self.chunk([self.chunk_choice(c, text, finish_reason)])
        if self.req.chat:
            delta = f'{{"content": {json.dumps(text, ensure_ascii=False)}}}' if text else "{}"
            choice = f'{{"index": {c.index}, "finish_reason": null, "logprobs": null, "delta": {delta}}}'
        else:
            choice = (f'{{"index": {c.index}, "finish_reason": null, "logprobs": null, '
                      f'"text": {json.dumps(text, ensure_ascii=False)}}}')
        return f"{self._head}{choice}]}}\n\n"

    def chunk_choice(self, c: ChoiceState, text: str, finish_reason: str | None) -> dict:
        body = {"index": c.index, "finish_reason": finish_reason, "logprobs": None}
        if self.req.chat:
            body["delta"] = {"content": text} if text else {}
        else:
            body["text"] = text
        if finish_reason is not None:
            body.update(self._routing(c.plan))
            if not self.req.chat:
                body["prompt"] = c.plan.original
        return body

    # ---- logprobs

    @staticmethod
    def _token_strings(c: ChoiceState, ids: list[int]) -> list[str]:
        tokenizer = c.plan.engine.tokenizer
        return [tokenizer.decode([t]) for t in ids] if tokenizer is not None else [str(t) for t in ids]

    def _completion_logprobs(self, c: ChoiceState) -> dict:
        tokens = self._token_strings(c, c.token_ids[:len(c.logprobs)])
        offsets, pos = [], 0
        for t in tokens:
            offsets.append(pos)
            pos += len(t)
        tops = []
        for _, top in c.logprobs:
            names = self._token_strings(c, [t for t, _ in top])
            tops.append({name: lp for name, (_, lp) in zip(names, top)})
        return {"tokens": tokens, "token_logprobs": [lp for lp, _ in c.logprobs], "top_logprobs": tops,
                "text_offset": offsets}

    def _chat_logprobs(self, c: ChoiceState) -> dict:
        tokens = self._token_strings(c, c.token_ids[:len(c.logprobs)])
        content = []
        for token, (lp, top) in zip(tokens, c.logprobs):
            names = self._token_strings(c, [t for t, _ in top])
            content.append({"token": token, "logprob": lp,
                            "top_logprobs": [{"token": n, "logprob": v} for n, (_, v) in zip(names, top)]})
        return {"content": content}
