"""Random attention batches over a paged cache, and how close a kernel's output must be to the reference:
shared by the Triton and the FlashAttention-4 tests."""

import torch

from models.attention.metadata import AttentionMetadata
from models.attention.torch_ref import TorchReferenceBackend, write_kv

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-4}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class Case:
    """A random batch over a paged cache: sequence i has context specs[i][0], of which the last
    specs[i][1] tokens are this step's queries; blocks are shuffled and block 0 is never used, so
    the zero padding of the block tables points at garbage.

    The cache for the kernels holds NaN in every slot outside the contexts (any stray read shows up),
    except, with `finite_page_tails`, zeros after the context in each sequence's last page;
    `clean()` gives the same cache with zeros there, which the reference (it reads whole blocks) needs.
    """

    def __init__(self, specs, block_size, num_q_heads, num_kv_heads, head_dim, dtype, num_decodes=0, seed=0,
                 finite_page_tails=False, kv_dtype=None):
        gen = torch.Generator().manual_seed(seed)
        rand = lambda *shape: torch.randn(*shape, generator=gen).to(dtype)  # noqa: E731
        blocks_per_seq = [_cdiv(ctx, block_size) for ctx, _ in specs]
        max_blocks = max(blocks_per_seq) + 1  # a spare column of 0 padding in every table
        num_blocks = sum(blocks_per_seq) + 3
        ids = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()
        tables = torch.zeros(len(specs), max_blocks, dtype=torch.int32)
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.k_cache = torch.full(shape, float("nan"), dtype=kv_dtype or dtype)  # kv_dtype: e.g. an fp8 cache
        self.v_cache = torch.full(shape, float("nan"), dtype=kv_dtype or dtype)
        q, k, v, slots, starts = [], [], [], [], [0]
        for i, ((ctx, q_len), nb) in enumerate(zip(specs, blocks_per_seq)):
            tables[i, :nb] = torch.tensor([ids.pop() for _ in range(nb)], dtype=torch.int32)
            pos = torch.arange(ctx)
            seq_slots = tables[i, pos // block_size].long() * block_size + pos % block_size
            seq_k, seq_v = rand(ctx, num_kv_heads, head_dim), rand(ctx, num_kv_heads, head_dim)
            # The cached prefix is in the cache already; the new tokens' K/V come with the step.
            write_kv(seq_k[: ctx - q_len], seq_v[: ctx - q_len], self.k_cache, self.v_cache,
                     seq_slots[: ctx - q_len])
            q.append(rand(q_len, num_q_heads, head_dim))
            k.append(seq_k[ctx - q_len:])
            v.append(seq_v[ctx - q_len:])
            slots.append(seq_slots[ctx - q_len:])
            starts.append(starts[-1] + q_len)
            if finite_page_tails:  # FA4 reads whole pages: the rows past the context in its last page
                last = int(tables[i, nb - 1])
                self.k_cache[last, ctx - (nb - 1) * block_size:] = 0
                self.v_cache[last, ctx - (nb - 1) * block_size:] = 0
        self.q, self.k, self.v = (torch.cat(x).to(DEVICE) for x in (q, k, v))
        self.k_cache, self.v_cache = self.k_cache.to(DEVICE), self.v_cache.to(DEVICE)
        seq_lens = [ctx for ctx, _ in specs]
        self.meta = AttentionMetadata(
            slot_mapping=torch.cat(slots).to(DEVICE), query_start_loc=torch.tensor(starts, dtype=torch.int32,
                                                                                   device=DEVICE),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE), block_tables=tables.to(DEVICE),
            num_decodes=num_decodes, max_query_len=max(q_len for _, q_len in specs), max_seq_len=max(seq_lens),
            query_start_loc_cpu=starts, seq_lens_cpu=seq_lens)
        self.scale = head_dim ** -0.5

    def clean(self, cache):
        return cache.float().nan_to_num(0.0).to(cache.dtype)  # through float32: fp8 has no nan_to_num

    def write_new_kv(self):
        """Put this step's K/V into the cache, as the backend would before attending."""
        write_kv(self.k, self.v, self.k_cache, self.v_cache, self.meta.slot_mapping)

    def reference(self):
        """The reference backend's output, on clean copies of the caches."""
        return TorchReferenceBackend().forward(self.q, self.k, self.v, self.clean(self.k_cache),
                                               self.clean(self.v_cache), self.meta, self.scale)


def assert_close(out, ref, dtype):
    assert not out.isnan().any(), "NaN in the output"
    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    assert err <= TOL[dtype], f"relative error {err:.3g} > {TOL[dtype]}"
