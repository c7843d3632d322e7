"""
Held-out fit, overfitting, forgetting and the learned task, for the small-scale PLW study (README, "A small-scale
study (CPU)"). Three subcommands:

    python eval/heldout.py split --src data/samples/alpaca_2k_short.json --tokenizer tests/fixtures/stories260K \
        --max_seq_len 512 --n_heldout 200 --n_train 300 --seed 0 --out docs/study/data
    python eval/heldout.py base_samples --model tests/fixtures/stories260K --n 64 --tokens 128 --seed 0 \
        --output docs/study/data/base_samples.json
    python eval/heldout.py eval --model out/study_sweep/plw0_seed1 --train docs/study/data/train.json \
        --heldout docs/study/data/heldout.json --base_samples docs/study/data/base_samples.json \
        --output out/study_sweep/plw0_seed1/eval_heldout.json

split: the records whose whole example (BOS + template + input + output + EOS, the model's own tokens, exactly
data/prepare.py's tokenization) fits max_seq_len, so no record loses any completion token to truncation; then one
permutation fixed by --seed (not the training seed): the first n_heldout are held out, the next n_train train.
Writes train.json, heldout.json (Alpaca format, file order) and split.json (what was filtered; R_g in the model's
own tokens with and without the template).

base_samples: n texts sampled from the base model (temperature 1, from BOS, a torch generator seeded with --seed),
each exactly --tokens tokens (EOS is not allowed to end them early: it is masked out), stored as token ids, so
every fine-tuned model is scored on the same tokens: the forgetting set.

eval, per fine-tuned model (all losses: mean cross-entropy in nats per token, pooled over the tokens):
  heldout_nll         completion tokens (output + EOS) of the held-out records (the examples are data/prepare.py's)
  heldout_prompt_nll  prompt tokens (template + input, BOS is never a target) of the held-out records
  train_nll           completion tokens of the training records, measured the same way after training
  gap                 heldout_nll - train_nll: overfitting
  forget_nll          the base-model samples (every token after BOS): forgetting of the pre-training distribution
  exact_match, chrf   greedy prediction of the held-out instruction (the completion of an inverted record) from
                      its prompt, up to EOS or --max_new_tokens: exact match after stripping surrounding whitespace
                      (0-1), and corpus chrF (eval/chrf.py, 0-100) against the record's output
  gen_tokens_mean     mean new tokens of those predictions (EOS not counted)
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from data.batch import collate
from data.prepare import COMPLETION, load_records, tokenize
from eval.chrf import corpus_chrf
from eval.generate import complete, load_model_and_tokenizer, prompt_ids
from tokenizer import Tokenizer
from util import DataError, atomic_write, check_writable, cli, write_json


# -----------------------------------------------------------------------------
# split

def split(records, tokenizer, max_seq_len, n_heldout, n_train, seed):
    """-> (train records, held-out records, report). Only records whose whole example fits max_seq_len."""
    data = tokenize(records, tokenizer)
    o, roles = data["offsets"], data["roles"]
    lens = np.diff(o)
    comp = np.add.reduceat(roles == COMPLETION, o[:-1]).astype(np.int64)        # output + EOS
    prompt = lens - comp                                                          # BOS + template + input
    # cut at max_seq_len: an example whose first max_seq_len tokens hold no completion token trains nothing at PLW 0
    whole_lost = np.array([L > max_seq_len and not roles[s:s + max_seq_len].any() for L, s in zip(lens, o[:-1])])
    fits = np.flatnonzero(lens <= max_seq_len)
    if n_heldout < 1 or n_train < 1 or n_heldout + n_train > len(fits):
        raise ValueError(f"n_heldout ({n_heldout}) + n_train ({n_train}) must be positive and at most the "
                         f"{len(fits)} records that fit {max_seq_len} tokens")
    perm = np.random.default_rng(seed).permutation(len(fits))
    held = np.sort(fits[perm[:n_heldout]])
    train = np.sort(fits[perm[n_heldout:n_heldout + n_train]])

    def rg(idx):
        raw = [(len(tokenizer.encode(records[i]["instruction"])) + len(tokenizer.encode(records[i]["input"])),
                len(tokenizer.encode(records[i]["output"]))) for i in idx]
        p, c = np.mean([r[0] for r in raw]), np.mean([r[1] for r in raw])
        return {"rg_template": float(comp[idx].mean() / prompt[idx].mean()), "rg_fields": float(c / p),
                "prompt_tokens_mean": float(prompt[idx].mean()), "completion_tokens_mean": float(comp[idx].mean()),
                "tokens_median": float(np.median(lens[idx]))}

    report = {
        "records": len(records), "max_seq_len": max_seq_len, "seed": seed, "tokenizer": str(tokenizer.path),
        "over_max_seq_len": int((lens > max_seq_len).sum()),
        "over_max_seq_len_whole_completion_lost": int(whole_lost.sum()),
        "fit": len(fits), "n_heldout": n_heldout, "n_train": n_train, "unused_fitting": len(fits) - n_heldout - n_train,
        "all": rg(np.arange(len(records))), "fitting": rg(fits), "train": rg(train), "heldout": rg(held),
        "R_g": "completion tokens / prompt tokens, means over records; rg_template: the model's own example "
               "(prompt = BOS + template + instruction + input, completion = output + EOS); rg_fields: data/stats.py's "
               "definition (fields tokenized alone, no template)",
    }
    return [records[i] for i in train], [records[i] for i in held], report


# -----------------------------------------------------------------------------
# base-model samples (the forgetting set)

@torch.no_grad()
def base_samples(model, tokenizer, n, tokens, seed):
    """n samples of exactly `tokens` tokens after BOS, temperature 1, EOS masked out; [{"tokens", "text"}]"""
    if tokens + 1 > model.args.max_seq_len:
        raise ValueError(f"--tokens {tokens} + BOS exceeds the model's context {model.args.max_seq_len}")
    model.eval()
    gen = torch.Generator(device=model.lm_head.weight.device).manual_seed(seed)
    x = torch.full((n, 1), tokenizer.bos_id, dtype=torch.long, device=model.lm_head.weight.device)
    for _ in range(tokens):  # no cache: 128 steps of a 260K model are cheap, and this is run once
        logits = model(x)[:, -1].float()
        logits[:, list(tokenizer.stop_ids)] = -float("inf")
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
        x = torch.cat([x, nxt], 1)
    return [{"tokens": row, "text": tokenizer.decode(row[1:])} for row in x.tolist()]


# -----------------------------------------------------------------------------
# evaluation

@torch.no_grad()
def token_nll(model, data, batch_size=16):
    """Mean CE over completion targets and over prompt targets of examples `data` (data/prepare.py's arrays)
    -> (completion_nll, prompt_nll, completion_count, prompt_count)"""
    device = model.lm_head.weight.device
    model.eval()
    n = len(data["offsets"]) - 1
    order = np.argsort(np.diff(data["offsets"]))
    sums = np.zeros(2)
    counts = np.zeros(2, dtype=np.int64)
    for i in range(0, n, batch_size):
        ids = order[i:i + batch_size]
        x, y, _, p = collate(data, ids, 0.0)
        x, y, p = x.to(device), y.to(device), p.to(device)
        ce = model(x, targets=y).double()
        valid = y >= 0
        for k, m in enumerate((valid & ~p, valid & p)):
            sums[k] += float(ce[m].sum())
            counts[k] += int(m.sum())
    return (float(sums[0] / counts[0]), float(sums[1] / counts[1]) if counts[1] else None, int(counts[0]),
            int(counts[1]))


@torch.no_grad()
def sample_nll(model, samples, batch_size=16):
    """mean CE over every token after BOS of the base samples"""
    device = model.lm_head.weight.device
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(samples), batch_size):
        t = torch.tensor([s["tokens"] for s in samples[i:i + batch_size]], device=device)
        ce = model(t[:, :-1], targets=t[:, 1:]).double()
        total += float(ce.sum())
        count += ce.numel()
    return total / count


def evaluate(model, tokenizer, train_records, heldout_records, samples, max_new_tokens=48, batch_size=16,
             progress=False):
    t0 = time.perf_counter()
    held = tokenize(heldout_records, tokenizer)
    train = tokenize(train_records, tokenizer)
    ctx = model.args.max_seq_len
    for name, d in (("held-out", held), ("train", train)):
        if np.diff(d["offsets"]).max() > ctx:
            raise ValueError(f"a {name} record is longer than the model's context {ctx}: make the split with "
                             f"--max_seq_len {ctx} or less")
    h_nll, h_pnll, h_n, _ = token_nll(model, held, batch_size * 4)
    t_nll, t_pnll, t_n, _ = token_nll(model, train, batch_size * 4)
    forget = sample_nll(model, samples, batch_size) if samples else None
    outs = complete(model, tokenizer, prompt_ids(tokenizer, heldout_records), max_new_tokens, batch_size * 2,
                    progress=progress)
    hyps = [c["text"] for c in outs]
    refs = [r["output"] for r in heldout_records]
    em = float(np.mean([h.strip() == r.strip() for h, r in zip(hyps, refs)]))
    return {
        "heldout_nll": h_nll, "heldout_prompt_nll": h_pnll, "train_nll": t_nll, "train_prompt_nll": t_pnll,
        "gap": h_nll - t_nll, "forget_nll": forget, "exact_match": em, "chrf": corpus_chrf(hyps, refs),
        "gen_tokens_mean": float(np.mean([len(c["tokens"]) for c in outs])),
        "gen_hit_max_new_tokens": float(np.mean([not c["eos"] for c in outs])),
        "n_heldout": len(heldout_records), "n_train": len(train_records), "heldout_completion_tokens": h_n,
        "train_completion_tokens": t_n, "n_base_samples": len(samples or []), "max_new_tokens": max_new_tokens,
        "seconds": time.perf_counter() - t0,
        "samples": [{"reference": r, "generation": h} for r, h in zip(refs, hyps)],
    }


# -----------------------------------------------------------------------------
# command line

def read_base_samples(path):
    """The samples of a base_samples file; one line naming the file when it is missing or not one"""
    try:
        samples = json.loads(Path(path).read_text(encoding="utf-8"))["samples"]
        if not isinstance(samples, list):
            raise TypeError("'samples' is not a list")
        return samples
    except OSError as e:
        raise DataError(f"--base_samples {path}: cannot read it ({e.strerror or e})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"--base_samples {path}: not a base_samples file of this script ({type(e).__name__}: {e})") from None


def main(argv=None):
    p = argparse.ArgumentParser(description="Held-out split, base-model samples, and the held-out / forgetting "
                                            "evaluation of the small-scale PLW study.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="filter records that fit the context; a fixed held-out / train split")
    s.add_argument("--src", required=True)
    s.add_argument("--tokenizer", required=True, help="a tokenizer.model or a model directory")
    s.add_argument("--max_seq_len", type=int, default=512)
    s.add_argument("--n_heldout", type=int, default=300)
    s.add_argument("--n_train", type=int, default=700)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="directory for train.json, heldout.json, split.json")
    b = sub.add_parser("base_samples", help="sample the forgetting set from the base model")
    b.add_argument("--model", required=True)
    b.add_argument("--n", type=int, default=64)
    b.add_argument("--tokens", type=int, default=128)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--output", required=True)
    e = sub.add_parser("eval", help="held-out NLL, train NLL, forgetting NLL, exact match and chrF")
    e.add_argument("--model", required=True)
    e.add_argument("--train", required=True)
    e.add_argument("--train_n", type=int, default=0, help="the first N training records, file order (0: all)")
    e.add_argument("--heldout", required=True)
    e.add_argument("--base_samples", default="")
    e.add_argument("--max_new_tokens", type=int, default=48)
    e.add_argument("--batch_size", type=int, default=16)
    e.add_argument("--device", default="cpu")
    e.add_argument("--output", required=True)
    args = p.parse_args(argv)

    if args.cmd == "split":
        check_writable(Path(args.out) / "split.json")
        records = load_records(args.src)
        train, held, report = split(records, Tokenizer(args.tokenizer), args.max_seq_len, args.n_heldout,
                                    args.n_train, args.seed)
        out = Path(args.out)
        report["src"] = str(args.src)
        for name, recs in (("train.json", train), ("heldout.json", held)):
            text = json.dumps(recs, indent=4)
            atomic_write(out / name, lambda tmp, text=text: Path(tmp).write_text(text))
        write_json(out / "split.json", report, indent=1)
        print(json.dumps(report, indent=1))
        return 0
    check_writable(args.output)
    if args.cmd == "base_samples":
        model, tok = load_model_and_tokenizer(args.model, "cpu", "float32")
        torch.manual_seed(args.seed)
        samples = base_samples(model, tok, args.n, args.tokens, args.seed)
        write_json(args.output, {"model": str(args.model), "n": args.n, "tokens": args.tokens, "seed": args.seed,
                                 "temperature": 1.0, "samples": samples}, indent=1)
        print(f"wrote {args.output}: {args.n} samples of {args.tokens} tokens; first: {samples[0]['text'][:200]!r}")
        return 0
    model, tok = load_model_and_tokenizer(args.model, args.device, "float32")
    samples = read_base_samples(args.base_samples) if args.base_samples else []
    train = load_records(args.train)
    res = evaluate(model, tok, train[:args.train_n] if args.train_n > 0 else train, load_records(args.heldout), samples, args.max_new_tokens,
                   args.batch_size)
    res = {"model": str(args.model), "train": args.train, "heldout": args.heldout,
           "base_samples": args.base_samples, **res}
    write_json(args.output, res, indent=1)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items() if k != "samples"})
    return 0


if __name__ == "__main__":
    cli(main, "heldout.py")
