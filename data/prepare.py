"""
Alpaca-format data -> token ids with a role per token (prompt or completion), ready for train.py.

An example is built exactly as Stanford Alpaca's train.py built it (the code the paper fine-tuned with):

    text   = PROMPT(instruction, input) + output            # the prompt ends in "### Response:", no newline after
    tokens = [BOS] + tok.encode(text) + [EOS]
    roles  = PROMPT for the first 1 + len(tok.encode(PROMPT(...))) tokens, COMPLETION for the rest (EOS included)

The boundary is explicit: the tokenizer may merge the prompt's final ":" with the output's first characters,
so tokens(prompt + output) != tokens(prompt) + tokens(output). Sentencepiece (LLaMA 1/2) does it for ":-", ":["
(3.3% of Stanford Alpaca); LLaMA 3's BPE far more often, since its pre-tokenizer joins a symbol to the letters after
it and ":The", ":I", ":\n" are tokens (21,868 of 52,002 records, 42%). Stanford counted len(tokens(prompt)) tokens
as prompt, which makes such a merged token a prompt token; we do the same with either tokenizer and count how
often it happens (`boundary_merges`).

A record may instead be plain text, {"text": ...}: [BOS] + tok.encode(text) + [EOS], every target in the TEXT role
(train.py weighs them by text_loss_weight). That is language-model data beside the instructions: the CPU study's
domain control trains on a run's own prompts as such records.

Truncation is Stanford's too: it tokenized prompt + output + "</s>" with truncation at model_max_length, keeping
the first max_seq_len tokens, so a long example loses its EOS (and its prompt count is clipped to max_seq_len).

Where HF's tokenizer (which Stanford called) could differ from the recipe above, Stanford Alpaca never goes: a
literal "</s>" or "<s>" in the text (HF maps it to the special id, we keep it as text: no Alpaca record has one),
whitespace before the appended "</s>" (old transformers stripped it: no Alpaca output ends in whitespace), and a
prompt that tokenizes longer than prompt + output (Stanford would then mask the EOS too; we always keep the EOS as a
completion target: no Alpaca record does this). tests/test_data.py checks tokens and masks against Stanford's
preprocessing run on HF's slow LlamaTokenizer.

prepare_dataset() is what train.py calls: resolve the source (a file, or a known name that is downloaded / inverted
on first use), tokenize it once and cache the result keyed by the bytes of the source, the tokenizer and the
template, split off a validation set fixed by the seed, truncate, and report what was cut.

    python data/prepare.py --tokenizer path/to/tokenizer.model                        # Stanford Alpaca (download)
    python data/prepare.py --src my_data.json --tokenizer llama-7b/ --val_size 1000   # a local file
"""
import argparse
import hashlib
import itertools
import json
import os
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python data/prepare.py` finds tokenizer.py, data/
from data.records import DATA_DIR, DATASETS, FIELDS, load_records, read_json_list  # noqa: E402,F401
from util import DataError, atomic_write, check_stop, cli  # noqa: E402

# the Stanford Alpaca template, byte for byte (stanford_alpaca/train.py PROMPT_DICT); eval code imports it from here
PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
PROMPT, COMPLETION, TEXT = 0, 1, 2  # role codes, one uint8 per token (TEXT: a plain-text record's tokens)
FORMAT_VERSION = 1  # bump when the cached arrays change meaning: old cache files are then simply not found

CACHE_DIR = Path(os.environ.get("NANOPLW_CACHE_DIR") or DATA_DIR / "cache")  # the tests point it at a temp dir


def format_prompt(instruction, input=""):
    # Stanford chooses the template by `input != ""`: an input of only whitespace still gets the input template
    if input != "":
        return PROMPT_INPUT.format_map({"instruction": instruction, "input": input})
    return PROMPT_NO_INPUT.format_map({"instruction": instruction})


# -----------------------------------------------------------------------------
# tokenizing

def tokenize(records, tokenizer, progress=False):
    """records -> dict of numpy arrays: tokens (int32), roles (uint8), offsets (int64, n+1): example i is
    tokens[offsets[i]:offsets[i+1]]; plus boundary_merges (int). Untruncated: truncation happens at load time."""
    from tqdm import tqdm

    is_text = np.array(["text" in r for r in records], dtype=bool)  # plain-text records: no prompt, one role
    prompts = ["" if t else format_prompt(r["instruction"], r["input"]) for r, t in zip(records, is_text)]
    fulls = [r["text"] if t else p + r["output"] for p, r, t in zip(prompts, records, is_text)]
    # sentencepiece encodes a list on all cores, BPE in a loop with its merge cache; chunks feed the progress bar
    # and let Ctrl-C stop it (sentencepiece's batch encode swallows the KeyboardInterrupt; check_stop sees the
    # signal's record)
    p_ids, f_ids, chunk = [], [], 4096
    if progress and not sys.stderr.isatty():  # no bar in a log (tqdm draws none there): one line instead
        print(f"tokenize: {len(records):,} records", file=sys.stderr, flush=True)
    with tqdm(total=len(records), desc="tokenize", unit="ex", disable=None if progress else True, leave=False) as bar:
        for i in range(0, len(records), chunk):
            p_ids += tokenizer.encode_batch(prompts[i:i + chunk])
            f_ids += tokenizer.encode_batch(fulls[i:i + chunk])
            bar.update(len(prompts[i:i + chunk]))
            check_stop()
    n = len(records)
    p_len = np.fromiter(map(len, p_ids), np.int64, n)
    f_len = np.fromiter(map(len, f_ids), np.int64, n)
    lens = f_len + 2                                                                # + BOS + EOS
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    starts, ends = offsets[:-1], offsets[1:]
    tokens = np.empty(offsets[-1], dtype=np.int32)
    tokens[starts] = tokenizer.bos_id
    tokens[ends - 1] = tokenizer.eos_id
    body = np.ones(offsets[-1], dtype=bool)
    body[starts] = body[ends - 1] = False
    tokens[body] = np.fromiter(itertools.chain.from_iterable(f_ids), np.int32, int(f_len.sum()))
    # Stanford's prompt count: BOS + len(tokens(prompt)); capped so the EOS is always a completion target
    n_prompt = 1 + np.minimum(p_len, f_len)
    pos = np.arange(offsets[-1]) - np.repeat(starts, lens)                          # position within its example
    roles = np.where(pos < np.repeat(n_prompt, lens), PROMPT, COMPLETION).astype(np.uint8)
    roles[np.repeat(is_text, lens) & (pos > 0)] = TEXT                             # BOS stays PROMPT: never a target
    merges = sum(f[:len(p)] != p for p, f in zip(p_ids, f_ids))                     # the boundary token differs
    return {"tokens": tokens, "roles": roles, "offsets": offsets, "boundary_merges": int(merges)}


# -----------------------------------------------------------------------------
# known datasets: download / invert on first use

def git_blob_id(data):
    """The id git gives a file's content (`git hash-object`): how the pinned upstream files are identified."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def download(url, dst, blob=None):
    """url -> dst atomically, with a progress bar; warns (does not fail) when the content's git blob id is not
    `blob`. Any failure is one DataError line naming the URL and how to use a local file instead."""
    from tqdm import tqdm

    dst = Path(dst)
    print(f"downloading {url} -> {dst}", file=sys.stderr)

    def fetch(tmp):
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dst.name, leave=False, disable=None) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    new_dir = not dst.parent.exists()
    try:
        atomic_write(dst, fetch)
    except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors; a malformed URL is a ValueError
        if new_dir:
            dst.parent.rmdir()  # leave nothing behind, not even the folder we made for it
        raise DataError(f"download failed: {url} ({getattr(e, 'reason', e)}); save that file as {dst} "
                        f"yourself, or pass a local Alpaca-format file instead (--src FILE, or dataset=FILE in "
                        f"train.py)") from None
    if blob and (got := git_blob_id(dst.read_bytes())) != blob:
        print(f"warning: {dst} has git blob id {got}, expected {blob} (the pinned upstream file); using it anyway",
              file=sys.stderr)


def resolve_dataset(dataset):
    """A known dataset name or a file path -> the path of an Alpaca-format file, downloading or inverting a known
    dataset when it is not there yet."""
    if str(dataset) not in DATASETS:
        path = Path(dataset)
        if not path.exists() and not path.suffix and os.sep not in str(dataset):
            raise DataError(f"{dataset}: neither a file nor a known dataset ({', '.join(DATASETS)})")
        return path
    spec = DATASETS[str(dataset)]
    path = DATA_DIR / spec["path"]
    if not path.is_file() and path.with_name(path.name + ".gz").is_file():
        return path.with_name(path.name + ".gz")  # a gzipped copy put there by hand is fine too
    if not path.is_file():
        if "inverted_from" in spec:
            from data.invert import invert_file
            invert_file(resolve_dataset(spec["inverted_from"]), path)
        else:
            download(spec["url"], path, spec.get("blob"))
    return path


# -----------------------------------------------------------------------------
# cache, split, truncation

def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cache_path(src, tokenizer_file, cache_dir=None, special_ids=None):
    """The cache file of (source bytes, tokenizer bytes, template, format, and special_ids = (BOS, EOS) when a
    model dir's config.json chose them rather than the tokenizer file): any change gives a new name."""
    parts = [f"nanoplw-data-v{FORMAT_VERSION}", _sha256(src), _sha256(tokenizer_file), PROMPT_INPUT, PROMPT_NO_INPUT]
    if special_ids is not None:
        parts.append(f"bos={special_ids[0]},eos={special_ids[1]}")
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return Path(cache_dir or CACHE_DIR) / f"{Path(src).name}.{key[:16]}.npz"


def split_indices(n, val_size, seed):
    """(train, val) example indices, each in the original order. val is the first val_size of a seeded
    permutation, so it depends on (n, seed) only, and a larger val_size keeps the smaller one's examples."""
    if not isinstance(val_size, (int, np.integer)) or not 0 <= val_size < n:
        raise DataError(f"val_size must be an integer in [0, {n - 1}] for {n} examples, got {val_size!r}")
    val = np.sort(np.random.default_rng(seed).permutation(n)[:val_size])
    train = np.setdiff1d(np.arange(n), val, assume_unique=True)
    return train, val


def select(data, idx, max_seq_len=None):
    """Examples idx of `data`, each cut to its first max_seq_len tokens (None: uncut).
    -> ({tokens, roles, offsets}, number of examples cut, number of tokens cut)"""
    starts = data["offsets"][idx]
    lens = data["offsets"][idx + 1] - starts
    kept = lens if max_seq_len is None else np.minimum(lens, max_seq_len)
    offsets = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(kept, out=offsets[1:])
    gather = np.arange(offsets[-1]) + np.repeat(starts - offsets[:-1], kept)         # new position -> old position
    out = {"tokens": data["tokens"][gather], "roles": data["roles"][gather], "offsets": offsets}
    return out, int((kept < lens).sum()), int((lens - kept).sum())


def prepare_dataset(dataset, tokenizer_path, max_seq_len, val_size=0, seed=1337, cache_dir=None, verbose=True,
                    check=None):
    """dataset (a known name or an Alpaca-format file) -> (train, val, report).

    train, val: {"tokens": int32, "roles": uint8, "offsets": int64 (n+1)}, each example cut to its first
    max_seq_len tokens (None: uncut); val is None when val_size == 0. The split is fixed by `seed` and does not
    depend on max_seq_len; both keep the original order. report: source, n_train, n_val, tokens, prompt_tokens
    (BOS included), completion_tokens (EOS included), truncated_examples, truncated_tokens, prompt_only_examples
    (no completion token left after the cut), boundary_merges, cache, cache_hit, seconds (train + val counts).
    check(train, val), when given, may refuse the result (train.py: nothing to train); it runs, like every other
    check, before the cache is written, so a refusal leaves nothing behind."""
    t0 = time.time()
    if max_seq_len is not None and (not isinstance(max_seq_len, (int, np.integer)) or max_seq_len < 2):
        raise DataError(f"max_seq_len must be an integer >= 2 (BOS and one target), got {max_seq_len!r}")
    if not isinstance(val_size, (int, np.integer)) or val_size < 0:
        raise DataError(f"val_size must be an integer >= 0, got {val_size!r}")
    from tokenizer import Tokenizer
    try:
        tok = Tokenizer(tokenizer_path)  # a file, or a model dir (whose config.json may set LLaMA 3's BOS / EOS)
    except FileNotFoundError as e:
        raise DataError(str(e)) from None
    tok_file = Path(tok.path)
    src = resolve_dataset(dataset)
    if not src.is_file():
        raise DataError(f"{src}: {'not a file' if src.exists() else 'file not found'}")
    cache = cache_path(src, tok_file, cache_dir, special_ids=(tok.bos_id, tok.eos_id) if tok.config else None)
    data = None
    if cache.is_file():
        try:
            with np.load(cache) as z:
                data = {k: z[k] for k in ("tokens", "roles", "offsets")}
                data["boundary_merges"] = int(z["boundary_merges"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # damaged: rebuild it
            print(f"warning: ignoring unreadable cache {cache} ({e})", file=sys.stderr)
    hit = data is not None
    if not hit:
        data = tokenize(load_records(src, text=True), tok, progress=verbose)

    n = len(data["offsets"]) - 1
    train_idx, val_idx = split_indices(n, val_size, seed)
    train, n_cut, t_cut = select(data, train_idx, max_seq_len)
    val = None
    if val_size:
        val, v_cut, vt_cut = select(data, val_idx, max_seq_len)
        n_cut, t_cut = n_cut + v_cut, t_cut + vt_cut
    if check is not None:
        check(train, val)
    if not hit:  # every check has passed: only now does the tokenized data go to the cache
        try:

            def save(tmp):
                with open(tmp, "wb") as f:  # a file object: given a name, np.savez would append ".npz" to it
                    np.savez(f, **data)
            atomic_write(cache, save)
        except (OSError, DataError) as e:
            what = str(e) if isinstance(e, DataError) else f"cannot write {cache}: {e.strerror or e}"
            raise DataError(f"{what} (the tokenized-data cache); set NANOPLW_CACHE_DIR (prepare.py: --cache_dir) to a "
                            f"writable directory") from None
    parts = [train] + ([val] if val is not None else [])
    completion = sum(int((p["roles"] == COMPLETION).sum()) for p in parts)
    text = sum(int((p["roles"] == TEXT).sum()) for p in parts)
    tokens = sum(len(p["tokens"]) for p in parts)
    prompt_only = sum(int((np.add.reduceat(p["roles"] != PROMPT, p["offsets"][:-1]) == 0).sum()) for p in parts)
    report = {
        "source": str(src), "tokenizer": str(tok_file), "max_seq_len": max_seq_len, "seed": seed,
        "n_train": len(train_idx), "n_val": len(val_idx), "tokens": tokens,
        "prompt_tokens": tokens - completion - text, "completion_tokens": completion, "text_tokens": text,
        "truncated_examples": n_cut, "truncated_tokens": t_cut, "prompt_only_examples": prompt_only,
        "boundary_merges": data["boundary_merges"], "cache": str(cache), "cache_hit": hit,
        "seconds": round(time.time() - t0, 3),
    }
    if verbose:
        print(f"data: {src.name}: {n:,} examples ({report['n_train']:,} train, {report['n_val']:,} val), "
              f"{tokens:,} tokens ({report['prompt_tokens']:,} prompt, {completion:,} completion"
              f"{f', {text:,} plain text' if text else ''}); "
              f"max_seq_len {max_seq_len} cut {n_cut:,} examples / {t_cut:,} tokens"
              f"{f' ({prompt_only} left without completion)' if prompt_only else ''}; "
              f"{data['boundary_merges']:,} boundary merges; cache {'hit' if hit else 'miss'}; "
              f"{report['seconds']:.2f} s", file=sys.stderr)
    return train, val, report


# -----------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description="Tokenize Alpaca-format data (cached) and report what truncation cuts.")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--src", help="a local Alpaca-format .json / .json.gz / .jsonl file")
    src.add_argument("--dataset", choices=list(DATASETS), help="a known dataset, downloaded or inverted on first "
                     "use (default: alpaca)")
    ap.add_argument("--tokenizer", required=True, help="a tokenizer.model (sentencepiece or LLaMA 3's tiktoken "
                    "format), or an HF model directory")
    ap.add_argument("--max_seq_len", type=int, default=512)
    ap.add_argument("--val_size", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--cache_dir", default=None, help=f"default: {CACHE_DIR}")
    args = ap.parse_args(argv)
    _, _, report = prepare_dataset(args.src or args.dataset or "alpaca", args.tokenizer, args.max_seq_len,
                                   args.val_size, args.seed, args.cache_dir)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    cli(main, "prepare.py")
