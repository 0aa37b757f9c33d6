"""Built-in eviction policies (which cached-but-free KV block is reused first), one per file."""
