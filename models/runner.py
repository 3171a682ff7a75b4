"""Runs one scheduled step on the model: builds the flat batch, runs the forward, samples."""

from __future__ import annotations

import array
import contextlib
import dataclasses

import torch

from models.attention.metadata import AttentionMetadata
from models.cuda_graphs import DecodeGraphs
from models.decoder import DecoderModel
from models.host_copy import to_device
from models.kv_tensors import allocate_kv_cache
from models.rows import PlainRow, Row
from models.sampler import Sampler, SamplerOutput, SamplingParams
from models.stop_rule import StopRule


@dataclasses.dataclass(slots=True)
class StepResult:
    """A launched step. Its sampled tokens are on the device at once (`device_token_ids`, the input of
    the next step's placeholders) and in `output` on the host once `wait()` returns."""

    sampled_seqs: list[Row]     # the sequences that sampled, in row order of `output`
    output: SamplerOutput
    device_token_ids: torch.Tensor | None = None
    ready: torch.cuda.Event | None = None

    def wait(self) -> SamplerOutput:
        """Block until the host copies of the step's outputs are complete."""
        if self.ready is not None:
            self.ready.synchronize()
            self.ready = None
        return self.output


class ModelRunner:
    """Owns a model, its KV cache tensors and its CUDA stream (several runners can share a process).

    It runs rows (models.rows.Row: the scheduler's sequences, or plain rows) and only reads them.
    """

    def __init__(self, model: DecoderModel, block_size: int, kv_dtype: torch.dtype, device: torch.device,
                 stop_rule: StopRule = StopRule()):
        self.model = model
        self.device = device
        self.block_size = block_size
        self.kv_dtype = kv_dtype
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.sampler = Sampler(stop_rule)
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

    def warm_up(self) -> None:
        """Run each kind of eager step once: prefills of one and of several tokens, one and two
        sequences, decodes mixed with a prefill. torch.compile builds its shape variants now rather
        than under the first requests (each costs seconds). Everything is written to the scratch block.
        """
        n = min(self.block_size, 4)
        greedy = SamplingParams(temperature=0)

        def row(num_tokens: int, num_computed: int) -> PlainRow:
            return PlainRow([0] * num_tokens, [self.scratch_block], num_computed, greedy)

        for shape in ([(1, 0)], [(n, 0)], [(n, 0), (n, 0)], [(n, n - 1), (n, 0)], [(n, n - 1), (n, n - 1)]):
            self.execute([row(t, c) for t, c in shape], [t - c for t, c in shape]).wait()

    def profile_peak_memory(self, num_tokens: int, num_seqs: int, max_model_len: int) -> int:
        """Bytes of activation memory a worst-case step needs beyond the weights (CUDA only).

        Runs one prefill of `num_tokens` tokens (in sequences no longer than `max_model_len`) into a
        throwaway cache and samples `num_seqs` rows.
        """
        lengths = [min(max_model_len, num_tokens - start) for start in range(0, num_tokens, max_model_len)]
        blocks_per_seq = [-(-n // self.block_size) for n in lengths]
        self.allocate_kv_cache(sum(blocks_per_seq))
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        params = SamplingParams(temperature=1.0, top_p=0.9)
        rows, first_block = [], 0
        for n, nb in zip(lengths, blocks_per_seq):
            rows.append(PlainRow([0] * n, list(range(first_block, first_block + nb)), params=params))
            first_block += nb
        self.execute(rows, lengths)
        with torch.inference_mode():
            logits = torch.zeros(num_seqs, self.model.cfg.vocab_size, device=self.device)
            self.sampler(logits, [rows[0]] * num_seqs)
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

    def prepare(self, seqs: list[Row],
                num_new_tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor]:
        """Flatten the step into input ids, positions, attention metadata and the rows to sample from
        (the last row of each sequence that completes, and the rows of its draft tokens before it:
        the draft tokens' verification). Two host->device copies: one of int64 (ids,
        positions, slots, rows), one of int32 (offsets, lengths, tables)."""
        bs = self.block_size
        input_ids, positions, slots = [], [], []
        query_start, seq_lens, logits_rows = [0], [], []
        for seq, n in zip(seqs, num_new_tokens):
            start = seq.num_computed_tokens
            end = start + n
            input_ids.extend(seq.token_ids[start:end])
            table = seq.block_table
            if n == 1:
                positions.append(start)
                slots.append(table[start // bs] * bs + start % bs)
            else:
                positions.extend(range(start, end))
                slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            query_start.append(query_start[-1] + n)
            seq_lens.append(end)
            if end == seq.num_tokens:  # it samples: after its last token, and after each draft before it
                last = query_start[-1] - 1
                logits_rows.extend(range(last - seq.num_draft_tokens, last + 1))
        max_blocks = max(len(s.block_table) for s in seqs)
        ints = array.array("i", query_start)
        ints.extend(seq_lens)
        padding = array.array("i", bytes(4 * max_blocks))
        for s in seqs:
            ints.extend(s.block_table)
            ints.extend(padding[:max_blocks - len(s.block_table)])
        num_tokens, num_seqs = len(input_ids), len(seqs)
        longs = array.array("q", input_ids)
        for part in (positions, slots, logits_rows):
            longs.extend(part)
        longs = to_device(longs, torch.int64, self.device)
        ints = to_device(ints, torch.int32, self.device)
        num_decodes = next((i for i, n in enumerate(num_new_tokens) if n != 1), len(num_new_tokens))
        meta = AttentionMetadata(
            slot_mapping=longs[2 * num_tokens:3 * num_tokens],
            query_start_loc=ints[:num_seqs + 1],
            seq_lens=ints[num_seqs + 1:2 * num_seqs + 1],
            block_tables=ints[2 * num_seqs + 1:].view(num_seqs, max_blocks),
            num_decodes=num_decodes,
            max_query_len=max(num_new_tokens),
            max_seq_len=max(seq_lens),
            query_start_loc_cpu=query_start,
            seq_lens_cpu=seq_lens,
        )
        return longs[:num_tokens], longs[num_tokens:2 * num_tokens], meta, longs[3 * num_tokens:]

    @torch.inference_mode()
    def execute(self, seqs: list[Row], num_new_tokens: list[int], pending_inputs=None) -> StepResult:
        """Launch the forward for one step and the sampling of every sequence that reaches its last
        token; returns without waiting for the GPU (call `wait()` on the result for the tokens).
        Raises models.errors.SequenceError when one sequence's own data fails its sampling.

        pending_inputs: (device tokens of the step in flight, [(input row, its row there)]) for the
        sequences whose input token is still a placeholder.
        """
        with self._stream_context():
            input_ids, positions, meta, logits_rows = self.prepare(seqs, num_new_tokens)
            if pending_inputs is not None and pending_inputs[1]:
                prev_tokens, pairs = pending_inputs
                dst, src = to_device([d for d, _ in pairs] + [s for _, s in pairs], torch.int64,
                                     self.device).split(len(pairs))
                input_ids.index_copy_(0, dst, prev_tokens.index_select(0, src))
            graphs = self.decode_graphs
            if graphs is not None and meta.num_decodes == len(seqs) and graphs.can_run(len(seqs)):
                hidden = self.decode_graphs.run(input_ids, positions, meta.slot_mapping, meta.seq_lens,
                                                meta.block_tables)
            else:
                hidden = self.model(input_ids, positions, self.kv_caches, meta)
            # A sequence with d draft tokens samples d + 1 rows, in position order.
            sampled_seqs = [s for s, n in zip(seqs, num_new_tokens) if s.num_computed_tokens + n == s.num_tokens
                            for _ in range(1 + s.num_draft_tokens)]
            if not sampled_seqs:
                return StepResult([], SamplerOutput(torch.empty(0, dtype=torch.int64)))
            if logits_rows.shape[0] < hidden.shape[0]:
                hidden = hidden.index_select(0, logits_rows)
            logits = self.model.compute_logits(hidden)
            output = self.sampler(logits, sampled_seqs)
            device_tokens = output.token_ids
            host = SamplerOutput(*(self._to_host(t) for t in (output.token_ids, output.logprobs, output.top_ids,
                                                              output.top_logprobs)))
            ready = None
            if self.device.type == "cuda":
                ready = torch.cuda.Event()
                ready.record()
            return StepResult(sampled_seqs, host, device_tokens, ready)

    def _to_host(self, t: torch.Tensor | None) -> torch.Tensor | None:
        # Non-blocking into pinned memory: the host waits on the step's event, not here.
        if t is None or self.device.type != "cuda":
            return t
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        return host
