"""
Length statistics of Alpaca-format files and the generation ratio R_g, with the PLW the paper's findings suggest.

    R_g = mean completion tokens / mean prompt tokens,  prompt = instruction + input,  completion = output

Each field is tokenized on its own (Tokenizer.encode(field): no BOS/EOS, no template). This is the definition that
reproduces the paper's numbers: Stanford Alpaca with the LLaMA tokenizer gives 64.51 / 19.65 = 3.28 (paper: 3.27).
The mean of per-record ratios (4.57) or counting the template (1.06) do not.

    python data/stats.py --tokenizer path/to/tokenizer.model data/alpaca/alpaca_data.json
    python data/stats.py --tokenizer llama-7b/ --json a.json b.json     # [{path, n, prompt_tokens_mean, ...}]

--json adds the suggestion: suggested_plw, reason, regime ("short" | "between" | "long"), in_paper_range and
plw_by_target (the paper's best PLW range for multiple choice, short and long generation).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python data/stats.py` finds tokenizer, data.prepare

from data.records import FIELDS, load_records
from tokenizer import Tokenizer
from util import report_errors


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


# The paper's numbers (Huerta-Enochian & Ko, arXiv 2401.13586; docs/analysis.md): its short-completion data,
# AlpacaDataShort, has R_g 0.08 and a significant negative quadratic in w_p with its vertex at PLW 0.242; its
# medium- and long-completion data (AlpacaDataCleaned; Stanford Alpaca, R_g 3.27) showed no relationship with PLW.
PAPER_SHORT_RG = 0.08
PAPER_LONG_RG = 3.27
SHORT_RG_MAX = 0.1  # up to here: the paper's short-completion regime (0.08 and a little tolerance)
LONG_RG_MIN = 1.0   # from here: completions longer than prompts, where the paper found no PLW effect
CRITICAL_PLW = 0.242
PLW_BY_TARGET = {"multiple_choice": [0.01, 0.5], "short_generation": [0.01, 0.5], "long_generation": [1.0, 1.0]}


def plw_advice(rg):
    """-> {suggested_plw, reason, regime ("short" | "between" | "long"), in_paper_range, plw_by_target}: the PLW the
    paper's findings suggest for data with generation ratio rg. plw_by_target gives the paper's best PLW range per
    kind of downstream task (short-completion data only; None where PLW did not matter)."""
    if rg <= SHORT_RG_MAX:
        return {"suggested_plw": CRITICAL_PLW, "regime": "short", "in_paper_range": True,
                "plw_by_target": PLW_BY_TARGET,
                "reason": (f"R_g = {rg:.2f} <= {SHORT_RG_MAX:g}, like the paper's AlpacaDataShort (R_g "
                           f"{PAPER_SHORT_RG:g}): there performance was a significant negative quadratic in w_p with "
                           f"the critical PLW {CRITICAL_PLW:g}; PLW 0.01-0.5 was best for multiple choice and short "
                           f"generation, PLW about 1 for long generation")}
    if rg < LONG_RG_MIN:
        return {"suggested_plw": 0.1, "regime": "between", "in_paper_range": False, "plw_by_target": PLW_BY_TARGET,
                "reason": (f"R_g = {rg:.2f} is outside the paper's data (short: R_g {PAPER_SHORT_RG:g}; medium and "
                           f"long: R_g >= ~1, Alpaca {PAPER_LONG_RG:g}): completions are still shorter than prompts, "
                           f"so a small non-zero PLW (0.1, inside the paper's best range 0.01-0.5 and below its "
                           f"short-data optimum {CRITICAL_PLW:g}) is a hedge, not a finding; tune it if you can")}
    return {"suggested_plw": 0.0, "regime": "long", "in_paper_range": True, "plw_by_target": None,
            "reason": (f"R_g = {rg:.2f} >= {LONG_RG_MIN:g} (medium/long completions; Alpaca: {PAPER_LONG_RG:g}): the "
                       f"paper found no significant effect of PLW on such data, so prompt masking (PLW 0, the "
                       f"default) is fine")}


def suggest_plw(rg):
    """-> (PLW, one-line reason): plw_advice's suggestion."""
    a = plw_advice(rg)
    return a["suggested_plw"], a["reason"]


def main(argv=None):
    ap = argparse.ArgumentParser(description="Token-length statistics and R_g of Alpaca-format files.")
    ap.add_argument("--tokenizer", required=True, help="a tokenizer.model (sentencepiece or LLaMA 3's tiktoken "
                    "format), or an HF model directory")
    ap.add_argument("--json", action="store_true", help="print a JSON list, one object per file")
    ap.add_argument("files", nargs="+", help="Alpaca-format .json / .json.gz / .jsonl files")
    args = ap.parse_args(argv)
    return report_errors("stats.py", report, args)


def report(args):
    tok = Tokenizer(args.tokenizer)
    rows = []
    for path in args.files:
        s = length_stats(load_records(path), tok)
        rows.append({"path": path, **s, **plw_advice(s["rg"])})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['path']}: {r['n']:,} records, mean tokens: instruction {r['instruction_tokens_mean']:.2f}, "
              f"input {r['input_tokens_mean']:.2f}, output {r['output_tokens_mean']:.2f}\n"
              f"  R_g = {r['completion_tokens_mean']:.2f} / {r['prompt_tokens_mean']:.2f} = {r['rg']:.2f}"
              f"  (completion = output, prompt = instruction + input, no template)\n"
              f"  suggested PLW: {r['suggested_plw']:g}: {r['reason']}")
        if r["plw_by_target"]:
            print("  the paper's best PLW by target: " + ", ".join(
                f"{k.replace('_', ' ')} {lo:g}" + (f"-{hi:g}" if hi != lo else "") for k, (lo, hi) in r["plw_by_target"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
