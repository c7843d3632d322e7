"""
Prompt inversion: turn an instruction dataset into one whose completions are short and whose prompts are long
(the paper's "short-completion" data, R_g << 1). The model sees an answer and must write the instruction.

Each record {instruction, input, output} becomes

    without an input:  instruction = INSTRUCTION
                       input       = output
                       output      = instruction
    with an input:     instruction = INSTRUCTION_WITH_INPUT
                       input       = output + "\\n\\nOriginal input:\\n" + input
                       output      = instruction

that is, the original output, a blank line, the label "Original input:" on its own line, then the original input.
A record "has an input" when its input is not empty or whitespace only (whitespace carries nothing to use).
Text is copied verbatim, never stripped.

Skipped, and counted by reason on stderr (checked in this order):
    "empty output"       output is empty or whitespace only: there is nothing to predict the prompt from
                         (Stanford Alpaca has 28 such records)
    "empty instruction"  instruction is empty or whitespace only: there is nothing to predict

The result is a JSON list written like Stanford's file (json.dumps(records, indent=4), ASCII-escaped), in the
source's order, so the same source always gives the same bytes. A .gz destination is gzipped with mtime 0.

    python data/invert.py                                    # data/alpaca/... -> data/alpaca_short/...
    python data/invert.py --src my_data.json --dst my_data_short.json
"""
import argparse
import gzip
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python data/invert.py` finds data.records

from data.records import DATA_DIR, DATASETS, load_records
from util import DataError, atomic_write, report_errors

INSTRUCTION = "Predict the prompt that generated the following AI output."
INSTRUCTION_WITH_INPUT = ("Predict the prompt that generated the following AI output. "
                          "The prompt came with the original input shown after the output.")
INPUT_LABEL = "\n\nOriginal input:\n"
DEFAULT_SRC = DATA_DIR / DATASETS["alpaca"]["path"]
DEFAULT_DST = DATA_DIR / DATASETS["alpaca_short"]["path"]


def invert_record(r):
    if r["input"].strip():
        return {"instruction": INSTRUCTION_WITH_INPUT, "input": r["output"] + INPUT_LABEL + r["input"],
                "output": r["instruction"]}
    return {"instruction": INSTRUCTION, "input": r["output"], "output": r["instruction"]}


def invert_records(records):
    """-> (inverted records, {reason: [indices of the skipped source records]})"""
    out, skipped = [], {"empty output": [], "empty instruction": []}
    for i, r in enumerate(records):
        if not r["output"].strip():
            skipped["empty output"].append(i)
        elif not r["instruction"].strip():
            skipped["empty instruction"].append(i)
        else:
            out.append(invert_record(r))
    return out, skipped


def invert_file(src, dst, verbose=True):
    """Invert the records of src into dst (atomically). -> (number written, skipped dict as invert_records)"""
    t0 = time.time()
    records = load_records(src)
    out, skipped = invert_records(records)
    if not out:
        raise DataError(f"{src}: every record was skipped (empty outputs or instructions), nothing to write")
    data = json.dumps(out, indent=4).encode("utf-8")
    dst = Path(dst)
    payload = gzip.compress(data, compresslevel=9, mtime=0) if dst.suffix == ".gz" else data
    atomic_write(dst, lambda tmp: Path(tmp).write_bytes(payload))
    if verbose:
        for reason, idx in skipped.items():
            if idx:
                more = ", ..." if len(idx) > 10 else ""
                print(f"skipped {len(idx)} records with {reason}: {', '.join(map(str, idx[:10]))}{more}",
                      file=sys.stderr)
        print(f"inverted {src} -> {dst}: {len(out):,} of {len(records):,} records "
              f"({sum(map(len, skipped.values())):,} skipped) in {time.time() - t0:.2f} s", file=sys.stderr)
    return len(out), skipped


def main(argv=None):
    ap = argparse.ArgumentParser(description="Prompt inversion: the output becomes the input, the instruction the "
                                             "output (short-completion data).")
    ap.add_argument("--src", default=str(DEFAULT_SRC), help="Alpaca-format .json / .json.gz / .jsonl "
                    "(default: %(default)s)")
    ap.add_argument("--dst", default=str(DEFAULT_DST), help="output JSON list, .json or .json.gz "
                    "(default: %(default)s)")
    args = ap.parse_args(argv)
    return report_errors("invert.py", invert_cli, args)


def invert_cli(args):
    if args.src == str(DEFAULT_SRC) and not DEFAULT_SRC.exists():
        raise DataError(f"{DEFAULT_SRC} not found: get Stanford Alpaca with `python data/prepare.py --dataset alpaca`, "
                        f"or pass --src FILE")
    if not args.dst.endswith((".json", ".json.gz")):
        raise DataError(f"--dst {args.dst}: expected a .json or .json.gz path (the output is a JSON list)")
    invert_file(args.src, args.dst)


if __name__ == "__main__":
    sys.exit(main())
