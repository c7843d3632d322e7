"""
Length statistics of Alpaca-format files and the generation ratio R_g, with the PLW the paper's findings suggest.

    R_g = mean completion tokens / mean prompt tokens,  prompt = instruction + input,  completion = output

Each field is tokenized on its own (Tokenizer.encode(field): no BOS/EOS, no template). This is the definition that
reproduces the paper's numbers: Stanford Alpaca with the LLaMA tokenizer gives 64.51 / 19.65 = 3.28 (paper: 3.27).
The mean of per-record ratios (4.57) or counting the template (1.06) do not.

    python data/stats.py --tokenizer path/to/tokenizer.model data/alpaca/alpaca_data.json
    python data/stats.py --tokenizer llama-7b/ --json a.json b.json     # [{path, n, prompt_tokens_mean, ...}]
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python data/stats.py` finds tokenizer, data.prepare

from data.prepare import FIELDS, load_records
from tokenizer import Tokenizer


def length_stats(records, tokenizer):
    """-> {n, <field>_tokens_mean for each field, prompt_tokens_mean, completion_tokens_mean, rg}"""
    n = len(records)
    ids = tokenizer.encode_batch([r[k] for k in FIELDS for r in records])            # one batch: all cores
    lens = np.fromiter(map(len, ids), np.int64, len(ids)).reshape(len(FIELDS), n)  # (3, n)
    means = dict(zip(FIELDS, lens.mean(axis=1).tolist()))
    prompt = means["instruction"] + means["input"]
    out = {"n": n, **{f"{k}_tokens_mean": v for k, v in means.items()},
           "prompt_tokens_mean": prompt, "completion_tokens_mean": means["output"]}
    out["rg"] = means["output"] / prompt if prompt else float("inf")
    return out


def suggest_plw(rg):
    """-> (PLW, one-line reason), from Huerta-Enochian & Ko (2024): a PLW effect was found only on short-completion
    data; there a small non-zero PLW was best for multiple-choice and short-generation benchmarks."""
    if rg >= 1:
        return 0.0, (f"R_g = {rg:.2f} >= 1 (long completions): the paper found no significant effect of PLW on such "
                     f"data, so prompt masking (PLW 0, the default) is fine")
    return 0.1, (f"R_g = {rg:.2f} < 1 (short completions): the paper found small non-zero PLWs (0.01-0.5) beat "
                 f"PLW 0 on multiple-choice and short-generation benchmarks (fitted optimum about 0.1-0.25), "
                 f"while PLW near 1 was better for long generation")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Token-length statistics and R_g of Alpaca-format files.")
    ap.add_argument("--tokenizer", required=True, help="a sentencepiece tokenizer.model, or an HF model directory")
    ap.add_argument("--json", action="store_true", help="print a JSON list, one object per file")
    ap.add_argument("files", nargs="+", help="Alpaca-format .json / .json.gz / .jsonl files")
    args = ap.parse_args(argv)
    rows = []
    try:
        tok = Tokenizer(args.tokenizer)
        for path in args.files:
            s = length_stats(load_records(path), tok)
            plw, reason = suggest_plw(s["rg"])
            rows.append({"path": path, **s, "suggested_plw": plw, "reason": reason})
    except (ValueError, OSError) as e:  # DataError is a ValueError; a missing tokenizer is a FileNotFoundError
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['path']}: {r['n']:,} records, mean tokens: instruction {r['instruction_tokens_mean']:.2f}, "
              f"input {r['input_tokens_mean']:.2f}, output {r['output_tokens_mean']:.2f}\n"
              f"  R_g = {r['completion_tokens_mean']:.2f} / {r['prompt_tokens_mean']:.2f} = {r['rg']:.2f}"
              f"  (completion = output, prompt = instruction + input, no template)\n"
              f"  suggested PLW: {r['suggested_plw']:g}: {r['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
