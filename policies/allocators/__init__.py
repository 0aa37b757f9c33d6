"""Built-in KV block allocators, one per file (registered in policies.registry)."""
