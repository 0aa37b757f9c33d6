"""Token-id prompts of exact length, with real shared prefixes so prefix caching is exercised.

Equal ``prefix_hash_ids`` (Mooncake's 512-token blocks) give identical token blocks, deterministic
per (seed, hash id); the rest of a prompt is unique per (seed, request id). Text prompts (ShareGPT)
are tokenized with the model directory's tokenizer.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from workloads.trace import MOONCAKE_BLOCK_TOKENS, Request


def load_tokenizer(model_dir: str | Path):
    """``tokenizers.Tokenizer`` from ``model_dir/tokenizer.json`` (or a tokenizer.json path)."""
    from tokenizers import Tokenizer

    path = Path(model_dir)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no tokenizer.json at {str(path)!r} (write a model dir with serving.models.write_model_dir)"
        )
    return Tokenizer.from_file(str(path))


def ordinary_ids(tok) -> tuple[int, int]:
    """``[low, high)``: the vocabulary without the special tokens at its start or end, which a
    synthetic prompt must never contain (ours: ``<unk>``, ``<s>``, ``</s>`` = 0, 1, 2 -> [3, vocab))."""
    special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    low, high = 0, tok.get_vocab_size()
    while low in special:
        low += 1
    while high - 1 in special and high > low:
        high -= 1
    return low, high


def _rng(seed: int, kind: int, key: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, kind, key & 0xFFFFFFFFFFFF])


def materialize(requests: list[Request], model_dir: str | Path, seed: int = 0) -> None:
    """Fill ``prompt_token_ids`` in place with exactly ``prompt_len`` ordinary ids of the model
    directory's tokenizer (``ordinary_ids``)."""
    tok = load_tokenizer(model_dir)
    low, high = ordinary_ids(tok)
    blocks: dict[int, np.ndarray] = {}

    def block(h: int) -> np.ndarray:
        if h not in blocks:
            blocks[h] = _rng(seed, 0, h).integers(low, high, MOONCAKE_BLOCK_TOKENS)
        return blocks[h]

    for r in requests:
        if r.prompt is not None:
            ids = tok.encode(r.prompt, add_special_tokens=False).ids[: r.prompt_len]
            r.prompt_len = len(ids)  # the tokenizer is the truth (clip_lengths may have lowered it)
            r.prompt_token_ids = list(ids)
            continue
        parts = [block(h) for h in r.prefix_hash_ids[: -(-r.prompt_len // MOONCAKE_BLOCK_TOKENS)]]
        have = sum(len(p) for p in parts)
        if have < r.prompt_len:
            key = zlib.crc32(r.request_id.encode())
            parts.append(_rng(seed, 1, key).integers(low, high, r.prompt_len - have))
        ids = np.concatenate(parts)[: r.prompt_len] if parts else np.zeros(0, dtype=np.int64)
        r.prompt_token_ids = ids.tolist()
