"""Public LLM-serving trace formats -> ``list[Request]``.

Formats (column layouts of the public releases):
- ``azure``: Azure LLM inference trace CSV (Patel et al., Splitwise, 2023/2024):
  ``TIMESTAMP,ContextTokens,GeneratedTokens`` with datetime-string timestamps.
- ``burstgpt``: BurstGPT CSV (Wang et al., 2024): ``Timestamp,Model,Request tokens,
  Response tokens,Total tokens,Log Type``; rows with 0 response tokens are failed requests.
- ``mooncake``: Mooncake JSONL (Qin et al., 2024): ``timestamp`` (ms), ``input_length``,
  ``output_length``, ``hash_ids`` (ids of 512-token prompt blocks; equal id = equal block).
- ``sharegpt``: ShareGPT JSON: ``conversations[0].value`` is the prompt and the token count of
  ``conversations[1].value`` the output length. It has no timestamps: give ``rate=``.

Every loader raises :class:`TraceFormatError` naming the file, the line and the bad column.
Rows that are valid but unusable (BurstGPT failures, one-turn conversations) are skipped and
counted in ``Trace.skipped``.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from workloads.trace import MOONCAKE_BLOCK_TOKENS, Request, Trace


class TraceFormatError(ValueError):
    """A trace file that does not have the expected layout; the message names file, line, column."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path, self.line = str(path), line


def _open_text(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trace file {str(path)!r} does not exist")
    return path


def _csv_rows(path: Path, required: list[str]):
    """Yield ``(line_no, row)`` of a CSV file after checking its header has ``required``."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise TraceFormatError(
                path, 1, f"missing column(s) {missing}; header is {header}, expected {required}"
            )
        reader.fieldnames = header
        for row in reader:
            yield reader.line_num, row


def _field(path: Path, line: int, row: dict, column: str, parse: Callable[[str], Any]) -> Any:
    raw = row.get(column)
    if raw is None or str(raw).strip() == "":
        raise TraceFormatError(path, line, f"column {column!r} is empty")
    try:
        return parse(str(raw).strip())
    except (TypeError, ValueError) as e:
        raise TraceFormatError(path, line, f"column {column!r}: bad value {raw!r} ({e})") from None


def _nonneg_int(s: str) -> int:
    v = float(s)
    if v < 0 or v != int(v):
        raise ValueError("expected a non-negative integer")
    return int(v)


def _datetime_s(s: str) -> float:
    d = datetime.fromisoformat(s)
    return (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).timestamp()  # naive = UTC, no DST jumps


def _finalize(requests: list[Request], path: Path, fmt: str, skipped: dict[str, int]) -> Trace:
    """Sort by arrival, shift so the first request arrives at t=0, give stable ids."""
    requests.sort(key=lambda r: r.arrival_s)
    t0 = requests[0].arrival_s if requests else 0.0
    for i, r in enumerate(requests):
        r.arrival_s -= t0
        r.request_id = f"{fmt}-{i}"
    return Trace(requests, source=str(path), skipped=skipped)


def load_azure(path: str | Path, *, tenant: str = "default") -> Trace:
    """Azure LLM inference trace (``AzureLLMInferenceTrace_{code,conv}.csv`` and the 2024 week-long one)."""
    path = _open_text(path)
    out = []
    for line, row in _csv_rows(path, ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]):
        ts = _field(path, line, row, "TIMESTAMP", _datetime_s)
        out.append(
            Request(
                request_id="",
                arrival_s=ts,
                prompt_len=_field(path, line, row, "ContextTokens", _nonneg_int),
                output_len=_field(path, line, row, "GeneratedTokens", _nonneg_int),
                tenant=tenant,
            )
        )
    return _finalize(out, path, "azure", {})


def load_burstgpt(path: str | Path, *, tenant_column: str | None = "Model") -> Trace:
    """BurstGPT trace. ``tenant_column`` ("Model", "Log Type" or None) names the tenant of each row."""
    path = _open_text(path)
    columns = ["Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type"]
    if tenant_column is not None and tenant_column not in columns:
        raise ValueError(f"tenant_column {tenant_column!r} is not a BurstGPT column {columns}")
    out, failed = [], 0
    for line, row in _csv_rows(path, columns):
        prompt_len = _field(path, line, row, "Request tokens", _nonneg_int)
        output_len = _field(path, line, row, "Response tokens", _nonneg_int)
        ts = _field(path, line, row, "Timestamp", float)
        if output_len == 0:  # BurstGPT logs failed requests with 0 response tokens
            failed += 1
            continue
        out.append(
            Request(
                request_id="",
                arrival_s=ts,
                prompt_len=prompt_len,
                output_len=output_len,
                tenant=str(row[tenant_column]).strip() if tenant_column else "default",
            )
        )
    return _finalize(out, path, "burstgpt", {"failed_requests": failed})


def load_mooncake(path: str | Path, *, tenant: str = "default") -> Trace:
    """Mooncake trace JSONL; ``hash_ids`` become ``prefix_hash_ids`` (512-token blocks)."""
    path = _open_text(path)
    out = []
    with path.open(encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise TraceFormatError(path, line, f"not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise TraceFormatError(path, line, f"expected a JSON object, got {type(obj).__name__}")
            for key in ("timestamp", "input_length", "output_length", "hash_ids"):
                if key not in obj:
                    raise TraceFormatError(path, line, f"missing field {key!r}; has {sorted(obj)}")
            hash_ids = obj["hash_ids"]
            if not isinstance(hash_ids, list) or not all(isinstance(h, int) for h in hash_ids):
                raise TraceFormatError(path, line, f"field 'hash_ids' must be a list of ints, got {hash_ids!r}")
            prompt_len = _field(path, line, obj, "input_length", _nonneg_int)
            if len(hash_ids) * MOONCAKE_BLOCK_TOKENS < prompt_len:
                raise TraceFormatError(
                    path, line,
                    f"field 'hash_ids' has {len(hash_ids)} blocks of {MOONCAKE_BLOCK_TOKENS} tokens, "
                    f"too few for input_length {prompt_len}",
                )
            out.append(
                Request(
                    request_id="",
                    arrival_s=_field(path, line, obj, "timestamp", float) / 1000.0,
                    prompt_len=prompt_len,
                    output_len=_field(path, line, obj, "output_length", _nonneg_int),
                    tenant=tenant,
                    prefix_hash_ids=tuple(hash_ids),
                )
            )
    return _finalize(out, path, "mooncake", {})


def _json_entries(path: Path):
    """Yield ``(line_no, obj)`` for a JSON array file (ShareGPT) or a JSONL file."""
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    pos, line, n = 0, 1, len(text)

    def skip(p: int, chars: str) -> int:
        while p < n and text[p] in chars:
            p += 1
        return p

    def line_at(p: int) -> int:
        nonlocal pos, line
        line += text.count("\n", pos, p)
        pos = p
        return line

    p = skip(0, " \t\r\n")
    is_array = p < n and text[p] == "["
    if is_array:
        p = skip(p + 1, " \t\r\n")
    while p < n and not (is_array and text[p] == "]"):
        try:
            obj, end = decoder.raw_decode(text, p)
        except json.JSONDecodeError as e:
            raise TraceFormatError(path, line_at(e.pos), f"not valid JSON ({e.msg})") from None
        yield line_at(p), obj
        p = skip(end, " \t\r\n" + ("," if is_array else ""))
    if is_array and p >= n:
        raise TraceFormatError(path, line_at(n), "JSON array is not closed with ']'")


def load_sharegpt(
    path: str | Path, *, model_dir: str | Path | None = None, rate: float | None = None,
    seed: int = 0, tenant: str = "default",
) -> Trace:
    """ShareGPT conversations. Token counts need the model's tokenizer (``model_dir``).

    ShareGPT has no arrival times: all requests arrive at t=0 unless ``rate`` is given, in which
    case arrivals are Poisson at ``rate`` req/s (see ``workloads.transforms.with_rate``).
    """
    if model_dir is None:
        raise ValueError("sharegpt traces need model_dir= (its tokenizer counts prompt/output tokens)")
    from workloads.prompts import load_tokenizer

    path = _open_text(path)
    tok = load_tokenizer(model_dir)
    out, short = [], 0
    for line, obj in _json_entries(path):
        if not isinstance(obj, dict) or "conversations" not in obj:
            raise TraceFormatError(path, line, "entry has no 'conversations' field")
        conv = obj["conversations"]
        if not isinstance(conv, list):
            raise TraceFormatError(path, line, f"field 'conversations' must be a list, got {type(conv).__name__}")
        if len(conv) < 2:  # one-turn conversations have no reply to size the output (as vLLM's bench)
            short += 1
            continue
        for i in (0, 1):
            if not isinstance(conv[i], dict) or not isinstance(conv[i].get("value"), str):
                raise TraceFormatError(path, line, f"field 'conversations[{i}].value' is missing or not a string")
        prompt = conv[0]["value"]
        prompt_len = len(tok.encode(prompt, add_special_tokens=False).ids)
        output_len = len(tok.encode(conv[1]["value"], add_special_tokens=False).ids)
        if prompt_len == 0 or output_len == 0:
            short += 1
            continue
        out.append(Request("", 0.0, prompt_len, output_len, prompt=prompt, tenant=tenant))
    trace = Trace(out, source=str(path), skipped={"short_conversations": short})
    for i, r in enumerate(trace):
        r.request_id = f"sharegpt-{i}"
    if rate is not None:
        from workloads.transforms import with_rate

        trace = with_rate(trace, rate, arrival="poisson", seed=seed)
    return trace


LOADERS: dict[str, Callable[..., Trace]] = {
    "azure": load_azure,
    "burstgpt": load_burstgpt,
    "mooncake": load_mooncake,
    "sharegpt": load_sharegpt,
}


def load_trace(fmt: str, path: str | Path, **opts: Any) -> Trace:
    """Load a trace file of format ``fmt`` (one of ``LOADERS``) into a sorted ``Trace`` of ``Request``."""
    if fmt not in LOADERS:
        raise ValueError(f"unknown trace format {fmt!r}; known: {sorted(LOADERS)}")
    return LOADERS[fmt](path, **opts)
