"""Token-id prompts of a request's logged length, reproducible by seed.

Traces carry lengths, not text. ``SyntheticPrompts`` turns request ``index`` of a
workload into ``prompt_tokens`` token ids drawn uniformly from the vocabulary minus
the special ids (BOS, EOS, pad, ...), so a replay sends exactly the logged length
and never an accidental end-of-sequence.

Shared prefixes: a request with ``prefix_block_ids`` (Mooncake ``hash_ids``) starts
with one block of ``block_tokens`` ids per block id, and a block's ids depend only
on (seed, block id), so requests that share a block id share those tokens exactly
and the engine's prefix cache sees the sharing the trace logged. The rest of the
prompt depends on (seed, request index), so unrelated requests share nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from servescope.bench.workloads.workload import Request, Workload

_BLOCK_STREAM = 1
_REQUEST_STREAM = 0


class SyntheticPrompts:
    """Deterministic token-id prompts within a vocabulary, avoiding special ids."""

    def __init__(self, vocab_size: int, special_ids: Iterable[int] = (), seed: int = 0, block_tokens: int = 512):
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
        self.allowed_ids = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), np.asarray(list(special_ids), np.int64))
        if self.allowed_ids.size == 0:
            raise ValueError("every id is special: nothing left to draw prompts from")
        self.vocab_size = vocab_size
        self.seed = seed
        self.block_tokens = block_tokens

    def _draw(self, stream: int, key: int, count: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream, key])
        return self.allowed_ids[rng.integers(0, self.allowed_ids.size, count)]

    def block_ids(self, block_id: int) -> np.ndarray:
        """Returns the ``block_tokens`` token ids of shared prefix block ``block_id`` (int64 array)."""
        return self._draw(_BLOCK_STREAM, block_id, self.block_tokens)

    def token_ids(self, request: Request, index: int) -> list[int]:
        """Returns request ``index``'s prompt as ``request.prompt_tokens`` token ids."""
        length = request.prompt_tokens
        blocks = request.prefix_block_ids or ()
        needed_blocks = min(len(blocks), -(-length // self.block_tokens))
        parts = [self.block_ids(block) for block in blocks[:needed_blocks]]
        prefix = np.concatenate(parts)[:length] if parts else np.zeros(0, np.int64)
        tail = self._draw(_REQUEST_STREAM, index, length - prefix.size)
        return np.concatenate([prefix, tail]).tolist()

    def for_workload(self, workload: Workload) -> list[list[int]]:
        """Returns every request's prompt token ids, in workload order."""
        has_blocks = any(request.prefix_block_ids for request in workload.requests)
        if has_blocks and workload.prefix_block_tokens != self.block_tokens:
            raise ValueError(
                f"{workload.name} has {workload.prefix_block_tokens}-token prefix blocks; "
                f"build SyntheticPrompts with block_tokens={workload.prefix_block_tokens}"
            )
        return [self.token_ids(request, index) for index, request in enumerate(workload.requests)]
