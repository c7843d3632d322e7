"""
Completions for Alpaca-format instructions, and the batched generation that eval/memorization.py shares.

    python eval/generate.py --model out/plw01 --prompts alpaca_eval --output plw01_outputs.json [--limit N]
    python eval/generate.py --model out/plw01 --prompts pandalm --output plw01_pandalm.json

writes AlpacaEval's model_outputs format, a JSON list of {"instruction", "output", "generator"} ("dataset" kept
when the prompts have it, "input" when not empty), for an AlpacaEval judge run elsewhere or eval/judge.py here.
--prompts is a JSON or JSONL file (.gz too), a list of records with "instruction" and optionally "input", or one
of the names `alpaca_eval` (the 805 AlpacaEval instructions, data/eval/alpaca_eval from data/fetch.py; the reference
"output" in that file is ignored) and `pandalm` (PandaLM's 170 test instructions with inputs).

max_new_tokens defaults to 512: 99.9% of the Stanford Alpaca training outputs and 98.9% of AlpacaEval's
text-davinci-003 references are at most 512 LLaMA tokens, so a model fine-tuned on Alpaca that has not emitted EOS
by then is almost always repeating itself; and two 512-token responses plus the judge's template fit the 2,048
token context of a LLaMA-1 judge (PandaLM-7B). The fraction that hit the limit is printed. Generation length
(the paper's Fig. 2d) is printed as mean tokens (tokenizer.encode of the written output) and words
(whitespace-separated), the same definitions eval/judge.py reports.

Each prompt is exactly what the model was fine-tuned on: [BOS] + tokens(format_prompt(instruction, input)), the
Stanford template ending in "### Response:", and the model continues straight after the colon. Decoding is
greedy unless --temperature > 0. A completion is the text of the new tokens up to, not including, EOS, cut from
decode(prompt + new) after decode(prompt): that is the exact continuation, where decode(new) alone would drop
a leading space (sentencepiece removes the space of a text's first piece). The AlpacaEval output is that text
stripped of surrounding whitespace, as a judge reads it.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from tqdm import tqdm

from data.prepare import DataError, format_prompt, read_json_list
from checkpoint import load_model
from util import check_device, check_writable, choose_threads, cli, eval_data_dir, missing_data, write_json
from tokenizer import Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
EVAL_DATA = eval_data_dir()  # $NANOPLW_DATA or data/eval in the checkout: python data/fetch.py fills it
# the instruction sets of the paper's long-generation benchmarks, by name (data/fetch.py's sources)
BENCHMARKS = {
    "alpaca_eval": EVAL_DATA / "alpaca_eval" / "text_davinci_003_outputs.json",  # 805; AlpacaEval 1.0's reference
    "pandalm": EVAL_DATA / "pandalm" / "testset-inference-v1.json",  # 170, with inputs
}
TOKENIZER_FILES = ("tokenizer.model", "original/tokenizer.model")  # where tokenizer.Tokenizer looks in a model dir

# -----------------------------------------------------------------------------
# model and prompts


def load_model_and_tokenizer(path, device=None, dtype=None, tokenizer=None):
    """(model, tokenizer) from an HF LLaMA directory; device None = cuda when there is one, else cpu;
    dtype None = float32 on cpu, bfloat16 on cuda; tokenizer None = the directory's tokenizer.model (or
    original/tokenizer.model, as Meta's LLaMA 3 repositories ship it)."""
    device = check_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or ("float32" if device == "cpu" else "bfloat16")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    path = Path(path)
    if not path.is_dir():  # say so before the tokenizer, which would be "not found" for the same reason
        raise FileNotFoundError(f"model directory not found: {path}")
    if tokenizer is None and not any((path / p).is_file() for p in TOKENIZER_FILES):
        raise FileNotFoundError(f"no tokenizer.model in {path} nor in {path / 'original'} (pass --tokenizer)")
    tok = Tokenizer(tokenizer or path)
    if device == "cpu" and (note := choose_threads(torch)):
        print(note, file=sys.stderr)
    model = load_model(path, device=device, dtype=DTYPES[dtype])
    if tok.vocab_size > model.args.vocab_size:
        raise ValueError(f"tokenizer {tok.path} has {tok.vocab_size} pieces but the model's vocabulary is "
                         f"{model.args.vocab_size}")
    return model, tok


def load_prompts(path):
    """Records with a string "instruction" (and optional string "input") from .json / .jsonl (.gz), or from a
    BENCHMARKS name; every other field is kept as it is. DataError (a ValueError) naming the file and record when
    malformed."""
    path = BENCHMARKS.get(str(path), path)
    if not Path(path).exists() and Path(path).is_relative_to(EVAL_DATA):  # a benchmark file, not fetched yet
        raise missing_data(path, option=None)
    records = read_json_list(path)
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str):
            raise DataError(f"{path}: record {i} has no string field 'instruction'")
        if not isinstance(r.get("input", ""), str):
            raise DataError(f"{path}: record {i} field 'input' is a {type(r['input']).__name__}, expected a string")
    return records


def prompt_ids(tokenizer, records):
    """[BOS] + tokens(Stanford prompt) per record: exactly the prompt tokens the model was trained with."""
    texts = [format_prompt(r["instruction"], r.get("input", "")) for r in records]
    return tokenizer.encode_batch(texts, bos=True)

# -----------------------------------------------------------------------------
# batched generation


def complete(model, tokenizer, prompts, max_new_tokens, batch_size=32, temperature=0.0, top_p=None, seed=0,
             progress=True, decoding=None):
    """Generate a completion for each prompt (a list of token-id lists). Returns one dict per prompt, in order:
    {"text": the continuation up to EOS, "tokens": the new ids without EOS, "eos": whether EOS was emitted}.
    decoding: more model.generate settings (num_beams, early_stopping, length_penalty, repetition_penalty); with
    num_beams K a batch holds batch_size // K prompts, so that batch_size counts the sequences decoded together.

    model.generate runs a batch without padding, from its shortest prompt one position at a time, so prompts are
    sorted by length (longest first, so that running out of memory happens at once) and cut into batches of
    similar lengths. Each prompt gets max_new_tokens, or what is left of the model's context when that is less;
    a batch holds prompts with the same budget. Greedy and beam-search results do not depend on the batching;
    sampled ones (temperature > 0, one torch generator seeded with `seed`) do.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) and batch_size ({batch_size}) must be positive")
    ctx = model.args.max_seq_len
    for i, p in enumerate(prompts):
        if len(p) >= ctx:
            raise ValueError(f"prompt {i} has {len(p)} tokens: no room to generate in the model's {ctx}-token context")
    budget = [min(max_new_tokens, ctx - len(p)) for p in prompts]
    decoding = decoding or {}
    batch_size = max(1, batch_size // decoding.get("num_beams", 1))
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    batches = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and budget[batches[-1][0]] == budget[i]:
            batches[-1].append(i)
        else:
            batches.append([i])

    eos = list(tokenizer.stop_ids)  # EOS, and for LLaMA 3 instruct models <|eot_id|> too (their config.json)
    device = model.lm_head.weight.device
    gen = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    results = [None] * len(prompts)
    n_new, t0 = 0, time.perf_counter()
    was_training = model.training
    model.eval()  # no dropout, even when called on a model in the middle of training
    bar = tqdm(total=len(prompts), unit="prompt", disable=None if progress else True, file=sys.stderr,
               dynamic_ncols=True)
    try:
        for batch in batches:
            outs = model.generate([prompts[i] for i in batch], budget[batch[0]], temperature=temperature,
                                  top_p=top_p, eos_id=eos, generator=gen, **decoding)
            for i, out in zip(batch, outs):
                new = out[len(prompts[i]):]
                hit_eos = bool(new) and new[-1] in eos
                new = new[:-1] if hit_eos else new
                head, full = tokenizer.decode(prompts[i]), tokenizer.decode(prompts[i] + new)
                # pieces decode one by one, so the prompt's text is a prefix of the whole; decode(new) is the fallback
                text = full[len(head):] if full.startswith(head) else tokenizer.decode(new)
                results[i] = {"text": text, "tokens": new, "eos": hit_eos}
                n_new += len(new) + hit_eos
            bar.set_postfix(tok_s=f"{n_new / (time.perf_counter() - t0):.0f}", refresh=False)
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    return results

def output_rows(records, completions, generator):
    """AlpacaEval's model_outputs rows: instruction (input when not empty), output (stripped, as a judge reads
    it), generator, and dataset when the prompt record has one."""
    rows = []
    for r, c in zip(records, completions):
        row = {"instruction": r["instruction"]}
        if r.get("input"):
            row["input"] = r["input"]
        row.update(output=c["text"].strip(), generator=generator)
        if "dataset" in r:
            row["dataset"] = r["dataset"]
        rows.append(row)
    return rows


def length_stats(tokenizer, texts):
    """Mean length of texts in tokens (tokenizer.encode, no BOS/EOS) and in whitespace-separated words."""
    if not texts:
        raise ValueError("no texts to measure")
    n_tokens = sum(map(len, tokenizer.encode_batch(texts)))
    return {"length_tokens": n_tokens / len(texts), "length_words": sum(len(t.split()) for t in texts) / len(texts)}


def generate_outputs(model, tokenizer, records, generator, max_new_tokens=512, batch_size=32, progress=True):
    """Greedy model_outputs rows for records, and {"length_tokens", "length_words", "hit_max_new_tokens"}."""
    out = complete(model, tokenizer, prompt_ids(tokenizer, records), max_new_tokens, batch_size, progress=progress)
    rows = output_rows(records, out, generator)
    stats = length_stats(tokenizer, [r["output"] for r in rows])
    stats["hit_max_new_tokens"] = sum(not c["eos"] for c in out) / len(out)  # never emitted EOS
    return rows, stats

# -----------------------------------------------------------------------------
# command line


def main(argv=None):
    p = argparse.ArgumentParser(description="Completions for Alpaca-format prompts in AlpacaEval's model_outputs format.")
    p.add_argument("--model", required=True, help="HF LLaMA directory (config.json, safetensors, tokenizer.model)")
    p.add_argument("--prompts", required=True,
                   help="JSON/JSONL list of records with 'instruction' (and 'input'), or alpaca_eval / pandalm")
    p.add_argument("--output", required=True, help="JSON file to write: [{instruction, output, generator}, ...]")
    p.add_argument("--generator", help="the 'generator' name (default: the model directory's name)")
    p.add_argument("--max_new_tokens", type=int, default=512, help="default 512 (see the module docstring)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--limit", type=int, help="only the first N prompts (quick runs)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top_p", type=float, default=None, help="nucleus sampling, with --temperature > 0")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (temperature > 0)")
    p.add_argument("--tokenizer", help="a tokenizer.model to use instead of the model directory's")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=list(DTYPES), help="default: float32 on cpu, bfloat16 on cuda")
    args = p.parse_args(argv)
    if args.temperature < 0 or (args.top_p is not None and not 0 < args.top_p <= 1):
        raise ValueError(f"--temperature {args.temperature} must be >= 0 and --top_p {args.top_p} in (0, 1]")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be positive, got {args.limit}")
    records = load_prompts(args.prompts)[:args.limit]
    check_writable(args.output)  # before the long part: a bad path fails at once
    model, tok = load_model_and_tokenizer(args.model, args.device, args.dtype, args.tokenizer)
    generator = args.generator or Path(args.model).resolve().name
    out = complete(model, tok, prompt_ids(tok, records), args.max_new_tokens, args.batch_size,
                   args.temperature, args.top_p, args.seed)
    rows = output_rows(records, out, generator)
    write_json(args.output, rows)
    stats = length_stats(tok, [r["output"] for r in rows])
    no_eos = sum(not c["eos"] for c in out)
    print(f"wrote {len(rows)} completions by {generator!r} to {args.output} ({no_eos} reached max_new_tokens)")
    print(f"length: {stats['length_tokens']:.1f} tokens, {stats['length_words']:.1f} words (mean)")
    return 0


if __name__ == "__main__":
    cli(main, "generate.py")
