"""Server metrics through prometheus_client: request counters and latency histograms recorded by the
HTTP layer, engine gauges (queues, KV blocks, preemptions, prefix hits, speculative drafts, loop liveness) and admission
slots read at scrape time. Each server has its own registry, so several can live in one process."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 600)


class _EngineCollector:
    """Reads the engines and the admission count when Prometheus scrapes."""

    def __init__(self, read: Callable[[], tuple[dict, int, int]]):
        self.read = read  # -> ({role: AsyncEngine}, slots in use, slots in all)

    def collect(self):
        engines, in_use, capacity = self.read()
        slots = GaugeMetricFamily("switchyard_admission_slots", "completions admitted and not finished",
                                  labels=["state"])
        slots.add_metric(["in_use"], in_use)
        slots.add_metric(["capacity"], capacity)
        yield slots
        gauges = {name: GaugeMetricFamily(f"switchyard_{name}", doc, labels=["model"]) for name, doc in (
            ("engine_alive", "1 while the engine's stepping loop runs"),
            ("stalled_step_seconds", "how long the step in progress has run, once past the stall threshold; else 0"),
            ("running_sequences", "sequences holding KV blocks"),
            ("waiting_sequences", "sequences queued, new or preempted"),
            ("kv_blocks_used", "KV cache blocks in use"),
            ("kv_blocks_free", "KV cache blocks free"),
            ("prefix_cache_hit_rate", "share of looked-up prompt tokens found cached"))}
        depth = GaugeMetricFamily("switchyard_queue_depth", "waiting sequences per task", labels=["model", "task"])
        preemptions = CounterMetricFamily("switchyard_preemptions", "sequences preempted", labels=["model"])
        drafts = CounterMetricFamily("switchyard_draft_tokens", "speculative draft tokens checked by the model",
                                     labels=["model"])
        accepted = CounterMetricFamily("switchyard_accepted_draft_tokens", "speculative draft tokens kept",
                                       labels=["model"])
        seen = set()
        for role, engine in engines.items():
            if id(engine) in seen:  # one engine serving both roles is reported once
                continue
            seen.add(id(engine))
            s = engine.stats()
            values = {"engine_alive": float(engine.healthy), "stalled_step_seconds": engine.stalled_seconds,
                      "running_sequences": s.running,
                      "waiting_sequences": s.waiting, "kv_blocks_used": s.kv_blocks_total - s.kv_blocks_free,
                      "kv_blocks_free": s.kv_blocks_free,
                      "prefix_cache_hit_rate": s.prefix_hit_tokens / s.prefix_query_tokens
                      if s.prefix_query_tokens else 0.0}
            for name, value in values.items():
                gauges[name].add_metric([role], value)
            for task, n in sorted(s.waiting_by_task.items()):
                depth.add_metric([role, task], n)
            preemptions.add_metric([role], s.num_preemptions)
            drafts.add_metric([role], s.draft_tokens)
            accepted.add_metric([role], s.accepted_draft_tokens)
        yield from gauges.values()
        yield from (depth, preemptions, drafts, accepted)


class Metrics:
    """What the HTTP layer records, labelled by task; `render` is the exposition for GET /metrics."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("switchyard_requests", "HTTP requests by route and status",
                                ["endpoint", "status"], registry=r)
        self.prompts = Counter("switchyard_prompts", "prompts served", ["task"], registry=r)
        self.prompt_tokens = Counter("switchyard_prompt_tokens", "prompt tokens served", registry=r)
        self.generated_tokens = Counter("switchyard_generated_tokens", "tokens generated", registry=r)
        self.ttft = Histogram("switchyard_ttft_seconds", "seconds from arrival to the first token", ["task"],
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("switchyard_tpot_seconds", "seconds per output token after the first", ["task"],
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("switchyard_e2e_seconds", "seconds from arrival to the last token", ["task"],
                             buckets=_LATENCY_BUCKETS, registry=r)

    def watch(self, read: Callable[[], tuple[dict, int, int]]) -> None:
        """Report engine and admission figures from `read()` at every scrape."""
        self.registry.register(_EngineCollector(read))

    def record_request(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()

    def record_completion(self, task: str, prompt_tokens: int, output_tokens: int, arrival: float,
                          first_token: float | None, finished: float) -> None:
        self.prompts.labels(task).inc()
        self.prompt_tokens.inc(prompt_tokens)
        self.generated_tokens.inc(output_tokens)
        self.e2e.labels(task).observe(finished - arrival)
        if first_token is not None:
            self.ttft.labels(task).observe(first_token - arrival)
            if output_tokens > 1:
                self.tpot.labels(task).observe((finished - first_token) / (output_tokens - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
