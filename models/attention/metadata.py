"""What an attention backend needs to know about one forward step over the paged cache."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(slots=True)
class AttentionMetadata:
    """One step's batch, flattened: sequence i owns query rows query_start_loc[i]:query_start_loc[i+1].

    Sequences are ordered decodes first (one query token each), then prefills (one or more tokens,
    possibly a chunk in the middle of a prompt). Every new token's K/V is written to its slot
    (block_id * block_size + offset) before attention reads the cache, so a sequence attends to
    its cached prefix and to its own new tokens through the same block table.
    """

    slot_mapping: torch.Tensor      # [num_tokens] int64, where each new token's K/V goes
    query_start_loc: torch.Tensor   # [num_seqs + 1] int32
    seq_lens: torch.Tensor          # [num_seqs] int32, context length including this step's tokens
    block_tables: torch.Tensor      # [num_seqs, max_blocks] int32, padded with 0
    num_decodes: int                # leading sequences with exactly one query token
    max_query_len: int
    max_seq_len: int
    # Host copies, so backends that loop over sequences never read the device. Under CUDA graphs
    # the decode rows' host lengths are an upper bound (max_model_len), so launch shapes stay fixed.
    query_start_loc_cpu: list[int] = dataclasses.field(default_factory=list)
    seq_lens_cpu: list[int] = dataclasses.field(default_factory=list)
    # Tensors a backend derives once per step and reuses in every layer (keyed by the backend).
    scratch: dict = dataclasses.field(default_factory=dict)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)
