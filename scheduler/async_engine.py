"""The asyncio front of an engine: many concurrent `generate` streams, one thread stepping the model."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import faulthandler
import io
import logging
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable

from models.sampler import SamplingParams
from scheduler.engine import LLMEngine
from scheduler.outputs import EngineStats, RequestOutput, merge_outputs

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine's stepping thread has stopped for good; no request can be served by it."""


class AsyncEngine:
    """Owns an LLMEngine and the thread that steps it while requests are in flight.

    The engine thread alone touches the LLMEngine: it applies the adds and aborts queued by the
    event loop between steps, steps, and hands each step's outputs to the loop in one callback. It
    never waits for the event loop, so the GPU is fed however busy the loop is with HTTP, and two
    engines (a large and a small model) step at the same time.

    Nothing a request carries can stop the thread: a request the engine refuses fails alone, and a
    failed step fails the requests in it. Should the thread die anyway (a bug), every waiting caller
    gets EngineDeadError at once and `on_death` callbacks run, so a server can exit and be restarted.
    """

    def __init__(self, engine: LLMEngine | None, name: str = "engine"):
        self.engine = engine
        self.name = name
        self.on_death: list[Callable[[BaseException], None]] = []
        self._streams: dict[str, asyncio.Queue | Callable] = {}  # per request; on the event loop only
        self._accepting: dict[str, asyncio.Future] = {}  # adds the engine has not answered yet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._death: BaseException | None = None
        self.stalled_seconds = 0.0  # > 0 while a step has run past StepLoop.STALL_SECONDS (as last reported)
        self._steps = StepLoop(engine, name, self._emit) if engine is not None else None

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
        """False once the stepping thread has died."""
        return self._death is None

    @property
    def stalled(self) -> bool:
        """True while the step in progress has run past StepLoop.STALL_SECONDS: alive, but stuck (a
        GPU kernel that never ends looks like this), so a health check should fail."""
        return self.stalled_seconds > 0

    # ---- the event loop's side

    def _ensure_started(self) -> None:
        if self._death is not None:
            raise EngineDeadError(f"engine {self.name!r} has stopped: {self._death}")
        self._loop = asyncio.get_running_loop()  # outputs go to the loop that last submitted
        if self._thread is None:
            self._steps.stopping = False
            self._thread = threading.Thread(target=self._steps.run, name=f"switchyard-{self.name}", daemon=True)
            self._thread.start()

    def _post(self, item: tuple) -> None:
        """Hand ("add", request_id, prompt, params, options) or ("abort", request_id) to the engine."""
        self._steps.post(item)

    def _emit(self, *message) -> None:
        # The stepping thread's report, run on the event loop (see StepLoop for the messages).
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(self._on_message, message)

    def _on_message(self, message: tuple) -> None:
        kind = message[0]
        if kind == "outputs":
            self._deliver(message[1])
        elif kind == "accepted":
            _, request_id, error = message
            future = self._accepting.pop(request_id, None)
            if future is not None:
                _settle(future, error)
        elif kind == "failed":
            self._fail_streams(message[1], message[2])
        elif kind == "died":
            self._die(message[1])
        elif kind == "stall":
            self.stalled_seconds = message[1]

    async def submit(self, prompt: str | list[int], params: SamplingParams | None = None, *,
                     request_id: str | None = None, on_output: Callable[[RequestOutput | BaseException], None]
                     | None = None, **options) -> AsyncIterator[RequestOutput] | None:
        """Queue a request and return its stream of outputs (deltas) once the engine has accepted it.

        `options` are LLMEngine.add_request's (task, priority, stream), with its defaults.
        Raises ValueError for a request the engine cannot serve, EngineDeadError if the engine has
        stopped. With stream=False the stream yields one output, the finished request. Closing the
        stream early (a client disconnect, a timeout) aborts the request and frees its KV blocks.

        With `on_output`, nothing is returned: each output (or the exception that ends the request)
        is handed to `on_output` on the event loop as soon as the step that made it is done, without
        a queue and a consumer task per request; `abort` then ends the request.
        """
        self._ensure_started()
        request_id = request_id or uuid.uuid4().hex
        queue: asyncio.Queue | None = asyncio.Queue() if on_output is None else None
        accepted = self._loop.create_future()
        self._accepting[request_id] = accepted
        self._streams[request_id] = queue or on_output  # before the engine can produce its first output
        self._post(("add", request_id, prompt, params, options))
        try:
            await accepted
        except asyncio.CancelledError:
            self._accepting.pop(request_id, None)
            self.abort(request_id)
            raise
        except BaseException:
            self._streams.pop(request_id, None)
            raise
        return self._stream(request_id, queue) if queue is not None else None

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
        self._streams.pop(request_id, None)
        if self._thread is not None and self._death is None:
            self._post(("abort", request_id))

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            target = self._streams.get(out.request_id)
            if target is not None:
                if out.finished:
                    del self._streams[out.request_id]
                _hand(target, out)

    def _fail_streams(self, error: BaseException, request_ids=None) -> None:
        """Fail the streams of `request_ids` (default: all) with `error`."""
        for request_id in list(self._streams) if request_ids is None else request_ids:
            target = self._streams.pop(request_id, None)
            if target is not None:
                _hand(target, error)

    def _die(self, cause: BaseException) -> None:
        self._death = cause
        error = EngineDeadError(f"engine {self.name!r} has stopped: {type(cause).__name__}: {cause}")
        for future in self._accepting.values():  # nobody will answer these any more
            _settle(future, error)
        self._accepting.clear()
        self._fail_streams(error)
        for callback in self.on_death:
            callback(cause)

    # How long shutdown waits for the step in progress: a step takes milliseconds to seconds.
    STOP_SECONDS = 30.0

    async def shutdown(self) -> bool:
        """Stop the thread after its current step and fail whatever is still in flight. Returns False
        if the step did not end within STOP_SECONDS (stuck on the GPU): the thread is left behind, and
        the process should exit without waiting for it."""
        if self._thread is not None:
            self._steps.stop()
            await asyncio.to_thread(self._thread.join, self.STOP_SECONDS)
            if self._thread.is_alive():
                logger.error("engine %r: its step did not end within %.0f s of the stop; leaving it behind",
                             self.name, self.STOP_SECONDS)
                self._fail_streams(RuntimeError("engine shut down"))  # its state is the stuck thread's
                return False
            self._thread = None
        self.engine.abort_all_requests()
        self._steps.inbox.clear()
        self._fail_streams(RuntimeError("engine shut down"))
        return True


class StepLoop:
    """The engine's side of AsyncEngine: applies the queued adds and aborts between steps, steps
    while there is work, and reports through `emit(*message)`, one of
        ("accepted", request_id, None or the exception that refused it)
        ("outputs", [RequestOutput])                       a step's outputs
        ("failed", exception, [request_id])                a step failed: these requests end with it
        ("died", exception)                                the loop itself broke (a bug): nothing more comes
        ("stall", seconds)                                 the step in progress has run this long, past
                                                           STALL_SECONDS; ("stall", 0.0) once it ends
        ("idle",)                                          no request left: it waits for the next add
    It runs on AsyncEngine's thread (emit hands the message to the event loop) or in the process of
    an EngineProcess (emit sends it down a pipe). It never waits for its reader, so the GPU is fed
    however busy the reader is."""

    # A step that has run this long is reported with every thread's stack (once a step): a GPU step
    # takes milliseconds, a first step with compilation seconds; minutes mean something is stuck.
    STALL_SECONDS = 120.0
    WATCH_SECONDS = 10.0  # how often the watchdog looks

    def __init__(self, engine: LLMEngine, name: str, emit: Callable[..., None]):
        self.engine, self.name, self.emit = engine, name, emit
        self.inbox: collections.deque = collections.deque()
        self.work = threading.Event()
        self.stopping = False
        self._step_started: float | None = None  # when the step in progress began
        self._stall_reported = False  # a ("stall", seconds) has gone out for the step in progress
        self._stall_lock = threading.Lock()
        self._steps_begun = 0

    def post(self, item: tuple) -> None:
        self.inbox.append(item)
        self.work.set()

    def stop(self) -> None:
        self.stopping = True
        self.work.set()

    def _apply_inbox(self) -> None:
        while self.inbox:
            item = self.inbox.popleft()
            if item[0] == "abort":
                self.engine.abort_request(item[1])
                continue
            _, request_id, prompt, params, options = item
            try:
                self.engine.add_request(request_id, prompt, params, **options)
            except Exception as e:  # whatever one request's data provokes is that request's failure alone
                self.engine.abort_request(request_id)
                self.emit("accepted", request_id, e)
                continue
            self.emit("accepted", request_id, None)

    def _watch(self, done: threading.Event) -> None:
        """The watchdog: report a step that has run past STALL_SECONDS, with where every thread is."""
        reported = None
        while not done.wait(min(self.STALL_SECONDS / 4, self.WATCH_SECONDS)):
            with self._stall_lock:  # against the step ending meanwhile: its ("stall", 0.0) must come last
                started, step = self._step_started, self._steps_begun
                if started is None or time.monotonic() - started <= self.STALL_SECONDS:
                    continue
                self._stall_reported = True
                self.emit("stall", time.monotonic() - started)  # while it lasts, for health checks and metrics
            if step != reported:
                reported = step
                logger.warning("engine %r: a step has run for %.0f s (%d sequences running; the last steps "
                               "launched: %s); every thread's stack follows on stderr", self.name,
                               time.monotonic() - started, len(self.engine.scheduler.running),
                               self.engine.describe_recent_steps())
                with contextlib.suppress(io.UnsupportedOperation, AttributeError, ValueError):
                    faulthandler.dump_traceback(sys.stderr, all_threads=True)

    def run(self) -> None:
        done = threading.Event()
        threading.Thread(target=self._watch, args=(done,), name=f"switchyard-{self.name}-watchdog",
                         daemon=True).start()
        try:
            self._run()
        finally:
            done.set()

    def _run(self) -> None:
        try:
            while not self.stopping:
                self._apply_inbox()
                if not self.engine.has_unfinished_requests():
                    self.emit("idle")
                    self.work.wait()
                    self.work.clear()
                    continue
                with self._stall_lock:
                    self._steps_begun += 1
                    self._step_started = time.monotonic()
                try:
                    outputs = self.engine.step()
                except Exception as e:  # a failed step fails the requests in flight, not the server
                    logger.exception("engine %r: a step failed", self.name)
                    failed = self.engine.abort_all_requests()
                    self.emit("failed", RuntimeError(f"engine step failed: {type(e).__name__}: {e}"), failed)
                    continue
                finally:
                    with self._stall_lock:
                        self._step_started = None
                        if self._stall_reported:  # the stalled step has ended after all
                            self._stall_reported = False
                            self.emit("stall", 0.0)
                if outputs:
                    self.emit("outputs", outputs)
        except BaseException as e:
            logger.exception("engine %r: its step loop died", self.name)
            self.emit("died", e)


def _hand(target: asyncio.Queue | Callable, item: RequestOutput | BaseException) -> None:
    """Give an output or an error to a request's queue or callback."""
    if isinstance(target, asyncio.Queue):
        target.put_nowait(item)
        return
    try:
        target(item)
    except Exception:  # one consumer's bug must not keep this step's outputs from the others
        logger.exception("a request's output callback failed")


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if not future.done():  # the caller may have gone away meanwhile
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
