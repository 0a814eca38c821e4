"""Benchmark files on disk, read into items: HellaSwag (multiple choice) and LAMBADA (last word).

The tasks that score them are gptlit.evaluation.tasks'. gptlit never downloads a benchmark: the user copies the file once (docs/evaluation.md says where
from), and every problem with it is a UserError naming the file, the line and the fix.

  read_hellaswag   JSON Lines: `ctx` (or the original release's `ctx_a` + `ctx_b`), `endings`, `label`
  read_lambada     JSON Lines with a `text` field, or a text file with one passage per line
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from gptlit.core.errors import UserError
from gptlit.core.files import user_path

LAMBADA_TEXT_KEY = "text"  # the passage's key in OpenAI's lambada_test.jsonl


@dataclass
class Choice:
    """A multiple-choice item: a context, its candidate endings and the index of the right one."""

    line: int  # 1-based line of the file
    context: str
    endings: list[str]
    label: int
    activity: str = ""  # HellaSwag's activity_label, shown with the item


@dataclass
class LastWord:
    """A LAMBADA passage: the text before its last word, and that word (with its leading space)."""

    line: int
    context: str
    target: str  # " word": GPT-2's tokens of a word carry the space before it


@dataclass
class Benchmark:
    name: str
    path: Path
    items: list = field(default_factory=list)


def bench_path(path, key: str = "bench.path") -> Path:
    if path is None or str(path) == "":
        raise UserError(f"{key} is required: {key}=<the benchmark file> (docs/evaluation.md says where to get it)")
    p = user_path(path)
    if not p.is_file():
        raise UserError(
            f"{key}={path}: no such file ({p}); download it once as docs/evaluation.md shows and give its path"
        )
    return p


def _lines(p: Path, key: str, shown: str):
    """(line number, text) of the non-blank lines; a file that is not UTF-8 is a one-line error."""
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        line = p.read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(f"{key}={shown} line {line}: not UTF-8 text; save the file as UTF-8") from None
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield n, line


def _json_line(line: str, n: int, key: str, shown: str) -> dict:
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{key}={shown} line {n}: not valid JSON ({e.msg} at column {e.colno}); "
                        f"give a JSON Lines file, one JSON object per line") from None
    if not isinstance(d, dict):
        raise UserError(f"{key}={shown} line {n}: a JSON {type(d).__name__}, not an object; one JSON object per line")
    return d


def _label(v, n_endings: int, where: str) -> int:
    """HellaSwag's label: an index into endings; some copies store it as a string ("2")."""
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v.strip())
    if v is None or v == "":
        raise UserError(f"{where}: no label (HellaSwag's test split has none); use the val split, hellaswag_val.jsonl")
    if isinstance(v, bool) or not isinstance(v, int):
        raise UserError(f"{where}: label={json.dumps(v)} is not an integer index into endings")
    if not 0 <= v < n_endings:
        raise UserError(f"{where}: label={v} is outside the {n_endings} endings (0..{n_endings - 1}); fix or drop that line")
    return v


def read_hellaswag(path, key: str = "bench.path", with_activity_label: bool = False) -> Benchmark:
    """Items of a HellaSwag-format JSON Lines file.

    The context is `ctx`; without it, the original release's `ctx_a` and `ctx_b` joined by a space
    (which is how that release builds `ctx`). with_activity_label puts `activity_label: ` in front,
    as lm-evaluation-harness does; llm.c and build-nanogpt (and the default here) score `ctx` alone.
    """
    p = bench_path(path, key)
    items = []
    for n, line in _lines(p, key, str(path)):
        where = f"{key}={path} line {n}"
        d = _json_line(line, n, key, str(path))
        ctx = d.get("ctx")
        if ctx is None and ("ctx_a" in d or "ctx_b" in d):
            ctx = " ".join(s for s in (d.get("ctx_a") or "", d.get("ctx_b") or "") if s)
        if not isinstance(ctx, str) or not ctx.strip():
            raise UserError(f"{where}: no context (a non-empty `ctx`, or `ctx_a`/`ctx_b`); is this a HellaSwag file?")
        endings = d.get("endings")
        if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) for e in endings):
            raise UserError(f"{where}: `endings` must be a list of at least 2 strings, not {json.dumps(endings)[:60]}")
        activity = d.get("activity_label") or ""
        if with_activity_label and activity:
            ctx = f"{activity}: {ctx}"
        items.append(Choice(n, ctx, endings, _label(d.get("label"), len(endings), where), str(activity)))
    if not items:
        raise UserError(f"{key}={path} holds no items (the file is empty); give HellaSwag's hellaswag_val.jsonl")
    return Benchmark("hellaswag", p, items)


def _split_last_word(text: str, where: str) -> tuple[str, str]:
    text = text.strip()
    if " " not in text:
        raise UserError(f"{where}: the passage has no space, so no context before its last word; "
                        f"each line must be a passage whose last word is the target")
    ctx, word = text.rsplit(" ", 1)
    if not ctx.strip():
        raise UserError(f"{where}: the passage has no context before its last word")
    return ctx, " " + word


def read_lambada(path, key: str = "bench.path", text_key: str | None = None) -> Benchmark:
    """Items of a LAMBADA file: JSON Lines (.jsonl, .json: the passage under `text_key`, as in OpenAI's
    lambada_test.jsonl) or plain text (one passage per line, as in the original release).
    The target is the last word (after the last space); the context is everything before that space."""
    p = bench_path(path, key)
    text_key = text_key or LAMBADA_TEXT_KEY
    jsonl = p.name.lower().endswith((".jsonl", ".json"))
    items = []
    for n, line in _lines(p, key, str(path)):
        where = f"{key}={path} line {n}"
        if jsonl:
            d = _json_line(line, n, key, str(path))
            text = d.get(text_key)
            if not isinstance(text, str):
                raise UserError(f"{where}: no string `{text_key}` field; set bench.text_key=<the passage's key>")
        else:
            text = line
        items.append(LastWord(n, *_split_last_word(text, where)))
    if not items:
        raise UserError(f"{key}={path} holds no items (the file is empty); give LAMBADA's test file")
    return Benchmark("lambada", p, items)


def spread(n: int, k: int | None) -> list[int]:
    """k indices spread evenly over 0..n-1 (all of them when k is None or >= n): a fixed, representative subset."""
    if k is None or k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})
