"""From a validated request to engine requests and back: route each prompt to a task policy and a
model, run them concurrently, and shape the OpenAI response (whole or streamed)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from typing import AsyncIterator

from api.errors import APIError, bad_request
from api.metrics import Metrics
from api.protocol import GenerationRequest
from models.sampler import SamplingParams
from scheduler.async_engine import AsyncEngine
from tasks import answer_format, graph_verifier
from tasks.length_budget import length_budget
from tasks.policy import TaskPolicy
from tasks.router import classify
from tasks.thinking import ThinkingFilter

DEFAULT_MAX_TOKENS = 16  # the OpenAI completions default, for prompts no policy caps


@dataclasses.dataclass(slots=True)
class PromptPlan:
    """How one prompt of a request is served."""

    index: int
    original: str | list[int]
    task: str
    role: str
    engine: AsyncEngine
    engine_prompt: str | list[int]
    params: SamplingParams
    priority: int
    strip_thinking: bool
    policy: TaskPolicy
    samples: int = 1          # engine candidates per returned choice (best-of-n)
    prompt_tokens: int = 0


@dataclasses.dataclass(slots=True)
class ChoiceState:
    """One returned choice being assembled from deltas."""

    index: int
    plan: PromptPlan
    text: str = ""
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list = dataclasses.field(default_factory=list)
    finish_reason: str | None = None
    filter: ThinkingFilter | None = None
    generated: int = 0        # tokens generated for this choice: its candidates' and any enforced answer


class CompletionService:
    """Serves completion and chat requests over a large and a small engine (possibly the same one)."""

    def __init__(self, engines: dict[str, AsyncEngine], names: dict[str, str], policies: dict[str, TaskPolicy],
                 metrics: Metrics, max_queued_prompts: int = 4096, request_timeout: float = 600.0):
        self.engines, self.names, self.policies, self.metrics = engines, names, policies, metrics
        self.max_queued_prompts = max_queued_prompts
        self.request_timeout = request_timeout
        self.in_flight = 0  # prompts x n admitted and not yet finished

    # ---- planning -------------------------------------------------------------------------

    def _role_for_model(self, model: str | None) -> str | None:
        if model is None:
            return None
        for role, name in self.names.items():
            if model == name:
                return role
        raise APIError(404, f"the model {model!r} does not exist; served models: "
                            f"{sorted(set(self.names.values()))}", param="model", code="model_not_found")

    def plan(self, req: GenerationRequest) -> list[PromptPlan]:
        """Route every prompt and fix its model, prompt transform, sampling parameters and priority."""
        forced_role = self._role_for_model(req.model)
        plans = []
        for i, prompt in enumerate(req.prompts):
            if req.chat:
                text = "\n".join(m["content"] for m in prompt if m["role"] == "user")
            else:
                text = prompt if isinstance(prompt, str) else ""
            task = classify(text) if text else "general"
            policy = self.policies[task]
            role = forced_role or policy.choose_model(text)
            engine = self.engines[role]
            tokenizer = engine.engine.tokenizer
            template_kwargs = dict(req.chat_template_kwargs)
            if policy.enable_thinking is not None:
                template_kwargs.setdefault("enable_thinking", policy.enable_thinking)
            engine_prompt = prompt
            if req.chat or (policy.chat_template and isinstance(prompt, str)):
                if tokenizer is None or tokenizer.chat_template is None:
                    if req.chat:
                        raise bad_request(f"the model {self.names[role]!r} has no chat template", "messages")
                else:
                    messages = prompt if req.chat else [{"role": "user", "content": prompt}]
                    engine_prompt = tokenizer.apply_chat_template(
                        messages, tokenize=False, add_generation_prompt=True, **template_kwargs)
            # A streamed answer is sent as it is generated, so it cannot be picked among candidates.
            samples = policy.best_of if not req.stream else 1
            plans.append(PromptPlan(i, prompt, task, role, engine, engine_prompt,
                                    self._params(req, policy, text, samples), req.priority if req.priority is not None
                                    else policy.priority, policy.strip_thinking, policy, samples))
        return plans

    @staticmethod
    def _params(req: GenerationRequest, policy: TaskPolicy, text: str, samples: int) -> SamplingParams:
        candidates = {"temperature": policy.best_of_temperature} if samples > 1 else {}
        fields = {**policy.sampling, **candidates, **req.sampling}
        max_tokens = fields.get("max_tokens", policy.max_tokens or DEFAULT_MAX_TOKENS)
        if policy.max_tokens is not None:
            max_tokens = min(max_tokens, policy.max_tokens)
        if policy.length_from_instruction:
            max_tokens = min(max_tokens, length_budget(text) or max_tokens)
        fields["max_tokens"] = max_tokens
        fields["min_tokens"] = min(fields.get("min_tokens", 0), max_tokens)
        try:
            return SamplingParams(n=req.n * samples, logprobs=req.logprobs, **fields)
        except (TypeError, ValueError) as e:
            raise bad_request(str(e)) from e

    # ---- running ----------------------------------------------------------------------------

    def _admit(self, plans: list[PromptPlan]) -> int:
        count = sum(p.params.n for p in plans)
        if self.in_flight + count > self.max_queued_prompts:
            raise APIError(429, f"the server is at capacity ({self.in_flight} completions in flight); "
                                "retry shortly", code="server_busy", headers={"Retry-After": "1"})
        self.in_flight += count
        return count

    async def _submit_all(self, plans: list[PromptPlan], request_id: str, stream: bool) -> list[AsyncIterator]:
        """Queue every prompt; if any is refused, withdraw the others and report the refusal.

        Unstreamed prompts ask the engine for their final output only, sparing a delta per token."""
        async def submit(plan):
            return await plan.engine.submit(plan.engine_prompt, plan.params, request_id=f"{request_id}-{plan.index}",
                                            task=plan.task, priority=plan.priority, stream=stream)
        results = await asyncio.gather(*(submit(p) for p in plans), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            for r in results:
                if not isinstance(r, BaseException):
                    await r.aclose()
            for plan in plans:
                plan.engine.abort(f"{request_id}-{plan.index}")
            error = errors[0]
            if isinstance(error, ValueError):
                raise bad_request(f"prompt {results.index(error)}: {error}", "prompt")
            raise error
        return results

    def _choices(self, plans: list[PromptPlan], n: int) -> list[list[ChoiceState]]:
        """Per plan, its engine candidates: `samples` of them for each returned choice, in order."""
        return [[ChoiceState(plan.index * n + j // plan.samples, plan,
                             filter=ThinkingFilter() if plan.strip_thinking else None)
                 for j in range(n * plan.samples)] for plan in plans]

    def _apply(self, choice: ChoiceState, delta, tokenizer) -> str:
        """Fold one engine delta into a choice; returns the new text to show."""
        text = delta.text
        if choice.filter is not None:
            text = choice.filter.feed(text)
            if delta.finish_reason is not None:
                text += choice.filter.finish()
        choice.text += text
        choice.token_ids += delta.token_ids
        if delta.logprobs:
            choice.logprobs += delta.logprobs
        choice.finish_reason = delta.finish_reason or choice.finish_reason
        return text

    async def _pump(self, stream, candidates: list[ChoiceState], plan: PromptPlan, sink) -> None:
        """Consume one prompt's engine stream, handing (choice, new text, delta) to `sink`."""
        arrival = time.monotonic()
        first = None
        prompt_tokens = 0
        async for out in stream:
            prompt_tokens = len(out.prompt_token_ids)
            for delta in out.outputs:
                choice = candidates[delta.index]
                if first is None and delta.token_ids:
                    # The engine's clock is this one (monotonic); an unstreamed output arrives at the end.
                    first = out.first_token_time or time.monotonic()
                await sink(choice, self._apply(choice, delta, plan.engine.engine.tokenizer), delta)
        produced = sum(len(c.token_ids) for c in candidates)
        self.metrics.record_completion(plan.task, prompt_tokens, produced, arrival, first, time.monotonic())
        plan.prompt_tokens = prompt_tokens

    async def complete(self, req: GenerationRequest, is_disconnected) -> dict:
        """Serve a non-streaming request; returns the response body."""
        start = time.monotonic()
        plans, count, request_id, streams = await self._start(req)
        try:
            candidates = self._choices(plans, req.n)

            async def sink(choice, text, delta):
                pass

            async def serve(stream, plan):
                await self._pump(stream, candidates[plan.index], plan, sink)
                return await self._finish(plan, candidates[plan.index], request_id)

            work = asyncio.gather(*(serve(s, p) for s, p in zip(streams, plans)))
            chosen = await self._await_or_abort(work, is_disconnected)
        finally:
            self.in_flight -= count
        choices = [c for plan_choices in chosen for c in plan_choices]
        return self._response(req, plans, choices, request_id, time.monotonic() - start)

    # ---- task-aware answers (whole responses) ------------------------------------------------

    async def _finish(self, plan: PromptPlan, candidates: list[ChoiceState], request_id: str) -> list[ChoiceState]:
        """The returned choices of one prompt: the best of each group of candidates, its answer fixed up.

        Every candidate's tokens stay counted in `completion_tokens` of the chosen one, so usage
        reports what was generated.
        """
        policy, prompt = plan.policy, plan.original if isinstance(plan.original, str) else ""
        chosen = []
        for start in range(0, len(candidates), plan.samples):
            group = candidates[start:start + plan.samples]
            best = group[graph_verifier.pick_best(prompt, [c.text for c in group])] if len(group) > 1 else group[0]
            best.generated = sum(len(c.token_ids) for c in group)
            if policy.verify_graph_paths:
                best.text = graph_verifier.rewrite(prompt, best.text)
            if (policy.enforce_answer_format and isinstance(plan.engine_prompt, str)
                    and plan.engine.engine.tokenizer is not None and answer_format.needs_answer(best.text)):
                await self._enforce_answer(plan, best, f"{request_id}-{plan.index}-answer{start}")
            chosen.append(best)
        return chosen

    async def _enforce_answer(self, plan: PromptPlan, choice: ChoiceState, request_id: str) -> None:
        """Let the model pick one option letter after "The answer is (" and append the sentence."""
        letter_ids = answer_format.letter_token_ids(plan.engine.engine.tokenizer)
        params = SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=letter_ids)
        out = await plan.engine.complete(answer_format.continuation_prompt(plan.engine_prompt, choice.text),
                                         params, request_id=request_id, task=plan.task, priority=plan.priority)
        letter = answer_format.LETTERS[letter_ids.index(out.outputs[0].token_ids[0])]
        choice.text = answer_format.with_answer(choice.text, letter)
        choice.generated += 1

    async def _await_or_abort(self, work: asyncio.Future, is_disconnected) -> None:
        """Wait for the engines, but give up (aborting every prompt) on disconnect or timeout."""
        deadline = time.monotonic() + self.request_timeout
        try:
            while True:
                done, _ = await asyncio.wait({work}, timeout=0.25)
                if done:
                    return work.result()
                if await is_disconnected():
                    raise APIError(499, "client disconnected")
                if time.monotonic() > deadline:
                    raise APIError(504, f"the request timed out after {self.request_timeout:g} s", code="timeout")
        finally:
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)

    def _served_name(self, plans: list[PromptPlan], req: GenerationRequest) -> str:
        return req.model or self.names[plans[0].role]

    def _response(self, req, plans, choices, request_id, elapsed) -> dict:
        prompt_tokens = sum(p.prompt_tokens for p in plans)
        completion_tokens = sum(c.generated for c in choices)
        body = {
            "id": f"{'chatcmpl' if req.chat else 'cmpl'}-{request_id}",
            "object": "chat.completion" if req.chat else "text_completion",
            "created": int(time.time()),
            "model": self._served_name(plans, req),
            "choices": [self._choice_body(req, c) for c in choices],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "elapsed_time": round(elapsed, 4),
            "requests": len(plans),
        }
        return body

    def _choice_body(self, req, c: ChoiceState) -> dict:
        plan = c.plan
        routing = {"task": plan.task, "model": self.names[plan.role]}
        if req.chat:
            body = {"index": c.index, "message": {"role": "assistant", "content": c.text},
                    "finish_reason": c.finish_reason, "logprobs": self._chat_logprobs(c) if req.logprobs is not None else None}
            return {**body, **routing}
        text = (plan.original if isinstance(plan.original, str) else "") + c.text if req.echo else c.text
        return {"index": c.index, "text": text, "finish_reason": c.finish_reason,
                "logprobs": self._completion_logprobs(c) if req.logprobs is not None else None,
                "prompt": plan.original, "completion_tokens": c.generated, **routing}

    def _token_strings(self, c: ChoiceState, ids: list[int]) -> list[str]:
        tokenizer = c.plan.engine.engine.tokenizer
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
                            "top_logprobs": [{"token": n, "logprob": l} for n, (_, l) in zip(names, top)]})
        return {"content": content}

    # ---- streaming --------------------------------------------------------------------------

    async def start_stream(self, req: GenerationRequest) -> AsyncIterator[str]:
        """Validate, route and queue a streaming request; returns the SSE event iterator.

        Everything that can be refused is refused here, before any byte of the response is sent.
        """
        start = time.monotonic()
        plans, count, request_id, streams = await self._start(req)
        return self._events(req, plans, streams, request_id, count, start)

    async def _start(self, req: GenerationRequest):
        """Route, admit and queue every prompt of a request; if any is refused, nothing stays admitted."""
        plans = self.plan(req)
        count = self._admit(plans)
        request_id = uuid.uuid4().hex
        try:
            streams = await self._submit_all(plans, request_id, req.stream)
        except BaseException:
            self.in_flight -= count
            raise
        return plans, count, request_id, streams

    async def _events(self, req, plans, streams, request_id, count, start) -> AsyncIterator[str]:
        candidates = self._choices(plans, req.n)  # one per returned choice: streaming has no best-of
        choices = [c for plan_choices in candidates for c in plan_choices]
        events: asyncio.Queue = asyncio.Queue()
        created = int(time.time())
        name = self._served_name(plans, req)
        chunk_id = f"{'chatcmpl' if req.chat else 'cmpl'}-{request_id}"
        kind = "chat.completion.chunk" if req.chat else "text_completion"

        async def sink(choice, text, delta):
            # One chunk per step that produced tokens, even when their text is held back (a partial
            # character, a possible stop string or think tag, ids the tokenizer cannot spell), so a
            # client can time every token, as vLLM's chunks allow.
            if text or delta.token_ids or delta.finish_reason is not None:
                events.put_nowait(self._chunk_choice(req, choice, text, delta))

        async def pump_all():
            try:
                await asyncio.gather(*(self._pump(s, candidates[p.index], p, sink) for s, p in zip(streams, plans)))
            finally:
                events.put_nowait(None)

        def frame(choice_list, usage=None) -> str:
            body = {"id": chunk_id, "object": kind, "created": created, "model": name, "choices": choice_list}
            if usage is not None:
                body["usage"] = usage
            return f"data: {json.dumps(body)}\n\n"

        worker = asyncio.get_running_loop().create_task(pump_all())
        deadline = start + self.request_timeout
        try:
            if req.chat:
                yield frame([{"index": c.index, "delta": {"role": "assistant", "content": ""},
                              "logprobs": None, "finish_reason": None} for c in choices])
            while True:
                remaining = deadline - time.monotonic()
                try:
                    item = await asyncio.wait_for(events.get(), timeout=max(remaining, 0.001))
                except asyncio.TimeoutError:
                    err = {"error": {"message": f"the request timed out after {self.request_timeout:g} s",
                                     "type": "server_error", "param": None, "code": "timeout"}}
                    yield f"data: {json.dumps(err)}\n\n"
                    break
                if item is None:
                    break
                yield frame([item])
            if worker.done() and worker.exception() is not None:
                err = {"error": {"message": str(worker.exception()), "type": "server_error", "param": None,
                                 "code": None}}
                yield f"data: {json.dumps(err)}\n\n"
            elif req.include_usage:
                prompt_tokens = sum(p.prompt_tokens for p in plans)
                completion = sum(len(c.token_ids) for c in choices)
                yield frame([], {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                                 "total_tokens": prompt_tokens + completion})
            yield "data: [DONE]\n\n"
        finally:
            self.in_flight -= count
            if not worker.done():  # the client went away: abort every prompt, freeing their blocks
                worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            for stream in streams:
                await stream.aclose()

    def _chunk_choice(self, req, choice: ChoiceState, text: str, delta) -> dict:
        body = {"index": choice.index, "finish_reason": delta.finish_reason}
        if req.chat:
            body["delta"] = {"content": text} if text else {}
            body["logprobs"] = None
        else:
            body["text"] = text
            body["logprobs"] = None
        if delta.finish_reason is not None:
            body.update(task=choice.plan.task, model=self.names[choice.plan.role])
            if not req.chat:
                body["prompt"] = choice.plan.original
        return body
