"""Building a server from a ServerConfig, and running it under uvicorn: port bound before the models
load, connection limits, graceful shutdown on SIGTERM, and a non-zero exit if an engine dies."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket

import uvicorn
from starlette.applications import Starlette

from api.app import build_app
from api.completions import CompletionService
from api.config import ServerConfig
from api.http_protocol import protocol_with_header_timeout
from api.metrics import Metrics
from api.planning import Planner
from scheduler.async_engine import AsyncEngine
from scheduler.engine import EngineConfig, LLMEngine
from scheduler.engine_process import EngineProcess
from tasks.policy import load_policies

logger = logging.getLogger("switchyard")


def display_name(model: str) -> str:
    """The name clients see for a model given as 'embedded', a path or a hub id."""
    if model == "embedded":
        from models.embedded import EMBEDDED_MODEL
        return EMBEDDED_MODEL
    return model.rstrip("/").rsplit("/", 1)[-1] if os.path.exists(model) else model


def build_service(config: ServerConfig) -> CompletionService:
    """Load the engines (small first on a shared GPU, so the large one takes what is left) and wire
    the service that serves them."""
    policies = load_policies(config.policy)
    engines, names = {}, {}
    if config.has_small_engine:
        logger.info("loading the small model %s", config.small_model)
        engines["small"] = _engine(config, config.engine_config(small=True), "small")
        names["small"] = config.small_served_model_name or display_name(config.small_model)
    logger.info("loading the large model %s", config.model)
    engines["large"] = _engine(config, config.engine_config(small=False), "large")
    names["large"] = config.served_model_name or display_name(config.model)
    engines.setdefault("small", engines["large"])
    names.setdefault("small", names["large"])
    planner = Planner(engines, names, policies, trust_request_chat_template=config.trust_request_chat_template,
                      max_completions_per_request=config.max_completions_per_request)
    return CompletionService(engines, names, planner, Metrics(), max_queued_prompts=config.max_queued_prompts,
                             request_timeout=config.request_timeout)


def _engine(config: ServerConfig, engine_config: EngineConfig, role: str) -> AsyncEngine:
    if config.engine_process:
        return EngineProcess(engine_config, role)
    return AsyncEngine(LLMEngine(engine_config), role)


def app_for(service: CompletionService, config: ServerConfig) -> Starlette:
    """The HTTP app for a built service, with the config's key and body limits."""
    return build_app(service, api_key=config.api_key, public_paths=config.public_paths,
                     max_body_bytes=config.max_body_bytes, body_timeout=config.body_timeout)


def uvicorn_config(app, config: ServerConfig) -> uvicorn.Config:
    """uvicorn's own limits: keep-alive, concurrency, graceful shutdown (plus our head deadline)."""
    return uvicorn.Config(
        app, host=config.host, port=config.port, http=protocol_with_header_timeout(config.header_timeout),
        timeout_keep_alive=config.timeout_keep_alive, limit_concurrency=config.limit_concurrency,
        # A backstop: the service ends what is left at the grace deadline, so this rarely fires.
        timeout_graceful_shutdown=int(config.graceful_shutdown_timeout) + 5,
        access_log=config.access_log, log_level="info" if config.access_log else "warning", lifespan="off")


class Server(uvicorn.Server):
    """uvicorn's server, draining the service when it shuts down and stopping if an engine dies."""

    def __init__(self, config: uvicorn.Config, service: CompletionService, grace: float):
        super().__init__(config)
        self.service, self.grace = service, grace
        self.left_behind: list[str] = []  # engines whose step did not end when stopped
        for engine in set(service.engines.values()):
            engine.on_death.append(self._engine_died)

    def _engine_died(self, cause: BaseException) -> None:
        logger.error("an engine died (%s: %s); shutting down so a supervisor can restart the server",
                     type(cause).__name__, cause)
        self.should_exit = True

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:  # a graceful stop is a normal end: exit 0, not "killed by SIGTERM"
            self._captured_signals.remove(sig)

    async def shutdown(self, sockets=None) -> None:
        drain = asyncio.ensure_future(self.service.drain(self.grace))
        try:
            await super().shutdown(sockets)
        finally:
            drain.cancel()
            # Stop the engine threads before the interpreter exits: one killed mid-step can abort it.
            # Each stage is logged: a shutdown that hangs shows where.
            for engine in {id(e): e for e in self.service.engines.values()}.values():
                logger.info("HTTP closed; stopping engine %r (after its current step)", engine.name)
                if await engine.shutdown():
                    logger.info("engine %r stopped", engine.name)
                else:
                    self.left_behind.append(engine.name)


def _raise_file_limit() -> None:
    # Each connection is a file descriptor; a low soft limit turns a crowd of clients into accept() errors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything slow happens so that a busy port fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    sock.set_inheritable(True)
    return sock


def serve(config: ServerConfig) -> int:
    """Run a server until SIGTERM/SIGINT (exit 0) or until an engine dies (exit 1)."""
    sock = bind(config.host, config.port)
    _raise_file_limit()
    service = build_service(config)
    server = Server(uvicorn_config(app_for(service, config), config), service, config.graceful_shutdown_timeout)
    logger.info("serving %s on http://%s:%d", sorted(set(service.names.values())), config.host, config.port)
    server.run(sockets=[sock])
    if server.left_behind:
        # A thread stuck in a CUDA call can hang the interpreter's exit (and the driver's teardown of
        # the context behind it): leave at once, so that a supervisor can start a fresh server.
        logger.error("exiting with engine %s still in a step", " and ".join(map(repr, server.left_behind)))
        logging.shutdown()
        os._exit(1)
    return 0 if service.healthy else 1
