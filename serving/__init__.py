"""The serving layer: one experiment cell on one engine.

``models`` writes the model directory vLLM serves, ``server`` runs ``vllm serve`` as a child process,
``runner`` runs one cell (server + replay + metrics) on this machine, ``cell`` holds the cell's types.
Above ``policies/`` and ``workloads/``; below ``simulator/`` and ``orchestrator/``.
"""
