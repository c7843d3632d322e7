"""eval/bleu.py against sacreBLEU (the reference, test-only): tokens, statistics and scores on adversarial corpora,
on every short string over the characters the 13a rules care about, and on random corpora drawn from Alpaca."""
import gzip
import itertools
import json
import math
import random
import subprocess
import sys

import pytest

from conftest import ALPACA, ROOT, require
from eval.bleu import (_tokenize_all, _tokenize_intl_all, bleu_stats, corpus_bleu, sentence_bleu, tokenize_13a,
                       tokenize_intl)

sacrebleu = pytest.importorskip("sacrebleu")
from sacrebleu.metrics.bleu import BLEU  # noqa: E402  (after the importorskip)

TOL = 1e-9


def check_corpus(hyps, streams):
    """Our corpus BLEU and its statistics equal sacreBLEU's default corpus BLEU (streams in its layout)."""
    ref = sacrebleu.corpus_bleu(hyps, streams)
    ours = bleu_stats(hyps, streams)
    assert ours['score'] == pytest.approx(ref.score, rel=0, abs=TOL)
    assert (ours['correct'], ours['total'], ours['sys_len'], ours['ref_len']) == \
        (ref.counts, ref.totals, ref.sys_len, ref.ref_len)
    assert ours['bp'] == pytest.approx(ref.bp, rel=0, abs=TOL)
    assert ours['precisions'] == pytest.approx(ref.precisions, rel=0, abs=TOL)
    assert corpus_bleu(hyps, streams) == ours['score']
    if len(streams) == 1:  # the flat one-reference-per-hypothesis layout means the same thing
        assert corpus_bleu(hyps, streams[0]) == ours['score']
    return ours['score']


def check_sentence(hyp, refs):
    ref = sacrebleu.sentence_bleu(hyp, refs).score
    ours = sentence_bleu(hyp, refs)
    assert ours == pytest.approx(ref, rel=0, abs=TOL)
    if len(refs) == 1:
        assert sentence_bleu(hyp, refs[0]) == ours
    return ours


# -----------------------------------------------------------------------------
# tokenization

def sacre_tokens(line):
    return BLEU()._preprocess_segment(line).split()


TOKEN_CASES = [
    # SGML entities: only these four, in this order (so &amp;quot; stays an entity and &amp;lt; becomes <)
    "Tom &amp; Jerry said &quot;hi&quot; &lt;b&gt;bold&lt;/b&gt;", "&amp;quot; &amp;lt; &amp;amp; &apos; &#39; &nbsp;",
    "&quot&amp &lt;&gt;&quot;&amp;", "R&D AT&T &", "&am<skipped>p; <skip<skipped>ped> <skipped>",
    # hyphens after digits, and not
    "3-4 10-year-old 1-2-3 -5 5- a-b well-known x--y 2--3 COVID-19 19-COVID 3 - 4",
    # decimal and thousands separators, periods and commas everywhere
    "3.14 1,000 1.000,50 $1,000.00 3.14. .5 5. ,5 5, e.g. U.S.A. ... a..1 a...1 a.,b 1.,2 ,,, .,.,",
    "End. Start,middle,end. 1.2.3 v2.0, 50% 10.5%", ".", ",", "-", "a.", "1.", ".a", ".1",
    # all other ASCII punctuation, apostrophes kept inside words
    "it's rock 'n' roll (a) [b] {c} <d> a/b a\\b a|b a~b a^b a_b a`b a@b a#b a!b a?b a;b a:b a=b a+b a*b",
    "https://example.com/a-b?x=1&y=2 user@mail.org #tag @user `code` x^2 ~/dir",
    # whitespace: newlines join, hyphenated line breaks join words, trailing whitespace is stripped first
    "well-\nknown", "a-\n", "a -\n", "line one\nline two", "a\r\nb", "tab\there", "  lead and trail  \t\n",
    "-<skipped>\nb", "x\xa0y\u200bz\u3000w\u2009v\x1cu\x85t",
    # unicode: accents (composed and not), CJK, emoji, curly quotes, other scripts' digits and dashes
    "café cafe\u0301 naïve Straße ÉCOLE", "我喜欢自然语言处理。你好，世界！", "emoji 😀👍🏽 🇫🇷 ok",
    "“curly” ‘quotes’ «guillemets» — – …", "１２.５ ٣.٤ ²³ ½", "Ωmega αβγ.δ", "",
]


def test_tokens_match_sacrebleu_on_edge_cases():
    for line in TOKEN_CASES:
        assert tokenize_13a(line) == sacre_tokens(line), repr(line)


def test_tokens_match_sacrebleu_on_every_short_string():
    # The 13a rules look at a character and its neighbours, so every string of up to 5 characters over an alphabet
    # with one character of each class they distinguish (letter, digit, period, comma, dash, space, symbol, newline)
    # covers every local situation, runs of periods included. Tokenized in one batch, which also checks that
    # segments joined for the corpus-wide regexes never affect each other.
    alphabet = "a1.,- &\n"
    lines = [''.join(p) for n in range(1, 6) for p in itertools.product(alphabet, repeat=n)]
    ours = [' '.join(t) for t in _tokenize_all(lines)]
    tok = BLEU()
    mismatches = [(line, o) for line, o in zip(lines, ours) if o != tok._preprocess_segment(line)]
    assert not mismatches, mismatches[:10]


def test_tokens_match_sacrebleu_on_every_short_entity_sequence():
    # the language-independent part: the order of <skipped> removal, hyphenated line joins, newlines and entities
    pieces = ['&', 'amp;', 'quot;', 'lt;', 'gt;', '<skipped>', '-', '\n', 'a', ' ']
    lines = [''.join(p) for n in range(1, 5) for p in itertools.product(pieces, repeat=n)]
    ours = [' '.join(t) for t in _tokenize_all(lines)]
    tok = BLEU()
    mismatches = [(line, o) for line, o in zip(lines, ours) if o != tok._preprocess_segment(line)]
    assert not mismatches, mismatches[:10]


# -----------------------------------------------------------------------------
# corpus BLEU on adversarial corpora

CORPORA = {
    'entities': (["Tom &amp; Jerry said &quot;hi&quot; to the &lt;cat&gt;.", "R&amp;D costs &amp;quot;a lot&amp;quot;"],
                 [["Tom & Jerry said \"hi\" to the <cat>.", "R&D costs \"a lot\""]]),
    'digit hyphens': (["The 10-year-old ran 3-4 km in a well-known race.", "Scores were 1-2-3 and -5."],
                      [["The 10 - year-old ran 3 - 4 km in a well-known race .", "Scores were 1-2-3 and -5 ."]]),
    'decimals': (["Pi is 3.14, e is 2.71 and 1,000.5 is big.", "It costs $1,000.00 (or 1.000,00 EUR)."],
                 [["Pi is 3.14 , e is 2.71, and 1,000.5 is big .", "It costs $ 1,000.00 (or 1.000,00 EUR) ."]]),
    'periods and commas': (["e.g. U.S.A. ... a..1 a...1", "Hello,world.How are you?"],
                           [["e.g. U.S.A. ... a . .1 a...1", "Hello, world. How are you?"]]),
    'unicode': (["Le café était très naïve — “vraiment” ‘non’ 😀", "我喜欢自然语言处理。", "x\xa0y z\u3000w"],
                [["Le cafe\u0301 était très naïve - \"vraiment\" 'non' 😀", "我喜欢自然语言处理。", "x y z w"]]),
    'newlines and skipped': (["a well-\nknown <skipped> fact\nabout it -\n", "line one\r\nline two\t"],
                             [["a wellknown fact about it -", "line one line two"]]),
    'empty hypotheses': (["", "", "the cat sat on the mat"], [["a b c", "d e", "the cat sat on the mat"]]),
    'all hypotheses empty': (["", ""], [["a b c d", "e"]]),
    'empty references': (["the cat sat on the mat", "a dog"], [["", "a dog"]]),
    'all empty': (["", "", ""], [["", "", ""]]),
    'zero matches': (["the cat sat on the mat", "quick brown fox"], [["a dog lay upon a rug", "lazy old hound"]]),
    'unigram matches only': (["mat the on cat the sat"], [["the cat sat on the mat"]]),
    'perfect match': (["The cat sat on the mat.", "It was 3.14 & fine."],
                      [["The cat sat on the mat.", "It was 3.14 & fine."]]),
    'single words': (["yes", "no", "maybe"], [["yes", "no", "perhaps"]]),
    'too short for 4-grams': (["a b c", "d e"], [["a b c", "d e"]]),
    'hypothesis shorter (BP < 1)': (["the cat sat on the"], [["the cat sat on the mat today"]]),
    'hypothesis longer': (["the cat sat on the mat today in the sun all day long"], [["the cat sat on the mat"]]),
    'repeated n-grams are clipped': (["the the the the the the the"], [["the cat is on the mat"]]),
    'two references, tie on length': (["a b c d e", "one two three four five six"],
                                      [["a b c d", "one two three four five six seven"],
                                       ["a b c d e f", "one two three four five"]]),
    'three references, max counts': (["the the cat cat sat", "x y z"],
                                     [["the cat sat", "x y"], ["the the cat", "y z"], ["cat cat sat sat", "x y z w"]]),
    'missing references (None)': (["the cat sat on the mat", "a dog barked"],
                                  [["the cat sat on a mat", None], [None, "a dog barked loudly"]]),
}


@pytest.mark.parametrize('name', list(CORPORA))
def test_corpus_bleu_matches_sacrebleu(name):
    hyps, streams = CORPORA[name]
    check_corpus(hyps, streams)


def test_edge_case_scores():
    # values derived by hand, independently of sacreBLEU: exact matches score 100, no match 0, empty hypotheses 0
    assert corpus_bleu(*CORPORA['perfect match']) == pytest.approx(100, abs=TOL)
    assert corpus_bleu(*CORPORA['zero matches']) == 0.0
    assert corpus_bleu(*CORPORA['all hypotheses empty']) == 0.0
    assert corpus_bleu(*CORPORA['all empty']) == 0.0
    assert corpus_bleu(*CORPORA['too short for 4-grams']) == 0.0  # corpus mode keeps all 4 orders
    # 'exp' smoothing: 'mat the on cat the sat' has all 6 unigrams in the reference but none of its 5 bigrams, 4
    # trigrams, 3 4-grams, so p1 = 6/6, p2 = 1/(2*5), p3 = 1/(4*4), p4 = 1/(8*3); same length, BP = 1
    assert corpus_bleu(*CORPORA['unigram matches only']) == pytest.approx(100 * (1 * 1 / 10 * 1 / 16 * 1 / 24) ** 0.25,
                                                                        rel=1e-12)
    # a 5-token prefix of a 7-token reference: every precision 100%, BP = exp(1 - 7/5)
    assert corpus_bleu(*CORPORA['hypothesis shorter (BP < 1)']) == pytest.approx(100 * math.exp(1 - 7 / 5), rel=1e-12)
    # ties in closest reference length go to the shorter reference: 5 tokens vs 4|6, 6 tokens vs 7|5
    assert bleu_stats(*CORPORA['two references, tie on length'])['ref_len'] == 4 + 5


# -----------------------------------------------------------------------------
# sentence BLEU

SENTENCES = [
    ("The cat sat on the mat.", ["The cat sat on the mat."]),
    ("the cat", ["the cat"]),                       # effective order: 100 at sentence level, 0 at corpus level
    ("the dog", ["the cat"]),
    ("cat", ["cat"]), ("", ["a b c"]), ("a b c", [""]), ("", [""]),
    ("quick brown fox", ["lazy old hound"]),
    ("cat the mat on sat the", ["the cat sat on the mat"]),
    ("Tom &amp; Jerry, 3.14 and 10-year-old café 😀", ["Tom & Jerry , 3.14 and 10 - year-old café 😀"]),
    ("a b c d e", ["a b c d", "a b c d e f"]),
    ("the the the the", ["the cat", "the the mat"]),
    ("U.S.A. e.g. a..1", ["U.S.A. e.g. a . .1", "USA eg a 1"]),
]


@pytest.mark.parametrize('hyp,refs', SENTENCES)
def test_sentence_bleu_matches_sacrebleu(hyp, refs):
    check_sentence(hyp, refs)


def test_sentence_bleu_effective_order():
    assert sentence_bleu("the cat", "the cat") == pytest.approx(100, abs=TOL)
    assert corpus_bleu(["the cat"], ["the cat"]) == 0.0


# -----------------------------------------------------------------------------
# random corpora from Alpaca

def _perturb(rng, text, pool):
    words = text.split(' ')
    op = rng.randrange(8)
    if op == 0:
        words = [w for w in words if rng.random() > 0.3]          # drop words
    elif op == 1:
        rng.shuffle(words)                                          # shuffle
    elif op == 2:
        words = [w + rng.choice(['.', ',', '-', '-3', '.5', '&amp;', '&quot;', "'s", '\n']) if rng.random() < 0.2
                 else w for w in words]                             # punctuation glued to words
    elif op == 3:
        words = words[:rng.randrange(len(words) + 1)]               # truncate (BP)
    elif op == 4:
        words = words + rng.choice(pool).split(' ')[:10]            # run on (longer)
    elif op == 5:
        words = [w.upper() if rng.random() < 0.2 else w for w in words]  # case
    elif op == 6:
        return rng.choice(['', ' ', '\n', '...', '3.14-2', rng.choice(pool)])  # degenerate / unrelated
    return ' '.join(words)


@pytest.fixture(scope='module')
def alpaca_texts():
    with gzip.open(require(ALPACA), 'rt') as f:
        data = json.load(f)
    rng = random.Random(0)
    return [d['output'] for d in rng.sample(data, 2000)] + [d['instruction'] for d in rng.sample(data, 500)]


def test_random_corpora_match_sacrebleu(alpaca_texts):
    rng = random.Random(1234)
    for _ in range(150):
        n = rng.randint(1, 20)
        refs = [rng.choice(alpaca_texts) for _ in range(n)]
        hyps = [_perturb(rng, r, alpaca_texts) for r in refs]
        streams = [refs]
        for _ in range(rng.choice([0, 0, 1, 2])):  # extra reference streams, some segments missing one
            streams.append([_perturb(rng, r, alpaca_texts) if rng.random() < 0.8 else None for r in refs])
        check_corpus(hyps, streams)
        i = rng.randrange(n)
        check_sentence(hyps[i], [s[i] for s in streams if s[i] is not None])


# -----------------------------------------------------------------------------
# input checking and the CLI

def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        corpus_bleu(["a", "b"], ["a"])  # sacreBLEU would silently score the first segment only
    with pytest.raises(ValueError):
        corpus_bleu(["a"], [["a"], ["a", "b"]])
    with pytest.raises(ValueError):
        corpus_bleu([], [])
    with pytest.raises(ValueError):
        corpus_bleu(["a", "b"], [["a", None], ["b", None]])  # segment 1 has no reference
    with pytest.raises(TypeError):
        corpus_bleu("a b", ["a b"])
    with pytest.raises(TypeError):
        corpus_bleu(["a b"], "a b")
    with pytest.raises(TypeError):
        corpus_bleu(["a b", "c"], [["a b", "c"], "c d"])
    with pytest.raises(TypeError):
        corpus_bleu([None], ["a"])


def run_cli(*args):
    return subprocess.run([sys.executable, 'eval/bleu.py', *map(str, args)], cwd=ROOT, capture_output=True, text=True)


def test_cli(tmp_path):
    hyps = ["a b c d e", "one two three four five six", "Tom &amp; Jerry, 3.14 and café 😀"]
    refs1 = ["a b c d", "one two three four five six seven", "Tom & Jerry , 3.14 and café"]
    refs2 = ["a b c d e f", "one two three four five", "Tom and Jerry"]
    (tmp_path / 'hyp.txt').write_text(''.join(h + '\n' for h in hyps), encoding='utf-8')
    (tmp_path / 'ref1.txt').write_text(''.join(r + '\n' for r in refs1), encoding='utf-8')
    (tmp_path / 'ref2.txt').write_text(''.join(r + '\r\n' for r in refs2), encoding='utf-8')  # CRLF is fine
    (tmp_path / 'short.txt').write_text('just one line\n', encoding='utf-8')

    out = run_cli(tmp_path / 'hyp.txt', tmp_path / 'ref1.txt', tmp_path / 'ref2.txt')
    assert out.returncode == 0, out.stderr
    expected = sacrebleu.corpus_bleu(hyps, [refs1, refs2])
    assert out.stdout.startswith(f"BLEU = {expected.score:.2f} ")
    assert f"hyp_len = {expected.sys_len} ref_len = {expected.ref_len}" in out.stdout

    for args, name in [((tmp_path / 'hyp.txt', tmp_path / 'missing.txt'), 'missing.txt'),
                       ((tmp_path / 'hyp.txt', tmp_path / 'short.txt'), 'short.txt'),
                       ((tmp_path / 'hyp.txt',), 'usage')]:
        out = run_cli(*args)
        assert out.returncode == 1
        assert out.stdout == '' and len(out.stderr.strip().splitlines()) == 1 and name in out.stderr
        assert 'Traceback' not in out.stderr


# -----------------------------------------------------------------------------
# tokenize='intl' and 'none' (lm-evaluation-harness's truthfulqa_gen BLEU uses 'intl')

INTL_CASES = TOKEN_CASES + [
    # a mark splits off unless it sits between two digits; a period after a number at the very end stays (mteval-v14)
    "In 2024. Prices: 1,000.50 € / 3.14$ — 10-20 km² … ½ ±5 °C", "Year 2024.", "Year 2024. ", "2024.\n", "a.b,c;d",
    "x.1 1.x .1 1. 1.1.1 ,1 1, ١٢٣.٤٥ ۱۲,۳ 𝟙.𝟚 Ⅻ.Ⅳ ①.② ¹.²",  # Unicode digits (Nd, Nl, No) all count as digits
    "¿Qué? ¡Sí! «Bonjour» „Hallo“ ‚x‘ 「日本」『語』【注】〈a〉《b》・ー。、", "我喜欢，自然语言处理！（括号）",
    "$100 €5 £3 ¥7 ₹9 ₿1 a+b=c <d> x|y ~z ^w `v` ©®™ ♥♦ ✓ → ∑∫ √2 ∞", "emoji 😀👍🏽🇫🇷 👨‍👩‍👧 #1 @user 100%",
    "newer Unicode: 🫨🫩 U+1FAE8 U+1FAE9 𜰀 ⃁ ⹠ 𑛐.𑛑",  # symbols / punctuation / digits newer than Python 3.11's tables
    "don't l'homme o'clock rock'n'roll 'quoted' \"dq\" ''", "a\x00b . \x00 .\x00", "\x00\x01\x02 . x",
    "tab\tsep\u2028line\u2029para\x1cfs\x85nel", "  .  ", "!!!", "...a...", "a--b—c–d", "",
]


def test_intl_tokens_match_sacrebleu_on_edge_cases():
    tok = BLEU(tokenize='intl')
    for line in INTL_CASES:
        assert tokenize_intl(line) == tok._preprocess_segment(line).split(), repr(line)
    assert _tokenize_intl_all(INTL_CASES) == [tok._preprocess_segment(line).split() for line in INTL_CASES]


def test_intl_tokens_match_sacrebleu_on_every_short_string():
    # the three rules look at a character and its neighbour, so every string of up to 5 characters over one
    # character of each kind they distinguish (letter, ASCII digit, other digit, period, comma, other punctuation,
    # symbol, space, newline, NUL: the separator we join segments with, which then moves to another character)
    alphabet = "a1٣.,—$ \n\x00"
    lines = [''.join(p) for n in range(1, 6) for p in itertools.product(alphabet, repeat=n)]
    tok = BLEU(tokenize='intl')
    ours = _tokenize_intl_all(lines)
    mismatches = [(line, o) for line, o in zip(lines, ours) if o != tok._preprocess_segment(line).split()]
    assert not mismatches, mismatches[:10]


def test_intl_unicode_classes_match_regex_on_every_code_point():
    # sacreBLEU's \p{N}, \p{P}, \p{S} come from the `regex` module's tables; ours from unicodedata plus the code
    # points added since Python's Unicode version. Compare the classes over all of Unicode.
    regex = pytest.importorskip("regex")
    import re
    from eval.bleu import _unicode_classes
    everything = ''.join(map(chr, range(0x110000)))
    ours = _unicode_classes()
    for c in 'NPS':
        assert re.findall(f'[{ours[c]}]', everything) == regex.findall(rf'\p{{{c}}}', everything), c


@pytest.mark.parametrize('tokenize', ['intl', 'none'])
@pytest.mark.parametrize('name', list(CORPORA))
def test_corpus_bleu_other_tokenizers_match_sacrebleu(name, tokenize):
    hyps, streams = CORPORA[name]
    ref = sacrebleu.corpus_bleu(hyps, streams, tokenize=tokenize)
    ours = bleu_stats(hyps, streams, tokenize=tokenize)
    assert ours['score'] == pytest.approx(ref.score, rel=0, abs=TOL)
    assert (ours['correct'], ours['total'], ours['sys_len'], ours['ref_len']) == \
        (ref.counts, ref.totals, ref.sys_len, ref.ref_len)
    assert corpus_bleu(hyps, streams, tokenize=tokenize) == ours['score']


@pytest.mark.parametrize('tokenize', ['intl', 'none'])
def test_sentence_bleu_other_tokenizers_match_sacrebleu(tokenize):
    for hyp, refs in SENTENCES + [(line, [other]) for line, other in zip(INTL_CASES, reversed(INTL_CASES))]:
        ref = sacrebleu.sentence_bleu(hyp, refs, tokenize=tokenize).score
        assert sentence_bleu(hyp, refs, tokenize=tokenize) == pytest.approx(ref, rel=0, abs=TOL), (hyp, refs)


def test_random_corpora_other_tokenizers_match_sacrebleu(alpaca_texts):
    rng = random.Random(4321)
    unicode_bits = ['—', '“', '”', '«', '»', '。', '，', '€', '½', '²', '١٢', '😀', '…', '·', '¿', '‰', '°']
    for _ in range(40):
        n = rng.randint(1, 20)
        refs = [rng.choice(alpaca_texts) for _ in range(n)]
        hyps = [_perturb(rng, r, alpaca_texts) for r in refs]
        hyps = [''.join(c + rng.choice(unicode_bits) if rng.random() < 0.02 else c for c in h) for h in hyps]
        streams = [refs] + [[_perturb(rng, r, alpaca_texts) for r in refs] for _ in range(rng.choice([0, 1]))]
        for tokenize in ('intl', 'none'):
            ref = sacrebleu.corpus_bleu(hyps, streams, tokenize=tokenize)
            ours = bleu_stats(hyps, streams, tokenize=tokenize)
            assert ours['score'] == pytest.approx(ref.score, rel=0, abs=TOL)
            assert (ours['correct'], ours['total']) == (ref.counts, ref.totals)


def test_truthfulqa_harness_bleu():
    # lm-evaluation-harness's truthfulqa utils.bleu(refs=[[ref]], preds=[completion]) is, per reference answer,
    # corpus_bleu([completion], [ref], tokenize='intl') (smooth 'exp', no effective order)
    utils = pytest.importorskip("lm_eval.tasks.truthfulqa.utils")
    completions = ["The sun is 93 million miles away.", "I have no comment.", "", "Nothing happens!",
                   "You'd get sick — “really” sick, 100%.", "Yes, 1,000.5 times; no."]
    answers = ["The sun is about 93 million miles from Earth.", "I have no comment.", "Nothing in particular happens.",
               "You would get sick.", "It's 1,000.5 times.", "No comment"]
    for completion in completions:
        for answer in answers:
            assert corpus_bleu([completion], [answer], tokenize='intl') == \
                pytest.approx(utils.bleu([[answer]], [completion]), rel=0, abs=TOL)


def test_unknown_tokenizer_raises():
    with pytest.raises(ValueError):
        corpus_bleu(["a"], ["a"], tokenize='zh')
