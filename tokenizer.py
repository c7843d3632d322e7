"""
The LLaMA tokenizers behind one class: sentencepiece (LLaMA 1/2, the stories models) and LLaMA 3's tiktoken-format
BPE. Both ship as tokenizer.model; the file's contents say which it is.

    tok = Tokenizer("path/to/tokenizer.model")   # or an HF model dir (tokenizer.model or original/tokenizer.model)
    ids = tok.encode("Hello", bos=True)          # tok.kind: "sentencepiece" | "tiktoken"

sentencepiece itself is the ground truth for its files: `encode(text, bos=True)` is exactly what HF's slow
LlamaTokenizer (legacy mode, the mode Stanford Alpaca and lm-evaluation-harness used) returns.

The tiktoken format is one "base64(token bytes) rank" line per token. It is encoded here from scratch, identical
to tiktoken built from the same file with LLaMA 3's pattern and special tokens (tests/test_tokenizer.py): the text
is split into pre-tokens by LLaMA 3's regex (written for the stdlib `re`, its Unicode classes spelled out), each
pre-token's UTF-8 bytes are merged by rank (lowest rank first, leftmost on ties, as tiktoken does), and the result
is cached per pre-token, so a corpus costs little more than the regex scan: Stanford Alpaca's 52,002 prompts and
full examples (7.7M tokens) take 4.7 s from a cold cache, tiktoken 3.7 s (one thread each, shared 2-core machine).
The 256 special tokens follow the ranks (<|begin_of_text|> = 128000 for LLaMA 3); BOS / EOS are <|begin_of_text|> /
<|end_of_text|>, as LLaMA 3 base models use them, unless a model directory's config.json says otherwise (instruct
models list two EOS ids: eos_id is the first, stop_ids holds all of them).

For both kinds, special-token strings such as "</s>" or "<|eot_id|>" inside the text are encoded as plain text,
never mapped to special ids.
"""
import base64
import bisect
import heapq
import json
import os
import re
import unicodedata

# -----------------------------------------------------------------------------
# LLaMA 3: special tokens and pre-tokenizer

# Meta's llama3 tokenizer.py: 256 special tokens right after the ranks, in this order
LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>", "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|reserved_special_token_4|>", "<|eot_id|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(5, 256 - 5)]

# Meta's pattern, in the `regex` / Rust syntax tiktoken compiles; _pattern() below is the same thing for `re`
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# tiktoken 0.14's Rust regex knows Unicode 16; Python 3.11's unicodedata is Unicode 14. These letters (\p{L}) and
# numbers (\p{N}) were added in Unicode 15.0-16.0 (measured: every code point through tiktoken with the pattern
# \p{L} or \p{N}); with them, the classes equal tiktoken's for every code point.
_NEW_LETTERS = ("1C89-1C8A A7CB-A7CD A7DA-A7DC 105C0-105F3 10D4A-10D65 10D6F-10D85 10EC2-10EC4 1123F-11240 "
                "11380-11389 1138B 1138E 11390-113B5 113B7 113D1 113D3 11BC0-11BE0 11F02 11F04-11F10 11F12-11F33 "
                "1342F 13441-13446 13460-143FA 16100-1611D 16D40-16D6C 18CFF 1B132 1B155 1DF25-1DF2A 1E030-1E06D "
                "1E4D0-1E4EB 1E5D0-1E5ED 1E5F0 2B739 2EBF0-2EE5D 31350-323AF")
_NEW_NUMBERS = ("10D40-10D49 116D0-116E3 11BF0-11BF9 11F50-11F59 16130-16139 16D70-16D79 1CCF0-1CCF9 1D2C0-1D2D3 "
                "1E4F0-1E4F9 1E5F1-1E5FA")
# \s in Rust's regex is Unicode's White_Space property; Python's \s would add \x1c-\x1f, so it is spelled out
_WHITESPACE = "9-D 20 85 A0 1680 2000-200A 2028 2029 202F 205F 3000"


def _ranges(spec):
    return [tuple(int(x, 16) for x in (r.split("-") * 2)[:2]) for r in spec.split()]


def _class_body(ranges):
    """[(first, last)] code point ranges -> the inside of a `re` character class, every character escaped."""
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


def _category_ranges(major, extra):
    """Ranges of the code points whose general category starts with `major` ("L", "N"), plus `extra`."""
    cps = {c for c in range(0x110000) if unicodedata.category(chr(c))[0] == major}
    for a, b in _ranges(extra):
        cps.update(range(a, b + 1))
    out = []
    for c in sorted(cps):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def _pattern():
    """LLAMA3_PATTERN for Python's `re`, for text without astral characters (see _split): \\p{L}, \\p{N}, \\s as
    explicit classes of BMP code points (`re` tests a BMP-only class with one table lookup; every astral range in
    a class costs a linear scan, which made the whole split 10x slower), the case-insensitive contractions as
    explicit alternatives (Rust's simple case folding: only s has a third form, the long s U+017F). `re` is a
    backtracking, leftmost-first matcher like tiktoken's fancy-regex, so the same alternatives win."""
    letters, numbers = _category_ranges("L", _NEW_LETTERS), _category_ranges("N", _NEW_NUMBERS)
    bmp = lambda ranges: [(a, min(b, 0xFFFF)) for a, b in ranges if a <= 0xFFFF]  # noqa: E731
    L, N, S = _class_body(bmp(letters)), _class_body(bmp(numbers)), _class_body(_ranges(_WHITESPACE))
    pattern = re.compile(
        f"'(?:[sS\u017f]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD])"  # (?i:'s|'t|'re|'ve|'m|'ll|'d)
        f"|[^\\r\\n{L}{N}]?[{L}]+"                                    # [^\r\n\p{L}\p{N}]?\p{L}+
        f"|[{N}]{{1,3}}"                                              # \p{N}{1,3}
        f"| ?[^{S}{L}{N}]+[\\r\\n]*"                                  # ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        f"|[{S}]*[\\r\\n]+"                                           # \s*[\r\n]+
        f"|[{S}]+(?![^{S}])"                                          # \s+(?!\S)
        f"|[{S}]+")                                                   # \s+
    # astral ranges of letters and numbers, sorted, each with its BMP stand-in (see _split)
    astral = sorted((max(a, 0x10000), b, stand_in) for ranges, stand_in in ((letters, "a"), (numbers, "0"))
                    for a, b in ranges if b >= 0x10000)
    return pattern, astral


def _stand_in(m):
    """An astral character -> a BMP character of the same class for the pattern: a letter, a digit, or a symbol;
    none of them is a literal of the pattern, and no astral character is whitespace."""
    c = ord(m.group())
    i = bisect.bisect_right(_ASTRAL_RANGES, (c, 0x10FFFF, "~")) - 1
    return _ASTRAL_RANGES[i][2] if i >= 0 and _ASTRAL_RANGES[i][0] <= c <= _ASTRAL_RANGES[i][1] else "#"


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def _split(text):
    """text -> its LLaMA 3 pre-tokens. Astral characters (emoji, rare scripts) are replaced by a BMP stand-in of
    the same class, which keeps every length, so the pieces are cut from the original text by their lengths."""
    global _PATTERN, _ASTRAL_RANGES
    if _PATTERN is None:
        _PATTERN, _ASTRAL_RANGES = _pattern()
    if _ASTRAL.search(text) is None:
        return _PATTERN.findall(text)
    folded = _ASTRAL.sub(_stand_in, text)
    pieces, at = [], 0
    for p in _PATTERN.findall(folded):
        pieces.append(text[at:at + len(p)])
        at += len(p)
    return pieces


_PATTERN = _ASTRAL_RANGES = None  # built on first use (~0.5 s)


def _is_tiktoken_file(head):
    # "base64 rank" per line; a sentencepiece model is a protobuf, whose first byte is 0x0a
    return re.match(rb"[A-Za-z0-9+/]+={0,2} \d+\r?\n", head) is not None


def resolve(path):
    """A tokenizer file, or an HF model directory -> the path of its tokenizer.model (at the top, or under
    original/ as Meta's LLaMA 3 repositories ship it). FileNotFoundError when there is none."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for p in (os.path.join(path, "tokenizer.model"), os.path.join(path, "original", "tokenizer.model")):
            if os.path.isfile(p):
                return p
        raise FileNotFoundError(f"tokenizer not found: {path} has neither tokenizer.model nor "
                                f"original/tokenizer.model")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer not found: {path} (expected a tokenizer.model: sentencepiece or "
                                f"tiktoken format)")
    return path


class Tokenizer:
    def __init__(self, path):
        self.path = resolve(path)
        with open(self.path, "rb") as f:
            head = f.read(256)  # a tiktoken file's first line is rank 0, a short token
        self.kind = "tiktoken" if _is_tiktoken_file(head) else "sentencepiece"
        self.config = None  # the config.json that set bos_id / eos_id, if any
        if self.kind == "tiktoken":
            self._load_tiktoken()
            # a model directory's config.json decides BOS / EOS (instruct models stop on <|eot_id|> as well)
            config = os.path.join(os.fspath(path), "config.json")
            if os.path.isdir(os.fspath(path)) and os.path.isfile(config):
                self._ids_from_config(config)
        else:
            self._load_sentencepiece()

    # -------------------------------------------------------------------------
    # sentencepiece

    def _load_sentencepiece(self):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(self.path)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"not a sentencepiece model (nor a tiktoken-format file): {self.path} ({e})") from None
        self.vocab_size = self.sp.vocab_size()
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.pad_id = self.sp.pad_id()  # -1 for LLaMA: it has no pad token
        self.unk_id = self.sp.unk_id()
        self.stop_ids = (self.eos_id,)

    # -------------------------------------------------------------------------
    # tiktoken format

    def _load_tiktoken(self):
        ranks = {}
        with open(self.path, "rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    token, rank = line.split()
                    ranks[base64.b64decode(token, validate=True)] = int(rank)
                except ValueError:  # binascii.Error is a ValueError
                    raise ValueError(f"not a tiktoken-format tokenizer: {self.path} line {n} is not "
                                     f"'base64-token rank': {line[:60]!r}") from None
        n = len(ranks)
        if sorted(ranks.values()) != list(range(n)):
            raise ValueError(f"tiktoken-format tokenizer {self.path}: ranks are not 0..{n - 1}, each once")
        if any(bytes([b]) not in ranks for b in range(256)):
            raise ValueError(f"tiktoken-format tokenizer {self.path}: not every single byte has a rank")
        self.ranks = ranks
        self.n_ranks = n
        self.special_tokens = {s: n + i for i, s in enumerate(LLAMA3_SPECIAL_TOKENS)}
        # id -> bytes, specials as their text (what tiktoken's decode gives for them)
        self.id_bytes = [b"" for _ in range(n)] + [s.encode() for s in LLAMA3_SPECIAL_TOKENS]
        for token, rank in ranks.items():
            self.id_bytes[rank] = token
        self.vocab_size = n + len(LLAMA3_SPECIAL_TOKENS)
        self.bos_id = self.special_tokens["<|begin_of_text|>"]
        self.eos_id = self.special_tokens["<|end_of_text|>"]
        self.pad_id = -1  # no pad token, as for LLaMA 1/2
        self.unk_id = -1  # byte-level BPE encodes everything
        self.stop_ids = (self.eos_id,)
        self._cache = {}  # pre-token -> its ids

    def _ids_from_config(self, config):
        try:
            with open(config, encoding="utf-8") as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{config}: cannot read ({e})") from None
        bos, eos = cfg.get("bos_token_id", self.bos_id), cfg.get("eos_token_id", self.eos_id)
        eos = eos if isinstance(eos, list) else [eos]
        for name, v in [("bos_token_id", bos)] + [("eos_token_id", e) for e in eos]:
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < self.vocab_size:
                raise ValueError(f"{config}: {name} {v!r} is not a token id of {self.path} "
                                 f"(0..{self.vocab_size - 1})")
        if not eos:
            raise ValueError(f"{config}: eos_token_id is an empty list")
        self.bos_id, self.eos_id, self.stop_ids = bos, eos[0], tuple(eos)
        self.config = config

    def _bpe(self, piece):
        """UTF-8 bytes of one pre-token -> ids: tiktoken's byte-pair merge. A whole piece in the vocabulary is taken
        as it is; otherwise merge the adjacent pair of lowest rank, the leftmost on a tie, until none is left.
        Pre-tokens are short (a word, a number, a symbol run): a list of pair ranks, re-ranking only the merged
        pair's neighbours. A long one (a 10,000-letter "word") goes to a heap instead, so it is not quadratic."""
        ranks, none = self.ranks, self.n_ranks  # `none`: a rank no pair has
        rank = ranks.get(piece)
        if rank is not None:
            return [rank]
        if len(piece) > 256:
            return self._bpe_long(piece)
        parts = [piece[i:i + 1] for i in range(len(piece))]
        pair = [ranks.get(a + b, none) for a, b in zip(parts, parts[1:])]  # pair[i]: rank of parts[i] + parts[i+1]
        while pair:
            best = min(pair)
            if best == none:
                break
            i = pair.index(best)  # the leftmost of the lowest
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
            del pair[i]
            if i > 0:
                pair[i - 1] = ranks.get(parts[i - 1] + parts[i], none)
            if i < len(pair):
                pair[i] = ranks.get(parts[i] + parts[i + 1], none)
        return [ranks[p] for p in parts]

    def _bpe_long(self, piece):
        """_bpe for a long piece: parts are byte spans [start, nxt[start]) in a linked list, candidate merges
        (rank, left start, right start, right end) in a heap, where the leftmost of the lowest rank comes first;
        an entry whose spans have changed since it was pushed is skipped."""
        ranks, n = self.ranks, len(piece)
        nxt, prv, alive = list(range(1, n + 1)), list(range(-1, n - 1)), [True] * n
        heap = [(r, i, i + 1, i + 2) for i in range(n - 1) if (r := ranks.get(piece[i:i + 2])) is not None]
        heapq.heapify(heap)
        while heap:
            _, i, j, end = heapq.heappop(heap)
            if not (alive[i] and alive[j] and nxt[i] == j and nxt[j] == end):
                continue  # stale
            alive[j], nxt[i] = False, end
            if end < n:
                prv[end] = i
            if (p := prv[i]) >= 0 and (r := ranks.get(piece[p:end])) is not None:
                heapq.heappush(heap, (r, p, i, end))
            if end < n and (r := ranks.get(piece[i:nxt[end]])) is not None:
                heapq.heappush(heap, (r, i, end, nxt[end]))
        out, i = [], 0
        while i < n:
            out.append(ranks[piece[i:nxt[i]]])
            i = nxt[i]
        return out

    def _encode_bpe(self, text):
        cache, ids = self._cache, []
        for piece in _split(text):
            t = cache.get(piece)
            if t is None:
                try:
                    t = self._bpe(piece.encode("utf-8"))
                except UnicodeEncodeError:
                    i = next(i for i, c in enumerate(text) if 0xD800 <= ord(c) < 0xE000)
                    raise ValueError(f"text has a lone surrogate {text[i]!r} at character {i}: not valid Unicode, "
                                     f"so it has no UTF-8 bytes to encode") from None
                if len(cache) < 1 << 20:  # bounded: a stream of unique long pieces must not grow it forever
                    cache[piece] = t
            ids += t
        return ids

    # -------------------------------------------------------------------------
    # the public API, the same for both kinds

    def encode(self, text, bos=False, eos=False):
        ids = self.sp.encode(text) if self.kind == "sentencepiece" else self._encode_bpe(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts, bos=False, eos=False):
        if self.kind == "sentencepiece":
            # sentencepiece encodes a list in one call (C++ loop), much faster than a Python loop for big datasets
            out = self.sp.encode(list(texts))
        else:
            out = [self._encode_bpe(t) for t in texts]
        if bos or eos:
            out = [([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else []) for ids in out]
        return out

    def decode(self, ids):
        if self.kind == "sentencepiece":
            return self.sp.decode([int(i) for i in ids])
        try:
            data = b"".join([self.id_bytes[int(i)] if int(i) >= 0 else None for i in ids])
        except (IndexError, TypeError):
            bad = next(i for i in ids if not 0 <= int(i) < self.vocab_size)
            raise ValueError(f"token id {bad} is out of range for {self.path} (0..{self.vocab_size - 1})") from None
        return data.decode("utf-8", errors="replace")  # tiktoken's default for a cut multi-byte character

    def id_to_piece(self, i):
        if self.kind == "sentencepiece":
            return self.sp.id_to_piece(int(i))
        # the token's text; bytes that are only part of a UTF-8 character show as \xNN
        return self.id_bytes[int(i)].decode("utf-8", errors="backslashreplace")
