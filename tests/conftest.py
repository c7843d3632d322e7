import os
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# the project's shared data sits beside the checkout (../shared); NANOPLW_SHARED points elsewhere
SHARED = Path(os.environ.get("NANOPLW_SHARED", ROOT.parent / "shared"))
LLAMA_TOKENIZER = SHARED / "data" / "tokenizer" / "llama" / "tokenizer.model"
ALPACA = SHARED / "data" / "alpaca" / "alpaca_data.json.gz"
EVAL_HF = SHARED / "data" / "eval" / "hf"
STORIES = ROOT / "tests" / "fixtures" / "stories260K"  # committed copy of ../shared/models/stories260K

torch.set_num_threads(min(2, os.cpu_count() or 1))
# tokenized-data caches of the tests (and of the scripts they run) go to a temp dir, not the checkout's data/cache
os.environ.setdefault("NANOPLW_CACHE_DIR", tempfile.mkdtemp(prefix="nanoplw-cache-"))


def require(path):
    """Skip a test whose shared data is missing (a fork without ../shared), rather than failing obscurely."""
    if not Path(path).exists():
        pytest.skip(f"missing shared data: {path}")
    return Path(path)
