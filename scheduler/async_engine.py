"""The asyncio front of an engine: many concurrent `generate` streams, one loop stepping the model."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import AsyncIterator, Callable

from models.sampler import SamplingParams
from scheduler.engine import EngineConfig, LLMEngine
from scheduler.outputs import EngineStats, RequestOutput, merge_outputs

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine's stepping loop has stopped for good; no request can be served by it."""


class AsyncEngine:
    """Owns an LLMEngine and one task that steps it while requests are in flight.

    The forward runs on this engine's own worker thread, so the event loop keeps accepting and
    streaming while the model computes, and two engines (a large and a small model) step at the
    same time. Adds and aborts are queued and applied by the loop between steps: the engine's
    state is only ever touched by one thread at a time.

    Nothing a request carries can stop the loop: a request the engine refuses fails alone, and a
    failed step fails the requests in it. Should the loop die anyway (a bug), every waiting caller
    gets EngineDeadError at once and `on_death` callbacks run, so a server can exit and be restarted.
    """

    def __init__(self, engine: LLMEngine, name: str = "engine"):
        self.engine = engine
        self.name = name
        self.on_death: list[Callable[[BaseException], None]] = []
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"switchyard-{name}")
        self._streams: dict[str, asyncio.Queue] = {}
        self._pending: list[tuple] = []
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._death: BaseException | None = None

    @classmethod
    async def create(cls, config: EngineConfig, name: str = "engine") -> AsyncEngine:
        """Load the model off the event loop and return the engine."""
        engine = await asyncio.get_running_loop().run_in_executor(None, LLMEngine, config)
        return cls(engine, name)

    @property
    def tokenizer(self):
        """The model's tokenizer, or None (dummy weights without --tokenizer)."""
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.engine.model_config.vocab_size

    def stats(self) -> EngineStats:
        return self.engine.stats()

    @property
    def healthy(self) -> bool:
        """False once the stepping loop has died."""
        return self._death is None

    def _ensure_loop(self) -> None:
        if self._death is not None:
            raise EngineDeadError(f"engine {self.name!r} has stopped: {self._death}")
        if self._loop_task is None or self._loop_task.done():
            self._wakeup = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.name}-loop")

    async def submit(self, prompt: str | list[int], params: SamplingParams | None = None, *,
                     request_id: str | None = None, task: str = "general",
                     priority: float = 0, stream: bool = True) -> AsyncIterator[RequestOutput]:
        """Queue a request and return its stream of outputs (deltas) once the engine has accepted it.

        Raises ValueError for a request the engine cannot serve, EngineDeadError if the engine has
        stopped. With stream=False the stream yields one output, the finished request. Closing the
        stream early (a client disconnect, a timeout) aborts the request and frees its KV blocks.
        """
        self._ensure_loop()
        request_id = request_id or uuid.uuid4().hex
        queue: asyncio.Queue = asyncio.Queue()
        accepted = asyncio.get_running_loop().create_future()
        self._pending.append(("add", request_id, prompt, params, task, priority, stream, queue, accepted))
        self._wakeup.set()
        try:
            await accepted
        except asyncio.CancelledError:
            self.abort(request_id)
            raise
        return self._stream(request_id, queue)

    async def _stream(self, request_id: str, queue: asyncio.Queue) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            while not finished:
                items = [await queue.get()]
                # A consumer that fell behind the engine gets the deltas waiting for it as one: under
                # load that is one chunk per visit instead of one per token.
                while not queue.empty():
                    items.append(queue.get_nowait())
                error = next((i for i in items if isinstance(i, BaseException)), None)
                if error is not None:
                    raise error
                item = items[0] if len(items) == 1 else merge_outputs(items)
                finished = item.finished
                yield item
        finally:
            if not finished:
                self.abort(request_id)

    async def generate(self, prompt: str | list[int], params: SamplingParams | None = None,
                       **kwargs) -> AsyncIterator[RequestOutput]:
        """Submit and stream in one call: `async for out in engine.generate(prompt, params)`."""
        stream = await self.submit(prompt, params, **kwargs)
        try:
            async for out in stream:
                yield out
        finally:
            await stream.aclose()

    async def complete(self, prompt: str | list[int], params: SamplingParams | None = None,
                       **kwargs) -> RequestOutput:
        """Run one request to the end and return its merged output."""
        return merge_outputs([out async for out in self.generate(prompt, params, stream=False, **kwargs)])

    def abort(self, request_id: str) -> None:
        """Cancel a request; its blocks are freed before the next step."""
        if self._wakeup is not None and self._death is None:
            self._pending.append(("abort", request_id))
            self._wakeup.set()

    def _apply_pending(self) -> None:
        pending, self._pending = self._pending, []
        for item in pending:
            if item[0] == "abort":
                self._streams.pop(item[1], None)
                self.engine.abort_request(item[1])
                continue
            _, request_id, prompt, params, task, priority, stream, queue, accepted = item
            if accepted.done():  # the caller went away before we got to it
                continue
            try:
                self.engine.add_request(request_id, prompt, params, task=task, priority=priority, stream=stream)
            except Exception as e:  # whatever one request's data provokes is that request's failure alone
                self.engine.abort_request(request_id)
                accepted.set_exception(e)
                continue
            self._streams[request_id] = queue
            accepted.set_result(None)

    async def _run(self) -> None:
        try:
            await self._step_forever()
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            logger.exception("engine %r: the stepping loop died", self.name)
            self._die(e)

    async def _step_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._apply_pending()
            if not self.engine.has_unfinished_requests():
                self._wakeup.clear()
                if not self._pending:
                    await self._wakeup.wait()
                continue
            try:
                outputs = await loop.run_in_executor(self._executor, self.engine.step)
            except Exception as e:  # a failed step fails the requests in flight, not the server
                logger.exception("engine %r: a step failed", self.name)
                self._fail_all(RuntimeError(f"engine step failed: {type(e).__name__}: {e}"))
                continue
            for out in outputs:
                queue = self._streams.get(out.request_id)
                if queue is not None:
                    queue.put_nowait(out)
                    if out.finished:
                        del self._streams[out.request_id]

    def _fail_all(self, error: BaseException) -> None:
        """Fail every stream and every request not yet accepted with `error` at once. The engine
        drops their sequences between steps (a step may be running on the worker thread now)."""
        pending, self._pending = self._pending, []
        for item in pending:
            if item[0] == "add":
                if not item[-1].done():
                    item[-1].set_exception(error)
            else:
                self._pending.append(item)
        for request_id, queue in self._streams.items():
            queue.put_nowait(error)
            self._pending.append(("abort", request_id))
        self._streams.clear()
        if self._wakeup is not None:
            self._wakeup.set()

    def _die(self, cause: BaseException) -> None:
        self._death = cause
        self._fail_all(EngineDeadError(f"engine {self.name!r} has stopped: {type(cause).__name__}: {cause}"))
        for callback in self.on_death:
            callback(cause)

    def abort_all(self, error: BaseException) -> None:
        """Fail every request in flight with `error` (e.g. the server is shutting down)."""
        if self._death is None:
            self._fail_all(error)

    async def shutdown(self) -> None:
        """Stop the loop and fail whatever is still in flight."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        self.abort_all(RuntimeError("engine shut down"))
        self._executor.shutdown(wait=True)
