"""EngineProcess: the engine in a child process answers exactly as the engine on a thread does, and
fails, dies and stops as cleanly."""

import asyncio
import dataclasses
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from models.sampler import SamplingParams
from scheduler.async_engine import AsyncEngine, EngineDeadError
from scheduler.engine import EngineConfig, LLMEngine
from scheduler.engine_process import EngineProcess

ROOT = Path(__file__).resolve().parent.parent
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
PROMPTS = ["Hello there", "The capital of France is", [5, 6, 7, 8], "Count: 1, 2, 3,"]


def _config(model_dir) -> EngineConfig:
    return EngineConfig(model=str(model_dir), max_model_len=512, num_kv_blocks=256)


@pytest.fixture(scope="module")
def engines(tiny_model_dir):
    """One engine in a child process and the same engine on a thread, shut down after the module."""
    both = EngineProcess(_config(tiny_model_dir), "child"), AsyncEngine(LLMEngine(_config(tiny_model_dir)), "thread")
    yield both
    asyncio.run(_shutdown(both))


async def _shutdown(engines):
    for engine in engines:
        await engine.shutdown()


def test_same_outputs_as_on_a_thread(engines):
    child, thread = engines

    async def run(engine):
        whole = await asyncio.gather(*(engine.complete(p, GREEDY) for p in PROMPTS))
        streamed = []
        for p in PROMPTS:
            streamed.append([o async for o in engine.generate(p, GREEDY, stream=True)])
        return whole, streamed

    (child_whole, child_streams), (thread_whole, thread_streams) = asyncio.run(run(child)), asyncio.run(run(thread))
    for a, b in zip(child_whole, thread_whole):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids and len(a.outputs[0].token_ids) == 12
        assert a.outputs[0].text == b.outputs[0].text
        assert a.prompt_token_ids == b.prompt_token_ids  # the last output carries the prompt
    for a, b, whole in zip(child_streams, thread_streams, child_whole):
        # How deltas are grouped depends on timing (a consumer that falls behind gets them merged).
        assert sum((o.outputs[0].token_ids for o in a), []) == whole.outputs[0].token_ids
        assert sum((o.outputs[0].token_ids for o in b), []) == whole.outputs[0].token_ids
        assert "".join(o.outputs[0].text for o in a) == "".join(o.outputs[0].text for o in b)
        assert [o.finished for o in a] == [False] * (len(a) - 1) + [True]
    assert child.max_model_len == thread.max_model_len and child.vocab_size == thread.vocab_size
    assert child.tokenizer("Hello").input_ids == thread.tokenizer("Hello").input_ids


def test_refusals_keep_their_type_and_aborts_free_every_block(engines):
    child, _ = engines

    async def run():
        with pytest.raises(ValueError, match="token ids must be integers"):
            await child.complete([10**9], GREEDY)
        stream = child.generate("Hello", SamplingParams(temperature=0, max_tokens=400, ignore_eos=True), stream=True)
        await stream.__anext__()  # generating: then the client goes away
        await stream.aclose()
        for _ in range(100):  # the abort reaches the child, which reports its figures once idle
            stats = child.stats()
            if stats.running == 0 and stats.kv_blocks_free == stats.kv_blocks_total:
                return stats
            await asyncio.sleep(0.05)
        return child.stats()

    stats = asyncio.run(run())
    assert stats.running == 0 and stats.waiting == 0 and stats.kv_blocks_free == stats.kv_blocks_total


def test_a_killed_child_is_a_dead_engine(tiny_model_dir):
    engine = EngineProcess(_config(tiny_model_dir), "doomed")
    deaths = []
    engine.on_death.append(deaths.append)

    async def run():
        stream = engine.generate("Hello", SamplingParams(temperature=0, max_tokens=100_000, ignore_eos=True),
                                 stream=True)
        await stream.__anext__()
        os.kill(engine._process.pid, signal.SIGKILL)
        with pytest.raises(EngineDeadError, match="its process exited"):
            async for _ in stream:
                pass
        with pytest.raises(EngineDeadError):
            await engine.complete("Hello", GREEDY)

    asyncio.run(run())
    assert not engine.healthy and len(deaths) == 1
    asyncio.run(engine.shutdown())


def test_a_child_that_does_not_stop_is_killed_after_the_stop_bound(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(EngineProcess, "STOP_SECONDS", 1.0)
    engine = EngineProcess(_config(tiny_model_dir), "frozen")

    async def run():
        stream = engine.generate("Hello", SamplingParams(temperature=0, max_tokens=100_000, ignore_eos=True),
                                 stream=True)
        await stream.__anext__()
        os.kill(engine._process.pid, signal.SIGSTOP)  # as a child stuck in a step: it answers nothing
        started = time.monotonic()
        assert await engine.shutdown()
        assert time.monotonic() - started < 10 and not engine._process.is_alive()
        with pytest.raises(RuntimeError, match="engine shut down"):
            async for _ in stream:
                pass

    asyncio.run(run())


def test_a_model_that_cannot_load_is_raised_in_the_server():
    from models.errors import ModelLoadError
    with pytest.raises(ModelLoadError, match="no config.json"):
        EngineProcess(EngineConfig(model=str(ROOT / "tests")), "broken")


def test_server_with_engine_processes_serves_and_stops_cleanly(tiny_model_dir, tmp_path):
    """`python -m api --engine-process`: the same completion as an engine on a thread gives, then
    SIGTERM: exit 0 and no engine process left behind."""
    expected = asyncio.run(_expected(tiny_model_dir))
    port = 18000 + os.getpid() % 1000
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "api", "--model", str(tiny_model_dir), "--engine-process",
                               "--max-model-len", "512", "--port", str(port)], cwd=ROOT, stdout=log, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        children = [int(p) for p in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()]
        assert children, "no engine process"
        body = {"prompt": "Hello there", "max_tokens": 12, "temperature": 0, "ignore_eos": True}
        r = httpx.post(url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == expected
        with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
            text = "".join(json.loads(line[6:])["choices"][0]["text"] for line in r.iter_lines()
                           if line.startswith("data: {"))
        assert text == expected
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        for pid in children:
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]:
                    break
                time.sleep(0.1)
            else:
                pytest.fail(f"engine process {pid} outlived the server")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


async def _expected(model_dir) -> str:
    engine = AsyncEngine(LLMEngine(EngineConfig(model=str(model_dir), max_model_len=512)), "reference")
    try:
        return (await engine.complete("Hello there", GREEDY)).outputs[0].text
    finally:
        await engine.shutdown()


def test_outputs_cross_the_pipe_unchanged_but_for_the_prompt():
    """The wire format keeps every field; an unfinished output leaves its prompt behind (the server has it)."""
    from scheduler.engine_process import _pack, _unpack
    from scheduler.outputs import CompletionOutput, RequestOutput

    running = RequestOutput("a-0", "hi", [1, 2], [CompletionOutput(0, " x", [7], None, [(-0.5, [(7, -0.5)])], 1)],
                            False, "graph", 1.5, 2.5, None)
    choices = [CompletionOutput(0, "", [], "error"), CompletionOutput(1, "y", [8], "stop")]
    done = RequestOutput("b-0", None, [3], choices, True, "general", 3.0, None, "bad")
    got = _unpack(pickle.loads(pickle.dumps(_pack([running, done]))))
    assert got[1] == done
    assert got[0] == dataclasses.replace(running, prompt=None, prompt_token_ids=[])
