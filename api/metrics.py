"""Server metrics in the Prometheus text format: request counters and latency histograms kept here,
engine gauges (queues, KV blocks, preemptions, prefix hits) read from the engines at scrape time."""

from __future__ import annotations

import bisect
import time
from collections import defaultdict

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 600)


class Histogram:
    def __init__(self, buckets=_LATENCY_BUCKETS):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, cumulative = [], 0
        sep = "," if labels else ""
        for bound, count in zip(self.buckets + (float("inf"),), self.counts):
            cumulative += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {cumulative}')
        out += [f"{name}_sum{{{labels}}} {self.total:.6f}", f"{name}_count{{{labels}}} {self.n}"]
        return out


class Metrics:
    """Counters and histograms the HTTP layer records, labelled by task."""

    def __init__(self):
        self.started = time.monotonic()
        self.requests = defaultdict(int)        # (endpoint, status) -> count
        self.prompts = defaultdict(int)         # task -> prompts served
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.ttft = defaultdict(Histogram)      # task -> seconds to first token
        self.tpot = defaultdict(Histogram)      # task -> seconds per output token after the first
        self.e2e = defaultdict(Histogram)       # task -> seconds from arrival to last token

    def record_request(self, endpoint: str, status: int) -> None:
        self.requests[(endpoint, status)] += 1

    def record_completion(self, task: str, prompt_tokens: int, output_tokens: int, arrival: float,
                          first_token: float | None, finished: float) -> None:
        self.prompts[task] += 1
        self.prompt_tokens += prompt_tokens
        self.generated_tokens += output_tokens
        self.e2e[task].observe(finished - arrival)
        if first_token is not None:
            self.ttft[task].observe(first_token - arrival)
            if output_tokens > 1:
                self.tpot[task].observe((finished - first_token) / (output_tokens - 1))

    def render(self, engines: dict[str, object]) -> str:
        """The full exposition; `engines` maps a role ("large", "small") to an AsyncEngine."""
        uptime = time.monotonic() - self.started
        lines = [
            "# TYPE switchyard_requests_total counter",
            *(f'switchyard_requests_total{{endpoint="{e}",status="{s}"}} {n}' for (e, s), n in sorted(self.requests.items())),
            "# TYPE switchyard_prompts_total counter",
            *(f'switchyard_prompts_total{{task="{t}"}} {n}' for t, n in sorted(self.prompts.items())),
            "# TYPE switchyard_generated_tokens_total counter",
            f"switchyard_generated_tokens_total {self.generated_tokens}",
            "# TYPE switchyard_prompt_tokens_total counter",
            f"switchyard_prompt_tokens_total {self.prompt_tokens}",
            "# TYPE switchyard_generation_tokens_per_second gauge",
            f"switchyard_generation_tokens_per_second {self.generated_tokens / max(uptime, 1e-9):.3f}",
        ]
        for name, hists in (("ttft", self.ttft), ("tpot", self.tpot), ("e2e", self.e2e)):
            lines.append(f"# TYPE switchyard_{name}_seconds histogram")
            for task, h in sorted(hists.items()):
                lines += h.lines(f"switchyard_{name}_seconds", f'task="{task}"')
        gauges = defaultdict(list)
        seen = set()
        for role, engine in engines.items():
            core = engine.engine
            if id(core) in seen:  # one engine serving both roles is reported once
                continue
            seen.add(id(core))
            sched, bm = core.scheduler, core.scheduler.block_manager
            label = f'model="{role}"'
            for task, depth in sorted(sched.waiting.depth_by_task().items()):
                gauges["queue_depth"].append(f'switchyard_queue_depth{{{label},task="{task}"}} {depth}')
            gauges["running_sequences"].append(f"switchyard_running_sequences{{{label}}} {len(sched.running)}")
            gauges["waiting_sequences"].append(f"switchyard_waiting_sequences{{{label}}} {len(sched.waiting)}")
            used = bm.num_blocks - bm.num_free_blocks
            gauges["kv_blocks_used"].append(f"switchyard_kv_blocks_used{{{label}}} {used}")
            gauges["kv_blocks_free"].append(f"switchyard_kv_blocks_free{{{label}}} {bm.num_free_blocks}")
            gauges["preemptions_total"].append(f"switchyard_preemptions_total{{{label}}} {sched.stats.num_preemptions}")
            queried = sched.stats.prefix_query_tokens
            rate = sched.stats.prefix_hit_tokens / queried if queried else 0.0
            gauges["prefix_cache_hit_rate"].append(f"switchyard_prefix_cache_hit_rate{{{label}}} {rate:.4f}")
        for name, rows in gauges.items():
            kind = "counter" if name.endswith("_total") else "gauge"
            lines += [f"# TYPE switchyard_{name} {kind}", *rows]
        return "\n".join(lines) + "\n"
