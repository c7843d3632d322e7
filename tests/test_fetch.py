"""data/fetch.py and data/parquet.py (issue #29): the Parquet reader against pyarrow, the conversions on rows in each
source's schema, and the download end to end against a local HTTP server on 127.0.0.1 that serves the sources'
files made from ../shared, on a copy of the checkout without ../shared beside it, where eval/mc.py, eval/gen.py and
sweep.py then run from the fetched data with the documented commands. No test touches the network."""
import functools
import hashlib
import http.server
import io
import json
import os
import random
import shutil
import subprocess
import sys
import threading

import pytest

from conftest import ROOT, SHARED, require
from data import fetch
from data.parquet import read_parquet, snappy_decompress
from util import DataError

EVAL = SHARED / "data" / "eval"
ONE_THREAD = True


# ---------------------------------------------------------------------------------------------- the Parquet reader

def sample_rows(n, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.randint(0, 4)
        rows.append({
            "id": f"q{i}" if i % 7 else None, "question": "é ünï\u2028 " * rng.randint(0, 2) + str(i),
            "choices": None if i % 11 == 5 else {"text": [f"t{j}" if j % 3 else None for j in range(k)],
                                                  "label": [chr(65 + j) for j in range(k)]},
            "answer": rng.randint(0, 3), "big": rng.randint(-2 ** 40, 2 ** 40), "f": rng.random(), "flag": bool(i % 3),
            "nested": [] if i % 5 == 0 else [[j, j + 1] for j in range(k)],
            "translation": {"de": "Hallo " * (i % 3), "en": "hello"}, "maybe": None if i % 2 else i})
    return rows


def test_parquet_reader_equals_pyarrow():
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    schema = pa.schema([
        ("id", pa.string()), ("question", pa.large_string()),
        ("choices", pa.struct([("text", pa.list_(pa.string())), ("label", pa.list_(pa.string()))])),
        ("answer", pa.int32()), ("big", pa.int64()), ("f", pa.float64()), ("flag", pa.bool_()),
        ("nested", pa.list_(pa.list_(pa.int64()))), ("translation", pa.struct([("de", pa.string()), ("en", pa.string())])),
        ("maybe", pa.int64())])
    table = pa.Table.from_pylist(sample_rows(600), schema=schema)
    settings = [dict(compression=c, use_dictionary=d, data_page_version=v, row_group_size=rg, data_page_size=ps)
                for c, d, v, rg, ps in [("snappy", True, "1.0", None, None), ("snappy", False, "2.0", 250, 1000),
                                        ("gzip", True, "2.0", 250, None), ("none", False, "1.0", None, 1000),
                                        ("none", True, "2.0", 100, 500)]]
    for kw in settings:  # every encoding, codec, page version; several row groups and pages; nulls and empty lists
        buf = io.BytesIO()
        pq.write_table(table, buf, **kw)
        assert read_parquet(buf.getvalue()) == pq.read_table(io.BytesIO(buf.getvalue())).to_pylist(), kw
    buf = io.BytesIO()  # the legacy 2-level list form
    pq.write_table(table.select(["nested", "choices"]), buf, use_compliant_nested_type=False)
    assert read_parquet(buf.getvalue()) == pq.read_table(io.BytesIO(buf.getvalue())).to_pylist()
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    with pytest.raises(ValueError, match="column id uses ZSTD compression, which is not supported"):
        read_parquet(buf.getvalue())
    with pytest.raises(ValueError, match="not a Parquet file"):
        read_parquet(buf.getvalue()[:-100])


def test_snappy_copies_that_overlap_what_they_write():
    # varint 12, a literal "ab", then a copy of 10 bytes from offset 2 (kind 2: a two-byte offset) that overlaps
    data = bytes([12, (2 - 1) << 2, ord("a"), ord("b"), ((10 - 1) << 2) | 2, 2, 0])
    assert snappy_decompress(data) == b"ab" * 6
    with pytest.raises(ValueError):
        snappy_decompress(bytes([4, ((4 - 1) << 2) | 2, 9, 0]))  # a back-reference before the start


# ---------------------------------------------------------------------------------------------- conversions

def test_hub_rows_become_the_evaluators_jsonl():
    # rows as the hub's ARC parquet holds them (allenai/ai2_arc): every column kept, one row per line, order kept
    rows = [{"id": "Mercury_7175875", "question": "An astronomer observes\u2028 that a planet rotates faster",
             "choices": {"text": ["Planetary density will decrease.", "Planetary years will become longer."],
                         "label": ["A", "B"]}, "answerKey": "B"},
            {"id": "x", "question": "q", "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]}, "answerKey": "3"}]
    text = fetch.hf_jsonl(rows, ("question", "choices", "answerKey"), "arc_challenge")
    assert [json.loads(line) for line in text.split("\n") if line] == rows
    assert text.count("\n") == 2  # U+2028 inside a record stays inside its line
    with pytest.raises(DataError, match="arc_challenge: row 1 has no field 'answerKey'"):
        fetch.hf_jsonl([rows[0], {"id": "y", "question": "q", "choices": {}}], ("question", "choices", "answerKey"),
                       "arc_challenge")


def test_wmt_rows_become_aligned_sentence_files():
    # rows as the hub's wmt/wmt14 "fr-en" parquet holds them
    rows = [{"translation": {"fr": "Bonjour\u2028le monde", "en": "Hello world"}}, {"translation": {"fr": "", "en": ""}},
            {"translation": {"fr": "Au revoir", "en": "Goodbye"}}]
    sides = fetch.wmt_sides(rows, ("en", "fr"), "wmt14-fr-en")
    assert sides == {"en": "Hello world\n\nGoodbye\n", "fr": "Bonjour\u2028le monde\n\nAu revoir\n"}
    with pytest.raises(DataError, match="row 1's 'en' sentence holds a newline"):
        fetch.wmt_sides([rows[0], {"translation": {"fr": "a", "en": "b\nc"}}], ("en", "fr"), "wmt14-fr-en")
    with pytest.raises(DataError, match="row 0 has no 'fr' sentence"):
        fetch.wmt_sides([{"translation": {"en": "b"}}], ("en", "fr"), "wmt14-fr-en")


def test_a_source_with_other_rows_than_pinned_is_refused():
    src = dict(fetch.SOURCES[-1], rows=3)  # pandalm_human, a verbatim JSON list
    assert fetch.convert(src, b'[{"a": 1}, {"a": 2}, {"a": 3}]') == {src["out"]: b'[{"a": 1}, {"a": 2}, {"a": 3}]'}
    with pytest.raises(DataError, match="2 rows, expected 3: the source is not the pinned one"):
        fetch.convert(src, b'[{"a": 1}, {"a": 2}]')
    with pytest.raises(DataError, match="is not a JSON list"):
        fetch.convert(src, b"<html>rate limited</html>")


def test_every_source_is_pinned_to_a_commit():
    for s in fetch.SOURCES:
        assert len(s["rev"]) == 40 and int(s["rev"], 16) >= 0, s["name"]
        assert s["sha256"] is None or len(s["sha256"]) == 64, s["name"]
    assert {s["name"] for s in fetch.SOURCES if s["sha256"] is None} == {"winogrande", "boolq"}
    assert fetch.select("mc,wmt16-de-en") == [s for s in fetch.SOURCES if s["out"].startswith("hf/")
                                               or s["out"].startswith("wmt/en-de/")]
    with pytest.raises(DataError, match="--only: unknown 'arc'"):
        fetch.select("arc")
    with pytest.raises(DataError, match="names no source"):
        fetch.select(",")


# ---------------------------------------------------------------------------------------------- a local mirror

def build_mirror(root):
    """Every source file under root/<host>/<path of its URL>, made from ../shared: the GitHub files verbatim (the
    pinned bytes), the hub's splits as Parquet written by pyarrow from ../shared's conversions (other bytes than the
    hub's: their sha256 go to a sums file). -> the sums file"""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from eval.gen import truthfulqa_records
    require(EVAL / "hf")
    lines = []
    for src in fetch.SOURCES:
        url_path = fetch.url_of(src).split("://", 1)[1]
        dst = root / url_path
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src["kind"] == "verbatim":
            shutil.copyfile(EVAL / src["out"], dst)
            continue
        if src["kind"] == "wmt":
            en, fr = ((EVAL / f"{src['out']}.{lang}").read_text(encoding="utf-8").removesuffix("\n").split("\n")
                      for lang in ("en", "fr"))
            rows = [{"translation": {"fr": f, "en": e}} for e, f in zip(en, fr)]
        elif src["out"] == "truthfulqa/generation.jsonl":
            rows = truthfulqa_records(EVAL / "truthfulqa" / "TruthfulQA.csv")
        else:
            rows = [json.loads(line) for line in (EVAL / src["out"]).read_text(encoding="utf-8").split("\n") if line]
        pq.write_table(pa.Table.from_pylist(rows), dst)
        lines.append(f"{hashlib.sha256(dst.read_bytes()).hexdigest()}  {url_path}\n")
    sums = root / "SHA256SUMS"
    sums.write_text("".join(lines))
    return sums


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    sums = build_mirror(root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", sums
    server.shutdown()


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("NANOPLW_DATA", "NANOPLW_SHARED")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def run(cwd, *args, timeout=600, **env):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=clean_env(**env))


def test_a_clone_without_shared_fetches_from_a_mirror_and_evaluates(tmp_path, mirror):
    url, sums = mirror
    clone = tmp_path / "elsewhere" / "nanoPLW"  # nothing beside it: no ../shared
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, clone / rel)
    assert not (clone.parent / "shared").exists()

    # without the data, the evaluators say how to get it
    r = run(clone, "eval/mc.py", "--model", "tests/fixtures/stories260K", "--tasks", "piqa")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "data/eval/hf/piqa.jsonl" in r.stderr and "run python data/fetch.py" in r.stderr.splitlines()[-1]

    r = run(clone, "data/fetch.py", "--mirror", url, "--sha256sums", sums)
    assert r.returncode == 0, r.stderr
    data = clone / "data" / "eval"
    manifest = json.loads((data / "SOURCES.json").read_text())
    assert len(manifest["sources"]) == len(fetch.SOURCES)
    by = {s["name"]: s for s in manifest["sources"]}
    assert by["alpaca_eval"]["checked_by"] == "pinned" and by["arc_easy"]["checked_by"] == "--sha256sums"
    # the fetched files hold ../shared's records: the conversions lose and add nothing
    for name in ("arc_challenge", "arc_easy", "piqa", "winogrande", "hellaswag", "truthfulqa_mc", "boolq",
                 "openbookqa"):
        got = (data / "hf" / f"{name}.jsonl").read_text(encoding="utf-8").split("\n")
        want = (EVAL / "hf" / f"{name}.jsonl").read_text(encoding="utf-8").split("\n")
        assert [json.loads(x) for x in got if x] == [json.loads(x) for x in want if x], name
    for rel in ("wmt/en-fr/newstest2014.en", "wmt/en-fr/newstest2014.fr", "wmt/en-de/newstest2016.de",
                "wmt/en-ro/newstest2016.ro", "alpaca_eval/text_davinci_003_outputs.json", "pandalm/testset-v1.json"):
        assert (data / rel).read_bytes() == (EVAL / rel).read_bytes(), rel
    assert not list(data.rglob(".*tmp*"))

    # the documented commands, on the fetched data (default data directory: nothing to pass)
    r = run(clone, "eval/mc.py", "--model", "tests/fixtures/stories260K", "--tasks",
            "arc_challenge,piqa,truthfulqa_mc2,winogrande", "--limit", "3", "--output", "out/mc.json")
    assert r.returncode == 0, r.stderr
    assert {t: v["n"] for t, v in json.loads((clone / "out/mc.json").read_text())["results"].items()} == {
        "arc_challenge": 3, "piqa": 3, "truthfulqa_mc2": 3, "winogrande": 3}
    r = run(clone, "eval/gen.py", "--model", "tests/fixtures/stories260K", "--tasks", "truthfulqa_gen,wmt14-en-fr",
            "--limit", "2", "--max_new_tokens", "4", "--output", "out/gen.json")
    assert r.returncode == 0, r.stderr
    gen = json.loads((clone / "out/gen.json").read_text())
    assert gen["results"]["truthfulqa_gen"]["n"] == 2 and gen["results"]["wmt14-en-fr"]["n"] == 2
    r = run(clone, "sweep.py", "configs/tiny_sweep.py", "--plw=0", "--seeds=", "--regularizers=", "--tasks=piqa",
            "--mc_limit=3", "--gen_tasks=wmt16-de-en", "--gen_limit=2", "--mem_n=0", "--max_iters=1",
            "--max_seq_len=256", "--sweep_dir=out/sweep")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (clone / "out/sweep/scores.jsonl").read_text().splitlines()]
    assert {x["benchmark"] for x in rows} >= {"piqa", "wmt16-de-en", "weight_distance_l2_rel"}
    assert "[plw0 mc] | piqa | 3 |" in r.stdout  # each step's output lines carry their run
    assert "\r" not in r.stderr  # a log (not a terminal) gets no progress-bar frames


def test_fetch_refuses_cleanly(tmp_path, mirror):
    url, sums = mirror
    out = tmp_path / "data"
    # no network: a port nothing listens on
    r = run(ROOT, "data/fetch.py", "--out", out, "--only", "piqa", "--mirror", "http://127.0.0.1:9", timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("fetch.py: error: piqa: cannot download http://127.0.0.1:9/huggingface.co/datasets/baber/")
    assert "--mirror" in last and not out.exists()
    # a file that is not the pinned one: the mirror's parquet against the hub's sha256
    r = run(ROOT, "data/fetch.py", "--out", out, "--only", "piqa", "--mirror", url, timeout=120)
    assert r.returncode == 1 and "has sha256" in r.stderr and "expected 2b17ee12" in r.stderr
    assert not out.exists()
    # no sha256 pinned and none stated by the server
    with pytest.raises(DataError, match="winogrande: no sha256 is pinned .* give it in --sha256sums"):
        fetch.fetch(fetch.select("winogrande"), out, url, progress=False)
    assert not out.exists()
    # a subset, then the rest: SOURCES.json keeps both
    sums_map = fetch.read_sums(sums)
    fetch.fetch(fetch.select("piqa"), out, url, sums_map, progress=False)
    fetch.fetch(fetch.select("pandalm"), out, url, sums_map, progress=False)
    assert [s["name"] for s in json.loads((out / "SOURCES.json").read_text())["sources"]] == ["piqa", "pandalm"]
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["SOURCES.json", "piqa.jsonl",
                                                                     "testset-inference-v1.json"]


def test_the_hubs_stated_sha256_checks_an_unpinned_file(tmp_path):
    # the hub answers /resolve/ with a redirect that carries the file's sha256 in X-Linked-Etag
    body = b'[{"instruction": "x"}]'
    sha = hashlib.sha256(body).hexdigest()

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if "/resolve/" in self.path:
                self.send_response(302)
                self.send_header("Location", "/cdn/file")
                self.send_header("X-Linked-Etag", f'"{self.server.sha}"')
                self.end_headers()
            else:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    src = dict(name="tiny", repo="a/b", rev="0" * 40, path="x.json", sha256=None, rows=1, kind="verbatim",
               out="tiny/x.json")
    try:
        server.sha = sha
        m = fetch.fetch([src], tmp_path, f"http://127.0.0.1:{server.server_address[1]}", progress=False)
        assert m["sources"][0]["checked_by"] == "the hub's X-Linked-Etag" and (tmp_path / "tiny/x.json").read_bytes() == body
        server.sha = "0" * 64
        with pytest.raises(DataError, match="tiny: .* has sha256 .*, expected 0000"):
            fetch.fetch([src], tmp_path / "b", f"http://127.0.0.1:{server.server_address[1]}", progress=False)
    finally:
        server.shutdown()
