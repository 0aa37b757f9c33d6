"""Local model directories that vLLM can serve without any download.

A model directory holds a HuggingFace-style ``config.json`` and a byte-level BPE tokenizer trained
offline with the ``tokenizers`` library. Weights are never written: vLLM fills them with
``--load-format dummy`` (random values), which is all a scheduling experiment needs.

Presets:
- ``tiny``: Llama architecture small enough for CPU tests (head_dim 64: the CPU attention kernel
  rejects smaller heads).
- ``llama3_8b``, ``qwen2_5_7b``: the public ``config.json`` architecture values of
  Llama-3.1-8B and Qwen2.5-7B, for GPU runs and the simulator's step-time model. Token ids
  (bos/eos) are those of our small tokenizer, since the real tokenizers cannot be downloaded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
TOKENIZER_VOCAB_SIZE = 512

_TINY = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": TOKENIZER_VOCAB_SIZE,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}

# https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json
_LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}

# https://huggingface.co/Qwen/Qwen2.5-7B/blob/main/config.json
_QWEN2_5_7B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 131072,
    "max_window_layers": 28,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "use_sliding_window": False,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": _TINY,
    "llama3_8b": _LLAMA3_8B,
    "qwen2_5_7b": _QWEN2_5_7B,
}

DEFAULT_MODELS_ROOT = Path("results/models")


class ModelDirError(ValueError):
    """A model directory that vLLM could not serve (missing or broken config.json)."""


def write_model_dir(
    preset: str,
    root: str | Path = DEFAULT_MODELS_ROOT,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Write (or reuse) ``root/<preset>`` with config.json and tokenizer; return the directory.

    ``overrides`` replaces config.json keys (e.g. ``{"num_hidden_layers": 4}``); the directory
    name then carries a short hash so differently-shaped models never share a directory.
    """
    if preset not in MODEL_PRESETS:
        raise KeyError(f"unknown model preset {preset!r}; known: {sorted(MODEL_PRESETS)}")
    # Our tokenizer's <s> and </s> (an override may name others, e.g. to test that engines read them).
    config = {"bos_token_id": 1, "eos_token_id": 2, **MODEL_PRESETS[preset], **(overrides or {})}
    name = preset
    if overrides:
        import hashlib

        name += "-" + hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
    model_dir = Path(root) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    config_text = json.dumps(config, indent=2, sort_keys=True)
    config_path = model_dir / "config.json"
    if not config_path.exists() or config_path.read_text() != config_text:
        config_path.write_text(config_text)
    (model_dir / "generation_config.json").write_text(
        json.dumps({k: config[k] for k in ("bos_token_id", "eos_token_id")}, indent=2)
    )
    if not (model_dir / "tokenizer.json").exists():
        _write_tokenizer(model_dir)
    return model_dir.resolve()


def load_model_config(model_dir: str | Path) -> dict[str, Any]:
    """Read ``config.json`` of a model directory, with an error naming the directory if unusable."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(f"model directory {str(model_dir)!r} does not exist")
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelDirError(
            f"model directory {str(model_dir)!r} has no config.json "
            "(write one with serving.models.write_model_dir)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{path} is not valid JSON: {e}") from e


def _corpus(num_words: int = 40_000, seed: int = 0) -> list[str]:
    """English-looking pseudo-words, so BPE learns merges like a real tokenizer would."""
    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "st", "th", "tr", "pl"]
    vowels = ["a", "e", "i", "o", "u", "ea", "ou", "io"]
    codas = ["", "n", "r", "s", "t", "l", "nd", "ng", "st", "ck"]
    words = [
        "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.randint(1, 3)))
        for _ in range(num_words)
    ]
    return [" ".join(words[i : i + 12]) + "." for i in range(0, num_words, 12)]


def _write_tokenizer(model_dir: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=[UNK, BOS, EOS],  # ids 0, 1, 2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": BOS,
                "eos_token": EOS,
                "unk_token": UNK,
                "add_bos_token": False,
                "model_max_length": 1_000_000,
                "clean_up_tokenization_spaces": False,
            },
            indent=2,
        )
    )
