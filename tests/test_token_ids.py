"""Token ids come from the model directory the engine is built from, not from a constant."""

from __future__ import annotations

from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import RequestStatus

from policies.driver import run
from policies.inprocess import make_request, make_scheduler, token_ids
from serving.models import write_model_dir

PROMPT = list(range(10, 26))  # 16 ordinary ids of the tiny tokenizer (vocab 512)


def test_the_ids_are_read_from_the_model_directory(tiny_model_dir, tmp_path):
    # Our tokenizer's special tokens are <unk>, <s>, </s> = 0, 1, 2: the lowest ordinary id is 3.
    assert token_ids(make_scheduler(tiny_model_dir).vllm_config.model_config).eos == 2
    other = write_model_dir("tiny", tmp_path, overrides={"eos_token_id": 7})
    tokens = token_ids(make_scheduler(other).vllm_config.model_config)
    assert (tokens.eos, tokens.ordinary) == (7, 3)


def test_a_request_stops_on_the_model_directorys_eos(tmp_path):
    sched = make_scheduler(write_model_dir("tiny", tmp_path, overrides={"eos_token_id": 7}))
    eos = token_ids(sched.vllm_config.model_config).eos
    r = make_request("r", PROMPT, 10, ignore_eos=False, eos_token_id=eos)
    sched.add_request(r)
    for token in (2, 7):  # 2: the EOS of the usual tiny model, an ordinary token for this one
        so = sched.schedule()
        sched.update_from_output(so, ModelRunnerOutput(req_ids=["r"], req_id_to_index={"r": 0},
                                                       sampled_token_ids=[[token]]))
    assert list(r.output_token_ids) == [2, 7] and r.status == RequestStatus.FINISHED_STOPPED


def test_the_fake_forward_pass_samples_the_models_eos_last(tmp_path):
    sched = make_scheduler(write_model_dir("tiny", tmp_path, overrides={"eos_token_id": 7}))
    stops = make_request("stops", PROMPT, 4, ignore_eos=False, eos_token_id=7)
    ignores = make_request("ignores", PROMPT, 4, eos_token_id=7)  # ignore_eos: stopped by max_tokens
    assert run(sched, [stops, ignores]).finished == ["stops", "ignores"]
    assert list(stops.output_token_ids) == list(ignores.output_token_ids) == [3, 3, 3, 7]
    assert stops.status == RequestStatus.FINISHED_STOPPED
    assert ignores.status == RequestStatus.FINISHED_LENGTH_CAPPED


def test_prompts_use_the_tokenizers_ordinary_ids(tiny_model_dir):
    from tokenizers import Tokenizer, models

    from workloads.prompts import load_tokenizer, ordinary_ids

    assert ordinary_ids(load_tokenizer(tiny_model_dir)) == (3, 512)  # <unk>, <s>, </s> first
    tail = Tokenizer(models.WordLevel({"a": 0, "b": 1, "c": 2}, unk_token="a"))
    tail.add_special_tokens(["<|end|>", "<|pad|>"])  # ids 3, 4: special tokens at the end, as Llama 3's
    assert ordinary_ids(tail) == (0, 3)
