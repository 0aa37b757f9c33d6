"""Cell checks that need no server: each raises ``ValueError`` naming the config key and the value.

They catch, before the first server starts, mistakes that vLLM would report only after a server
start-up per cell (or never): a typo added with ``+``, a KV cache too small for one request, flags
that fight the orchestrator's own ``--host``/``--port``.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from orchestrator.config import MOVED_KEYS, unknown_keys

# Flags the orchestrator sets on every server itself: it must know where the server listens.
RESERVED_FLAGS = ("--host", "--port")


def check_known_keys(cfg: DictConfig) -> None:
    for key, known in unknown_keys(cfg).items():
        group = key.rpartition(".")[0] or "the root config"
        raise ValueError(f"{key}: unknown key (added with '+'); {group} has: {', '.join(known)}")


def measured_config(cfg: DictConfig) -> DictConfig:
    """A composed cell config as what it measures: resolved, read-only, without the placeholders of
    moved keys. A key added with ``+`` that nothing reads, or a moved key, fails here naming it."""
    check_known_keys(cfg)
    moved = [f"{old} moved to {new}" for old, new in MOVED_KEYS.items()
             if OmegaConf.select(cfg, old, default=None) is not None]  # fmt: skip
    if moved:
        raise ValueError("; ".join(moved) + " (conf/engine/; docs/experiments.md)")
    data = OmegaConf.to_container(cfg, resolve=True)
    for old in MOVED_KEYS:
        group, key = old.split(".")
        data.get(group, {}).pop(key, None)
    out = OmegaConf.create(data)
    OmegaConf.set_readonly(out, True)
    return out


def check_extra_args(extra_args: list[str], key: str = "engine.extra_args") -> None:
    for arg in map(str, extra_args):
        flag = arg.split("=", 1)[0]
        if flag in RESERVED_FLAGS:
            raise ValueError(f"{key}: {arg!r} is set by the orchestrator (it picks a free port on 127.0.0.1)")


def check_kv_cache_fits(engine: DictConfig, max_model_len: int) -> None:
    """vLLM refuses to start when one ``max_model_len`` request does not fit in the KV cache; block 0
    is its null block, so ``num_gpu_blocks`` blocks hold ``(n - 1) * block_size`` tokens."""
    blocks, block_size = engine.num_gpu_blocks, engine.block_size
    if blocks is None or block_size is None:  # sized by vLLM from memory: it checks itself
        return
    need = -(-max_model_len // block_size) + 1
    if blocks < need:
        raise ValueError(
            f"engine.num_gpu_blocks={blocks} blocks of engine.block_size={block_size} tokens hold "
            f"{(blocks - 1) * block_size} tokens (block 0 is vLLM's null block), less than one request of "
            f"engine.max_model_len={max_model_len}; set num_gpu_blocks >= {need} or lower max_model_len"
        )


def check_engine(cfg: DictConfig, max_model_len: int) -> None:
    check_extra_args(list(cfg.engine.extra_args))
    check_kv_cache_fits(cfg.engine, max_model_len)
