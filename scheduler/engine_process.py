"""An engine in a process of its own: AsyncEngine's interface, the LLMEngine and its step loop behind a pipe.

In one process the engine's step loop and the event loop share one GIL: every streamed token is a
text delta made on the stepping thread and an SSE event made on the event loop, and under load each
waits for the other. Here the child process owns the LLMEngine (its model, KV cache, scheduler and
detokenizer) and runs the same StepLoop as AsyncEngine's thread; the server's process keeps the
event loop, the HTTP work and a reader thread that turns the child's messages into the same calls on
the loop. vLLM v1 and SGLang split their servers the same way.

    parent (event loop)  --("add", id, prompt ids, params, options) / ("abort", id) / ("stop",)-->  child
    parent (reader thread) <--(StepLoop message, engine stats)--  child (StepLoop)

The child ignores SIGINT: the server drains on Ctrl-C and then stops it. If the server dies, the
child reads EOF and exits; if the child dies, the reader reads EOF and the engine is dead
(EngineDeadError, on_death) as when AsyncEngine's thread dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import pickle
import signal
import threading

from models.loader import model_tokenizer
from scheduler.async_engine import AsyncEngine, StepLoop
from scheduler.engine import EngineConfig, LLMEngine
from scheduler.outputs import CompletionOutput, EngineStats, RequestOutput

logger = logging.getLogger(__name__)


class EngineProcess(AsyncEngine):
    """AsyncEngine whose LLMEngine lives in a child process. Built synchronously: returns once the
    child has loaded the model (or raises what stopped it)."""

    def __init__(self, config: EngineConfig, name: str = "engine"):
        super().__init__(None, name)
        self._stopping = False  # set by shutdown: the child's exit is then no death
        context = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA state
        self._conn, child_end = context.Pipe()
        # Not a daemon: daemonic processes may not start children, and torch.compile does.
        self._process = context.Process(target=_child_main, args=(config, name, child_end),
                                        name=f"switchyard-{name}")
        self._process.start()
        child_end.close()
        try:
            message, self._stats = self._conn.recv()
        except EOFError:
            self._process.join()
            raise RuntimeError(f"engine {name!r}: its process exited while loading "
                               f"(code {self._process.exitcode})") from None
        if message[0] == "failed":
            self._process.join()
            raise message[1]
        _, self._max_model_len, self._vocab_size = message
        # The server's own copy, for chat templates, tokenizing prompts and decoding in fix-ups; the
        # child detokenizes its outputs with the same files.
        self._tokenizer = model_tokenizer(config.model, config.load_format, config.tokenizer)

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def stats(self) -> EngineStats:
        """The figures the child sent with its last message (after its last step or add)."""
        return self._stats

    def _ensure_started(self) -> None:
        if self._death is not None:
            super()._ensure_started()  # raises EngineDeadError
        self._loop = asyncio.get_running_loop()
        if self._thread is None:
            self._thread = threading.Thread(target=self._read, name=f"switchyard-{self.name}-reader", daemon=True)
            self._thread.start()

    def _post(self, item: tuple) -> None:
        self._conn.send(item)  # from the event loop only, as every AsyncEngine call

    def _read(self) -> None:
        """The reader thread: each message of the child, on the event loop, in order. Every message
        carries the engine's figures; "idle" carries only them (so stats() is fresh once the engine
        has nothing left to do, aborts included)."""
        try:
            while True:
                message, self._stats = self._conn.recv()
                if message[0] == "outputs":
                    message = ("outputs", _unpack(message[1]))
                if message[0] != "idle":
                    self._emit(*message)
        except (EOFError, OSError):
            pass
        if self._death is None and not self._stopping:
            self._process.join(timeout=5)
            self._emit("died", RuntimeError(f"its process exited (code {self._process.exitcode})"))

    async def shutdown(self) -> bool:
        """Stop the child (killed if its step does not end within STOP_SECONDS), then fail whatever
        is still in flight. True: a process, unlike a thread, can always be stopped."""
        self._stopping = True
        if self._process.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):  # it may be exiting already
                self._post(("stop",))
            await asyncio.to_thread(self._process.join, self.STOP_SECONDS)
            if self._process.is_alive():
                logger.error("engine %r: its process did not stop within %.0f s; killing it", self.name,
                             self.STOP_SECONDS)
                self._process.kill()
                await asyncio.to_thread(self._process.join)
        self._conn.close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        self._accepting.clear()
        self._fail_streams(RuntimeError("engine shut down"))
        return True


def _child_main(config: EngineConfig, name: str, conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        engine = LLMEngine(config)
    except BaseException as e:
        conn.send((("failed", _portable(e)), None))
        return

    sending = threading.Lock()  # the step loop and its watchdog both report, from two threads

    def emit(*message) -> None:
        if message[0] in ("accepted", "failed", "died"):
            message = tuple(_portable(m) if isinstance(m, BaseException) else m for m in message)
        elif message[0] == "outputs":
            message = ("outputs", _pack(message[1]))
        with sending:
            conn.send((message, engine.stats()))

    steps = StepLoop(engine, name, emit)

    def receive() -> None:
        try:
            while (item := conn.recv())[0] != "stop":
                steps.post(item)
        except (EOFError, OSError):  # the server has gone
            pass
        steps.stop()

    conn.send((("ready", engine.max_model_len, engine.model_config.vocab_size), engine.stats()))
    threading.Thread(target=receive, name=f"switchyard-{name}-inbox", daemon=True).start()
    steps.run()
    engine.abort_all_requests()


def _pack(outputs: list[RequestOutput]) -> list[tuple]:
    """A step's outputs as plain tuples: pickling slotted dataclasses costs ~3× as much (2.2 ms a step
    of 256 streamed outputs on the CPU machine, on the engine's loop). The prompt travels once, with
    the last output: the server has it."""
    return [(o.request_id, o.prompt if o.finished else None, o.prompt_token_ids if o.finished else [], o.finished,
             o.task, o.arrival_time, o.first_token_time, o.error,
             [(c.index, c.text, c.token_ids, c.finish_reason, c.logprobs, c.num_preemptions) for c in o.outputs])
            for o in outputs]


def _unpack(rows: list[tuple]) -> list[RequestOutput]:
    return [RequestOutput(request_id, prompt, prompt_ids, [CompletionOutput(*c) for c in choices], finished, task,
                          arrival, first_token, error)
            for request_id, prompt, prompt_ids, finished, task, arrival, first_token, error, choices in rows]


def _portable(error: BaseException) -> BaseException:
    """The exception itself when it survives pickling, else a RuntimeError naming it (the server
    turns ValueError into a 400, so its type must survive when it can)."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
