"""Least recently used (vLLM's own order, the default): the cached block released longest ago is
reused first; a prefix-cache hit takes a block out of the order and its next release puts it at the
end (O'Neil et al.'s LRU baseline, SIGMOD'93). vLLM keeps this order implicitly at the back of its free
queue; here it is an ordered dict, so it can be combined with any placement allocator."""

from collections import OrderedDict

from policies.base import EvictionPolicy


class LRU(EvictionPolicy):
    name = "lru"

    def __init__(self) -> None:
        self.order: OrderedDict[int, None] = OrderedDict()  # block id, least recently released first

    def on_free(self, blocks):
        order = self.order
        for block in blocks:  # vLLM passes them in eviction order
            order[block.block_id] = None
            order.move_to_end(block.block_id)

    def evict(self, free, k):
        out, order = [], self.order
        while order and len(out) < k:
            block_id, _ = order.popitem(last=False)
            if free.is_free(block_id):  # else it was hit since; its next release re-enters it
                out.append(block_id)
        return out
