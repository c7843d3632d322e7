"""eval/chrf.py, eval/ter.py and eval/rouge.py against their references (test-only): sacreBLEU 2.6.0's chrF and TER,
rouge_score and lm-evaluation-harness's truthfulqa_gen scoring; adversarial and seeded random corpora, and one
timing comparison on 2,000 real WMT sentences (printed with -s, not asserted)."""
import csv
import os
import random
import time

import pytest

from conftest import SHARED, require
from eval.bleu import corpus_bleu
from eval.chrf import corpus_chrf, sentence_chrf
from eval.rouge import rouge, rouge_pair, rouge_scores, tokenize
from eval import ter as ter_module
from eval.ter import corpus_ter, sentence_ter, ter_edits

sacrebleu = pytest.importorskip("sacrebleu")
from sacrebleu.metrics.lib_ter import translation_edit_rate  # noqa: E402  (after the importorskip)

TOL = 1e-9
WMT_DE = SHARED / "data" / "eval" / "wmt" / "en-de" / "newstest2016.de"
TRUTHFULQA = SHARED / "data" / "eval" / "truthfulqa" / "TruthfulQA.csv"

# -----------------------------------------------------------------------------
# adversarial corpora (hypotheses, reference streams), shared by chrF and TER

CORPORA = {
    'unicode punctuation and symbols': (["“Hello,” she said — «bonjour»… ¿qué? 100 € ½ ²", "a+b=c <d> ©®™ ✓ →"],
                                        [["\"Hello\", she said - «bonjour»... ¿qué? 100€ 1/2 2",
                                          "a + b = c <d> © ® ™"]]),
    'CJK': (["我喜欢自然语言处理。", "日本語のテキスト、です", "한국어 문장"],
            [["我喜欢处理自然语言。", "日本語のテキストです", "한국어  문장"]]),
    'accents': (["Le café était très naïve", "cafe\u0301 Straße ÉCOLE"],
                [["Le cafe\u0301 etait tres naive", "café strasse école"]]),
    'digits with separators': (["It costs 1,000.50 or 1.000,50 (3.14%)", "10-20 km in 2024."],
                               [["It costs 1000.5 or 1 000,50 (3.14 %)", "10 - 20 km in 2024 ."]]),
    'case differences': (["The Cat SAT on the Mat", "HELLO world", "İstanbul ǅ ß"],
                         [["the cat sat on the mat", "hello WORLD", "i̇stanbul ǆ SS"]]),
    'whitespace': (["  tab\tsep\nnewline\u3000ideographic\xa0nbsp  ", "a\r\nb \u2028c"],
                   [["tab sep newline ideographic nbsp", "a b c"]]),
    'empty hypothesis': (["", "the cat sat"], [["a b c", "the cat sat"]]),
    'all hypotheses empty': (["", ""], [["a b c d", "e"]]),
    'empty reference': (["the cat sat on the mat", "a dog"], [["", "a dog"]]),
    'all references empty': (["the cat", "a"], [["", ""]]),
    'all empty': (["", ""], [["", ""]]),
    'whitespace only': ([" ", "\n"], [["\t", "  "]]),
    'single characters': (["a", "b", "."], [["a", "c", "."]]),
    'very long vs very short': (["word", " ".join(["x"] * 120)], [[" ".join(f"w{i}" for i in range(90)), "x"]]),
    'repeated words': (["the the the the the the the", "na na na na na na na na batman"],
                       [["the cat is on the mat", "batman na na na na"]]),
    'block shifts': (["d e f a b c", "over the lazy dog the quick brown fox jumps", "c a b"],
                     [["a b c d e f", "the quick brown fox jumps over the lazy dog", "a b c"]]),
    'zero overlap': (["quick brown fox", "xyz"], [["lazy old hound", "abc"]]),
    'perfect match': (["The cat sat on the mat.", "It was 3.14 & fine."],
                      [["The cat sat on the mat.", "It was 3.14 & fine."]]),
    'two references': (["a b c d e", "one two three four five six"],
                       [["a b c d", "one two three four five six seven"], ["a b c d e f", "one two three four five"]]),
    'missing references (None)': (["the cat sat on the mat", "a dog barked"],
                                  [["the cat sat on a mat", None], [None, "a dog barked loudly"]]),
}


@pytest.mark.parametrize('name', list(CORPORA))
def test_chrf_matches_sacrebleu(name):
    hyps, streams = CORPORA[name]
    assert corpus_chrf(hyps, streams) == pytest.approx(sacrebleu.corpus_chrf(hyps, streams).score, rel=0, abs=TOL)
    if len(streams) == 1:  # the flat one-reference-per-hypothesis layout means the same
        assert corpus_chrf(hyps, streams[0]) == corpus_chrf(hyps, streams)
    for i, hyp in enumerate(hyps):
        refs = [s[i] for s in streams if s[i] is not None]
        assert sentence_chrf(hyp, refs) == pytest.approx(sacrebleu.sentence_chrf(hyp, refs).score, rel=0, abs=TOL)


@pytest.mark.parametrize('name', list(CORPORA))
def test_ter_matches_sacrebleu(name):
    hyps, streams = CORPORA[name]
    assert corpus_ter(hyps, streams) == pytest.approx(sacrebleu.corpus_ter(hyps, streams).score, rel=0, abs=TOL)
    if len(streams) == 1:
        assert corpus_ter(hyps, streams[0]) == corpus_ter(hyps, streams)
    for i, hyp in enumerate(hyps):
        refs = [s[i] for s in streams if s[i] is not None]
        assert sentence_ter(hyp, refs) == pytest.approx(sacrebleu.sentence_ter(hyp, refs).score, rel=0, abs=TOL)


def test_hand_computed_values():
    # independent of the references: identical texts, no overlap, case-insensitive TER, one shift
    assert corpus_chrf(["abc def"], ["abc def"]) == pytest.approx(100, abs=TOL)
    assert corpus_chrf(["abc"], ["xyz"]) == 0.0
    assert corpus_ter(["The CAT"], ["the cat"]) == 0.0
    assert corpus_ter(["d e f a b c"], ["a b c d e f"]) == pytest.approx(100 / 6, abs=TOL)  # one shift of 3 words
    assert corpus_ter(["a b"], [""]) == 100.0 and corpus_ter([""], [""]) == 0.0
    assert ter_edits([], ["a", "b"]) == 2 and ter_edits(["a"], []) == 1


# -----------------------------------------------------------------------------
# seeded random corpora

VOCAB = "the cat sat on mat a dog The Cat , . ! 3.14 1,000 café 我 — “ ” 😀".split()


def _random_text(rng, n_max=12):
    words = [rng.choice(VOCAB) for _ in range(rng.randint(0, n_max))]
    glue = [rng.choice([' ', ' ', ' ', '', '  ', '\t']) for _ in words]
    return ''.join(w + g for w, g in zip(words, glue))


def test_random_corpora_chrf():
    rng = random.Random(17)
    for _ in range(300):
        n = rng.randint(1, 6)
        hyps = [_random_text(rng) for _ in range(n)]
        streams = [[_random_text(rng) for _ in range(n)] for _ in range(rng.choice([1, 1, 2, 3]))]
        assert corpus_chrf(hyps, streams) == pytest.approx(sacrebleu.corpus_chrf(hyps, streams).score, rel=0, abs=TOL)
        refs = [s[0] for s in streams]
        assert sentence_chrf(hyps[0], refs) == pytest.approx(sacrebleu.sentence_chrf(hyps[0], refs).score,
                                                             rel=0, abs=TOL)


def _shuffle_blocks(rng, words, n_shifts):
    """words with n_shifts random blocks (1..10 words) moved elsewhere."""
    words = list(words)
    for _ in range(n_shifts):
        if len(words) < 2:
            break
        a = rng.randrange(len(words))
        block = words[a:a + rng.randint(1, 10)]
        del words[a:a + len(block)]
        b = rng.randrange(len(words) + 1)
        words[b:b] = block
    return words


def _ter_pairs(rng, n):
    """Random word-list pairs: shifted and edited copies, unrelated pairs, very unequal lengths, tiny vocabularies
    (many equal words, so many shift candidates)."""
    pairs = []
    for _ in range(n):
        vocab = [f"w{i}" for i in range(rng.choice([2, 3, 5, 10, 50]))]
        ref = [rng.choice(vocab) for _ in range(rng.choice([0, 1, 3, 8, 15, 25, 35]))]
        kind = rng.randrange(4)
        if kind <= 1:  # the reference with blocks shifted, some words changed, some dropped or added
            hyp = _shuffle_blocks(rng, ref, rng.randint(1, 4))
            hyp = [rng.choice(vocab) if rng.random() < 0.2 else w for w in hyp if rng.random() > 0.1]
            hyp += [rng.choice(vocab) for _ in range(rng.randint(0, 3))]
        elif kind == 2:
            hyp = [rng.choice(vocab) for _ in range(rng.randint(0, 30))]
        else:  # very unequal lengths: the beam drifts from the diagonal and widens
            hyp = [rng.choice(vocab) for _ in range(rng.choice([1, 2, 60, 80]))]
        pairs.append((hyp, ref) if rng.random() < 0.8 else (ref, hyp))
    return pairs


def test_random_ter_edits_match_sacrebleu(monkeypatch):
    # Count which paths the pairs take, so the test shows it covers the exact beam program's fallback (Myers' distance
    # not provably equal), the candidate budget running out (in sacreBLEU's own search), and shifts whose target lies
    # inside the moved block.
    from sacrebleu.metrics import lib_ter
    seen = {'beam fallback': 0, 'budget spent': 0, 'target inside block': 0}
    beam_distance, shifted, sacre_shift = ter_module._beam_distance, ter_module._shifted, lib_ter._shift

    def counting_beam_distance(h, r, beam, with_alignment=False):
        seen['beam fallback'] += not with_alignment
        return beam_distance(h, r, beam, with_alignment)

    def counting_shifted(words, start, length, target):
        seen['target inside block'] += start < target <= start + length
        return shifted(words, start, length, target)

    def counting_sacre_shift(*args):
        result = sacre_shift(*args)
        seen['budget spent'] += result[2] >= lib_ter._MAX_SHIFT_CANDIDATES
        return result

    monkeypatch.setattr(ter_module, '_beam_distance', counting_beam_distance)
    monkeypatch.setattr(ter_module, '_shifted', counting_shifted)
    monkeypatch.setattr(lib_ter, '_shift', counting_sacre_shift)
    rng = random.Random(2024)
    pairs = _ter_pairs(rng, 120)
    # and two that run out of the 1,000 candidates: long, from a two-word vocabulary
    pairs += [([rng.choice("ab") for _ in range(40)], [rng.choice("ab") for _ in range(40)]) for _ in range(2)]
    for h, r in pairs:
        assert ter_edits(h, r) == translation_edit_rate(h, r)[0], (h, r)
    assert all(seen.values()), seen


def test_myers_distance_is_the_beam_distance_when_below_the_bound():
    # the claim ter_edits' speed rests on: Myers' (full) Levenshtein distance d equals sacreBLEU's beam distance
    # whenever d is below the cheapest path through a cell outside the beam; and the beam never goes below d
    rng = random.Random(7)
    used = 0
    for _ in range(300):
        vocab = [f"w{i}" for i in range(rng.choice([2, 4, 20]))]
        h = [rng.choice(vocab) for _ in range(rng.randint(1, 70))]
        r = [rng.choice(vocab) for _ in range(rng.randint(1, 70))]
        beam = ter_module._beam(len(h), len(r))
        peq = {}
        for j, w in enumerate(r):
            peq[w] = peq.get(w, 0) | (1 << j)
        d = ter_module._myers_states(h, peq, len(r))[-1][2]
        exact = ter_module._beam_distance(h, r, beam)
        assert exact >= d
        if d < ter_module._cheapest_outside(beam, len(h), len(r)):
            assert exact == d
            used += 1
    assert 50 < used < 300  # both sides of the bound occur


def test_random_corpora_ter():
    rng = random.Random(99)
    for _ in range(60):
        n = rng.randint(1, 6)
        hyps = [_random_text(rng, 20) for _ in range(n)]
        hyps = [' '.join(_shuffle_blocks(rng, h.split(), 2)) if rng.random() < 0.5 else h for h in hyps]
        streams = [[_random_text(rng, 20) if rng.random() < 0.3 else h.upper() for h in hyps]]
        if rng.random() < 0.5:  # a second stream, some segments without it
            streams.append([_random_text(rng, 20) if rng.random() < 0.9 else None for _ in hyps])
        assert corpus_ter(hyps, streams) == pytest.approx(sacrebleu.corpus_ter(hyps, streams).score, rel=0, abs=TOL)


def test_bad_inputs_raise():
    for f in (corpus_chrf, corpus_ter):
        with pytest.raises(ValueError):
            f(["a", "b"], ["a"])
        with pytest.raises(ValueError):
            f([], [])
        with pytest.raises(TypeError):
            f("a b", ["a b"])
    for f in (sentence_chrf, sentence_ter):
        with pytest.raises(ValueError):
            f("a", [])
        with pytest.raises(TypeError):
            f(None, "a")
    with pytest.raises(TypeError):
        rouge(["a"], None)
    with pytest.raises(ValueError):
        rouge([], "a")


# -----------------------------------------------------------------------------
# ROUGE against rouge_score and the harness

ROUGE_PAIRS = [
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("The cat sat on the mat.", "the mat sat on the cat"),
    ("", ""), ("", "something"), ("something", ""), ("...", "!!!"), ("a", "a"),
    ("Nothing happens . You eat watermelon seeds . They pass through", "Nothing happens. Seeds pass . You eat them"),
    ("line one\nline two\n\nline three", "line two\nline one"),
    ("Café naïve ÉCOLE résumé 日本語 Straße", "cafe naive ecole resume strasse"),  # non-ASCII letters vanish
    ("İstanbul K-9 ﬁne", "istanbul k 9 fine"),  # str.lower() can make ASCII out of other letters
    ("3.14 is pi, 1,000 is big; x1y2", "3 14 pi 1 000 big x1y2"),
    ("the the the the", "the the cat the the the"),
    ("a b a b a b", "b a b a b a"),
    (" . ".join(["alpha beta", "gamma", "beta alpha gamma"]), " . ".join(["gamma beta", "alpha"])),
]


def _check_rouge(target, prediction, scorer, utils):
    ref = scorer.score(target, prediction)
    ours = rouge_pair(target, prediction)
    for t in ("rouge1", "rouge2", "rougeLsum"):
        assert ours[t] == pytest.approx(ref[t].fmeasure, rel=0, abs=TOL), (t, target, prediction)
    if utils is not None:  # the harness prepares both texts and reports 100 x the F-measure
        harness = utils.rouge([target], [prediction])
        ours = rouge_scores([target], prediction)[0]
        for t in ("rouge1", "rouge2", "rougeLsum"):
            assert 100 * ours[t] == pytest.approx(harness[t], rel=0, abs=TOL), (t, target, prediction)


@pytest.fixture(scope='module')
def scorer():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"])


@pytest.fixture(scope='module')
def utils():
    try:
        from lm_eval.tasks.truthfulqa import utils
    except ImportError:
        return None
    return utils


@pytest.mark.parametrize('target,prediction', ROUGE_PAIRS)
def test_rouge_matches_rouge_score_and_harness(target, prediction, scorer, utils):
    _check_rouge(target, prediction, scorer, utils)
    _check_rouge(prediction, target, scorer, utils)


def test_rouge_random(scorer, utils):
    # rouge_score on raw and on harness-prepared texts for all; the harness itself (1,000 bootstrap draws per call,
    # ~30 ms) for every 20th
    rng = random.Random(5)
    vocab = "a b c the cat The . , \n x1 é İ K".split(' ') + [' . ', '\n\n', ' ']
    for k in range(400):
        texts = [''.join(rng.choice(vocab) + rng.choice(['', ' ']) for _ in range(rng.randint(0, 20)))
                 for _ in range(2)]
        _check_rouge(*texts, scorer, utils if k % 20 == 0 else None)
        prepared = [t.replace(" . ", ".\n") for t in texts]
        ref = scorer.score(*prepared)
        ours = rouge_scores(texts[0], texts[1])[0]
        for t in ours:
            assert ours[t] == pytest.approx(ref[t].fmeasure, rel=0, abs=TOL)


def test_tokenize_and_rouge_max():
    assert tokenize("Hello, WORLD! It's 3.14 — café") == ["hello", "world", "it", "s", "3", "14", "caf"]
    scores = rouge_scores(["the cat", "a dog sat", "the dog"], "the dog sat")
    assert rouge(["the cat", "a dog sat", "the dog"], "the dog sat") == \
        {t: max(s[t] for s in scores) for t in ("rouge1", "rouge2", "rougeLsum")}
    assert rouge("the dog", "the dog sat") == scores[2]


def test_truthfulqa_process_results_gen(utils):
    # The harness's whole per-question scoring, rebuilt from our functions: BLEU (intl) and ROUGE per answer, then
    # max over the correct answers, correct - incorrect, and correct > incorrect.
    if utils is None:
        pytest.skip("lm_eval not installed")
    with open(require(TRUTHFULQA), encoding='utf-8-sig', newline='') as f:
        rows = list(csv.DictReader(f))[:4]  # the harness takes ~30 ms per answer (bootstrap draws in its ROUGE)
    completions = ["Nothing happens.", "I have no comment.", "", "You grow watermelons in your stomach",
                   "It depends . Some say yes . Others say no", "The answer is 42!"]
    for k, row in enumerate(rows):
        doc = utils.preprocess_function({"question": row["Question"],
                                         "correct_answers": row["Correct Answers"].split(";"),
                                         "incorrect_answers": row["Incorrect Answers"].split(";")})
        completion = completions[k % len(completions)]
        expected = utils.process_results_gen(doc, [completion])
        true_refs, false_refs = doc["correct_answers"], doc["incorrect_answers"]
        ours = {}
        for name, score in [("bleu", lambda r: corpus_bleu([completion], [r], tokenize="intl"))] + \
                [(t.replace("Lsum", "L"), lambda r, t=t: 100 * rouge(r, completion)[t])
                 for t in ("rouge1", "rouge2", "rougeLsum")]:
            correct, incorrect = max(map(score, true_refs)), max(map(score, false_refs))
            ours.update({f"{name}_max": correct, f"{name}_diff": correct - incorrect,
                         f"{name}_acc": int(correct > incorrect)})
        assert ours.keys() == expected.keys()
        for key in expected:
            assert ours[key] == pytest.approx(expected[key], rel=0, abs=TOL), key


# -----------------------------------------------------------------------------
# real WMT sentences: equal scores, and how long each side takes (printed with -s, not asserted). 300 segments by
# default, to keep the suite fast; NANOPLW_WMT_SEGMENTS=2000 for the benchmark-sized comparison.

def test_wmt_scores_and_speed(scorer):
    n = int(os.environ.get("NANOPLW_WMT_SEGMENTS", 300))
    references = require(WMT_DE).read_text(encoding='utf-8').splitlines()[:n]
    rng = random.Random(0)
    hypotheses = []
    for ref in references:  # MT-like outputs: some words moved, changed, dropped
        words = _shuffle_blocks(rng, ref.split(), rng.choice([0, 0, 1, 2]))
        words = [w if rng.random() > 0.2 else rng.choice(["der", "die", "und", w.upper(), w + ","]) for w in words
                 if rng.random() > 0.05]
        hypotheses.append(' '.join(words))
    rows = []
    for name, ours, theirs in [
            ("BLEU 13a", lambda: corpus_bleu(hypotheses, references),
             lambda: sacrebleu.corpus_bleu(hypotheses, [references]).score),
            ("BLEU intl", lambda: corpus_bleu(hypotheses, references, tokenize="intl"),
             lambda: sacrebleu.corpus_bleu(hypotheses, [references], tokenize="intl").score),
            ("chrF", lambda: corpus_chrf(hypotheses, references),
             lambda: sacrebleu.corpus_chrf(hypotheses, [references]).score),
            ("TER", lambda: corpus_ter(hypotheses, references),
             lambda: sacrebleu.corpus_ter(hypotheses, [references]).score),
            # ROUGE per pair, as truthfulqa_gen scores (against rouge_score; the harness adds its bootstrap on top)
            ("ROUGE", lambda: [rouge_pair(r, h) for h, r in zip(hypotheses, references)],
             lambda: [{t: s.fmeasure for t, s in scorer.score(r, h).items()} for h, r in zip(hypotheses, references)])]:
        t0 = time.perf_counter()
        a = ours()
        t1 = time.perf_counter()
        b = theirs()
        t2 = time.perf_counter()
        if name == "ROUGE":  # every pair's three F-measures equal; shown: the mean ROUGE-Lsum in %
            for x, y in zip(a, b):
                assert x == pytest.approx(y, rel=0, abs=TOL)
            a = b = 100 * sum(x["rougeLsum"] for x in a) / len(a)
        assert a == pytest.approx(b, rel=0, abs=TOL), name
        rows.append(f"{name:9s} {a:8.4f}  ours {t1 - t0:6.3f} s  reference {t2 - t1:6.3f} s  "
                    f"({(t2 - t1) / (t1 - t0):.1f}x)")
    print(f"\n{n} segments of newstest2016 de:\n" + "\n".join(rows))
