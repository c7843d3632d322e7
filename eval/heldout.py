"""
Held-out fit, overfitting, forgetting, the learned task and a multiple-choice task, for the small-scale PLW study
(README, "A small-scale study (CPU)"). Three subcommands:

    python eval/heldout.py split --src data/samples/alpaca_2k_short.json --tokenizer tests/fixtures/stories260K \
        --max_seq_len 512 --n_heldout 500 --seed 0 --train_name pool.json --out docs/study/data
    python eval/heldout.py base_samples --model tests/fixtures/stories260K --n 64 --tokens 128 --seed 0 \
        --output docs/study/data/base_samples.json
    python eval/heldout.py base_samples --model tests/fixtures/stories260K --n 200 --tokens 128 --seed 1 \
        --cloze_context 96 --cloze_k 4 --output docs/study/data/story_cloze.json
    python eval/heldout.py eval --model out/study_sweep/plw0_seed1 --train out/study_sweep/data/train_seed1.json \
        --heldout docs/study/data/heldout.json --base_samples docs/study/data/base_samples.json \
        --cloze docs/study/data/story_cloze.json --output out/study_sweep/plw0_seed1/eval_heldout.json

split: the records whose whole example (BOS + template + input + output + EOS, the model's own tokens, exactly
data/prepare.py's tokenization) fits max_seq_len, so no record loses any completion token to truncation; then one
permutation fixed by --seed (not the training seed): the first n_heldout are held out, the next n_train (0: all the
rest, the pool a study's seeds draw from) are the training records. With --mc_n, also multiple-choice items
(choice_items: the first --mc_n held-out records, each with its true completion and --mc_k - 1 other held-out
records' completions). Writes the training records, heldout.json, heldout_mc.json (Alpaca format / items, file
order) and split.json (what was filtered; R_g in the model's own tokens with and without the template).

base_samples: n texts sampled from the base model (temperature 1, from BOS, a torch generator seeded with --seed),
each exactly --tokens tokens (EOS is not allowed to end them early: it is masked out), stored as token ids, so
every fine-tuned model is scored on the same tokens: the forgetting set. With --cloze_context, a cloze made from
the samples instead (cloze_items): a multiple-choice task in the base model's own domain.

eval, per fine-tuned model (all losses: mean cross-entropy in nats per token, pooled over the tokens):
  heldout_nll         completion tokens (output + EOS) of the held-out records (the examples are data/prepare.py's)
  heldout_prompt_nll  prompt tokens (template + input, BOS is never a target) of the held-out records
  train_nll           completion tokens of the training records, measured the same way after training
  gap                 heldout_nll - train_nll: overfitting
  forget_nll          the base-model samples (every token after BOS): forgetting of the pre-training distribution
  mc_acc, mc_acc_norm the multiple-choice items: pick the record's true instruction among k by log-likelihood as
                      the continuation of its prompt (lm-eval's acc, and acc_norm = by ll / characters); chance 1/k
  cloze_acc, _norm    a cloze in the base model's own domain (base_samples --cloze_context): pick a base sample's
                      true continuation among k other samples' by log-likelihood after its context; chance 1/k
  exact_match, chrf   greedy prediction of the held-out instruction (the completion of an inverted record) from
                      its prompt, up to EOS or --max_new_tokens: exact match after stripping surrounding whitespace
                      (0-1), and corpus chrF (eval/chrf.py, 0-100) against the record's output
  gen_tokens_mean     mean new tokens of those predictions (EOS not counted)
and under "records" the same per record (sums and counts of CE; 0/1 per item), for a bootstrap over records.
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
from data.prepare import COMPLETION, PROMPT, format_prompt, load_records, tokenize
from eval.chrf import corpus_chrf
from eval.generate import complete, load_model_and_tokenizer, prompt_ids
from tokenizer import Tokenizer
from util import DataError, atomic_write, check_writable, cli, write_json


# -----------------------------------------------------------------------------
# split

def split(records, tokenizer, max_seq_len, n_heldout, n_train, seed):
    """-> (train records, held-out records, report). Only records whose whole example fits max_seq_len; n_train 0
    keeps every fitting record that is not held out (the pool a study's seeds draw their training records from)."""
    data = tokenize(records, tokenizer)
    o, roles = data["offsets"], data["roles"]
    lens = np.diff(o)
    comp = np.add.reduceat(roles == COMPLETION, o[:-1]).astype(np.int64)        # output + EOS
    prompt = lens - comp                                                          # BOS + template + input
    # cut at max_seq_len: an example whose first max_seq_len tokens hold no completion token trains nothing at PLW 0
    whole_lost = np.array([L > max_seq_len and not roles[s:s + max_seq_len].any() for L, s in zip(lens, o[:-1])])
    fits = np.flatnonzero(lens <= max_seq_len)
    n_train = n_train or len(fits) - n_heldout
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


def cloze_items(samples, context, k, seed):
    """A cloze in the base model's own domain, from base samples (base_samples, all the same length): keep each
    sample's first `context` tokens after BOS, and choose its true continuation (the rest) among k: it and k - 1
    other samples' continuations drawn with `seed`, in random order. Chance is 1/k."""
    rng = np.random.default_rng(seed)
    rest = [s["tokens"][1 + context:] for s in samples]
    items = []
    for i, s in enumerate(samples):
        others = [int(j) for j in rng.permutation(len(samples)) if j != i][:k - 1]
        choices = [rest[i]] + [rest[j] for j in others]
        order = rng.permutation(k)
        items.append({"context": s["tokens"][:1 + context], "choices": [choices[j] for j in order],
                      "gold": int(np.flatnonzero(order == 0)[0])})
    return items


@torch.no_grad()
def cloze_scores(model, tokenizer, items, batch_size=64):
    """lm-eval's multiple-choice scoring of cloze items (token ids): each choice's log-likelihood after the context;
    acc = the argmax is gold, acc_norm = the argmax of ll / the choice's length in characters (decoded) is gold
    -> {"acc": (n,), "acc_norm": (n,)} of 0/1"""
    device = model.lm_head.weight.device
    model.eval()
    seqs = [it["context"] + c for it in items for c in it["choices"]]
    n_ctx = [len(it["context"]) for it in items for _ in it["choices"]]
    ll = np.zeros(len(seqs))
    for i in range(0, len(seqs), batch_size):
        t = torch.tensor(seqs[i:i + batch_size], device=device)                            # (B, T), equal lengths
        ce = model(t[:, :-1], targets=t[:, 1:]).double().cpu()                              # (B, T - 1)
        for b in range(len(t)):
            ll[i + b] = -float(ce[b, n_ctx[i + b] - 1:].sum())  # the targets from the first choice token on
    acc, acc_norm, start = [], [], 0
    for it in items:
        k = len(it["choices"])
        v, lens = ll[start:start + k], np.array([float(len(tokenizer.decode(c))) for c in it["choices"]])
        acc.append(float(np.argmax(v) == it["gold"]))
        acc_norm.append(float(np.argmax(v / np.maximum(lens, 1.0)) == it["gold"]))
        start += k
    return {"acc": np.array(acc), "acc_norm": np.array(acc_norm)}


# -----------------------------------------------------------------------------
# evaluation

@torch.no_grad()
def record_nll(model, data, batch_size=16):
    """Per example of `data` (data/prepare.py's arrays): the summed CE of its completion targets and of its prompt
    targets, their counts, and the CE of its last target (the EOS) -> {"completion_sum", "completion_count",
    "prompt_sum", "prompt_count", "eos"}, arrays (n,) in data order. A pooled NLL is sum / count over the examples;
    a bootstrap resamples examples."""
    device = model.lm_head.weight.device
    model.eval()
    n = len(data["offsets"]) - 1
    order = np.argsort(np.diff(data["offsets"]))  # similar lengths together: little padding
    out = {k: np.zeros(n) for k in ("completion_sum", "prompt_sum", "eos")}
    out.update({k: np.zeros(n, dtype=np.int64) for k in ("completion_count", "prompt_count")})
    for i in range(0, n, batch_size):
        ids = order[i:i + batch_size]
        x, y, _, r = collate(data, ids, 0.0)
        ce = model(x.to(device), targets=y.to(device)).double().cpu()                       # (B, T)
        for role, name in ((COMPLETION, "completion"), (PROMPT, "prompt")):
            m = r == role
            out[f"{name}_sum"][ids] = (ce * m).sum(1).numpy()
            out[f"{name}_count"][ids] = m.sum(1).numpy()
        out["eos"][ids] = ce[torch.arange(len(ids)), (y >= 0).sum(1) - 1].numpy()
    return out


@torch.no_grad()
def sample_nll(model, samples, batch_size=16):
    """per base sample, the summed CE of every token after BOS -> (sums (n,), counts (n,))"""
    device = model.lm_head.weight.device
    model.eval()
    sums = []
    for i in range(0, len(samples), batch_size):
        t = torch.tensor([s["tokens"] for s in samples[i:i + batch_size]], device=device)
        sums += model(t[:, :-1], targets=t[:, 1:]).double().sum(1).tolist()
    return np.array(sums), np.array([len(s["tokens"]) - 1 for s in samples], dtype=np.int64)


def choice_items(heldout_records, n, k, seed, tokenizer, max_seq_len):
    """The held-out multiple-choice task: for each of the first n held-out records, its prompt and k choices, the
    true completion (the record's output: the original instruction) and k - 1 other held-out records' outputs drawn
    with `seed` among those that fit max_seq_len after this prompt, in random order. Chance is 1/k."""
    rng = np.random.default_rng(seed)
    outputs = [r["output"] for r in heldout_records]

    def fits(r, text):  # the example as data/prepare.py builds it: BOS + tokens(prompt + text) + EOS
        return len(tokenizer.encode(format_prompt(r["instruction"], r["input"]) + text)) + 2 <= max_seq_len
    items = []
    for r in heldout_records[:n]:
        choices = [r["output"]]
        for j in rng.permutation(len(outputs)):
            if len(choices) == k:
                break
            if outputs[j] not in choices and fits(r, outputs[j]):
                choices.append(outputs[j])
        order = rng.permutation(k)
        items.append({"instruction": r["instruction"], "input": r["input"],
                      "choices": [choices[j] for j in order], "gold": int(np.flatnonzero(order == 0)[0])})
    return items


@torch.no_grad()
def choice_scores(model, tokenizer, items, batch_size=16):
    """lm-eval's multiple-choice scoring of items (choice_items): each choice's log-likelihood as the continuation
    of the record's prompt, the example built as data/prepare.py builds it (the EOS is not part of the choice);
    acc = the argmax is gold, acc_norm = the argmax of ll / len(choice) in characters is gold (lm-eval's acc_norm)
    -> {"acc": (n,), "acc_norm": (n,)} of 0/1"""
    flat = [{"instruction": it["instruction"], "input": it["input"], "output": c} for it in items for c in it["choices"]]
    nll = record_nll(model, tokenize(flat, tokenizer), batch_size)
    ll = -(nll["completion_sum"] - nll["eos"])  # without the EOS target: the continuation is the choice's text
    acc, acc_norm, start = [], [], 0
    for it in items:
        k = len(it["choices"])
        v = ll[start:start + k]
        lens = np.array([float(len(c)) for c in it["choices"]])
        acc.append(float(np.argmax(v) == it["gold"]))
        acc_norm.append(float(np.argmax(v / lens) == it["gold"]))
        start += k
    return {"acc": np.array(acc), "acc_norm": np.array(acc_norm)}


def evaluate(model, tokenizer, train_records, heldout_records, samples, mc_items=(), cloze=(), max_new_tokens=48,
             batch_size=16, progress=False):
    """Every measure of one fine-tuned model (the module docstring), pooled, and per record under "records" (held-out,
    train, forgetting, the multiple-choice items) for the record-level bootstrap of the study's intervals."""
    t0 = time.perf_counter()
    held = tokenize(heldout_records, tokenizer)
    train = tokenize(train_records, tokenizer)
    ctx = model.args.max_seq_len
    for name, d in (("held-out", held), ("train", train)):
        if np.diff(d["offsets"]).max() > ctx:
            raise ValueError(f"a {name} record is longer than the model's context {ctx}: make the split with "
                             f"--max_seq_len {ctx} or less")
    h, t = record_nll(model, held, batch_size * 4), record_nll(model, train, batch_size * 4)
    pooled = lambda d, role: float(d[f"{role}_sum"].sum() / max(d[f"{role}_count"].sum(), 1))  # noqa: E731
    f_sum, f_count = sample_nll(model, samples, batch_size) if samples else (np.zeros(0), np.zeros(0, dtype=np.int64))
    mc = choice_scores(model, tokenizer, list(mc_items), batch_size * 4) if mc_items else None
    cz = cloze_scores(model, tokenizer, list(cloze), batch_size * 4) if cloze else None
    outs = complete(model, tokenizer, prompt_ids(tokenizer, heldout_records), max_new_tokens, batch_size * 2,
                    progress=progress)
    hyps = [c["text"] for c in outs]
    refs = [r["output"] for r in heldout_records]
    em = float(np.mean([h.strip() == r.strip() for h, r in zip(hyps, refs)]))
    keep = ("completion_sum", "completion_count", "prompt_sum", "prompt_count")
    records = {"heldout": {k: h[k].tolist() for k in keep}, "train": {k: t[k].tolist() for k in keep},
               "forget": {"sum": f_sum.tolist(), "count": f_count.tolist()}}
    for name, scores in (("mc", mc), ("cloze", cz)):
        if scores is not None:
            records[name] = {k: v.tolist() for k, v in scores.items()}
    return {
        "heldout_nll": pooled(h, "completion"), "heldout_prompt_nll": pooled(h, "prompt"),
        "train_nll": pooled(t, "completion"), "train_prompt_nll": pooled(t, "prompt"),
        "gap": pooled(h, "completion") - pooled(t, "completion"),
        "forget_nll": float(f_sum.sum() / f_count.sum()) if samples else None,
        "mc_acc": float(mc["acc"].mean()) if mc is not None else None,
        "mc_acc_norm": float(mc["acc_norm"].mean()) if mc is not None else None,
        "cloze_acc": float(cz["acc"].mean()) if cz is not None else None,
        "cloze_acc_norm": float(cz["acc_norm"].mean()) if cz is not None else None,
        "exact_match": em, "chrf": corpus_chrf(hyps, refs),
        "gen_tokens_mean": float(np.mean([len(c["tokens"]) for c in outs])),
        "gen_hit_max_new_tokens": float(np.mean([not c["eos"] for c in outs])),
        "n_heldout": len(heldout_records), "n_train": len(train_records), "n_mc": len(mc_items),
        "n_cloze": len(cloze),
        "heldout_completion_tokens": int(h["completion_count"].sum()),
        "train_completion_tokens": int(t["completion_count"].sum()), "n_base_samples": len(samples or []),
        "max_new_tokens": max_new_tokens, "seconds": time.perf_counter() - t0,
        "samples": [{"reference": r, "generation": g} for r, g in zip(refs, hyps)], "records": records,
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
    s.add_argument("--n_train", type=int, default=0, help="training records (0: every fitting record not held out)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--mc_n", type=int, default=0, help="held-out records made into multiple-choice items (0: none)")
    s.add_argument("--mc_k", type=int, default=4, help="choices per item (chance = 1/k)")
    s.add_argument("--train_name", default="train.json", help="file name of the training records")
    s.add_argument("--out", required=True, help="directory for the training records, heldout.json, heldout_mc.json "
                                                "and split.json")
    b = sub.add_parser("base_samples", help="sample the forgetting set from the base model")
    b.add_argument("--model", required=True)
    b.add_argument("--n", type=int, default=64)
    b.add_argument("--tokens", type=int, default=128)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--cloze_context", type=int, default=0,
                   help="> 0: write a cloze from the samples instead: this many context tokens, the rest to choose")
    b.add_argument("--cloze_k", type=int, default=4, help="choices per cloze item (chance = 1/k)")
    b.add_argument("--output", required=True)
    e = sub.add_parser("eval", help="held-out NLL, train NLL, forgetting NLL, exact match and chrF")
    e.add_argument("--model", required=True)
    e.add_argument("--train", required=True)
    e.add_argument("--train_n", type=int, default=0, help="the first N training records, file order (0: all)")
    e.add_argument("--heldout", required=True)
    e.add_argument("--base_samples", default="")
    e.add_argument("--mc", default="", help="multiple-choice items (split's heldout_mc.json; \"\" = none)")
    e.add_argument("--cloze", default="", help="cloze items (base_samples --cloze_context; \"\" = none)")
    e.add_argument("--max_new_tokens", type=int, default=48)
    e.add_argument("--batch_size", type=int, default=16)
    e.add_argument("--device", default="cpu")
    e.add_argument("--output", required=True)
    args = p.parse_args(argv)
    if args.cmd == "split":
        return split_main(args)
    if args.cmd == "base_samples" and args.cloze_context and not 0 < args.cloze_context < args.tokens:
        raise ValueError(f"--cloze_context must be in (0, --tokens {args.tokens}), got {args.cloze_context}")
    check_writable(args.output)
    return base_samples_main(args) if args.cmd == "base_samples" else eval_main(args)


def split_main(args):
    check_writable(Path(args.out) / "split.json")
    records, tok = load_records(args.src), Tokenizer(args.tokenizer)
    train, held, report = split(records, tok, args.max_seq_len, args.n_heldout, args.n_train, args.seed)
    out = Path(args.out)
    report["src"] = str(args.src)
    files = [(args.train_name, train), ("heldout.json", held)]
    if args.mc_n > 0:
        items = choice_items(held, args.mc_n, args.mc_k, args.seed, tok, args.max_seq_len)
        report.update(mc_n=len(items), mc_k=args.mc_k, mc_seed=args.seed)
        files.append(("heldout_mc.json", items))
    for name, recs in files:
        text = json.dumps(recs, indent=4)
        atomic_write(out / name, lambda tmp, text=text: Path(tmp).write_text(text))
    write_json(out / "split.json", report, indent=1)
    print(json.dumps(report, indent=1))
    return 0


def base_samples_main(args):
    model, tok = load_model_and_tokenizer(args.model, "cpu", "float32")
    torch.manual_seed(args.seed)
    samples = base_samples(model, tok, args.n, args.tokens, args.seed)
    meta = {"model": str(args.model), "n": args.n, "tokens": args.tokens, "seed": args.seed, "temperature": 1.0}
    if args.cloze_context > 0:
        items = cloze_items(samples, args.cloze_context, args.cloze_k, args.seed)
        write_json(args.output, {**meta, "context": args.cloze_context, "k": args.cloze_k, "items": items}, indent=None)
        print(f"wrote {args.output}: {len(items)} cloze items, {args.cloze_context} context tokens, "
              f"{args.cloze_k} choices of {args.tokens - args.cloze_context} tokens")
        return 0
    write_json(args.output, {**meta, "samples": samples}, indent=1)
    print(f"wrote {args.output}: {args.n} samples of {args.tokens} tokens; first: {samples[0]['text'][:200]!r}")
    return 0


def eval_main(args):
    model, tok = load_model_and_tokenizer(args.model, args.device, "float32")
    samples = read_base_samples(args.base_samples) if args.base_samples else []
    train = load_records(args.train)
    items = json.loads(Path(args.mc).read_text()) if args.mc else []
    cloze = json.loads(Path(args.cloze).read_text())["items"] if args.cloze else []
    res = evaluate(model, tok, train[:args.train_n] if args.train_n > 0 else train, load_records(args.heldout),
                   samples, items, cloze, args.max_new_tokens, args.batch_size)
    res = {"model": str(args.model), "train": args.train, "heldout": args.heldout,
           "base_samples": args.base_samples, "mc": args.mc, **res}
    write_json(args.output, res, indent=None)  # one line: it carries every record's numbers
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items() if k not in ("samples", "records")})
    return 0

if __name__ == "__main__":
    cli(main, "heldout.py")
