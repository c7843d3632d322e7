import json
import os
import subprocess
import sys
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
# the evaluators' default data directory: ../shared's files, which the tests were written against (tests/test_fetch.py
# makes its own with data/fetch.py); NANOPLW_DATA set by hand runs the tests on another copy
os.environ.setdefault("NANOPLW_DATA", str(SHARED / "data" / "eval"))


def require(path):
    """Skip a test whose shared data is missing (a fork without ../shared), rather than failing obscurely."""
    if not Path(path).exists():
        pytest.skip(f"missing shared data: {path}")
    return Path(path)


@pytest.fixture(autouse=True, scope="module")
def one_thread(request):
    """One torch thread for a test module that sets ONE_THREAD = True: its models are tiny, and two OpenMP threads
    on a shared 2-core machine stall on each other (small matmuls measured ~700x slower); one is as fast when idle."""
    if not getattr(request.module, "ONE_THREAD", False):
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomise(hf_model, seed=0):
    """Weights larger and more varied than HF's init (std 0.02, norms at 1), so choices differ clearly, not near-ties"""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))


def tiny_hf_llama(path):
    """A 2-layer, 64-wide random LLaMA (GQA) with the 32k LLaMA vocabulary, saved by transformers into path"""
    transformers = pytest.importorskip("transformers")
    require(LLAMA_TOKENIZER)
    cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                   rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(cfg).float()
    randomise(model)
    model.save_pretrained(path)
    return path


def run_harness(script, spec, work, one_thread=True):
    """Run lm-evaluation-harness through a tests/fixtures/*/harness_ref.py on spec (written to work/spec.json),
    offline, its caches in work; returns its JSON output. OMP_WAIT_POLICY=PASSIVE: on a shared machine OpenMP's
    spinning threads make every small op wait for a descheduled peer (measured 50x slower); it changes no result."""
    (work / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
               HF_DATASETS_CACHE=str(work / "cache"), HF_HOME=str(work / "hf_home"), TOKENIZERS_PARALLELISM="false")
    if one_thread:
        env["OMP_NUM_THREADS"] = "1"
    p = subprocess.run([sys.executable, str(script), str(work / "spec.json"), str(work / "out.json")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((work / "out.json").read_text())
