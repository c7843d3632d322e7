"""
Small torch-free helpers every script shares: the one error type for bad user input, atomic file writes, the
wrapper that turns an entry point's errors into one line and an exit code, where the benchmarks' data lives, the
checks of a device string and of free disk space, and how many CPU threads to use.

    from util import DataError, atomic_write, write_json, cli
    if __name__ == "__main__":
        cli(main, "mc.py")
"""
import errno
import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
STOP = []  # the stop signals (SIGINT, SIGTERM) received so far, oldest first


class DataError(ValueError):
    """Bad user input (a data file, a config value, a checkpoint): the message names the file or value."""


class DiskFull(DataError):
    """A write that found no room: the message names the file and the space"""


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write):
    """write(tmp_path) then rename over path: a crash leaves the old file or the new one, never half of one, and
    a failure leaves nothing behind. The file and then its directory are fsynced, so the rename survives a crash.
    The file gets the mode a plain open() would give it (0666 & ~umask), whatever `write` created it with."""
    path = Path(path)
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise DataError(f"cannot write {path}: {blocker} is a file, not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors' save_file creates 0600 files: others could not read a model
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except Exception as e:  # the OS's message ("No space left on device") does not say which file or what to do
        if disk_full(e):
            raise DiskFull(f"disk full while writing {path} ({shutil.disk_usage(path.parent).free / 1e6:.1f} MB "
                           f"free there): free space or write elsewhere") from None
        if isinstance(e, OSError) and e.filename is None:
            raise DataError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path, obj, indent=2):
    text = json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def check_writable(path):
    """Refuse an output path that cannot be written, before any long work: a probe file is written and removed in
    its directory (created for the probe and removed again: a check leaves nothing behind)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory, expected a file path")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise DataError(f"cannot write {path}: {blocker} is a file, not a directory")
    created = [p for p in path.parents if not p.exists()]  # deepest first: removed again after the probe
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.probe{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DataError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        for p in created:  # nothing is left behind by a check: the directories appear with the file
            try:
                p.rmdir()
            except OSError:
                pass


def catch_stop_signals(interrupt=True):
    """Record SIGINT/SIGTERM in STOP. interrupt=True also raises KeyboardInterrupt at once, so set-up work stops
    promptly; interrupt=False lets the caller finish what it is doing (a training step) and then look at STOP."""
    def handler(signum, frame):
        STOP.append(signum)
        if interrupt:
            raise KeyboardInterrupt
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def check_stop():
    """KeyboardInterrupt if a stop signal has arrived: C code such as sentencepiece's batch encode can swallow the
    exception the handler raised, but not the record of the signal. Long loops call this between chunks."""
    if STOP:
        raise KeyboardInterrupt


def report_errors(name, fn, *args):
    """fn(*args) -> its exit code (None: 0). Bad input (ValueError, OSError) becomes one line `name: error: ...` and
    1; Ctrl-C (or SIGTERM) one line and 128 + the signal (130 for Ctrl-C, as a shell reports it). No traceback."""
    try:
        return fn(*args) or 0
    except BrokenPipeError:  # stdout closed early (`| head`): stop quietly, as a shell pipeline expects
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        sig = STOP[0] if STOP else signal.SIGINT
        print(f"{name}: interrupted by {signal.Signals(sig).name}; nothing half-written is left", file=sys.stderr)
        return 128 + sig
    except (ValueError, OSError) as e:
        print(f"{name}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1


def cli(main, name, argv=None):
    """The entry point of a script: sys.exit(main(argv)) with report_errors' one-line errors and exit codes. Ctrl-C
    and SIGTERM stop it with one line (exit 130 / 143) rather than a traceback or a silent kill."""
    catch_stop_signals(interrupt=True)
    sys.exit(report_errors(name, main, sys.argv[1:] if argv is None else argv))


# -----------------------------------------------------------------------------
# where the benchmarks' data lives

def eval_data_dir():
    """The evaluation data: $NANOPLW_DATA, else data/eval in the checkout, which `python data/fetch.py` fills. Read
    when called, not at import, so a test or a wrapper script can point it elsewhere."""
    return Path(os.environ.get("NANOPLW_DATA") or ROOT / "data" / "eval")


def missing_data(path, what="", option="--data_dir"):
    """The one-line error for an evaluation file that is not there: where it was looked for and how to get it."""
    where = f"{option} or NANOPLW_DATA" if option else "NANOPLW_DATA"
    return DataError(f"no such file: {path}{f' ({what})' if what else ''}: run python data/fetch.py, or point "
                     f"{where} at a directory that has it")


# -----------------------------------------------------------------------------
# devices, disk space, CPU threads

def check_device(device, option="--device"):
    """A device string refused in one line before any work: not cpu / cuda / cuda:N, CUDA asked for where there is
    none, or a GPU index the machine does not have. Returns it unchanged."""
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise DataError(f"{option} {device!r}: expected cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise DataError(f"{option} {device}: no CUDA device is available here (use {option} cpu)")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise DataError(f"{option} {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                            f"numbered from 0")
    return device


def gb(n):
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_free_space(path, need, what):
    """Refuse, before writing, an amount of data the filesystem holding `path` has no room for (with 5% to spare)."""
    path = Path(path)
    probe = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if need * 1.05 > free:
        raise DataError(f"no room for {what} in {path}: it needs about {gb(need)}, {gb(free)} is free there; free "
                        f"space or choose another directory")


def disk_full(e):
    """Whether an exception from a write is a full disk (or quota): OSError ENOSPC/EDQUOT, or the messages of
    libraries that do not raise OSError for it (safetensors' SafetensorError, torch.save's RuntimeError)."""
    if isinstance(e, DiskFull):
        return True
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return "No space left on device" in str(e) or "file write failed" in str(e)


def choose_threads(torch_module, env=os.environ):
    """CPU threads for this process: OMP_NUM_THREADS when the user set it; otherwise torch's default, lowered once
    other work keeps every core busy (the 1-minute load average at least the core count): then 2 x cores - load, at
    least 1. On a saturated machine OpenMP threads that spin-wait for a descheduled peer make small matmuls many times
    slower; below saturation (a load that is mostly the last command's echo) all threads are faster (measured:
    README, Set up). -> a note to print when the count was lowered, else None."""
    if env.get("OMP_NUM_THREADS") or not hasattr(os, "getloadavg"):
        return None
    cores, have = os.cpu_count() or 1, torch_module.get_num_threads()
    load = os.getloadavg()[0]
    want = have if load < cores else max(1, min(have, int(2 * cores - load)))
    if want >= have:
        return None
    torch_module.set_num_threads(want)
    return (f"note: the CPU is busy (load {load:.1f} on {cores} cores): using {want} thread{'s' * (want > 1)} "
            f"instead of {have}, which runs faster here; set OMP_NUM_THREADS to choose")
