"""
A small wrapper around the sentencepiece model that LLaMA 1/2 (and the stories models) ship as tokenizer.model.

sentencepiece itself is the ground truth: `encode(text, bos=True)` is exactly what HF's slow LlamaTokenizer
(legacy mode, the mode Stanford Alpaca and lm-evaluation-harness used) returns for `tokenizer(text).input_ids`.
Special-token strings such as "</s>" inside the text are encoded as plain text, never mapped to special ids.
"""
import os

import sentencepiece as spm


class Tokenizer:
    def __init__(self, path):
        path = os.fspath(path)
        if os.path.isdir(path):  # an HF model directory: use its tokenizer.model
            path = os.path.join(path, "tokenizer.model")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer not found: {path} (expected a sentencepiece tokenizer.model)")
        self.path = path
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(path)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"not a sentencepiece model: {path} ({e})") from None
        self.vocab_size = self.sp.vocab_size()
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.pad_id = self.sp.pad_id()  # -1 for LLaMA: it has no pad token
        self.unk_id = self.sp.unk_id()

    def encode(self, text, bos=False, eos=False):
        ids = self.sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts, bos=False, eos=False):
        # sentencepiece encodes a list in one call (C++ loop), much faster than a Python loop for big datasets
        out = self.sp.encode(list(texts))
        if bos or eos:
            out = [([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else []) for ids in out]
        return out

    def decode(self, ids):
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, i):
        return self.sp.id_to_piece(int(i))
