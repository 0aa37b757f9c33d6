"""Built-in scheduling policies, one per file (registered in policies.registry)."""
