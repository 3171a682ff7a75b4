"""bench.http_client: requests dealt to several client processes add up to one run's tokens and span."""

import asyncio
import threading
import time

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from bench.http_client import served_run_split
from bench.server_process import free_port


async def _completions(request):
    """A stand-in server: `max_tokens` one-token events per prompt, then the usage chunk."""
    body = await request.json()
    tokens = body["max_tokens"] * len(body["prompt"])
    if not body.get("stream"):
        return JSONResponse({"usage": {"completion_tokens": tokens}})

    async def events():
        for _ in range(tokens):
            yield 'data: {"choices": [{"index": 0, "text": "x", "finish_reason": null}]}\n\n'
            await asyncio.sleep(0)
        yield f'data: {{"choices": [], "usage": {{"completion_tokens": {tokens}}}}}\n\ndata: [DONE]\n\n'

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def url():
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/v1/completions", _completions,
                                                                     methods=["POST"])]),
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join()


@pytest.mark.parametrize("stream", [False, True])
def test_split_clients_count_every_token(url, stream):
    batches = [[([1, 2], 3 + i % 4)] * (1 + i % 2) for i in range(10)]
    expected = sum(n for batch in batches for _, n in batch)
    for processes in (1, 3):
        seconds, tokens = served_run_split(url, batches, stream=stream, processes=processes)
        assert tokens == expected and seconds > 0


def test_a_failing_client_process_is_reported():
    with pytest.raises(RuntimeError, match="client process failed"):
        served_run_split("http://127.0.0.1:9", [[([1], 2)]] * 4, stream=True, processes=2)
