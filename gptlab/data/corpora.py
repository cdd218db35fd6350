"""Load a corpus into a list of documents, one per record.

Sources: the built-in synthetic wine reviews, the Kaggle Wine Reviews files (CSV or JSON), any
CSV / JSON array / JSONL file through a ``{field}`` template, plain text (one document per
line), and Hugging Face datasets (optional ``datasets`` dependency). Every bad input raises
``UserError`` with a one-line message that says what to do.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Iterable
from pathlib import Path

from gptlab.data.config import FORMATS, DataConfig
from gptlab.data.normalize import normalize_text
from gptlab.data.records import Corpus, apply_template, template_fields
from gptlab.errors import UserError

# Extension -> format for --format auto.
EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "text",
}
# The columns that make a table the Kaggle Wine Reviews layout.
WINE_COLUMNS = ("country", "province", "variety", "description")


def load_corpus(cfg: DataConfig) -> Corpus:
    """Read the corpus that ``cfg.data`` names and turn it into documents."""
    cfg.validate()
    if cfg.data == "builtin":
        from gptlab.data.synthetic import (
            builtin_corpus,  # the generator is big; load on demand
        )

        return builtin_corpus(cfg)
    if cfg.data.startswith("hf:"):
        return _load_hf(cfg.data[3:], cfg)

    path = _resolve_path(Path(cfg.data).expanduser())
    fmt = _pick_format(path, cfg.format)
    text = _read_text(path, cfg.encoding)
    if not text.strip():
        raise UserError(f"{path} is empty; pass a corpus with at least one record")

    if fmt == "text":
        return _from_lines(text, path, cfg)
    if fmt == "csv":
        columns, rows = _csv_rows(text, path)
    elif fmt == "json":
        columns, rows = _json_rows(text, path)
    elif fmt == "jsonl":
        columns, rows = _jsonl_rows(text, path)
    else:  # "wine": a Kaggle file, CSV or JSON, told apart by its first character
        columns, rows = (_json_rows if text.lstrip()[:1] == "[" else _csv_rows)(text, path)
    return _from_table(rows, columns, path.name, fmt, cfg)


# --- files ----------------------------------------------------------------------------------


def _resolve_path(path: Path) -> Path:
    if not path.exists():
        raise UserError(
            f"no such corpus file: {path}; pass --data builtin, or a path to a "
            ".csv/.json/.jsonl/.txt file"
        )
    if not path.is_dir():
        return path
    try:
        found = sorted(
            p for p in path.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in EXTENSIONS
        )
    except OSError as e:
        raise UserError(f"cannot list folder {path}: {e.strerror}; pass a corpus file instead") from None
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(
            f"folder {path} holds no corpus file ({'/'.join(EXTENSIONS)}); pass the file itself"
        )
    names = ", ".join(p.name for p in found[:5]) + (", ..." if len(found) > 5 else "")
    raise UserError(f"folder {path} holds {len(found)} corpus files ({names}); pass one of them")


def _pick_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    ext = path.suffix.lower()
    if ext in EXTENSIONS:
        return EXTENSIONS[ext]
    formats = " | ".join(f for f in FORMATS if f != "auto")
    raise UserError(
        f"cannot tell the format of {path.name} from its extension {ext or '(none)'!r}; "
        f"pass --format {formats}"
    )


def _read_text(path: Path, encoding: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}; check the path and its permissions") from None
    if raw[:2] == b"\x1f\x8b":
        raise UserError(f"{path} is gzip-compressed; unpack it first (gunzip -k {path})")
    if raw[:4] == b"PK\x03\x04":
        raise UserError(f"{path} is a zip archive; unzip it and pass the file inside")
    try:
        text = raw.decode(encoding)
    except LookupError:
        raise UserError(f"unknown --encoding {encoding!r}; use e.g. utf-8, latin-1 or cp1252") from None
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        hint = "--encoding utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "--encoding latin-1"
        raise UserError(
            f"{path}: byte 0x{raw[e.start]:02x} at offset {e.start} (line {line}) is not valid "
            f"{encoding}; pass {hint}, or convert the file: iconv -f latin1 -t utf-8 {path} > fixed{path.suffix}"
        ) from None
    return text.removeprefix("\ufeff")  # a UTF-8 byte-order mark would glue onto the first column name


def _csv_rows(text: str, path: Path) -> tuple[list[str], list[dict]]:
    first_line = text.lstrip("\r\n").split("\n", 1)[0]
    if path.suffix.lower() == ".tsv":
        delimiter = "\t"
    else:
        # Only the header line is sniffed: csv.Sniffer guesses badly on prose with commas.
        delimiter = max(",;\t", key=lambda d: (first_line.count(d), d == ","))
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    except csv.Error as e:
        raise UserError(
            f"{path}: malformed CSV near line {reader.line_num}: {e}; check its quoting "
            "(fields with commas, quotes or newlines must be in double quotes)"
        ) from None
    return columns, rows


def _json_rows(text: str, path: Path) -> tuple[list[str], list[dict]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg}); if it holds "
            "one object per line, pass --format jsonl"
        ) from None
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise UserError(
            f"{path}: expected a JSON array of objects like [{{\"description\": ...}}, ...]; "
            "for one object per line pass --format jsonl"
        )
    if not data:
        raise UserError(f"{path} holds an empty JSON array: no records; pass a file with at least one")
    return _columns_of(data), data


def _jsonl_rows(text: str, path: Path) -> tuple[list[str], list[dict]]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path}: line {lineno} is not valid JSON ({e.msg}); JSONL needs one object per line"
            ) from None
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {lineno} is not a JSON object; JSONL needs one object per line")
        rows.append(row)
    return _columns_of(rows), rows


def _columns_of(rows: list[dict]) -> list[str]:
    columns: dict[str, None] = {}  # a dict keeps first-seen order
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def _from_lines(text: str, path: Path, cfg: DataConfig) -> Corpus:
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        records.append(normalize_text(line) if cfg.normalize else line)
        if cfg.max_records and len(records) >= cfg.max_records:
            break
    if not records:
        raise UserError(f"{path} holds no text, only blank lines; pass a file with one document per line")
    return Corpus(records=records, source=f"{path.name} (text, one document per line)", skipped=0)


def _from_table(
    rows: Iterable[dict], columns: list[str], name: str, fmt: str, cfg: DataConfig
) -> Corpus:
    names = template_fields(cfg.template)
    shown = ", ".join(c if c else "(unnamed)" for c in columns) or "none"
    is_wine = all(c in columns for c in WINE_COLUMNS)
    if fmt == "wine" and not is_wine:
        lacking = ", ".join(c for c in WINE_COLUMNS if c not in columns)
        raise UserError(
            f"{name} is not in the Kaggle wine layout: it lacks {lacking}; columns available: "
            f"{shown}; pass --format csv/json/jsonl with a --template over those columns"
        )
    missing = [n for n in names if n not in columns]
    if missing:
        raise UserError(
            f"{name} has no column {', '.join(missing)} for the template; columns available: "
            f"{shown}; pass --template naming them, e.g. --template '{{{columns[0] if columns else 'text'}}}'"
        )
    records, used, skipped = apply_template(rows, cfg.template, names, cfg)
    if not records and not skipped:
        raise UserError(f"{name} has column names but no records; pass a file with at least one row")
    if not records:
        raise UserError(
            f"{name} has no usable records: all {skipped} rows lack one of the template "
            f"fields {', '.join(names)}; fill them or pass a --template over filled columns"
        )
    layout = "Kaggle wine layout" if is_wine else fmt.upper()
    return Corpus(records=records, source=f"{name} ({layout})", skipped=skipped, fields=used)


# --- Hugging Face -------------------------------------------------------------------------------


def _load_hf(spec: str, cfg: DataConfig) -> Corpus:
    """``hf:OWNER/NAME`` (all splits, in order) or ``hf:OWNER/NAME:SPLIT``."""
    repo, _, split = spec.partition(":")
    if not repo:
        raise UserError("--data hf: needs a dataset name, e.g. hf:GroNLP/ik-nlp-22_winemag")
    try:
        import datasets  # optional extra: only this source needs it
    except ImportError:
        raise UserError(
            f"--data hf:{spec} needs the 'datasets' package: pip install 'gptlab[hf]', or download "
            "winemag-data-130k-v2.csv from Kaggle and pass --data path/to/it"
        ) from None
    try:
        loaded = datasets.load_dataset(repo, split=split or None)
    except Exception as e:  # network, auth, unknown name, unknown split: all fixable by the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"could not load Hugging Face dataset {repo!r}: {reason}; check the name and your "
            "connection, or pass a downloaded CSV with --data"
        ) from None
    parts = [loaded] if split else [loaded[k] for k in loaded]
    columns = list(parts[0].column_names) if parts else []
    rows = itertools.chain.from_iterable(parts)  # each item is a dict of column -> value
    return _from_table(rows, columns, f"hf:{spec}", "hf", cfg)
