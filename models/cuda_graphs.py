"""CUDA graphs of the decode forward: one per bucketed batch size, replayed from static buffers.

A decode step of a small model is a few hundred short kernels; launching them one by one from
Python costs more than running them. Captured once, a step is one graph launch. Batches are padded
up to the next bucket; padding rows compute garbage into a scratch KV block nobody owns.
"""

from __future__ import annotations

import torch

from models.attention.metadata import AttentionMetadata

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512)


class DecodeGraphs:
    """Static inputs, captured graphs and their outputs for pure-decode steps up to `max_batch`."""

    def __init__(self, model, kv_caches, block_size: int, max_batch: int, max_model_len: int, scratch_block: int):
        device = kv_caches[0][0].device
        self.buckets = [b for b in BUCKETS if b < max_batch] + [max_batch]
        self.max_batch = max_batch
        self.max_model_len = max_model_len
        self.scratch_slot = scratch_block * block_size
        self.scratch_block = scratch_block
        self.max_blocks = -(-max_model_len // block_size)
        self.input_ids = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((max_batch,), self.scratch_slot, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(max_batch, dtype=torch.int32, device=device)
        self.block_tables = torch.full((max_batch, self.max_blocks), scratch_block, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(max_batch + 1, dtype=torch.int32, device=device)
        # A capture stream of its own: torch keeps cuBLAS/cuBLASLt workspaces per (handle, stream), and
        # a captured GEMM keeps the workspace it was captured with. On torch.cuda.graph's one default
        # capture stream, two engines captured by one thread share a workspace, and their graphs,
        # replayed at once on the engines' streams, race on it: system4 (two NF4 engines) hung an H200
        # under load that way, and serves it with this (BENCHMARKS.md, the five presets).
        self.capture_stream = torch.cuda.Stream(device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self._capture(model, kv_caches)

    def _meta(self, b: int) -> AttentionMetadata:
        # Host lengths are upper bounds: the kernels' launch shape must not change between replays.
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:b], query_start_loc=self.query_start_loc[:b + 1],
            seq_lens=self.seq_lens[:b], block_tables=self.block_tables[:b], num_decodes=b, max_query_len=1,
            max_seq_len=self.max_model_len, query_start_loc_cpu=list(range(b + 1)),
            seq_lens_cpu=[self.max_model_len] * b)

    @torch.inference_mode()
    def _capture(self, model, kv_caches) -> None:
        pool = torch.cuda.graph_pool_handle()
        for b in reversed(self.buckets):  # largest first, so smaller graphs reuse its memory
            meta = self._meta(b)
            for _ in range(2):  # compile and warm every kernel outside the capture
                model(self.input_ids[:b], self.positions[:b], kv_caches, meta)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=self.capture_stream):
                self.outputs[b] = model(self.input_ids[:b], self.positions[:b], kv_caches, meta)
            self.graphs[b] = graph
        torch.cuda.synchronize()

    def can_run(self, num_seqs: int) -> bool:
        return num_seqs <= self.max_batch

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, seq_lens: torch.Tensor,
            tables: torch.Tensor) -> torch.Tensor:
        """Hidden states [n, hidden] for n decode rows given as device tensors (tables [n, width])."""
        n = input_ids.shape[0]
        b = next(b for b in self.buckets if b >= n)
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(slots)
        self.seq_lens[:n].copy_(seq_lens)
        self.block_tables[:n, :tables.shape[1]].copy_(tables)
        if b > n:  # padding rows: a one-token context in the scratch block
            self.slot_mapping[n:b].fill_(self.scratch_slot)
            self.seq_lens[n:b].fill_(1)
            self.block_tables[n:b, 0].fill_(self.scratch_block)
        self.graphs[b].replay()
        return self.outputs[b][:n]
