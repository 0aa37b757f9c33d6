import json

import pytest
from tokenizers import Tokenizer

from serving.models import ModelDirError, load_model_config, write_model_dir


def test_tiny_model_dir_is_servable_shape(tiny_model_dir):
    config = load_model_config(tiny_model_dir)
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] == 256 and config["num_hidden_layers"] == 2
    # The CPU attention kernel rejects head_dim < 64.
    assert config["head_dim"] == config["hidden_size"] // config["num_attention_heads"] == 64
    tok = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    assert tok.get_vocab_size() <= config["vocab_size"]
    assert tok.token_to_id("<s>") == config["bos_token_id"] and tok.token_to_id("</s>") == config["eos_token_id"]
    text = "the quick brown fox jumps over the lazy dog"
    ids = tok.encode(text).ids
    assert 0 < len(ids) < len(text)  # BPE merges learnt something
    assert tok.decode(ids) == text


# The public config.json values (huggingface.co/meta-llama/Llama-3.1-8B, huggingface.co/Qwen/Qwen2.5-7B).
PUBLIC = {
    "llama3_8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                  "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072},
    "qwen2_5_7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                   "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 131072},
}  # fmt: skip


@pytest.mark.parametrize("preset", ["llama3_8b", "qwen2_5_7b"])
def test_real_model_shapes(tmp_path, preset):
    config = json.loads((write_model_dir(preset, tmp_path) / "config.json").read_text())
    assert {k: config[k] for k in PUBLIC[preset]} == PUBLIC[preset]
    assert (tmp_path / preset / "tokenizer.json").exists()


def test_overrides_get_their_own_dir(tmp_path):
    a = write_model_dir("tiny", tmp_path)
    b = write_model_dir("tiny", tmp_path, overrides={"num_hidden_layers": 4})
    assert a != b and load_model_config(b)["num_hidden_layers"] == 4


def test_errors_name_the_bad_value(tmp_path):
    with pytest.raises(KeyError, match="llama9"):
        write_model_dir("llama9", tmp_path)
    with pytest.raises(ModelDirError, match="no config.json"):
        load_model_config(tmp_path)
