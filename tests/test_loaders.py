"""Trace loaders on the sample files, and clear errors (file, line, column) on broken files."""

from __future__ import annotations

import json

import pytest

from workloads import SAMPLES, TraceFormatError, load_trace, materialize
from workloads.trace import MOONCAKE_BLOCK_TOKENS


def _check_rows(trace):
    assert len(trace) > 10
    arrivals = [r.arrival_s for r in trace]
    assert arrivals[0] == 0.0 and arrivals == sorted(arrivals)
    assert len({r.request_id for r in trace}) == len(trace)
    assert all(r.prompt_len >= 0 and r.output_len >= 1 for r in trace)


def test_azure_sample():
    t = load_trace("azure", SAMPLES["azure"])
    _check_rows(t)
    assert len(t) == 60
    lines = SAMPLES["azure"].read_text().splitlines()
    _, ctx, gen = lines[1].split(",")
    assert (t[0].prompt_len, t[0].output_len) == (int(ctx), int(gen))
    # datetime strings with 7 fractional digits: 0.1196310 s between the first two rows
    assert t[1].arrival_s == pytest.approx(0.119631, abs=1e-6)


def test_burstgpt_skips_and_counts_failures():
    t = load_trace("burstgpt", SAMPLES["burstgpt"])
    _check_rows(t)
    rows = SAMPLES["burstgpt"].read_text().splitlines()[1:]
    failed = sum(1 for row in rows if row.split(",")[3] == "0")
    assert failed > 0 and t.skipped == {"failed_requests": failed}
    assert len(t) == len(rows) - failed
    assert {r.tenant for r in t} == {"ChatGPT", "GPT-4"}
    assert {r.tenant for r in load_trace("burstgpt", SAMPLES["burstgpt"], tenant_column="Log Type")} == {
        "Conversation log", "API log"}


def test_mooncake_prefixes_are_really_shared(tiny_model_dir):
    t = load_trace("mooncake", SAMPLES["mooncake"])
    _check_rows(t)
    assert t[-1].arrival_s == pytest.approx(t.duration_s)  # ms -> s
    materialize(t, tiny_model_dir)
    vocab = 512
    by_block: dict[int, list[int]] = {}
    for r in t:
        ids = r.prompt_token_ids
        assert len(ids) == r.prompt_len and min(ids) >= 3 and max(ids) < vocab
        for k, h in enumerate(r.prefix_hash_ids):
            block = ids[k * MOONCAKE_BLOCK_TOKENS:(k + 1) * MOONCAKE_BLOCK_TOKENS]
            if len(block) == MOONCAKE_BLOCK_TOKENS:
                assert by_block.setdefault(h, block) == block  # equal hash id -> identical tokens
    shared = [h for h in by_block if sum(h in r.prefix_hash_ids for r in t) > 1]
    assert shared, "the sample must exercise shared prefixes"
    # different hash ids give different blocks
    assert len({tuple(b) for b in by_block.values()}) == len(by_block)


def test_sharegpt_sample(tiny_model_dir):
    from tokenizers import Tokenizer

    t = load_trace("sharegpt", SAMPLES["sharegpt"], model_dir=tiny_model_dir, rate=10.0, seed=1)
    _check_rows(t)
    data = json.loads(SAMPLES["sharegpt"].read_text())
    one_turn = sum(1 for d in data if len(d["conversations"]) < 2)
    assert one_turn > 0 and t.skipped["short_conversations"] == one_turn
    tok = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    first = next(d for d in data if len(d["conversations"]) >= 2)
    assert t[0].prompt == first["conversations"][0]["value"]
    assert t[0].output_len == len(tok.encode(first["conversations"][1]["value"]).ids)
    materialize(t, tiny_model_dir)
    assert t[0].prompt_token_ids == tok.encode(t[0].prompt).ids
    assert t[-1].arrival_s > 0  # Poisson arrivals at rate 10


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown trace format 'parquet'"):
        load_trace("parquet", SAMPLES["azure"])
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_trace("azure", tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="model_dir"):
        load_trace("sharegpt", SAMPLES["sharegpt"])


@pytest.mark.parametrize(
    "fmt, text, match",
    [
        ("azure", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.6805900,10\n",
         r"bad\.csv:1: missing column\(s\) \['GeneratedTokens'\]"),
        ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,10,5\nyesterday,10,5\n",
         r"bad\.csv:3: column 'TIMESTAMP': bad value 'yesterday'"),
        ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,-3,5\n",
         r"bad\.csv:2: column 'ContextTokens': bad value '-3'"),
        ("burstgpt", "Timestamp,Model,Request tokens,Response tokens,Total tokens\n1,ChatGPT,3,4,7\n",
         r"bad\.csv:1: missing column\(s\) \['Log Type'\]"),
        ("burstgpt", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                     "1,ChatGPT,3,4,7,API log\n2,ChatGPT,3,,7,API log\n",
         r"bad\.csv:3: column 'Response tokens' is empty"),
    ],
)
def test_broken_csv(tmp_path, fmt, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TraceFormatError, match=match):
        load_trace(fmt, path)


@pytest.mark.parametrize(
    "line2, match",
    [
        ('{"timestamp": 5, "input_length": 10, "output_length": 3}', r"bad\.jsonl:2: missing field 'hash_ids'"),
        ('{"timestamp": 5, "input_length": 10, "output_length": 3, "hash_ids": "x"}',
         r"bad\.jsonl:2: field 'hash_ids' must be a list of ints"),
        ('{"timestamp": 5, "input_length": 1000, "output_length": 3, "hash_ids": [1]}',
         r"bad\.jsonl:2: .*too few for input_length 1000"),
        ('{"timestamp": 5, "input_length": 10, "output_length": 2.5, "hash_ids": [1]}',
         r"bad\.jsonl:2: column 'output_length': bad value 2\.5"),
        ('{"timestamp": 5, ', r"bad\.jsonl:2: not valid JSON"),
    ],
)
def test_broken_mooncake(tmp_path, line2, match):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 10, "output_length": 3, "hash_ids": [0]}\n' + line2 + "\n")
    with pytest.raises(TraceFormatError, match=match):
        load_trace("mooncake", path)


@pytest.mark.parametrize(
    "entry, match",
    [
        ({"id": "x"}, r"bad\.json:14: entry has no 'conversations' field"),
        ({"conversations": [{"from": "human"}, {"from": "gpt", "value": "hi"}]},
         r"bad\.json:14: field 'conversations\[0\]\.value' is missing"),
        ({"conversations": "hello"}, r"bad\.json:14: field 'conversations' must be a list"),
    ],
)
def test_broken_sharegpt(tmp_path, tiny_model_dir, entry, match):
    good = {"conversations": [{"from": "human", "value": "tell me"}, {"from": "gpt", "value": "a story"}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([good, entry], indent=2))  # the second entry starts on line 14
    with pytest.raises(TraceFormatError, match=match):
        load_trace("sharegpt", path, model_dir=tiny_model_dir)


def test_sharegpt_unclosed_array(tmp_path, tiny_model_dir):
    path = tmp_path / "bad.json"
    path.write_text('[{"conversations": []},\n{"conversations": [{"value": "a"}, {"value": "b"}]}')
    with pytest.raises(TraceFormatError, match=r"bad\.json:2: JSON array is not closed"):
        load_trace("sharegpt", path, model_dir=tiny_model_dir)
