"""vLLM's own allocation (PagedAttention, SOSP'23; prefix caching as in vLLM v1): hand out the front
of the free queue, where recently freed uncached blocks sit (LIFO, for locality) ahead of cached
blocks in least-recently-used order. Nothing is overridden, so the BlockPool stays stock vLLM."""

from policies.base import BlockAllocator


class DefaultAllocator(BlockAllocator):
    name = "default"
