"""vLLM's placement with first-in-first-out eviction of cached blocks: a cached block's place in the
eviction order is fixed when it first becomes evictable, and a prefix-cache hit does not refresh it
(FIFO replacement, Belady, IBM Sys. J. 1966; the policy is ``policies/eviction/fifo.py``). Compare
with ``lru_evict``: hot shared prefixes survive under LRU but age out under FIFO."""

from policies.allocators.lru_evict import LRUEvictAllocator


class FIFOEvictAllocator(LRUEvictAllocator):
    name = "fifo_evict"
    eviction = "fifo"
