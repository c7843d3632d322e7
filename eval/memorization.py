"""
How much of its training data a fine-tuned model reproduces: greedy completions of training prompts, scored
with corpus BLEU against the training completions, plus how long the generations are.

    python eval/memorization.py --model out/plw01 --data alpaca_data.json --n 10000 --output mem.json

The sample: the records whose prompt fits (--max_prompt_tokens: pass the training max_seq_len - 1, since a longer
prompt was cut before its completion in training), then the first n of numpy.random.default_rng(seed).permutation
of those, scored in file order. A smaller n with the same seed is a subset of a larger one; n >= the eligible
count takes them all.

Prompt, hypothesis and reference:
  - prompt = [BOS] + tokens(format_prompt(instruction, input)), exactly the prompt tokens of training (Stanford
    template ending in "### Response:"); the model continues straight after the colon.
  - hypothesis = the text of the greedy new tokens up to, not including, EOS: decode(prompt + new) after
    decode(prompt), i.e. the continuation exactly as the model writes it (eval/generate.py, `complete`).
  - reference = the record's `output`, exactly as trained on (prompt + output, no separator).
  Neither is stripped or otherwise changed: both go to eval/bleu.py's corpus_bleu (sacreBLEU's 13a tokens, where
  surrounding whitespace makes no difference), so the generations themselves, used as references, score 100
  (every n-gram precision exactly 100 and no brevity penalty; the score is exp(mean log 100) = 100 + 4e-14).
  Lengths: gen_tokens = new tokens before EOS; ref_tokens = len(tokens(prompt + output)) - len(tokens(prompt)),
  the completion tokens of training without EOS (data/prepare.py's count); words = whitespace-separated words.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from checkpoint import read_args
from data.prepare import format_prompt, load_records
from eval.bleu import bleu_stats
from eval.generate import DTYPES, complete, load_model_and_tokenizer, prompt_ids
from util import check_writable, cli, write_json


def sample_indices(n_records, n, seed):
    """The records to score: the first n of a seeded permutation, in file order (n >= n_records: all)."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    perm = np.random.default_rng(seed).permutation(n_records)
    return sorted(perm[:n].tolist())


def _mean_median(xs):
    return float(np.mean(xs)), float(np.median(xs))


def summarize(samples):
    """Corpus BLEU and length statistics of samples [{"reference", "generation", "gen_tokens", "ref_tokens", "eos"}]."""
    hyps = [s["generation"] for s in samples]
    refs = [s["reference"] for s in samples]
    b = bleu_stats(hyps, refs)
    out = {"bleu": b["score"], "bleu_precisions": b["precisions"], "bleu_bp": b["bp"]}
    for side, texts, toks in (("gen", hyps, [s["gen_tokens"] for s in samples]),
                              ("ref", refs, [s["ref_tokens"] for s in samples])):
        out[f"{side}_tokens_mean"], out[f"{side}_tokens_median"] = _mean_median(toks)
        out[f"{side}_words_mean"], out[f"{side}_words_median"] = _mean_median([len(t.split()) for t in texts])
    out["hit_max_new_tokens"] = float(np.mean([not s["eos"] for s in samples]))  # never emitted EOS
    return out


def memorization(model, tokenizer, records, n=10000, seed=0, max_new_tokens=512, batch_size=32, device=None,
                 progress=True, max_prompt_tokens=None):
    """Memorization of `records` (Alpaca dicts) by an in-memory model: a dict with n, seed, max_new_tokens, bleu
    (0-100), bleu_precisions, bleu_bp, {gen,ref}_{tokens,words}_{mean,median}, hit_max_new_tokens, timing and
    "samples" (every scored record, in file order). device: where the model already is (None: wherever).

    Only records whose prompt ([BOS] + template) has at most max_prompt_tokens tokens are eligible (default: the
    model's context less one). Pass the training max_seq_len - 1: a longer prompt was cut inside the prompt in
    training, so its completion was never seen. The n records are drawn from the eligible ones."""
    if device is not None:
        want, have = torch.device(device), model.lm_head.weight.device
        if want.type != have.type or want.index not in (None, have.index):  # "cuda" matches cuda:0
            raise ValueError(f"the model is on {have}, not on {want}")
    ctx = model.args.max_seq_len
    limit = min(max_prompt_tokens or ctx - 1, ctx - 1)
    all_prompts = prompt_ids(tokenizer, records)
    eligible = np.array([i for i, p in enumerate(all_prompts) if len(p) <= limit], dtype=np.int64)
    if len(eligible) == 0:
        raise ValueError(f"no record has a prompt of at most {limit} tokens")
    idx = eligible[sample_indices(len(eligible), n, seed)].tolist()
    chosen = [records[i] for i in idx]
    prompts = [all_prompts[i] for i in idx]
    full = tokenizer.encode_batch([format_prompt(r["instruction"], r.get("input", "")) + r["output"] for r in chosen])

    t0 = time.perf_counter()
    outs = complete(model, tokenizer, prompts, max_new_tokens, batch_size, progress=progress)
    elapsed = time.perf_counter() - t0

    samples = [{"index": i, "instruction": r["instruction"], "input": r.get("input", ""), "reference": r["output"],
                "generation": c["text"], "gen_tokens": len(c["tokens"]), "ref_tokens": len(f) - (len(p) - 1),
                "eos": c["eos"]}
               for i, r, p, f, c in zip(idx, chosen, prompts, full, outs)]
    new_tokens = sum(s["gen_tokens"] + s["eos"] for s in samples)
    return {"n": len(samples), "n_records": len(records), "seed": seed, "max_new_tokens": max_new_tokens,
            "max_prompt_tokens": limit, "skipped_long_prompts": len(records) - len(eligible),
            **summarize(samples),
            "context_limited": sum(len(p) + max_new_tokens > ctx for p in prompts),
            "new_tokens": new_tokens, "seconds": elapsed, "tokens_per_s": new_tokens / elapsed,
            "samples": samples}


def report(res):
    """The few lines printed on stdout."""
    return "\n".join([
        f"memorization: {res['n']} of {res['n_records']} records (seed {res['seed']}), greedy, "
        f"max_new_tokens {res['max_new_tokens']}"
        + (f"; {res['skipped_long_prompts']} records with prompts over {res['max_prompt_tokens']} tokens not eligible"
           if res["skipped_long_prompts"] else ""),
        f"BLEU {res['bleu']:.2f}  (precisions {' / '.join(f'{p:.1f}' for p in res['bleu_precisions'])}, "
        f"BP {res['bleu_bp']:.3f})",
        f"generation: tokens mean {res['gen_tokens_mean']:.1f} median {res['gen_tokens_median']:g}, "
        f"words mean {res['gen_words_mean']:.1f} median {res['gen_words_median']:g}, "
        f"no EOS {100 * res['hit_max_new_tokens']:.1f}%",
        f"reference:  tokens mean {res['ref_tokens_mean']:.1f} median {res['ref_tokens_median']:g}, "
        f"words mean {res['ref_words_mean']:.1f} median {res['ref_words_median']:g}",
        *([f"{res['context_limited']} prompt(s) had fewer than max_new_tokens left in the model's context"]
          if res["context_limited"] else []),
        f"{res['new_tokens']} new tokens in {res['seconds']:.1f} s ({res['tokens_per_s']:.0f} tokens/s)",
    ])


def main(argv=None):
    p = argparse.ArgumentParser(description="Greedy completions of training prompts: BLEU against the training "
                                            "completions and generation lengths.")
    p.add_argument("--model", required=True, help="HF LLaMA directory (config.json, safetensors, tokenizer.model)")
    p.add_argument("--data", required=True, help="the Alpaca-format training data (.json, .jsonl, .gz)")
    p.add_argument("--n", type=int, default=10000, help="records to score, drawn with --seed (default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_new_tokens", type=int, default=512)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_prompt_tokens", type=int, default=None,
                   help="score only records whose prompt ([BOS] + template) has at most this many tokens "
                        "(default: the model's context - 1; pass the training max_seq_len - 1)")
    p.add_argument("--samples", type=int, default=None,
                   help="keep the first K samples in the output JSON (default: all; 0: none)")
    p.add_argument("--output", help="results JSON to write")
    p.add_argument("--tokenizer", help="a tokenizer.model to use instead of the model directory's")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=list(DTYPES), help="default: float32 on cpu, bfloat16 on cuda")
    args = p.parse_args(argv)
    for name in ("n", "max_new_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    for name in ("samples", "max_prompt_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < (0 if name == "samples" else 1):
            raise ValueError(f"--{name} must be {'>= 0' if name == 'samples' else 'positive'}, got {getattr(args, name)}")
    if args.output:  # before the long part, so a bad path fails at once
        check_writable(args.output)
    records = load_records(args.data)
    context = read_args(args.model).max_seq_len  # the model's config.json alone, before loading it
    if args.max_new_tokens > context:  # generation stops where the context is full: more can never be generated
        raise ValueError(f"--max_new_tokens {args.max_new_tokens} exceeds the model's context of {context} tokens "
                         f"(in {Path(args.model) / 'config.json'}): at most {context}")
    model, tok = load_model_and_tokenizer(args.model, args.device, args.dtype, args.tokenizer)
    res = memorization(model, tok, records, args.n, args.seed, args.max_new_tokens, args.batch_size,
                       max_prompt_tokens=args.max_prompt_tokens)
    res = {"model": str(args.model), "data": str(args.data), "device": str(model.lm_head.weight.device),
           "dtype": str(model.lm_head.weight.dtype).removeprefix("torch."), "batch_size": args.batch_size, **res}
    if args.samples is not None:
        res["samples"] = res["samples"][:max(args.samples, 0)]
    if args.output:
        write_json(args.output, res, indent=1)
    print(report(res))
    return 0


if __name__ == "__main__":
    cli(main, "memorization.py")
