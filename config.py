"""
The one config mechanism of train.py, sweep.py and bench.py: nanoGPT's configurator, with type checks.

    cfg = load_config(DEFAULTS, sys.argv[1:], source=__file__)     # -> a dict, passed explicitly from there on

Arguments are config files (plain Python assignments; several stack in order) and --key=value (or --key value)
overrides, applied in the order given; a bool key alone (--compile) means True. A key must exist in DEFAULTS and keep its type (an int where a float is expected is widened);
an unknown key gets a "did you mean". --help lists every key with its default and the comment beside it in the
entry point's source. Keys with a prefix in `ignore` (e.g. sweep_ in train.py) belong to another entry point that
reads the same config files, and are skipped.
"""
import ast
import builtins
import difflib
import re
import sys
from pathlib import Path

from util import DataError


class ConfigError(DataError):
    pass


def config_help(defaults, source):
    """`--key=default  comment` for every key, the comments read from the `key = value  # comment` lines of the
    source file(s) (a comment continued on the next lines, indented under the first, is joined)."""
    comments, last = {}, None
    lines = [l for f in ([source] if isinstance(source, (str, Path)) else source) for l in Path(f).read_text().splitlines()]
    for line in lines:
        m = re.match(r"^(\w+)\s*=.*?#\s?(.*)$", line)
        if m and m.group(1) in defaults:
            last = m.group(1)
            comments[last] = m.group(2).strip()
        elif last and re.match(r"^\s+#\s?(.*)$", line):
            comments[last] += " " + line.strip().lstrip("#").strip()
        else:
            last = None
    width = max(len(f"--{k}={v!r}") for k, v in defaults.items())
    return "\n".join(f"  {f'--{k}={v!r}':<{width}}  {comments.get(k, '')}".rstrip() for k, v in defaults.items())


def join_values(argv, keys):
    """--key value -> --key=value for the names in `keys` (a dict of defaults), as the data and eval scripts take
    them; a bool key alone, or followed by anything but True / False, is --key=True."""
    out, i = [], 0
    while i < len(argv):
        arg, nxt = argv[i], argv[i + 1] if i + 1 < len(argv) else None
        key = arg[2:]
        i += 1
        if not arg.startswith("--") or "=" in arg or key not in keys:
            out.append(arg)
        elif isinstance(keys[key], bool):
            out.append(f"--{key}={nxt if nxt in ('True', 'False') else True}")
            i += nxt in ("True", "False")
        elif nxt is None or nxt.startswith("--"):
            raise ConfigError(f"--{key} needs a value: --{key}=VALUE or --{key} VALUE (--help lists the options)")
        else:
            out.append(f"--{key}={nxt}")
            i += 1
    return out


def load_config(defaults, argv, source=None, ignore=(), usage=""):
    """[config.py ...] [--key=value ...] -> the resolved config dict. Unknown keys and wrong types are refused with
    a ConfigError naming the key; -h/--help prints the options (from `source`'s comments) and exits 0."""
    if "-h" in argv or "--help" in argv:
        print((usage + "\n\n" if usage else "") + "options (config files and --key=value, in order):\n" +
              config_help(defaults, source or sys.argv[0]))
        raise SystemExit(0)
    cfg = dict(defaults)
    argv = join_values(argv, defaults)

    def assign(key, value, where):
        if key not in defaults:
            close = difflib.get_close_matches(key, defaults, n=1)
            raise ConfigError(f"unknown config key {key!r} in {where}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        want = type(defaults[key])
        if want is float and type(value) is int:
            value = float(value)
        if type(value) is not want:
            raise ConfigError(f"{key} must be a {want.__name__}, got {value!r} ({type(value).__name__}) in {where}")
        cfg[key] = value

    for arg in argv:
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if not eq:  # join_values has taken the known keys' values: this one is unknown (did you mean?)
                assign(key, None, arg)
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text  # a bare string such as --out_dir=out/run1
            if isinstance(defaults.get(key), str) and not isinstance(value, str):
                value = text  # --tokenizer=123 stays a string
            assign(key, value, arg)
        else:
            path = Path(arg)
            if not path.is_file():
                raise ConfigError(f"config file not found: {arg}")
            scope = {}
            try:
                exec(builtins.compile(path.read_text(), str(path), "exec"), {}, scope)
            except Exception as e:  # a config file is user input: report its error in one line
                raise ConfigError(f"error in config file {arg}: {type(e).__name__}: {e}") from None
            for key, value in scope.items():
                if not key.startswith(("_",) + tuple(ignore)) and not callable(value) and not isinstance(value, type(sys)):
                    assign(key, value, arg)
    return cfg
