"""The OpenAI Batch API formats: reading input lines, writing output lines.

Input, one JSON object per line:
    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from budget import QuotaflowError

URLS = ("/v1/chat/completions", "/v1/embeddings")
MAX_CUSTOM_ID = 512
#: The custom_ids a job records refused lines under when the line has no usable
#: custom_id of its own (`rejected_id`): reserved, a line may not use one.
_REJECTED_ID = re.compile(r"#line-[0-9]+\Z")


def rejected_id(line: int) -> str:
    """The custom_id of refused line `line` that has no usable custom_id of its own."""
    return f"#line-{line}"


class BatchFileError(QuotaflowError):
    """The file as a whole cannot be read (missing, not UTF-8, empty)."""


@dataclass(frozen=True)
class BatchLine:
    """One valid input line."""

    #: 1-based line number in the file.
    line: int
    custom_id: str
    url: str
    body: dict[str, Any]


@dataclass(frozen=True)
class LineError:
    """One input line that cannot run, and why."""

    line: int
    #: The line's custom_id when it could be read, else None.
    custom_id: str | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def _json_error(text: str, exc: json.JSONDecodeError) -> str:
    """Where a line's JSON breaks, as a column of that line."""
    unclosed = exc.msg.startswith("Unterminated string")
    if unclosed or exc.pos >= len(text.rstrip()):
        # The commonest cause: a line cut off (a truncated copy, an unfinished write).
        what = f"a string opened at column {exc.pos + 1} is never closed" if unclosed else exc.msg
        return f"not valid JSON: the line ends early, after column {len(text)} ({what}); cut off?"
    return f"not valid JSON: {exc.msg.removesuffix(' at')} at column {exc.pos + 1}"


def _json_kind(value: object) -> str:
    """What a JSON value is, in JSON's words (not Python's `NoneType`, `str`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    kinds = {dict: "an object", list: "an array", str: "a string", int: "a number"}
    return kinds.get(type(value), "a number")


def parse_line(number: int, text: str) -> BatchLine | LineError:
    # Without its newline: an error at the end of the line is then at its last column,
    # not at column 1 of a next line.
    text = text.rstrip("\r\n")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return LineError(number, None, _json_error(text, exc))
    if not isinstance(obj, dict):
        return LineError(number, None, f"must be a JSON object, got {_json_kind(obj)}")
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        return LineError(number, None, "custom_id is missing or not a non-empty string")
    if len(cid) > MAX_CUSTOM_ID:
        return LineError(number, None, f"custom_id is longer than {MAX_CUSTOM_ID} characters")
    if _REJECTED_ID.match(cid):
        return LineError(
            number, None,
            f"custom_id {cid!r} is reserved: refused lines without a custom_id of their own "
            "are reported as '#line-N'; choose another custom_id",
        )  # fmt: skip
    method = obj.get("method", "POST")
    if method != "POST":
        return LineError(number, cid, f"method must be POST, got {method!r}")
    url = obj.get("url")
    if url not in URLS:
        return LineError(number, cid, f"url must be one of {', '.join(URLS)}, got {url!r}")
    if "body" not in obj:
        return LineError(number, cid, 'body is missing: give the request as "body": {...}')
    body = obj["body"]
    if not isinstance(body, dict):
        return LineError(number, cid, f"body must be a JSON object, got {_json_kind(body)}")
    return BatchLine(number, cid, url, body)


def check_batch_path(path: Path) -> None:
    """BatchFileError unless `path` names a file."""
    if path.is_dir():
        raise BatchFileError(
            f"{path} is a directory: give the batch file in it (JSONL, one request per line)"
        )
    if not path.is_file():
        raise BatchFileError(f"batch file not found: {path}")


def read_batch(path: Path) -> Iterator[BatchLine | LineError]:
    """Stream a batch file line by line (a 100k-line file is never held in memory).

    Blank lines are skipped; a repeated custom_id is an error on the later line,
    also when the earlier line was refused (the id is taken by its error).
    """
    check_batch_path(path)
    seen: set[str] = set()
    any_line = False
    try:
        with path.open(encoding="utf-8") as fh:
            for number, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                any_line = True
                parsed = parse_line(number, text)
                cid = parsed.custom_id
                if cid is not None:
                    if cid in seen:
                        parsed = LineError(
                            number, None, f"custom_id {cid!r} repeats an earlier line"
                        )
                    else:
                        seen.add(cid)
                yield parsed
    except UnicodeDecodeError as exc:
        raise BatchFileError(f"{path} is not UTF-8 text ({exc.reason})") from exc
    if not any_line:
        raise BatchFileError(f"{path} is empty: a batch needs at least one request line")


def output_error_line(custom_id: str, code: str, message: str, *, status: int | None = None,
                      request_id: str = "") -> dict[str, Any]:  # fmt: skip
    """A Batch output line for a request that failed."""
    response = None
    if status is not None:
        response = {
            "status_code": status,
            "request_id": request_id,
            "body": {"error": {"code": code, "message": message}},
        }
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": response,
        "error": {"code": code, "message": message},
    }
