"""
Small torch-free helpers every script shares: the one error type for bad user input, atomic file writes, and the
wrapper that turns an entry point's errors into one line and an exit code.

    from util import DataError, atomic_write, write_json, cli
    if __name__ == "__main__":
        cli(main, "mc.py")
"""
import json
import os
import signal
import sys
from pathlib import Path

STOP = []  # the stop signals (SIGINT, SIGTERM) received so far, oldest first


class DataError(ValueError):
    """Bad user input (a data file, a config value, a checkpoint): the message names the file or value."""


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
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path, obj, indent=2):
    text = json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def check_writable(path):
    """Refuse an output path that cannot be written, before any long work: its directory is created if needed,
    and a probe file is written and removed there."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory, expected a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.probe{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DataError(f"cannot write {path}: {e.strerror or e}") from None


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
    except KeyboardInterrupt:
        sig = STOP[0] if STOP else signal.SIGINT
        print(f"{name}: interrupted by {signal.Signals(sig).name}; nothing half-written is left", file=sys.stderr)
        return 128 + sig
    except (ValueError, OSError) as e:
        print(f"{name}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1


def cli(main, name, argv=None):
    """The entry point of a script: sys.exit(main(argv)) with report_errors' one-line errors and exit codes."""
    sys.exit(report_errors(name, main, sys.argv[1:] if argv is None else argv))
