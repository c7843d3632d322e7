"""
Alpaca-format records: where the known datasets live, and reading a file of records with errors that name the file
and the record. data/prepare.py (tokenizing), data/invert.py (prompt inversion), data/stats.py and the evaluation
scripts read through here; this module imports neither of them, so the data modules form no import circle.
"""
import gzip
import json
import re
from pathlib import Path

from util import DataError

FIELDS = ("instruction", "input", "output")
DATA_DIR = Path(__file__).resolve().parent  # known datasets are saved under <repo>/data/<name>/
# known dataset names -> where they live. Downloads are pinned to a commit; `blob` is the git blob id (SHA-1) the
# file must have there (a mismatch warns: the file still loads). `*_short` are the prompt-inverted sets (invert.py).
DATASETS = {
    "alpaca": dict(
        path="alpaca/alpaca_data.json", blob="3779ddbc040543ab1834ef216c983d6fcc06cc9a",
        url="https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/"
            "761dc5bfbdeeffa89b8bff5d038781a4055f796a/alpaca_data.json"),
    "alpaca_cleaned": dict(
        path="alpaca_cleaned/alpaca_data_cleaned.json", blob="fce7512c5733979e61db8c25e5138deead700650",
        url="https://raw.githubusercontent.com/gururise/AlpacaDataCleaned/"
            "791174f63efa9aa54ca6c38639dc6e5bb5657d80/alpaca_data_cleaned.json"),
    "alpaca_short": dict(path="alpaca_short/alpaca_data_short.json", inverted_from="alpaca"),
    "alpaca_cleaned_short": dict(path="alpaca_cleaned_short/alpaca_data_cleaned_short.json",
                                 inverted_from="alpaca_cleaned"),
}


_WS = re.compile(r"[ \t\n\r]*")


def _bad_record(text):
    """Index of the record of a JSON list where parsing fails, for the error message (None: not inside a record).
    Only run after json.loads has failed, so its speed does not matter."""
    dec, i = json.JSONDecoder(), _WS.match(text, 0).end()
    if text[i:i + 1] != "[":
        return None
    i, n = i + 1, 0
    while True:
        i = _WS.match(text, i).end()
        if text[i:i + 1] == "]" and n == 0:
            return None
        try:
            _, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            return n
        i = _WS.match(text, i).end()
        if text[i:i + 1] != ",":
            return None if text[i:i + 1] == "]" else n  # a missing comma (or a cut file) right after record n
        i, n = i + 1, n + 1


def read_json_list(path):
    """The non-empty list of records in a .json, .json.gz or .jsonl(.gz) file; DataError naming the file (and the
    record) when it is missing, unreadable, empty or not valid JSON. Record indices count from 0 (the index in
    the JSON list, or the n-th non-blank JSONL line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    if path.name.removesuffix(".gz").endswith(".jsonl"):
        records = []
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit inside a record
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: record {len(records)} (line {n}) is not valid JSON ({e.msg})") from None
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            i = _bad_record(text)
            where = f" in record {i}" if i is not None else ""
            raise DataError(f"{path}: not valid JSON{where} ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    if not records:
        raise DataError(f"{path}: no records")
    return records


def load_records(path, text=False):
    """A list of {instruction, input, output} dicts from an Alpaca-format file (see read_json_list); DataError
    when malformed. A missing `input` is read as "" (some Alpaca variants omit it); every other field must be a
    string. With text=True a record may also be plain text, {"text": str} (training data only)."""
    out = []
    records = read_json_list(path)
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise DataError(f"{path}: record {i} is a {type(r).__name__}, expected an object with {', '.join(FIELDS)}")
        if text and "text" in r:
            if set(r) != {"text"} or not isinstance(r["text"], str):
                raise DataError(f"{path}: record {i} has a 'text' field: a plain-text record is {{\"text\": str}} "
                                f"and nothing else")
            out.append({"text": r["text"]})
            continue
        r = {"input": "", **r}
        for k in FIELDS:
            if k not in r:
                raise DataError(f"{path}: record {i} has no field {k!r}")
            if not isinstance(r[k], str):
                raise DataError(f"{path}: record {i} field {k!r} is a {type(r[k]).__name__}, expected a string")
        out.append({k: r[k] for k in FIELDS})
    return out
