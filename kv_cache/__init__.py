"""The paged KV cache's bookkeeping: block pool and per-sequence block tables with prefix caching.

Block ids only; the K/V tensors they index belong to the model (models/kv_tensors.py).
"""
