"""bench.py end to end on a small random LLaMA: rows, parity with the HF peer, the Alpaca-like batches, errors.
No timing is asserted: the figures depend on the machine."""
import json
import subprocess
import sys
from datetime import datetime
from types import SimpleNamespace

import pytest
import torch

import bench
from conftest import EVAL_HF, LLAMA_TOKENIZER, ROOT, require

pytest.importorskip("transformers")

# 2 layers, 64 wide, GQA; the LLaMA vocabulary so that the mc mode can use the real tokenizer
SMALL = {"hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 32000, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
         "bos_token_id": 1, "eos_token_id": 2}
FAST = ["--steps=2", "--warmup=1", "--batch_size=3", "--seq_len=64", "--new_tokens=6"]
KEYS = {"date", "device", "torch", "transformers", "command", "mode", "model", "params", "dtype", "batch_size",
        "grad_accum", "seq_len", "steps", "ours", "hf", "ratio", "peak_mem_gb", "mfu", "units", "busy_elsewhere"}


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "small" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(SMALL))
    return path


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_row(row, mode, argv):
    assert KEYS <= row.keys(), KEYS - row.keys()
    assert row["mode"] == mode and row["dtype"] == "float32" and row["torch"] == torch.__version__
    assert row["command"] == "python bench.py " + " ".join(argv)
    datetime.fromisoformat(row["date"])
    assert row["device"] and row["mfu"] is None  # no known peak on a CPU
    for side in ("ours", "hf"):
        r = row[side]
        assert len(r["times_s"]) == 2 and r["median_s"] > 0
        assert r["peak_mem_gb"] > 0
        if mode == "train":  # the median of the two steps' rates: their mean, as tokens differ per batch
            assert min(r["times_s"]) <= r["median_s"] <= max(r["times_s"]) and r["per_s"] > 0
        else:
            units = {"generate": row.get("prompts", 0) * row.get("new_tokens", 0)}.get(mode, row.get("documents"))
            assert units / max(r["times_s"]) * 0.999 <= r["per_s"] <= units / min(r["times_s"]) * 1.001
    assert row["ratio"] == pytest.approx(row["ours"]["per_s"] / row["hf"]["per_s"], rel=1e-2)
    assert row["peak_mem_gb"] == row["ours"]["peak_mem_gb"]


def test_train_and_generate_rows(tmp_path, config, capsys):
    results = tmp_path / "out" / "results.jsonl"
    argv = [f"--model={config}", "--mode=train,generate", *FAST, "--json=True", f"--results={results}"]
    assert bench.main(argv) == 0
    rows = rows_of(results)
    assert [r["mode"] for r in rows] == ["train", "generate"]
    for row, mode in zip(rows, ("train", "generate")):
        check_row(row, mode, argv)
    train, gen = rows
    assert train["params"] == bench.n_params(bench.load_shape(str(config))[1])
    # the same loss on the same first batch: ours (chunked CE, padding skipped) against HF's logits + F.cross_entropy
    assert train["loss_diff"] < 1e-4 * train["ours"]["first_loss"]
    assert 0 < train["tokens_per_step"] <= train["padded_tokens_per_step"] <= 3 * 64
    # greedy decoding of prompts of different lengths: every row's tokens equal HF's left-padded batch
    assert gen["same_tokens"] == 1.0 and gen["prompts"] == 3 and gen["prompt_lens"] == [20, 40, 60]
    out = capsys.readouterr().out
    assert "ours / HF" in out and "train" in out and "generate" in out

    # a second run appends; a file whose last line lacks its newline is repaired, not corrupted
    results.write_text(results.read_text().rstrip("\n"))
    assert bench.main([f"--model={config}", "--mode=generate", *FAST, "--no_hf=True", "--json=True",
                       f"--results={results}"]) == 0
    rows = rows_of(results)
    assert [r["mode"] for r in rows] == ["train", "generate", "generate"]
    assert rows[2]["hf"] is None and rows[2]["ratio"] is None and rows[2]["ours"]["per_s"] > 0
    assert not list(results.parent.glob(".*tmp*"))  # no temp file left behind


def test_mc_row_matches_lm_eval(tmp_path, config):
    pytest.importorskip("lm_eval")
    require(EVAL_HF / "arc_easy.jsonl")
    require(LLAMA_TOKENIZER)
    results = tmp_path / "r.jsonl"
    argv = [f"--model={config}", "--mode=mc", *FAST, "--mc_tasks=arc_easy", "--mc_limit=3",
            f"--mc_data_dir={EVAL_HF}", f"--tokenizer={LLAMA_TOKENIZER}", "--json=True", f"--results={results}"]
    assert bench.main(argv) == 0
    (row,) = rows_of(results)
    check_row(row, "mc", argv)
    assert row["documents"] == 3 and row["requests"] >= 3 * 3  # ARC-Easy has 3 to 5 choices
    # eval/mc.py's log-likelihoods against the harness's on the same requests and the same weights
    assert row["max_abs_ll_diff"] < 1e-3


def test_a_mode_is_one_function_and_one_entry(tmp_path, monkeypatch):
    # the hook for modes to come (a tokenizer's, say): a function of the config and a MODES entry; with_model=False
    # builds no model and hands each side None
    def bench_count(s):
        sides = {"ours": lambda model: (lambda i: sum(range(1000))), "hf": lambda model: (lambda i: 499500)}
        row, first = bench.compare(s, sides, "count", 1000, {"units": "items/s"}, with_model=False)
        return dict(row, same=float(first["ours"] == first["hf"]))
    monkeypatch.setitem(bench.MODES, "count", (bench_count, []))
    results = tmp_path / "r.jsonl"
    assert bench.main(["--mode=count", "--steps=2", "--warmup=1", "--json=True", f"--results={results}"]) == 0
    (row,) = rows_of(results)
    assert row["mode"] == "count" and row["same"] == 1.0 and row["ratio"] > 0
    assert len(row["ours"]["times_s"]) == len(row["hf"]["times_s"]) == 2


def test_alpaca_like_batches():
    gen = torch.Generator().manual_seed(0)
    pairs = bench.alpaca_lengths(20000, 4096, gen)
    prompts, completions = sorted(p for p, _ in pairs), sorted(c for _, c in pairs)
    # the sampler reproduces the tabulated Stanford Alpaca percentiles (median prompt 53, completion 48 tokens)
    assert abs(prompts[10000] - 53) <= 2 and abs(completions[10000] - 48) <= 3
    assert min(prompts) >= 39 and max(completions) <= 1228
    assert all(p + c <= 65 for p, c in bench.alpaca_lengths(500, 64, gen))  # cut at seq_len + 1 tokens

    (b,) = bench.train_batches(1, 4, 2, 64, 1000, 0.25, torch.Generator().manual_seed(1))
    assert len(b["micro"]) == 2
    wsum, real = 0.0, 0
    for idx, targets, w in b["micro"]:
        assert idx.shape == targets.shape == w.shape and idx.shape[1] % 8 == 0 and idx.shape[1] <= 64
        assert (idx[:, 0] == 1).all()                              # BOS first
        assert torch.equal(targets < 0, w == 0)                    # padding: no target, no weight
        both = targets[:, 1:] >= 0
        assert torch.equal(idx[:, 1:][both], targets[:, :-1][both])  # targets are the inputs shifted by one
        assert set(w.unique().tolist()) <= {0.0, 0.25, 1.0}
        for row in w:                                              # prompt targets, then completion, then padding
            n = int((row > 0).sum())
            assert (row[n:] == 0).all() and (row[:n] > 0).all() and torch.equal(row[:n], row[:n].sort().values)
            assert row[n - 1] == 1.0                               # the last target (EOS) is a completion token
        wsum += float(w.sum())
        real += int((targets >= 0).sum())
    assert b["wsum"] == pytest.approx(wsum) and b["tokens"] == real == sum(b["lens"])


def test_train_step_gradients_equal_hf_loop(config):
    # the step bench.py times for us (padding skipped by the vocabulary head, one chunk's softmax kept for
    # backward) and the plain HF loop it times against must compute the same gradients
    import torch.nn.functional as F
    _, args = bench.load_shape(str(config))
    init = {}
    ours = bench.build_ours(SimpleNamespace(seed=0, no_hf=False), args, torch.device("cpu"), torch.float32, init)
    hf = bench.build_hf(args, init["sd"], "cpu", torch.float32).train()
    ours.train()
    (b,) = bench.train_batches(1, 4, 1, 128, args.vocab_size, 0.1, torch.Generator().manual_seed(2))
    idx, targets, w = b["micro"][0]
    assert (targets < 0).any()  # there is padding to skip
    loss = (ours(idx, targets) * w).sum() / b["wsum"]
    loss.backward(retain_graph=True)
    logits = hf(input_ids=idx, use_cache=False).logits
    ref = (F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="none").view_as(w)
           * w).sum() / b["wsum"]
    ref.backward()
    theirs = dict(hf.named_parameters())
    grads = {k: p.grad.clone() for k, p in ours.named_parameters()}
    for k, g in grads.items():
        r = theirs[bench.hf_key(k)].grad
        assert (g - r).abs().max() <= 1e-4 * r.abs().max(), k
    loss.backward()  # a second backward through the same graph (the kept softmax is used up: it recomputes)
    for k, p in ours.named_parameters():
        assert (p.grad - 2 * grads[k]).abs().max() <= 1e-5 * grads[k].abs().max(), k


@pytest.mark.parametrize("args, message", [
    (["--model=nope"], "unknown model 'nope'"),
    (["--mode=train,fly"], "unknown mode 'fly'"),
    (["--steps=0"], "--steps must be a positive integer"),
    (["--dtype=float16"], "invalid choice: 'float16'"),
    (["--frobnicate=1"], "unknown config key 'frobnicate'"),  # config.py's message, as train.py's
    (["--batchsize=3"], "(did you mean 'batch_size'?)"),
    (["--steps=two"], "steps must be a int, got 'two'"),
    (["--device=tpu"], "unknown device 'tpu'"),
])
def test_bad_arguments_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench.cli(bench.main, "bench.py", args)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("bench.py: error: ") and message in err and err.count("\n") == 1, err


def test_cli_error_exit_code_without_traceback():
    r = subprocess.run([sys.executable, "bench.py", "--model=llama-9000b"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().startswith("bench.py: error: unknown model 'llama-9000b'") and "Traceback" not in r.stderr


def test_train_mode_runs_train_py_path_packed(tmp_path, config):
    # ours as train.py trains: the global batch packed into rows (train.host_batch, train.micro_loss), against HF's
    # padded rows of batch_size: the same loss, almost no padding on our side
    results = tmp_path / "r.jsonl"
    argv = [f"--model={config}", "--mode=train", *FAST, "--grad_accum=4", "--pack=True",
            "--tokens_per_micro_batch=256", "--json=True", f"--results={results}"]
    assert bench.main(argv) == 0
    (row,) = rows_of(results)
    assert row["pack"] and row["tokens_per_micro_batch"] == 256 and row["micro_steps"] < 4
    assert row["loss_diff"] < 1e-4 * row["ours"]["first_loss"]
    assert row["tokens_per_step"] <= row["padded_tokens_per_step"] < 1.05 * row["tokens_per_step"]
    assert row["hf_padded_tokens_per_step"] > row["padded_tokens_per_step"]


def test_plan_of_the_default_gpu_config():
    # docs/benchmarks.md: the README's 7B command (configs/short_plw01.py on one GPU) fits 80 GB and the plan expects
    # >= 45% MFU on an H100; the paper's split (32 micro-steps of 4 rows) is the slow one it replaces
    from config import load_config
    import train
    import re
    readme = re.sub(r"\s*\\\s*\n\s*", " ", (ROOT / "README.md").read_text())  # shell continuations joined
    assert "python train.py " + " ".join(bench.README_7B) in readme
    cfg = load_config(train.DEFAULTS, bench.README_7B, ignore=("sweep_",))
    argv = ["--mode=plan", "--model=llama2-7b", "--dtype=bfloat16", f"--optimizer={cfg['optimizer']}",
            f"--compile={cfg['compile']}", f"--batch_size={cfg['batch_size']}",
            f"--grad_accum={cfg['gradient_accumulation_steps']}"]
    fast = [f"--pack={cfg['pack']}", f"--tokens_per_micro_batch={cfg['tokens_per_micro_batch']}",
            f"--activation_checkpointing={cfg['activation_checkpointing']}",
            f"--checkpoint_every={cfg['checkpoint_every']}"]
    s = bench.setup(load_config(bench.DEFAULTS, argv + fast))
    plan = bench.bench_plan(s)
    assert plan["fits"] and plan["memory_gb"]["peak"] < 80 and plan["mfu"] >= 0.45, plan
    assert plan["padding"] < 0.01
    paper = bench.bench_plan(bench.setup(load_config(bench.DEFAULTS, argv)))
    assert paper["mfu"] < plan["mfu"] - 0.1 and paper["micro_steps"] == 32
