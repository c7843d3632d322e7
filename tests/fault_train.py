"""train.py with faults injected, for the tests: a test seam outside the training code's hot path.

    NANOPLW_FAULT_NAN_ITER=N    the loss of optimizer step N (0-based) becomes NaN
    NANOPLW_FAULT_KILL_CKPT=N   SIGKILL inside the write of checkpoint N (after its files, before the rename)
    NANOPLW_FAULT_FREE_BYTES=a,b,...  the free disk space reported to each disk check in turn (the last one repeats)
    NANOPLW_FAULT_FULL_CKPT=N   the disk fills (ENOSPC) inside the write of checkpoint N's train_state.pt
    python tests/fault_train.py <train.py arguments>
"""
import errno
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import checkpoint  # noqa: E402
import train  # noqa: E402
from util import cli  # noqa: E402

nan_iter = int(os.environ.get("NANOPLW_FAULT_NAN_ITER", -1))
kill_ckpt = int(os.environ.get("NANOPLW_FAULT_KILL_CKPT", -1))
full_ckpt = int(os.environ.get("NANOPLW_FAULT_FULL_CKPT", -1))
free = [int(float(x)) for x in os.environ.get("NANOPLW_FAULT_FREE_BYTES", "").split(",") if x]
current = {}
get_lr, micro_loss, write_train_state = train.get_lr, train.micro_loss, checkpoint.write_train_state


def lr_seen(it, *args):
    current["it"] = it
    return get_lr(it, *args)


def nan_loss(*args, **kwargs):
    loss, ce = micro_loss(*args, **kwargs)
    return (loss * float("nan"), ce) if current.get("it") == nan_iter else (loss, ce)


def killed_write(state, path):
    if state["iter"] == full_ckpt:
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    write_train_state(state, path)
    if state["iter"] == kill_ckpt:
        os.kill(os.getpid(), signal.SIGKILL)


def free_bytes(path):
    return free.pop(0) if len(free) > 1 else free[0]


train.get_lr, train.micro_loss, checkpoint.write_train_state = lr_seen, nan_loss, killed_write
if free:
    checkpoint.free_bytes = free_bytes
cli(train.main, "train.py")
