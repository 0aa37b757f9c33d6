"""Regenerate the small sample traces in this folder (real column layouts, synthetic values).

    .venv/bin/python -m workloads.samples.make_samples
"""

from __future__ import annotations

import csv
import json
import random
from datetime import datetime, timedelta
from pathlib import Path

HERE = Path(__file__).parent


def _words(rng: random.Random, n: int) -> str:
    syll = ["ka", "lo", "mi", "ne", "tor", "sa", "ven", "di", "plu", "ra", "the", "and", "st", "ou"]
    return " ".join("".join(rng.choice(syll) for _ in range(rng.randint(1, 3))) for _ in range(n))


def azure(rng: random.Random, n: int = 60) -> None:
    t = datetime(2023, 11, 16, 18, 15, 46, 680590)
    with (HERE / "azure_conv_sample.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
        for _ in range(n):
            t += timedelta(seconds=rng.expovariate(4.0))
            # the public file writes 7 fractional digits
            w.writerow([t.strftime("%Y-%m-%d %H:%M:%S.%f") + "0", rng.randint(20, 3000), rng.randint(5, 600)])


def burstgpt(rng: random.Random, n: int = 60) -> None:
    with (HERE / "burstgpt_sample.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type"])
        t = 5.0
        for i in range(n):
            t += rng.expovariate(2.0)
            req = rng.randint(1, 2000)
            resp = 0 if i % 12 == 5 else rng.randint(1, 800)  # failed requests log 0 response tokens
            model = rng.choice(["ChatGPT", "ChatGPT", "GPT-4"])
            log = rng.choice(["Conversation log", "API log"])
            w.writerow([int(t), model, req, resp, req + resp, log])


def mooncake(rng: random.Random, n: int = 40) -> None:
    t = 0
    shared = [list(range(k * 4, k * 4 + 3)) for k in range(3)]  # 3 system prompts of 3 blocks
    next_id = 12
    with (HERE / "mooncake_sample.jsonl").open("w") as f:
        for _ in range(n):
            t += int(rng.expovariate(1 / 300.0))
            prefix = list(rng.choice(shared)) if rng.random() < 0.7 else []
            own = rng.randint(1, 3)
            ids = prefix + list(range(next_id, next_id + own))
            next_id += own
            input_length = (len(ids) - 1) * 512 + rng.randint(1, 512)
            f.write(json.dumps({"timestamp": t, "input_length": input_length,
                                "output_length": rng.randint(1, 400), "hash_ids": ids}) + "\n")


def sharegpt(rng: random.Random, n: int = 24) -> None:
    rows = []
    for i in range(n):
        turns = 1 if i % 8 == 3 else rng.choice([2, 2, 4])
        conv = [{"from": "human" if k % 2 == 0 else "gpt", "value": _words(rng, rng.randint(5, 120))}
                for k in range(turns)]
        rows.append({"id": f"s{i:04d}", "conversations": conv})
    (HERE / "sharegpt_sample.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    rng = random.Random(20231116)
    azure(rng)
    burstgpt(rng)
    mooncake(rng)
    sharegpt(rng)
