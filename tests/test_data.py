"""
The data pipeline: data/prepare.py (template, roles, truncation, split, cache, downloads), data/invert.py and
data/stats.py, and their handling of bad input.

References are independent of the code under test: the template is compared with literal strings copied from
Stanford's train.py; roles with hand-checked token pieces and with Stanford's own preprocessing rebuilt on HF's slow
LlamaTokenizer (labels[:len(tokenizer(source))] = IGNORE over tokenizer(source + output + "</s>"), both truncated at
model_max_length); counts with lengths computed straight from sentencepiece.
"""
import copy
import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import data.prepare as prep
from data.invert import INPUT_LABEL, INSTRUCTION, INSTRUCTION_WITH_INPUT, invert_records
from data.prepare import (COMPLETION, PROMPT, PROMPT_INPUT, PROMPT_NO_INPUT, DataError, format_prompt,
                          load_records, prepare_dataset, select, split_indices, tokenize)
from data.stats import length_stats, suggest_plw
from conftest import ALPACA, LLAMA_TOKENIZER, ROOT, STORIES, require
from tokenizer import Tokenizer

SAMPLE = ROOT / "data" / "samples" / "alpaca_2k.json"
STORIES_TOK = STORIES / "tokenizer.model"

# Stanford Alpaca train.py, PROMPT_DICT, retyped as literals
STANFORD_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
STANFORD_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


@pytest.fixture(scope="module")
def stories():
    return Tokenizer(STORIES_TOK)


@pytest.fixture(scope="module")
def llama():
    return Tokenizer(require(LLAMA_TOKENIZER))


@pytest.fixture(scope="module")
def sample():
    return load_records(SAMPLE)


def example(data, i):
    o = data["offsets"]
    return data["tokens"][o[i]:o[i + 1]], data["roles"][o[i]:o[i + 1]]


# -----------------------------------------------------------------------------
# template

def test_template_byte_exact():
    assert PROMPT_INPUT == STANFORD_INPUT and PROMPT_NO_INPUT == STANFORD_NO_INPUT
    assert format_prompt("Add.", "1 + 1") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd.\n\n### Input:\n"
        "1 + 1\n\n### Response:")
    assert format_prompt("Say hi.") == format_prompt("Say hi.", "") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nSay hi.\n\n### Response:")
    # Stanford tests `input != ""`: whitespace still takes the input template; braces in the text are kept
    assert "### Input:\n \n\n" in format_prompt("x", " ")
    assert "### Instruction:\n{input} {}\n\n" in format_prompt("{input} {}")


# -----------------------------------------------------------------------------
# roles

def test_roles_hand_checked(llama):
    recs = [dict(instruction="Say hi.", input="", output="Hi!"),
            dict(instruction="Negate it.", input="x > 1", output="-x < -1")]
    d = tokenize(recs, llama)
    assert d["boundary_merges"] == 1
    pieces = lambda t: [llama.id_to_piece(i) for i in t]
    # 1: the prompt's last ":" stays its own token; the completion is "Hi", "!", EOS
    t, r = example(d, 0)
    assert pieces(t[-5:]) == ["▁Response", ":", "Hi", "!", "</s>"]
    assert r[-5:].tolist() == [PROMPT, PROMPT, COMPLETION, COMPLETION, COMPLETION]
    assert (r[:-3] == PROMPT).all()
    # 2: ":" and the output's "-" merge into ":-"; as in Stanford the merged token counts as prompt
    t, r = example(d, 1)
    assert pieces(t[-7:]) == ["▁Response", ":-", "x", "▁<", "▁-", "1", "</s>"]
    assert r[-7:].tolist() == [PROMPT, PROMPT] + [COMPLETION] * 5
    assert (r[:-5] == PROMPT).all()
    # both: BOS + the prompt's own tokenization are the prompt tokens, BOS first, EOS last
    for i, rec in enumerate(recs):
        t, r = example(d, i)
        p = format_prompt(rec["instruction"], rec["input"])
        assert (r == PROMPT).sum() == 1 + len(llama.sp.encode(p))
        assert t.tolist() == [llama.bos_id] + llama.sp.encode(p + rec["output"]) + [llama.eos_id]


def test_bos_never_target_eos_always_target(stories, sample):
    d = tokenize(sample, stories)
    starts, ends = d["offsets"][:-1], d["offsets"][1:]
    assert (d["tokens"][starts] == stories.bos_id).all() and (d["roles"][starts] == PROMPT).all()
    assert (d["tokens"][ends - 1] == stories.eos_id).all() and (d["roles"][ends - 1] == COMPLETION).all()
    # BOS/EOS only there (text is never mapped to control ids), and roles are one prompt run then one completion run
    assert (d["tokens"] == stories.bos_id).sum() == len(sample) == (d["tokens"] == stories.eos_id).sum()
    change = np.zeros(len(d["roles"]), dtype=np.int64)
    change[1:] = d["roles"][1:] != d["roles"][:-1]
    change[starts] = 0                                                       # not across examples
    assert (np.add.reduceat(change, starts) == 1).all()
    # an empty output leaves EOS as the whole completion
    t, r = example(d, 284)
    assert sample[284]["output"] == "" and r.sum() == 1


def test_matches_stanford_preprocessing(llama, sample):
    """Stanford's preprocess() on HF's slow LlamaTokenizer: identical tokens and identical masked positions."""
    transformers = pytest.importorskip("transformers")
    tk = transformers.LlamaTokenizer(vocab_file=str(LLAMA_TOKENIZER), legacy=True)
    recs = sample + [dict(instruction="Negate it.", input="x > 1", output="-x < -1"),
                     dict(instruction="Quote.", input="", output='"Hi"'),
                     dict(instruction="Nothing.", input="", output="")]
    d = tokenize(recs, llama)
    assert d["boundary_merges"] >= 50  # the sample has its share (3.3%) of boundary merges, and two above
    for max_len, idx in ((512, range(len(recs))), (48, list(range(300)) + [-3, -2, -1])):
        ours, _, _ = select(d, np.arange(len(recs)), max_len)
        for i in idx:
            i, rec = i % len(recs), recs[i]
            src = (STANFORD_INPUT if rec["input"] != "" else STANFORD_NO_INPUT).format_map(rec)
            ids = tk(src + rec["output"] + tk.eos_token, max_length=max_len, truncation=True).input_ids
            n_src = len(tk(src, max_length=max_len, truncation=True).input_ids)
            labels = copy.deepcopy(ids)
            labels[:n_src] = [-100] * len(labels[:n_src])
            t, r = example(ours, i)
            assert t.tolist() == ids, i
            assert (r == PROMPT).tolist() == [x == -100 for x in labels], i


# -----------------------------------------------------------------------------
# truncation, split, report

def test_truncation_counts(stories, tmp_path):
    recs = [dict(instruction="Hi.", input="", output="Yo."),                       # short: uncut
            dict(instruction="Tell a story.", input="", output="Once upon a time " * 20),  # cut in the completion
            dict(instruction="Read this. " * 40, input="", output="Ok."),          # cut inside the prompt
            dict(instruction="Hey.", input="a b", output="c")]
    src = tmp_path / "t.json"
    src.write_text(json.dumps(recs))
    full = [len(stories.encode(format_prompt(r["instruction"], r["input"]) + r["output"])) + 2 for r in recs]
    n_prompt = [1 + len(stories.encode(format_prompt(r["instruction"], r["input"]))) for r in recs]
    m = 160
    assert full[0] <= m and full[3] <= m and n_prompt[1] < m < full[1] and n_prompt[2] > m  # the cases we want
    train, val, rep = prepare_dataset(src, STORIES_TOK, m, cache_dir=tmp_path / "c", verbose=False)
    assert val is None and rep["n_train"] == 4 and rep["n_val"] == 0
    assert rep["truncated_examples"] == 2
    assert rep["truncated_tokens"] == sum(max(L - m, 0) for L in full)
    assert rep["prompt_only_examples"] == 1
    assert np.diff(train["offsets"]).tolist() == [min(L, m) for L in full]
    assert rep["tokens"] == len(train["tokens"]) == rep["prompt_tokens"] + rep["completion_tokens"]
    uncut = tokenize(recs, stories)
    for i in range(4):
        t, r = example(train, i)
        t0, r0 = example(uncut, i)
        assert (t == t0[:m]).all() and (r == r0[:m]).all()         # Stanford: keep the first max_seq_len
        assert (r == PROMPT).sum() == min(n_prompt[i], m)           # the prompt count is clipped too
        assert (t[-1] == stories.eos_id) == (full[i] <= m)          # long examples lose their EOS
    _, _, rep = prepare_dataset(src, STORIES_TOK, None, cache_dir=tmp_path / "c", verbose=False)
    assert rep["truncated_examples"] == rep["truncated_tokens"] == 0 and rep["tokens"] == sum(full)


def test_val_split(stories, sample, tmp_path, capsys):
    kw = dict(cache_dir=tmp_path / "c", verbose=False)
    train, val, rep = prepare_dataset(SAMPLE, STORIES_TOK, 512, val_size=100, seed=7, **kw)
    assert (rep["n_train"], rep["n_val"]) == (1900, 100) and len(val["offsets"]) == 101
    tr_idx, va_idx = split_indices(2000, 100, 7)
    assert np.array_equal(va_idx, np.sort(np.random.default_rng(7).permutation(2000)[:100]))  # the documented rule
    assert set(tr_idx).isdisjoint(va_idx) and len(set(tr_idx) | set(va_idx)) == 2000
    assert (np.diff(tr_idx) > 0).all() and (np.diff(va_idx) > 0).all()         # both in the original order
    # the arrays are those examples, checked against tokenizing the chosen records directly
    for idx, part in ((va_idx, val), (tr_idx[:50], train)):
        direct, _, _ = select(tokenize([sample[i] for i in idx], stories), np.arange(len(idx)), 512)
        n = len(idx)
        assert (part["tokens"][:part["offsets"][n]] == direct["tokens"]).all()
        assert (part["roles"][:part["offsets"][n]] == direct["roles"]).all()
    # the same seed gives the same split, another seed another, max_seq_len does not move it
    again, val2, _ = prepare_dataset(SAMPLE, STORIES_TOK, 512, val_size=100, seed=7, **kw)
    assert all((val[k] == val2[k]).all() and (train[k] == again[k]).all() for k in val)
    _, other, _ = prepare_dataset(SAMPLE, STORIES_TOK, 512, val_size=100, seed=8, **kw)
    assert not np.array_equal(split_indices(2000, 100, 8)[1], va_idx)
    assert len(other["tokens"]) != len(val["tokens"]) or (other["tokens"] != val["tokens"]).any()
    _, short, _ = prepare_dataset(SAMPLE, STORIES_TOK, 16, val_size=100, seed=7, **kw)
    for i in range(100):
        assert (example(short, i)[0] == example(val, i)[0][:16]).all()
    assert set(split_indices(2000, 50, 7)[1]) < set(va_idx)                    # a smaller val is nested in it
    # verbose: one summary line on stderr
    capsys.readouterr()
    prepare_dataset(SAMPLE, STORIES_TOK, 512, val_size=100, seed=7, cache_dir=tmp_path / "c")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2,000 examples" in err[0] and "cache hit" in err[0]


def test_cache(stories, sample, tmp_path, capsys):
    cdir = tmp_path / "cache"
    a, _, r1 = prepare_dataset(SAMPLE, STORIES_TOK, 512, cache_dir=cdir, verbose=False)
    b, _, r2 = prepare_dataset(SAMPLE, STORIES_TOK, 512, cache_dir=cdir, verbose=False)
    assert not r1["cache_hit"] and r2["cache_hit"] and r1["cache"] == r2["cache"]
    assert [p.name for p in cdir.iterdir()] == [Path(r1["cache"]).name]           # one file, no temp files left
    for k in ("tokens", "roles", "offsets"):
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k])
    assert (a["tokens"].dtype, a["roles"].dtype, a["offsets"].dtype) == (np.int32, np.uint8, np.int64)
    assert {k: v for k, v in r1.items() if k not in ("cache_hit", "seconds")} == \
           {k: v for k, v in r2.items() if k not in ("cache_hit", "seconds")}
    # the cache holds the untruncated tokenize() output
    direct = tokenize(sample, stories)
    with np.load(r1["cache"]) as z:
        assert all(np.array_equal(z[k], direct[k]) for k in ("tokens", "roles", "offsets"))
        assert int(z["boundary_merges"]) == direct["boundary_merges"]
    # a damaged cache file is rebuilt, with a warning
    Path(r1["cache"]).write_bytes(Path(r1["cache"]).read_bytes()[:1000])
    c, _, r3 = prepare_dataset(SAMPLE, STORIES_TOK, 512, cache_dir=cdir, verbose=False)
    assert not r3["cache_hit"] and all(np.array_equal(a[k], c[k]) for k in a)
    assert "ignoring unreadable cache" in capsys.readouterr().err
    assert prepare_dataset(SAMPLE, STORIES_TOK, 512, cache_dir=cdir, verbose=False)[2]["cache_hit"]
    # the key follows the bytes of the source and of the tokenizer, not the file name
    edited = json.loads(SAMPLE.read_text())
    edited[5]["output"] += "!"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / SAMPLE.name).write_text(json.dumps(edited, indent=4))
    other_src = prep.cache_path(tmp_path / "src" / SAMPLE.name, STORIES_TOK, cdir)
    assert other_src.name.startswith(SAMPLE.name) and other_src != Path(r1["cache"])
    tok_copy = tmp_path / "tokenizer.model"
    tok_copy.write_bytes(STORIES_TOK.read_bytes())
    assert prep.cache_path(SAMPLE, tok_copy, cdir) == Path(r1["cache"])
    tok_copy.write_bytes(require(LLAMA_TOKENIZER).read_bytes())
    assert prep.cache_path(SAMPLE, tok_copy, cdir) != Path(r1["cache"])
    # an HF model directory works as the tokenizer (its tokenizer.model)
    assert prepare_dataset(SAMPLE, STORIES, 512, cache_dir=cdir, verbose=False)[2]["cache"] == r1["cache"]


def test_bad_arguments(tmp_path):
    kw = dict(cache_dir=tmp_path, verbose=False)
    with pytest.raises(DataError, match="max_seq_len"):
        prepare_dataset(SAMPLE, STORIES_TOK, 1, **kw)
    with pytest.raises(DataError, match="tokenizer not found"):
        prepare_dataset(SAMPLE, tmp_path / "nope.model", 512, **kw)
    with pytest.raises(DataError, match="known dataset"):
        prepare_dataset("alpaka", STORIES_TOK, 512, **kw)
    assert list(tmp_path.iterdir()) == []
    for bad in (2000, -1, 1.5):  # the sample has 2,000 examples: train keeps at least one
        with pytest.raises(DataError, match="val_size"):
            prepare_dataset(SAMPLE, STORIES_TOK, 512, val_size=bad, **kw)


# -----------------------------------------------------------------------------
# known datasets: download (file:// URLs, never the network) and inversion on first use

def test_download_and_inverted_dataset(tmp_path, monkeypatch, capsys):
    data_dir = tmp_path / "data"
    monkeypatch.setattr(prep, "DATA_DIR", data_dir)
    spec = dict(prep.DATASETS["alpaca"], url=SAMPLE.as_uri())
    monkeypatch.setitem(prep.DATASETS, "alpaca", spec)
    _, _, rep = prepare_dataset("alpaca", STORIES_TOK, 512, cache_dir=tmp_path / "c", verbose=False)
    got = data_dir / "alpaca" / "alpaca_data.json"
    assert rep["source"] == str(got) and got.read_bytes() == SAMPLE.read_bytes()
    assert "warning" in capsys.readouterr().err                               # not Stanford's blob id: warned
    # with the right blob id: no warning
    got.unlink()
    blob = hashlib.sha1(b"blob %d\0" % SAMPLE.stat().st_size + SAMPLE.read_bytes()).hexdigest()
    monkeypatch.setitem(prep.DATASETS, "alpaca", dict(spec, blob=blob))
    prep.resolve_dataset("alpaca")
    assert "warning" not in capsys.readouterr().err and got.is_file()
    # the inverted set is made from it when missing
    short = prep.resolve_dataset("alpaca_short")
    assert short == data_dir / "alpaca_short" / "alpaca_data_short.json"
    assert json.loads(short.read_text()) == invert_records(load_records(SAMPLE))[0]
    assert sorted(p.name for p in (data_dir / "alpaca").iterdir()) == ["alpaca_data.json"]
    # a failed download: one line naming the URL and the way out, nothing left behind
    bad = (tmp_path / "missing.json").as_uri()
    monkeypatch.setitem(prep.DATASETS, "alpaca_cleaned", dict(prep.DATASETS["alpaca_cleaned"], url=bad))
    with pytest.raises(DataError) as e:
        prep.resolve_dataset("alpaca_cleaned")
    assert bad in str(e.value) and "--src" in str(e.value) and "\n" not in str(e.value)
    assert not (data_dir / "alpaca_cleaned").exists()
    # a gzipped copy put in place by hand is used as it is
    gz = data_dir / "alpaca_cleaned" / "alpaca_data_cleaned.json.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    assert prep.resolve_dataset("alpaca_cleaned") == gz


# -----------------------------------------------------------------------------
# invert

def test_invert_mapping():
    recs = [dict(instruction="Name a color.", input="", output="Blue."),
            dict(instruction="Add them.", input="2, 3", output="5"),
            dict(instruction="Empty.", input="", output=" \n"),
            dict(instruction=" ", input="", output="Something."),
            dict(instruction="Spaces only input.", input="  ", output="ok  ")]
    out, skipped = invert_records(recs)
    assert skipped == {"empty output": [2], "empty instruction": [3]}
    assert out == [
        {"instruction": "Predict the prompt that generated the following AI output.",
         "input": "Blue.", "output": "Name a color."},
        {"instruction": INSTRUCTION_WITH_INPUT, "input": "5\n\nOriginal input:\n2, 3", "output": "Add them."},
        {"instruction": INSTRUCTION, "input": "ok  ", "output": "Spaces only input."},
    ]
    assert INSTRUCTION_WITH_INPUT.startswith(INSTRUCTION) and "input" in INSTRUCTION_WITH_INPUT
    assert INPUT_LABEL == "\n\nOriginal input:\n"
    assert [list(r) for r in out] == [["instruction", "input", "output"]] * 3  # Stanford's key order


def test_invert_cli_deterministic(tmp_path, sample):
    outs = []
    for name in ("a.json", "b.json", "c.json.gz"):
        p = subprocess.run([sys.executable, "data/invert.py", "--src", str(SAMPLE), "--dst", str(tmp_path / name)],
                           cwd=ROOT, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert "skipped 4 records with empty output: 284, 1223, 1347, 1736" in p.stderr
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1] and gzip.compress(outs[0], compresslevel=9, mtime=0) == outs[2]
    assert outs[0] == json.dumps(invert_records(sample)[0], indent=4).encode("ascii")
    recs = json.loads(outs[0])
    assert len(recs) == 1996 and recs[0] == {"instruction": INSTRUCTION, "input": sample[0]["output"],
                                             "output": sample[0]["instruction"]}
    with_input = next(i for i, r in enumerate(sample) if r["input"])
    k = with_input - sum(1 for i in (284, 1223, 1347, 1736) if i < with_input)
    assert recs[k]["input"] == sample[with_input]["output"] + "\n\nOriginal input:\n" + sample[with_input]["input"]
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.json", "c.json.gz"]


def test_invert_nothing_left(tmp_path, capsys):
    import data.invert as inv
    src = tmp_path / "empty_outputs.json"
    src.write_text(json.dumps([dict(instruction="a", input="", output=""), dict(instruction="b", input="", output=" ")]))
    with pytest.raises(DataError, match="every record was skipped"):
        inv.invert_file(src, tmp_path / "out.json")
    assert inv.main(["--src", str(SAMPLE), "--dst", str(tmp_path / "out.txt")]) == 1
    assert "expected a .json or .json.gz path" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["empty_outputs.json"]


def test_invert_default_src_missing(tmp_path, monkeypatch, capsys):
    import data.invert as inv
    monkeypatch.setattr(inv, "DEFAULT_SRC", tmp_path / "alpaca_data.json")
    assert inv.main(["--dst", str(tmp_path / "out.json")]) == 1
    err = capsys.readouterr().err
    assert "python data/prepare.py --dataset alpaca" in err and "--src" in err
    assert not (tmp_path / "out.json").exists()


# -----------------------------------------------------------------------------
# stats

def test_stats_hand_counted(stories, tmp_path):
    recs = [dict(instruction="Hi there.", input="", output="Hello to you too."),
            dict(instruction="Sum.", input="1 2", output="3")]
    n = lambda s: len(stories.sp.encode(s))
    s = length_stats(recs, stories)
    prompt = (n("Hi there.") + n("") + n("Sum.") + n("1 2")) / 2
    completion = (n("Hello to you too.") + n("3")) / 2
    assert s["n"] == 2 and s["prompt_tokens_mean"] == prompt and s["completion_tokens_mean"] == completion
    assert s["rg"] == pytest.approx(completion / prompt, rel=1e-12)
    assert s["input_tokens_mean"] == n("1 2") / 2
    assert suggest_plw(3.27)[0] == 0 and suggest_plw(0.08)[0] > 0 and suggest_plw(1.0)[0] == 0
    # the CLI, text and --json
    f = tmp_path / "h.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    p = subprocess.run([sys.executable, "data/stats.py", "--tokenizer", str(STORIES), "--json", str(f), str(SAMPLE)],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert [r["path"] for r in rows] == [str(f), str(SAMPLE)] and rows[0]["n"] == 2 and rows[1]["n"] == 2000
    assert {"path", "n", "prompt_tokens_mean", "completion_tokens_mean", "rg"} <= set(rows[0])
    assert rows[0]["rg"] == pytest.approx(completion / prompt, rel=1e-12)
    p = subprocess.run([sys.executable, "data/stats.py", "--tokenizer", str(STORIES_TOK), str(f)],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0 and f"R_g = {completion:.2f} / {prompt:.2f} = {completion / prompt:.2f}" in p.stdout
    assert "suggested PLW: 0.1" in p.stdout


@pytest.fixture(scope="module")
def alpaca():
    return load_records(require(ALPACA))


def test_rg_real_alpaca(alpaca, llama):
    """The paper's R_g of Stanford Alpaca, 3.27; and the inverted set is short-completion data."""
    assert len(alpaca) == 52002
    s = length_stats(alpaca, llama)
    assert s["rg"] == pytest.approx(3.27, abs=0.02)
    assert (round(s["completion_tokens_mean"], 2), round(s["prompt_tokens_mean"], 2)) == (64.51, 19.65)
    inv, skipped = invert_records(alpaca)
    assert len(skipped["empty output"]) == 28 and not skipped["empty instruction"] and len(inv) == 51974
    s_inv = length_stats(inv[::4], llama)  # every 4th record keeps the test fast; all of them give 0.15
    assert s_inv["rg"] < 0.25
    assert s_inv["completion_tokens_mean"] < s["prompt_tokens_mean"]  # completions are the old instructions


# -----------------------------------------------------------------------------
# bad input through every CLI: exit 1, one line naming the file (and record), no traceback, nothing written

BAD = {
    "missing_field": ('[{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "input": ""}]',
                      "record 1 has no field 'output'"),
    "non_string": ('[{"instruction": "a", "input": "", "output": "b"}, {"instruction": "a", "input": "", '
                   '"output": "b"}, {"instruction": "a", "input": 3, "output": "b"}]', "record 2 field 'input'"),
    "empty_file": ("", "file is empty"),
    "invalid_json": ('[{"instruction": "a", "input": "", "output": "b"},\n {"instruction": "c", "input": ""',
                     "not valid JSON in record 1"),
    "invalid_jsonl": ('{"instruction": "a", "input": "", "output": "b"}\n\n{"instruction": "c",\n',
                      "record 1 (line 3) is not valid JSON"),
    "not_a_list": ('{"instruction": "a", "input": "", "output": "b"}', "expected a JSON list"),
    "missing_file": (None, "file not found"),
}


def cli(script, src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    args = {"prepare": ["--src", str(src), "--tokenizer", str(STORIES_TOK), "--cache_dir", str(out)],
            "invert": ["--src", str(src), "--dst", str(out / "inv.json")],
            "stats": ["--tokenizer", str(STORIES_TOK), str(SAMPLE), str(src)]}[script]
    p = subprocess.run([sys.executable, f"data/{script}.py", *args], cwd=ROOT, capture_output=True, text=True)
    return p, out


@pytest.mark.parametrize("script", ["prepare", "invert", "stats"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_cli(script, case, tmp_path):
    text, msg = BAD[case]
    src = tmp_path / ("bad.jsonl" if case == "invalid_jsonl" else "bad.json")
    if text is not None:
        src.write_text(text)
    p, out = cli(script, src, tmp_path)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and str(src) in lines[0] and msg in lines[0], p.stderr
    assert list(out.iterdir()) == []


def test_bad_gzip_and_tokenizer(tmp_path):
    src = tmp_path / "bad.json.gz"
    src.write_bytes(gzip.compress(b'[{"instruction": 1}]'))
    p, out = cli("invert", src, tmp_path)
    assert p.returncode == 1 and "record 0 field 'instruction' is a int" in p.stderr and str(src) in p.stderr
    src.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot read"):
        load_records(src)
    p = subprocess.run([sys.executable, "data/stats.py", "--tokenizer", str(tmp_path / "no.model"), str(SAMPLE)],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 1 and "Traceback" not in p.stderr and "no.model" in p.stderr
