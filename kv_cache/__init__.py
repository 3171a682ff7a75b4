"""The paged KV cache: block pool, per-sequence block tables with prefix caching, and the tensors."""
