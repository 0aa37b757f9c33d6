import json

import pytest
from tokenizers import Tokenizer

from serving.models import MODEL_PRESETS, ModelDirError, load_model_config, write_model_dir


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


@pytest.mark.parametrize("preset", ["llama3_8b", "qwen2_5_7b"])
def test_real_model_shapes(tmp_path, preset):
    config = json.loads((write_model_dir(preset, tmp_path) / "config.json").read_text())
    public = MODEL_PRESETS[preset]
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        assert config[key] == public[key]
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
