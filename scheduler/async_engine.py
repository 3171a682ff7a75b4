"""The asyncio front of an engine: many concurrent `generate` streams, one loop stepping the model."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

from models.sampler import SamplingParams
from scheduler.engine import EngineConfig, LLMEngine
from scheduler.outputs import RequestOutput, merge_outputs


class AsyncEngine:
    """Owns an LLMEngine and one task that steps it while requests are in flight.

    The forward runs on this engine's own worker thread, so the event loop keeps accepting and
    streaming while the model computes, and two engines (a large and a small model) step at the
    same time. Adds and aborts are queued and applied by the loop between steps: the engine's
    state is only ever touched by one thread at a time.
    """

    def __init__(self, engine: LLMEngine, name: str = "engine"):
        self.engine = engine
        self.name = name
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"switchyard-{name}")
        self._streams: dict[str, asyncio.Queue] = {}
        self._pending: list[tuple] = []
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None

    @classmethod
    async def create(cls, config: EngineConfig, name: str = "engine") -> "AsyncEngine":
        """Load the model off the event loop and return the engine."""
        engine = await asyncio.get_running_loop().run_in_executor(None, LLMEngine, config)
        return cls(engine, name)

    @property
    def healthy(self) -> bool:
        """False once the stepping loop has died (it survives failed steps, so this means a bug)."""
        return self._loop_task is None or not self._loop_task.done() or self._loop_task.cancelled()

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wakeup = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.name}-loop")

    async def submit(self, prompt: str | list[int], params: SamplingParams | None = None, *,
                     request_id: str | None = None, task: str = "general",
                     priority: int = 0, stream: bool = True) -> AsyncIterator[RequestOutput]:
        """Queue a request and return its stream of outputs (deltas) once the engine has accepted it.

        Raises ValueError for a prompt the engine cannot serve. With stream=False the stream yields
        one output, the finished request. Closing the stream early (a client
        disconnect, a timeout) aborts the request and frees its KV blocks.
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
        if self._wakeup is not None:
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
            except ValueError as e:
                accepted.set_exception(e)
                continue
            self._streams[request_id] = queue
            accepted.set_result(None)

    async def _run(self) -> None:
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
                for request_id, queue in list(self._streams.items()):
                    queue.put_nowait(RuntimeError(f"engine step failed: {type(e).__name__}: {e}"))
                    self.engine.abort_request(request_id)
                self._streams.clear()
                continue
            for out in outputs:
                queue = self._streams.get(out.request_id)
                if queue is not None:
                    queue.put_nowait(out)
                    if out.finished:
                        del self._streams[out.request_id]

    async def shutdown(self) -> None:
        """Stop the loop and fail whatever is still in flight."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
        for request_id, queue in list(self._streams.items()):
            queue.put_nowait(RuntimeError("engine shut down"))
            self.engine.abort_request(request_id)
        self._streams.clear()
        self._executor.shutdown(wait=True)
