"""Running completion requests: admission, submission to the engines, whole responses and streams,
and the ways a request ends early (disconnect, timeout, shutdown, a failing engine).

Every path releases the request's admission slots and aborts its engine requests exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from api.choice import ChoiceState
from api.errors import APIError, bad_request, unavailable
from api.fixups import finish_prompt
from api.metrics import Metrics
from api.planning import Planner, PromptPlan
from api.protocol import GenerationRequest
from api.responses import SSE_DONE, ResponseWriter, sse, usage
from scheduler.async_engine import AsyncEngine, EngineDeadError

logger = logging.getLogger(__name__)

# Stream sentinels: the request's deadline passed, or the server is ending it.
_TIMED_OUT, _ABORTED = object(), object()


def as_api_error(error: BaseException) -> APIError:
    """What a client is told when its engine requests fail."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, EngineDeadError):
        return unavailable(str(error))
    if isinstance(error, ValueError):  # the engine refused the request
        return bad_request(str(error), "prompt")
    logger.error("request failed", exc_info=error)
    return APIError(500, f"generation failed: {type(error).__name__}: {error}")


class CompletionService:
    """Serves completion and chat requests over a large and a small engine (possibly the same one)."""

    def __init__(self, engines: dict[str, AsyncEngine], names: dict[str, str], planner: Planner, metrics: Metrics,
                 max_queued_prompts: int, request_timeout: float):
        self.engines, self.names, self.planner, self.metrics = engines, names, planner, metrics
        self.max_queued_prompts = max_queued_prompts
        self.request_timeout = request_timeout
        self.in_flight = 0           # admission slots held: prompts x n (x best-of) admitted and not finished
        self.closing: APIError | None = None   # set when the server stops taking requests
        self.aborting: APIError | None = None  # set when requests in flight must end now
        self._abort = asyncio.Event()          # set with `aborting`: whole responses wait on it
        self._streams: set[StreamJob] = set()  # streams being sent: told directly when aborting
        metrics.watch(lambda: (self.engines, self.in_flight, self.max_queued_prompts))

    async def until_aborted(self) -> None:
        """Returns once requests in flight must end (the shutdown's grace is over)."""
        await self._abort.wait()

    @property
    def healthy(self) -> bool:
        return all(e.healthy for e in self.engines.values())

    # ---- admission and submission

    def _admit(self, plans: list[PromptPlan]) -> int:
        if self.closing is not None:
            raise self.closing
        dead = [name for name, e in self.engines.items() if not e.healthy]
        if dead:
            raise unavailable(f"the {' and '.join(dead)} engine has stopped; the server is restarting")
        count = sum(p.params.n for p in plans)
        if self.in_flight + count > self.max_queued_prompts:
            raise APIError(429, f"the server is at capacity ({self.in_flight} completions in flight); "
                                "retry shortly", code="server_busy", headers={"Retry-After": "1"})
        self.in_flight += count
        return count

    async def _submit_all(self, plans: list[PromptPlan], request_id: str, stream: bool,
                          on_output: Callable[[PromptPlan], Callable] | None = None) -> list[AsyncIterator | None]:
        """Queue every prompt; if any is refused, withdraw the others and report the refusal. With
        `on_output`, each prompt's outputs go to the callback it makes for the prompt (no streams)."""
        results = await asyncio.gather(*(
            p.engine.submit(p.prompt_ids, p.params, request_id=f"{request_id}-{p.index}", task=p.task,
                            priority=p.priority, stream=stream, on_output=on_output and on_output(p))
            for p in plans), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            for plan in plans:
                plan.engine.abort(f"{request_id}-{plan.index}")
            error = as_api_error(errors[0])
            if error.status == 400:
                error.message = f"prompt {results.index(errors[0])}: {error.message}"
            raise error
        return results

    async def _pump(self, stream, candidates: list[ChoiceState], plan: PromptPlan) -> None:
        """Consume one prompt's engine stream (its final output: whole responses are not streamed
        from the engine) into its candidates."""
        arrival = time.monotonic()
        first = None
        async for out in stream:
            if out.error is not None:
                raise APIError(500, f"generation failed for prompt {plan.index}: {out.error}")
            for delta in out.outputs:
                choice = candidates[delta.index]
                if first is None and delta.token_ids:
                    # The engine's clock is this one (monotonic); an unstreamed output arrives at the end.
                    first = out.first_token_time or time.monotonic()
                choice.apply(delta)
        produced = sum(len(c.token_ids) for c in candidates)
        self.metrics.record_completion(plan.task, len(plan.prompt_ids), produced, arrival, first, time.monotonic())

    def writer_for(self, req: GenerationRequest, plans: list[PromptPlan], request_id: str) -> ResponseWriter:
        # The response names the system (the large model's served name); each choice names its own model.
        return ResponseWriter(req, request_id, req.model or self.names["large"], self.names)

    # ---- whole responses

    async def complete(self, req: GenerationRequest,
                       disconnected: Callable[[], Awaitable[None]] | None = None) -> dict:
        """Serve a non-streaming request; returns the response body. `disconnected()` returns when
        the client goes away (the request is then aborted with 499)."""
        start = time.monotonic()
        plans = await self.planner.plan(req)
        count = self._admit(plans)
        request_id = uuid.uuid4().hex
        try:
            work = asyncio.ensure_future(self._run_whole(req, plans, request_id))
            chosen = await self._await(work, disconnected, start + self.request_timeout)
        finally:
            self.in_flight -= count
        choices = [c for plan_choices in chosen for c in plan_choices]
        return self.writer_for(req, plans, request_id).completion(plans, choices, time.monotonic() - start)

    async def _run_whole(self, req: GenerationRequest, plans: list[PromptPlan], request_id: str):
        streams = await self._submit_all(plans, request_id, stream=False)
        candidates = ChoiceState.for_plans(plans, req.n)

        async def serve(stream, plan):
            try:
                await self._pump(stream, candidates[plan.index], plan)
            finally:
                await stream.aclose()
            return await finish_prompt(plan, candidates[plan.index], request_id)

        return await asyncio.gather(*(serve(s, p) for s, p in zip(streams, plans)))

    async def _await(self, work: asyncio.Future, disconnected: Callable[[], Awaitable[None]] | None,
                     deadline: float):
        """Wait for the engines, but give up (aborting every prompt) on a disconnect, the deadline or
        a shutdown: whichever comes first wakes this, nothing polls."""
        aborted = asyncio.ensure_future(self.until_aborted())
        left = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        try:
            waiting = {work, aborted} | ({left} if left is not None else set())
            done, _ = await asyncio.wait(waiting, timeout=max(deadline - time.monotonic(), 0),
                                         return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                try:
                    return work.result()
                except Exception as e:
                    raise as_api_error(e) from e
            if aborted in done:
                raise self.aborting
            if left is not None and left in done:
                raise APIError(499, "client disconnected")
            raise APIError(504, f"the request timed out after {self.request_timeout:g} s", code="timeout")
        finally:
            for waiter in (aborted, left):
                if waiter is not None:
                    waiter.cancel()
            if not work.done():  # cancelling closes the engine streams, which aborts their requests
                work.cancel()
            await asyncio.gather(work, return_exceptions=True)

    # ---- streams

    async def start_stream(self, req: GenerationRequest) -> StreamJob:
        """Plan, admit and queue a streaming request. Everything that can be refused is refused here,
        before any byte of the response is sent."""
        plans = await self.planner.plan(req)
        job = StreamJob(self, req, plans, uuid.uuid4().hex, self._admit(plans))
        try:
            await self._submit_all(plans, job.request_id, stream=True, on_output=job.on_output)
        except BaseException:
            await job.close()
            raise
        return job

    # ---- shutdown

    async def drain(self, grace: float) -> None:
        """Stop admitting; let requests in flight finish for up to `grace` seconds, then end them with 503."""
        self.closing = unavailable("the server is shutting down")
        logger.info("shutting down: %d completions in flight get up to %g s to finish", self.in_flight, grace)
        deadline = time.monotonic() + grace
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.in_flight:
            logger.warning("aborting %d completions still in flight after %g s", self.in_flight, grace)
        self.aborting = unavailable(f"the server shut down before this request finished (grace {grace:g} s)")
        self._abort.set()
        for job in list(self._streams):
            job.events.put_nowait(_ABORTED)


class StreamJob:
    """A streaming request once admitted: the engines hand its outputs to `on_output`'s callbacks,
    which frame them as SSE events at once; `events_sse` sends them; `close()` releases its slots and
    aborts its engine requests once, whether or not the events were ever read."""

    def __init__(self, service: CompletionService, req: GenerationRequest, plans: list[PromptPlan],
                 request_id: str, count: int):
        self.service, self.req, self.plans = service, req, plans
        self.request_id, self.count = request_id, count
        self.writer = service.writer_for(req, plans, request_id)
        self.candidates = ChoiceState.for_plans(plans, req.n)  # streaming has no best-of: one per choice
        # SSE events, then None once every prompt has finished; or a sentinel or an APIError that ends it.
        self.events: asyncio.Queue = asyncio.Queue()
        self._deadline = asyncio.get_running_loop().call_later(service.request_timeout, self.events.put_nowait,
                                                               _TIMED_OUT)
        self._unfinished = len(plans)
        self._start = time.monotonic()
        self._closed = False
        service._streams.add(self)

    def on_output(self, plan: PromptPlan) -> Callable:
        """The callback that takes one prompt's engine outputs (or the error that ends it)."""
        candidates, first = self.candidates[plan.index], None

        def take(out) -> None:
            nonlocal first
            if isinstance(out, BaseException) or out.error is not None:
                error = out if isinstance(out, BaseException) else APIError(
                    500, f"generation failed for prompt {plan.index}: {out.error}")
                self.events.put_nowait(as_api_error(error))
                return
            for delta in out.outputs:
                choice = candidates[delta.index]
                if first is None and delta.token_ids:
                    first = out.first_token_time or time.monotonic()
                text = choice.apply(delta)
                # One event per step that produced tokens, even when their text is held back (a partial
                # character, a possible stop string or think tag), so a client can time every token.
                if text or delta.token_ids or delta.finish_reason is not None:
                    self.events.put_nowait(self.writer.chunk_event(choice, text, delta.finish_reason))
            if out.finished:
                produced = sum(len(c.token_ids) for c in candidates)
                self.service.metrics.record_completion(plan.task, len(plan.prompt_ids), produced, self._start,
                                                       first, time.monotonic())
                self._unfinished -= 1
                if not self._unfinished:
                    self.events.put_nowait(None)

        return take

    async def events_sse(self) -> AsyncIterator[str]:
        """The response body: one SSE event per step that produced tokens for a choice (several that
        are ready go out in one write), an error event if the request ends early, then [DONE]."""
        req, service, events = self.req, self.service, self.events
        choices = [c for plan_choices in self.candidates for c in plan_choices]
        error = None
        try:
            if req.chat:
                yield self.writer.role_chunk(choices)
            while True:
                ready = [await events.get()]
                while not events.empty():
                    ready.append(events.get_nowait())
                ended = next((i for i, item in enumerate(ready) if not isinstance(item, str)), None)
                text = "".join(ready[:ended])
                if text:
                    yield text
                if ended is not None:
                    end = ready[ended]
                    if end is _ABORTED:
                        error = service.aborting
                    elif end is _TIMED_OUT:
                        error = APIError(504, f"the request timed out after {service.request_timeout:g} s",
                                         code="timeout")
                    elif isinstance(end, APIError):
                        error = end
                    break
            if error is not None:
                yield sse(error.body())
            elif req.include_usage:
                completion = sum(len(c.token_ids) for c in choices)
                yield self.writer.chunk([], usage(sum(len(p.prompt_ids) for p in self.plans), completion))
            yield SSE_DONE
        finally:
            await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._deadline.cancel()
        self.service._streams.discard(self)
        self.service.in_flight -= self.count
        for plan in self.plans:  # a no-op for finished requests; frees the blocks of the others
            plan.engine.abort(f"{self.request_id}-{plan.index}")
