"""Runs one scheduled step on the model: builds the flat batch, runs the forward, samples."""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from kv_cache.cache_tensors import allocate_kv_cache
from models.attention.metadata import AttentionMetadata
from models.cuda_graphs import DecodeGraphs
from models.decoder import DecoderModel
from models.sampler import Sampler, SamplerOutput, SamplingRow


@dataclasses.dataclass(slots=True)
class StepResult:
    sampled_seqs: list          # the sequences that sampled, in row order of `output`
    output: SamplerOutput


class ModelRunner:
    """Owns a model, its KV cache tensors and its CUDA stream (several runners can share a process).

    The scheduler's sequences are only read here; the runner never changes scheduling state.
    """

    def __init__(self, model: DecoderModel, block_size: int, kv_dtype: torch.dtype, device: torch.device,
                 eos_token_ids=()):
        self.model = model
        self.device = device
        self.block_size = block_size
        self.kv_dtype = kv_dtype
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.sampler = Sampler()
        self.eos_token_ids = tuple(eos_token_ids)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.decode_graphs: DecodeGraphs | None = None

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """Allocate `num_blocks` blocks for the pool plus one scratch block (the last) nobody owns."""
        self.kv_caches = allocate_kv_cache(self.model.cfg, num_blocks + 1, self.block_size, self.kv_dtype,
                                          self.device)
        self.scratch_block = num_blocks

    def capture_decode_graphs(self, max_batch: int, max_model_len: int) -> None:
        """Capture CUDA graphs for decode steps of up to `max_batch` sequences (CUDA only)."""
        with self._stream_context():
            self.decode_graphs = DecodeGraphs(self.model, self.kv_caches, self.block_size, max_batch,
                                              max_model_len, self.scratch_block)

    def profile_peak_memory(self, num_tokens: int, num_seqs: int, max_model_len: int) -> int:
        """Bytes of activation memory a worst-case step needs beyond the weights (CUDA only).

        Runs one prefill of `num_tokens` tokens (in sequences no longer than `max_model_len`) into a
        throwaway cache and samples `num_seqs` rows.
        """
        from scheduler.sequence import Sequence
        from models.sampler import SamplingParams
        lengths = [min(max_model_len, num_tokens - start) for start in range(0, num_tokens, max_model_len)]
        blocks_per_seq = [-(-n // self.block_size) for n in lengths]
        self.allocate_kv_cache(sum(blocks_per_seq))
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        params = SamplingParams(temperature=1.0, top_p=0.9)
        seqs, first_block = [], 0
        for i, (n, nb) in enumerate(zip(lengths, blocks_per_seq)):
            seq = Sequence(seq_id=-1 - i, request_id="profile", token_ids=[0] * n, num_prompt_tokens=n,
                           params=params, arrival_time=0.0)
            seq.block_table = list(range(first_block, first_block + nb))
            first_block += nb
            seqs.append(seq)
        self.execute(seqs, lengths)
        with torch.inference_mode():
            logits = torch.zeros(num_seqs, self.model.cfg.vocab_size, device=self.device)
            self.sampler(logits, [self.sampling_row(seqs[0])] * num_seqs)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - before
        self.kv_caches = []
        torch.cuda.empty_cache()
        return peak

    def release(self) -> None:
        """Give the KV cache and the graphs' memory back (e.g. before another model loads)."""
        self.kv_caches = []
        self.decode_graphs = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _stream_context(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def prepare(self, seqs, num_new_tokens) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        """Flatten the step into input ids, positions and attention metadata (host lists, one copy each)."""
        bs = self.block_size
        input_ids, positions, slots = [], [], []
        query_start, seq_lens, logits_rows = [0], [], []
        for seq, n in zip(seqs, num_new_tokens):
            start = seq.num_computed_tokens
            end = start + n
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            query_start.append(query_start[-1] + n)
            seq_lens.append(end)
            if end == seq.num_tokens:
                logits_rows.append(query_start[-1] - 1)
        max_blocks = max(len(s.block_table) for s in seqs)
        tables = [s.block_table + [0] * (max_blocks - len(s.block_table)) for s in seqs]
        dev = self.device

        def to_dev(values, dtype):
            return torch.tensor(values, dtype=dtype).to(dev, non_blocking=True)

        num_decodes = next((i for i, n in enumerate(num_new_tokens) if n != 1), len(num_new_tokens))
        meta = AttentionMetadata(
            slot_mapping=to_dev(slots, torch.int64),
            query_start_loc=to_dev(query_start, torch.int32),
            seq_lens=to_dev(seq_lens, torch.int32),
            block_tables=to_dev(tables, torch.int32),
            num_decodes=num_decodes,
            max_query_len=max(num_new_tokens),
            max_seq_len=max(seq_lens),
            query_start_loc_cpu=query_start,
            seq_lens_cpu=seq_lens,
        )
        return to_dev(input_ids, torch.int64), to_dev(positions, torch.int64), meta, logits_rows

    @torch.inference_mode()
    def execute(self, seqs, num_new_tokens) -> StepResult:
        """Run the forward for one step and sample for every sequence that reached its last token."""
        with self._stream_context():
            input_ids, positions, meta, logits_rows = self.prepare(seqs, num_new_tokens)
            if self.decode_graphs is not None and meta.num_decodes == len(seqs) and self.decode_graphs.can_run(len(seqs)):
                hidden = self.decode_graphs.run(input_ids, positions, meta.slot_mapping, meta.seq_lens,
                                                meta.block_tables)
            else:
                hidden = self.model(input_ids, positions, self.kv_caches, meta)
            sampled_seqs = [s for s, n in zip(seqs, num_new_tokens) if s.num_computed_tokens + n == s.num_tokens]
            if not sampled_seqs:
                return StepResult([], SamplerOutput(torch.empty(0, dtype=torch.int64)))
            logits = self.model.compute_logits(hidden[torch.tensor(logits_rows, device=self.device)])
            rows = [self.sampling_row(s) for s in sampled_seqs]
            output = self.sampler(logits, rows)
            # The one host sync of the step: the scheduler needs the tokens.
            output.token_ids = output.token_ids.cpu()
            if output.logprobs is not None:
                output.logprobs = output.logprobs.cpu()
                if output.top_ids is not None:
                    output.top_ids, output.top_logprobs = output.top_ids.cpu(), output.top_logprobs.cpu()
            return StepResult(sampled_seqs, output)

    def sampling_row(self, seq) -> SamplingRow:
        p = seq.params
        banned = ()
        if seq.num_output_tokens < p.min_tokens:
            banned = tuple(p.stop_token_ids) + (() if p.ignore_eos else self.eos_token_ids)
        return SamplingRow(p, seq.seed, seq.num_output_tokens, banned)
