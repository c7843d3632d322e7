"""tokenizer.py: sentencepiece against HF's slow LlamaTokenizer in legacy mode (what Stanford Alpaca and lm-eval ran),
LLaMA 3's tiktoken-format BPE against tiktoken."""
import json

import pytest

from conftest import ALPACA, LLAMA_TOKENIZER, ROOT, SHARED, STORIES, require
from tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TRICKY = [
    "Hello world", " Answer: yes  two", "  leading and trailing  ", "\n\nnewlines\n", "tabs\tand\ttabs",
    "Ünïcödé — “quotes” 中文 😀", "### Response:-1", "### Response:[5, 8]", "3.14, 1,000 and 10-year-old",
    "text with </s> and <s> inside", "", " ", "a" * 300, "\u00a0non-breaking\u2009thin",
]


@pytest.mark.parametrize("path", [LLAMA_TOKENIZER, STORIES / "tokenizer.model"], ids=["llama32k", "stories512"])
def test_encode_decode_match_hf_slow_tokenizer(path):
    require(path)
    ours = Tokenizer(path)
    hf = transformers.LlamaTokenizer(vocab_file=str(path), legacy=True)
    texts = TRICKY + [r["output"] for r in json.loads((ROOT / "data" / "samples" / "alpaca_2k.json").read_text())[:200]]
    for t in texts:
        if "</s>" in t or "<s>" in t:  # HF maps these strings to special ids; ours (sentencepiece) never does
            continue
        ids = hf(t).input_ids  # BOS + pieces, as HF encodes by default
        assert ours.encode(t, bos=True) == ids, t
        assert ours.encode(t, bos=True, eos=True) == ids + [hf.eos_token_id]
        # decoding is sentencepiece's exact inverse (LLaMA's model keeps whitespace as it is; the stories model
        # collapses it); HF's slow decode also drops a text's own leading space
        if path == LLAMA_TOKENIZER:
            assert ours.decode(ours.encode(t)) == t, t
        assert ours.decode(ours.encode(t)).removeprefix(" ") == hf.decode(ids, skip_special_tokens=True), t
    assert ours.encode_batch(texts, bos=True) == [ours.encode(t, bos=True) for t in texts]
    assert (ours.bos_id, ours.eos_id, ours.vocab_size) == (hf.bos_token_id, hf.eos_token_id, hf.vocab_size)


def test_special_strings_are_plain_text_and_bad_paths_are_clear(tmp_path):
    tok = Tokenizer(STORIES)  # an HF model directory works too
    assert tok.eos_id not in tok.encode("</s>") and tok.bos_id not in tok.encode("<s>")
    with pytest.raises(FileNotFoundError, match="tokenizer not found"):
        Tokenizer(tmp_path / "nope.model")
    (tmp_path / "bad.model").write_text("not a model")
    with pytest.raises(ValueError, match="not a sentencepiece model"):
        Tokenizer(tmp_path / "bad.model")


# -----------------------------------------------------------------------------
# LLaMA 3: the tiktoken-format BPE, against tiktoken itself built from the same file

LLAMA3_TOKENIZER = SHARED / "data" / "tokenizer" / "llama3" / "tokenizer.model"
# every kind of seam the pattern has: contractions in all cases (and the long s, which Rust's case folding
# matches), digit runs, whitespace runs before words / symbols / the end, CRLF, symbols glued to letters,
# Unicode 15-16 letters and digits (classes newer than Python 3.11's unicodedata), emoji sequences, the
# whitespace that Python's str.isspace adds (\x1c-\x1f) and Unicode's that it lacks, special-token strings
LLAMA3_TRICKY = TRICKY + [
    "'S 'Ll 'RE 've 'D 'M 'T 'lL 'Ve 'ſ 'ſt don't I'LL we'Re it'S", "''s 's's 'x ' '\n", "'\u017f'\u212a",
    "12345678901 1.5 3,14 -7 ١٢٣٤٥ ๑๒๓ Ⅻ½ ²³ 𝟙𝟚𝟛𝟜", "a\r\nb\r\n\r\n  c\r", "   \n\n  x  ", "\t\t\n", "x   ", "x \n",
    " \u00a0\u3000a\u2028b\u2029c\u0085d", "\x1c\x1d\x1e\x1f a \x1c", "😀👍🏽 👨‍👩‍👧 🇫🇷!", "中文字符 日本語 한국어 ไทย",
    "ab\u0301c e\u0308", "𐗀𐗁 𑎀𑎁 𖄀 𞗐 1𞗱2 𑛐𑛑𑛒𑛓", "<|begin_of_text|>hi<|eot_id|> <|end_of_text|>", "#" * 50,
    " " * 1000 + "x", "\n" * 50, "1" * 100, "### Response::", "### Response:\n1", "a" * 3000, "=== ---\n\n***",
    "http://x.com/a_b?c=d&e=1 foo@bar.org", "def f(x):\n\treturn x**2  # ok\n", "ÀÉÎÕÜ ß ǅ ǈ ﬁ ẞ",
]


@pytest.fixture(scope="module")
def llama3():
    """(ours, tiktoken's Encoding built from the same file with LLaMA 3's pattern and 256 special tokens)."""
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe
    from tokenizer import LLAMA3_PATTERN, LLAMA3_SPECIAL_TOKENS

    path = require(LLAMA3_TOKENIZER)
    ranks = load_tiktoken_bpe(str(path))
    ref = tiktoken.Encoding("llama3", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                            special_tokens={s: len(ranks) + i for i, s in enumerate(LLAMA3_SPECIAL_TOKENS)})
    return Tokenizer(path), ref


def test_llama3_basics(llama3):
    tok, ref = llama3
    assert tok.kind == "tiktoken" and Tokenizer(LLAMA_TOKENIZER).kind == "sentencepiece"
    assert (tok.vocab_size, ref.n_vocab) == (128256, 128256)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.stop_ids) == (128000, 128001, -1, (128001,))
    assert tok.encode("hi", bos=True, eos=True) == [128000] + ref.encode_ordinary("hi") + [128001]
    for name, i in [("<|begin_of_text|>", 128000), ("<|end_of_text|>", 128001), ("<|start_header_id|>", 128006),
                    ("<|end_header_id|>", 128007), ("<|eot_id|>", 128009), ("<|reserved_special_token_5|>", 128010),
                    ("<|reserved_special_token_250|>", 128255)]:
        assert tok.id_to_piece(i) == name == ref.decode([i])
    assert tok.id_to_piece(ref.encode_ordinary(" the")[0]) == " the"
    assert tok.decode([128000, 9906, 128009]) == ref.decode([128000, 9906, 128009])
    with pytest.raises(ValueError, match="token id 128256 is out of range"):
        tok.decode([1, 128256])


def test_llama3_equals_tiktoken_on_tricky_strings(llama3):
    tok, ref = llama3
    for t in LLAMA3_TRICKY:
        ids = tok.encode(t)
        assert ids == ref.encode_ordinary(t), t
        assert tok.decode(ids) == t, t
        assert set(ids).isdisjoint(tok.special_tokens.values()), t  # special-token strings stay plain text
    assert tok.encode_batch(LLAMA3_TRICKY, bos=True) == [tok.encode(t, bos=True) for t in LLAMA3_TRICKY]
    assert tok.decode(tok.encode("中")[:1]) == ref.decode(ref.encode_ordinary("中")[:1])  # a cut character: U+FFFD


def test_llama3_refuses_lone_surrogates(llama3):
    tok, _ = llama3
    for t, at in [("ab\ud800c", 2), ("\udfff", 0), ("ok 😀 \udc00", 5)]:
        with pytest.raises(ValueError, match=f"lone surrogate .* at character {at}: not valid Unicode"):
            tok.encode(t)


def test_llama3_equals_tiktoken_on_random_unicode(llama3):
    """Random strings from every plane, weighted towards the pattern's seams, and every code point of the
    Unicode 15-16 additions beside ASCII letters, digits and spaces."""
    import random

    import tokenizer as T

    tok, ref = llama3
    rng = random.Random(0)
    seams = " \t\n\r\x0b\x0c\x1c\u00a0\u2028\u3000'sStTlLdDvVeEmMrR\u017f0123456789:.,!?-_#"
    planes = [(0x20, 0x7F), (0x80, 0x800), (0x800, 0xD800), (0xE000, 0x10000), (0x10000, 0x30000),
              (0x30000, 0x110000)]
    texts = []
    for _ in range(3000):
        chars = []
        for _ in range(rng.randint(0, 30)):
            if rng.random() < 0.4:
                chars.append(rng.choice(seams))
            else:
                chars.append(chr(rng.randrange(*rng.choice(planes))))
        texts.append("".join(chars))
    new = [c for a, b in T._ranges(T._NEW_LETTERS + " " + T._NEW_NUMBERS) for c in range(a, b + 1)]
    texts += [f"a{chr(c)}b 1{chr(c)}2 {chr(c)}{chr(c)} .{chr(c)}" for c in new[::7]]
    got = tok.encode_batch(texts)
    assert got == [ref.encode_ordinary(t) for t in texts]
    assert [tok.decode(ids) for ids in got] == texts


def test_llama3_equals_tiktoken_on_alpaca(llama3):
    """Every field of all 52,002 Stanford Alpaca records (~6 s ours from a cold merge cache, ~4 s tiktoken's)."""
    from data.prepare import load_records

    tok, ref = llama3
    texts = [r[k] for r in load_records(require(ALPACA)) for k in ("instruction", "input", "output")]
    assert tok.encode_batch(texts) == [ref.encode_ordinary(t) for t in texts]  # its _batch: slower, thread pool


def test_llama3_bad_files_and_model_dirs(tmp_path):
    import shutil

    path = require(LLAMA3_TOKENIZER)
    # Meta's layout: the tiktoken file under original/; config.json decides BOS / EOS (instruct: two EOS ids)
    (tmp_path / "original").mkdir()
    shutil.copy(path, tmp_path / "original" / "tokenizer.model")
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 128000, "eos_token_id": [128001, 128009]}))
    tok = Tokenizer(tmp_path)
    assert (tok.kind, tok.bos_id, tok.eos_id, tok.stop_ids) == ("tiktoken", 128000, 128001, (128001, 128009))
    assert tok.path == str(tmp_path / "original" / "tokenizer.model")
    assert Tokenizer(tmp_path / "original" / "tokenizer.model").stop_ids == (128001,)  # a bare file: the defaults
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 128256}))
    with pytest.raises(ValueError, match="eos_token_id 128256 is not a token id"):
        Tokenizer(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="tokenizer not found: .*empty has neither tokenizer.model nor"):
        Tokenizer(tmp_path / "empty")
    (tmp_path / "bad.model").write_text("IQ== 0\nIg== x\n")
    with pytest.raises(ValueError, match="line 2 is not 'base64-token rank'"):
        Tokenizer(tmp_path / "bad.model")
    (tmp_path / "gap.model").write_text("IQ== 0\nIg== 2\n")
    with pytest.raises(ValueError, match=r"ranks are not 0..1, each once"):
        Tokenizer(tmp_path / "gap.model")


def test_llama3_long_pieces(llama3):
    """Pre-tokens over 256 bytes take the heap merge (not quadratic); it equals tiktoken, and the list merge on
    short pieces."""
    import random

    tok, ref = llama3
    rng = random.Random(0)
    texts = ["ab" * 5000, "a" * 3000, "-" * 3000, " " * 3000, "é" * 1000 + "中文" * 300, "!@#$%^&*()" * 50]
    texts += ["".join(rng.choice("abcdefghijklmnopqrstuvwxyzé中") for _ in range(rng.randint(257, 1500)))
              for _ in range(30)]
    for t in texts:
        assert tok.encode(t) == ref.encode_ordinary(t), t[:40]
    for _ in range(300):
        piece = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 60))).encode()
        assert tok._bpe_long(piece) == tok._bpe(piece), piece
