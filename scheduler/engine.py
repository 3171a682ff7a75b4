"""The synchronous engine: add requests, then `step()` — schedule, run the model, process outputs."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import math
import time

import torch

from models.attention import get_backend
from models.decoder import compile_small_ops
from models.errors import SequenceError
from models.kv_tensors import bytes_per_block, num_blocks_for_budget
from models.loader import load_model
from models.quantization import EAGER_ONLY, weight_bytes
from models.runner import ModelRunner, StepResult
from models.sampler import SamplingParams
from models.stop_rule import StopRule
from scheduler.detokenizer import IncrementalDetokenizer, decode_output
from scheduler.outputs import CompletionOutput, EngineStats, RequestOutput
from scheduler.scheduler import Scheduler, SchedulerConfig
from scheduler.sequence import PLACEHOLDER_TOKEN, Sequence
from scheduler.token_bytes import TokenBytes

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(slots=True, kw_only=True)
class EngineConfig(SchedulerConfig):
    """Everything that fixes an engine: the model, where it runs, its KV budget, and the scheduling
    limits (max_num_seqs, max_num_batched_tokens, block_size, enable_prefix_caching, aging_seconds,
    speculative_ngram) it inherits from SchedulerConfig with their defaults."""

    model: str = "embedded"
    load_format: str = "auto"            # "dummy": random weights in a preset's shapes
    tokenizer: str | None = None         # another model's tokenizer (dummy weights have none)
    dtype: str | None = None             # default: float32 on CPU, bfloat16 on CUDA
    device: str | None = None            # default: cuda if available, else cpu
    max_model_len: int | None = None     # default: the model's own limit (never more than the KV pool holds)
    kv_cache_gib: float | None = None    # fixed KV budget; default 1 GiB on CPU, measured on CUDA
    gpu_memory_utilization: float = 0.9  # CUDA: fraction of the GPU's memory in use once the cache exists
    num_kv_blocks: int | None = None     # overrides both budgets (tests force preemption with it)
    attention_backend: str = "auto"      # see models.attention.get_backend: torch, triton, flash, DECODE:PREFILL
    enforce_eager: bool = False          # CUDA: no decode graphs (they need a backend that supports them)
    async_scheduling: bool | None = None  # schedule step N+1 while the GPU runs step N; default: on for CUDA
    quantization: str = "none"           # the decoder layers' weights: none, bnb-8bit, bnb-4bit or fp8
    kv_cache_dtype: str = "auto"         # "auto": the model's dtype; "fp8": float8 e4m3, half of bf16's bytes
    seed: int = 0

    def resolved_device(self) -> torch.device:
        """The device to run on (CUDA when present, unless told), checked to exist on this machine."""
        try:
            device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except RuntimeError as e:
            raise ValueError(f"device {self.device!r}: {str(e).splitlines()[0]}") from None
        check_device(device)
        return device

    def resolved_dtype(self) -> torch.dtype:
        name = self.dtype or ("bfloat16" if self.resolved_device().type == "cuda" else "float32")
        if name not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {name!r}")
        return _DTYPES[name]

    def resolved_kv_dtype(self) -> torch.dtype:
        if self.kv_cache_dtype == "auto":
            return self.resolved_dtype()
        if self.kv_cache_dtype == "fp8":
            return torch.float8_e4m3fn
        raise ValueError(f"kv_cache_dtype must be 'auto' or 'fp8', got {self.kv_cache_dtype!r}")

    def scheduler_config(self, max_model_len: int) -> SchedulerConfig:
        """The inherited scheduling limits, with the context limit the engine settled on."""
        limits = {f.name: getattr(self, f.name) for f in dataclasses.fields(SchedulerConfig)}
        return SchedulerConfig(**{**limits, "max_model_len": max_model_len})


@dataclasses.dataclass(slots=True, eq=False)
class _RequestState:
    request_id: str
    prompt: str | None
    prompt_ids: list[int]
    seqs: list[Sequence]
    detoks: list[IncrementalDetokenizer | None]
    tokens_sent: list[int]     # per sample: output tokens already handed out
    logprobs_sent: list[int]
    task: str
    arrival_time: float
    stream: bool = True        # False: one output, when every sample has finished
    first_token_time: float | None = None
    error: str | None = None   # why the request failed, if its own data broke a step


def check_device(device: torch.device) -> None:
    """Raise ValueError naming the problem unless `device` exists here (e.g. `--small-device cuda:1` on a
    machine with one GPU), before anything is loaded onto it."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if (device.index or 0) >= count:
            raise ValueError(f"device {device} does not exist: this machine has {count} GPU"
                             f"{'s' if count != 1 else ''} (cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
    elif device.type != "cpu":
        raise ValueError(f"device {device}: only cpu and cuda devices are supported")


class LLMEngine:
    """One model, its KV cache and its scheduler. Not thread-safe: one caller drives it (AsyncEngine
    does so from its loop, running `step` on a worker thread between applying adds and aborts)."""

    def __init__(self, config: EngineConfig):
        self.config = config
        device, dtype, kv_dtype = config.resolved_device(), config.resolved_dtype(), config.resolved_kv_dtype()
        self.device = device
        backend = get_backend(config.attention_backend, device.type, device.index or 0,
                              fp8_cache=kv_dtype == torch.float8_e4m3fn)
        logger.info("attention backend: %s", backend.name)
        self.model, self.model_config, self.tokenizer, max_len = load_model(
            config.model, load_format=config.load_format, dtype=dtype, device=device,
            backend=backend, max_model_len=config.max_model_len, seed=config.seed, tokenizer=config.tokenizer,
            quantization=config.quantization)
        # Byte-level tokenizers detokenize from a table of each token's bytes, without decode calls.
        self.token_bytes = TokenBytes.build(self.tokenizer) if self.tokenizer is not None else None
        if self.tokenizer is not None and self.token_bytes is None:
            logger.info("detokenizing with tokenizer calls (not a byte-level tokenizer)")
        eos = set(self.model_config.eos_token_ids)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        stop_rule = StopRule(tuple(sorted(eos)))  # one object: the sampler and the scheduler ask it
        self.runner = ModelRunner(self.model, config.block_size, kv_dtype, device, stop_rule)
        num_blocks = self._num_kv_blocks(kv_dtype, max_len)
        self.runner.allocate_kv_cache(num_blocks)
        kv_bytes = num_blocks * bytes_per_block(self.model_config, config.block_size, kv_dtype)
        logger.info("%s: weights %.2f GiB (quantization %s), KV cache %d blocks of %d tokens (%.2f GiB, %s)",
                    config.model, weight_bytes(self.model) / 2**30, config.quantization, num_blocks,
                    config.block_size, kv_bytes / 2**30, str(kv_dtype).removeprefix("torch."))
        # A single sequence must always fit in the pool, or it could only ever preempt itself.
        max_model_len = min(max_len, num_blocks * config.block_size)
        if device.type == "cuda" and not config.enforce_eager:
            compile_small_ops()
            if config.quantization in EAGER_ONLY:
                logger.info("decode steps run without CUDA graphs: %s cannot be captured", config.quantization)
            elif getattr(backend, "supports_cuda_graphs", False):
                self.runner.capture_decode_graphs(config.max_num_seqs, max_model_len)
            self.runner.warm_up()
        self.scheduler = Scheduler(config.scheduler_config(max_model_len), num_blocks, stop_rule)
        self._requests: dict[str, _RequestState] = {}
        self._seq_ids = itertools.count()
        # Drafts are proposed from the tokens so far, which overlapped steps do not have yet.
        if config.speculative_ngram and config.async_scheduling:
            raise ValueError("speculative decoding (speculative_ngram) runs synchronous steps: "
                             "async_scheduling must be off")
        self.async_scheduling = (device.type == "cuda" and not config.speculative_ngram
                                 if config.async_scheduling is None else config.async_scheduling)
        self._in_flight: StepResult | None = None  # the launched step whose tokens are not processed yet
        # The last two launched steps' num_new_tokens, for the stall report: which work a stuck GPU is on.
        self._recent_steps: collections.deque[list[int]] = collections.deque(maxlen=2)

    def _num_kv_blocks(self, dtype: torch.dtype, max_len: int) -> int:
        cfg = self.config
        if cfg.num_kv_blocks is not None:
            return cfg.num_kv_blocks
        if cfg.kv_cache_gib is not None or self.device.type != "cuda":
            budget = (cfg.kv_cache_gib or 1.0) * 2**30
        else:
            peak = self.runner.profile_peak_memory(cfg.max_num_batched_tokens, cfg.max_num_seqs, max_len)
            free, total = torch.cuda.mem_get_info(self.device)
            budget = total * cfg.gpu_memory_utilization - (total - free) - peak
        blocks = num_blocks_for_budget(self.model_config, cfg.block_size, dtype, int(budget))
        if blocks < 1:
            raise ValueError(f"no memory left for the KV cache (budget {budget / 2**30:.2f} GiB); "
                             "raise gpu_memory_utilization or kv_cache_gib")
        return blocks

    @property
    def num_kv_blocks(self) -> int:
        """Blocks in the KV pool (the scratch block not counted)."""
        return self.scheduler.block_manager.num_blocks

    @property
    def max_model_len(self) -> int:
        """Tokens one request may hold, prompt and output together."""
        return self.scheduler.config.max_model_len

    def stats(self) -> EngineStats:
        """The engine's load now. Safe to read from another thread while a step runs (the figures
        may then straddle that step)."""
        sched, bm = self.scheduler, self.scheduler.block_manager
        return EngineStats(
            running=len(sched.running), waiting=len(sched.waiting), waiting_by_task=sched.waiting.depth_by_task(),
            kv_blocks_total=bm.num_blocks, kv_blocks_free=bm.num_free_blocks,
            num_preemptions=sched.stats.num_preemptions, prefix_query_tokens=sched.stats.prefix_query_tokens,
            prefix_hit_tokens=sched.stats.prefix_hit_tokens, draft_tokens=sched.stats.draft_tokens,
            accepted_draft_tokens=sched.stats.accepted_draft_tokens)

    def tokenize(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt given as text or as ids, validated against the vocabulary."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer (dummy weights): send the prompt as token ids")
            return self.tokenizer(prompt).input_ids
        if not all(isinstance(t, int) and 0 <= t < self.model_config.vocab_size for t in prompt):
            raise ValueError(f"prompt token ids must be integers in [0, {self.model_config.vocab_size})")
        return list(prompt)

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | None = None, *,
                    task: str = "general", priority: int = 0, arrival_time: float | None = None,
                    stream: bool = True) -> None:
        """Queue a request. Raises ValueError (and changes nothing) if it cannot be served: a bad
        prompt, parameters naming token ids outside the vocabulary, a request id in use.

        With stream=False `step` reports the request once, finished, instead of after every token.
        Lower priorities are served first.
        """
        params = params or SamplingParams()
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        if isinstance(priority, bool) or not isinstance(priority, (int, float)) or not math.isfinite(priority):
            raise ValueError(f"priority must be a finite number, got {priority!r}")
        params.check_vocab(self.model_config.vocab_size)
        prompt_ids = self.tokenize(prompt)
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens, but the context limit is "
                             f"{self.max_model_len} tokens including at least one generated token")
        arrival = time.monotonic() if arrival_time is None else arrival_time
        seqs = [
            Sequence(seq_id=next(self._seq_ids), request_id=request_id, token_ids=list(prompt_ids),
                     num_prompt_tokens=len(prompt_ids), params=params, arrival_time=arrival, task=task,
                     priority=priority, sample_index=i, seed=None if params.seed is None else params.seed + i)
            for i in range(params.n)
        ]
        # Text is made token by token only where someone reads it as it grows (a stream) or a stop
        # string must be caught; otherwise the finished output is decoded once (see _output).
        incremental = self.tokenizer is not None and (stream or bool(params.stop))
        detoks = [IncrementalDetokenizer(self.tokenizer, prompt_ids, params, self.token_bytes) if incremental else None
                  for _ in seqs]
        self._requests[request_id] = _RequestState(
            request_id, prompt if isinstance(prompt, str) else None, prompt_ids, seqs, detoks,
            [0] * len(seqs), [0] * len(seqs), task, arrival, stream)
        self.scheduler.add(seqs)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Cancel a request, freeing its blocks now. Returns its final output, or None if unknown."""
        state = self._requests.get(request_id)
        if state is None:
            return None
        for seq in state.seqs:
            self.scheduler.finish(seq, "abort")
        return self._output(state, range(len(state.seqs)))

    def abort_all_requests(self) -> list[str]:
        """Cancel every request (e.g. after a failed step); returns their ids."""
        request_ids = list(self._requests)
        for request_id in request_ids:
            self.abort_request(request_id)
        return request_ids

    def describe_recent_steps(self) -> str:
        """The last two launched steps' shapes in words: their one-token rows (decodes, mostly), their
        longer rows and those rows' tokens."""
        return "; ".join(_describe(n) for n in list(self._recent_steps))

    def has_unfinished_requests(self) -> bool:
        """Whether `step` has anything left to do."""
        return bool(self._requests) or self._in_flight is not None

    def step(self) -> list[RequestOutput]:
        """Run one iteration and return the progress of every request that made any.

        Synchronous: schedule, launch, wait for the tokens, process them. With async scheduling the
        host overlaps the GPU: launch step N+1 (inputs still pending from step N are read on the
        device), then wait for and process step N's tokens while step N+1 runs. A sequence that step
        N ends (EOS, stop string) has computed one token too many in N+1; it is dropped.

        A request whose own data raises (in sampling or detokenizing) fails alone: it is finished
        with finish_reason "error" and its output carries the error; the others carry on unchanged.
        """
        in_flight, self._in_flight = self._in_flight, None
        try:
            batch = self.scheduler.schedule()
            launched = None
            if batch.seqs:
                try:
                    self._recent_steps.append(batch.num_new_tokens)  # described only if a report asks
                    launched = self.runner.execute(batch.seqs, batch.num_new_tokens,
                                                   self._pending_inputs(batch, in_flight))
                except SequenceError as e:
                    # Nothing of this step is recorded yet (`advance` has not run): the next step
                    # schedules the others' same tokens again, and recomputing K/V is idempotent.
                    self._in_flight = in_flight
                    state = self._requests[e.seq.request_id]
                    self._fail(state, e.seq, e.cause)
                    return [self._output(state, range(len(state.seqs)))]
            outputs = self._process(in_flight) if in_flight is not None else []
            if launched is not None:
                self.scheduler.advance(batch)
                if self.async_scheduling:
                    self._in_flight = launched
                else:
                    outputs = self._process(launched)
            return outputs
        except BaseException:
            self._discard_pending_tokens()
            raise

    @staticmethod
    def _pending_inputs(batch, in_flight: StepResult | None):
        """Which input rows take their token from the step in flight, and from which of its rows."""
        if in_flight is None:
            return None
        row_of = {seq.seq_id: row for row, seq in enumerate(in_flight.sampled_seqs)}
        # Decodes lead the batch with one input row each; only they can be waiting for a token.
        pairs = [(i, row_of[seq.seq_id]) for i, seq in enumerate(batch.seqs)
                 if batch.num_new_tokens[i] == 1 and seq.token_ids[-1] == PLACEHOLDER_TOKEN]
        return in_flight.device_token_ids, pairs

    def _process(self, result: StepResult) -> list[RequestOutput]:
        """Wait for a step's tokens, put them in place and turn them into per-request outputs."""
        out = result.wait()
        tokens = out.token_ids.tolist()
        now = time.monotonic()
        touched: dict[str, list[int]] = {}
        seqs, row = result.sampled_seqs, 0
        while row < len(seqs):
            seq, first = seqs[row], row
            while row < len(seqs) and seqs[row] is seq:  # with drafts, it sampled after each of them too
                row += 1
            state = self._requests.get(seq.request_id)
            if seq.is_finished or state is None:  # aborted, or ended by an earlier token, meanwhile
                continue
            try:
                if row - first > 1:
                    for i, token in enumerate(self.scheduler.accept_drafts(seq, tokens[first:row])):
                        seq.token_ids.append(PLACEHOLDER_TOKEN)
                        self._take_token(state, seq, token, out, first + i)
                        if seq.is_finished:
                            break
                else:
                    self._take_token(state, seq, tokens[first], out, first)
            except Exception as e:  # this request's data broke: it fails, the rest of the step goes on
                self._fail(state, seq, e)
                touched[seq.request_id] = list(range(len(state.seqs)))
                continue
            state.first_token_time = state.first_token_time or now
            touched.setdefault(seq.request_id, []).append(seq.sample_index)
        outputs = []
        for rid, indices in touched.items():
            state = self._requests[rid]
            if not state.stream and not all(s.is_finished for s in state.seqs):
                continue
            try:
                outputs.append(self._output(state, indices if state.stream else range(len(state.seqs))))
            except Exception as e:  # e.g. decoding its finished text: this request fails alone
                self._fail(state, state.seqs[0], e)
                outputs.append(self._output(state, range(len(state.seqs))))
        return outputs

    def _take_token(self, state: _RequestState, seq: Sequence, token: int, out, row: int) -> None:
        """Record one sampled token (row `row` of the step's output): logprobs, stop rules, text."""
        if seq.params.logprobs is not None:
            top = []
            if seq.params.logprobs:
                ids = out.top_ids[row, :seq.params.logprobs].tolist()
                top = list(zip(ids, out.top_logprobs[row, :seq.params.logprobs].tolist()))
            seq.output_logprobs.append((float(out.logprobs[row]), top))
        self.scheduler.record_token(seq, token)
        detok = state.detoks[seq.sample_index]
        ended_on_token = seq.finish_reason == "stop"  # EOS or a stop token: not part of the text
        if detok is not None and not ended_on_token and detok.add(token):
            if seq.is_finished:
                seq.finish_reason = "stop"
            else:
                self.scheduler.finish(seq, "stop")

    def _fail(self, state: _RequestState, seq: Sequence, cause: BaseException) -> None:
        """Finish every sample of a request whose own data raised, freeing their blocks now."""
        logger.error("request %s failed on sequence %d", state.request_id, seq.seq_id, exc_info=cause)
        state.error = f"{type(cause).__name__}: {cause}"
        for s in state.seqs:
            self.scheduler.finish(s, "error")

    def _discard_pending_tokens(self) -> None:
        # After a failed step no token is coming: whoever still waits for one is aborted.
        for rid, state in list(self._requests.items()):
            if any(s.token_ids[-1] == PLACEHOLDER_TOKEN and not s.is_finished for s in state.seqs):
                self.abort_request(rid)

    def _output(self, state: _RequestState, indices) -> RequestOutput:
        choices = []
        for i in indices:
            seq = state.seqs[i]
            detok = state.detoks[i]
            if detok is not None:
                text = detok.take(seq.is_finished)
            elif self.tokenizer is not None and seq.is_finished and state.error is None:
                output = seq.token_ids[seq.num_prompt_tokens:]
                if seq.finish_reason == "stop":  # ended on EOS or a stop token, which is not text
                    output = output[:-1]
                text = decode_output(self.tokenizer, state.prompt_ids, output, seq.params, self.token_bytes)
            else:
                text = ""
            lps = None
            if seq.params.logprobs is not None:
                lps = seq.output_logprobs[state.logprobs_sent[i]:]
                state.logprobs_sent[i] = len(seq.output_logprobs)
            new_ids = seq.token_ids[seq.num_prompt_tokens + state.tokens_sent[i]:]  # no copy of the whole output
            state.tokens_sent[i] += len(new_ids)
            choices.append(CompletionOutput(i, text, new_ids, seq.finish_reason, lps, seq.num_preemptions))
        finished = all(s.is_finished for s in state.seqs)
        if finished:
            del self._requests[state.request_id]
        return RequestOutput(
            request_id=state.request_id, prompt=state.prompt, prompt_token_ids=state.prompt_ids, outputs=choices,
            finished=finished, task=state.task, arrival_time=state.arrival_time,
            first_token_time=state.first_token_time, error=state.error)


def _describe(num_new_tokens: list[int]) -> str:
    prefills = [n for n in num_new_tokens if n > 1]
    ones = len(num_new_tokens) - len(prefills)
    return f"{ones} one-token rows + {len(prefills)} prefill rows of {sum(prefills)} tokens"
