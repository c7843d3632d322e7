"""What the GPU's throughput rests on, checked on the CPU: one host sync per optimizer step (train.py), padding of the
packed rows on Stanford Alpaca records (bench.py's padding mode), and bench.py's memory and FLOP plan against what
a small model measures."""
from contextlib import nullcontext

import numpy as np
import pytest
import torch

import bench
import train
from config import load_config
from test_train import SAMPLE, TINY

ONE_THREAD = True  # tiny models: one torch thread (conftest's one_thread)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("syncs") / "run"
    c = load_config(train.DEFAULTS, [*TINY, f"--dataset={SAMPLE}", f"--out_dir={out}", "--max_iters=4",
                                     "--batch_size=4", "--gradient_accumulation_steps=2", "--val_size=0"])
    train.check_config(c)
    r = train.setup(c)
    r["params"] = [p for p in r["raw_model"].parameters() if p.requires_grad]
    r["lengths"] = np.diff(r["train_data"]["offsets"])
    # as on CUDA (train.py: fused=True there): the fused update keeps its step count on the device, where the
    # CPU's default (foreach) update reads it with .item()
    r["opt"] = torch.optim.AdamW(r["raw_model"].parameters(), lr=1e-3, fused=True)
    yield r
    r["log_file"].close()


@pytest.mark.parametrize("settings", [{}, {"pack": True, "tokens_per_micro_batch": 700},
                                      {"pack": True, "tokens_per_micro_batch": 700, "loss_norm": "micro_mean"},
                                      {"tokens_per_micro_batch": 700, "grad_clip": 0.0}])
def test_one_host_sync_per_optimizer_step(run, monkeypatch, settings):
    # every op that would make the host wait for a GPU, counted over whole train.py steps: the one is the transfer
    # of the gradient norm and the log's sums; collating on the host is not device work (paused)
    syncs = bench.HostSyncs("cpu")
    host_batch = train.host_batch

    def collated_on_the_host(*args, **kwargs):
        with syncs.paused():
            return host_batch(*args, **kwargs)
    monkeypatch.setattr(train, "host_batch", collated_on_the_host)
    monkeypatch.setitem(run, "cfg", {**run["cfg"], **settings})
    for it in range(2):
        syncs.count, syncs.calls = 0, []
        with syncs:
            s = train.train_step(run, run["raw_model"], it, nullcontext(), 1)
        assert syncs.count == 1 and syncs.calls == ["tolist"], (settings, syncs.calls)
        assert len(s["micro"]) >= 2 and np.isfinite(s["gnorm"])


def test_the_sync_counter_sees_what_would_wait_on_a_gpu():
    x = torch.randn(10)
    with bench.HostSyncs("cpu") as syncs:
        float(x.sum()), x[x > 0], (x > 0).nonzero(), bool(x.max() > 0), x.tolist(), x.abs().sum(0)
        with syncs.paused():
            x[0].item()
    assert syncs.count == 5, syncs.calls
