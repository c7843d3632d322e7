"""
Bring every benchmark the project scores into the layout the evaluators read, from the sources lm-evaluation-harness
0.4.13 reads (and AlpacaEval's and PandaLM's own repositories), at pinned revisions, each file checked by sha256.

    python data/fetch.py                        # everything, into data/eval (or $NANOPLW_DATA): about 20 MB down
    python data/fetch.py --only arc_easy,piqa   # some of them (--list names them, with their sources)
    python data/fetch.py --mirror http://host/path [--sha256sums FILE]   # a copy of the files elsewhere
    python data/fetch.py --list

The layout (what eval/mc.py, eval/gen.py, eval/judge.py and eval/generate.py read by default):

    hf/<task>.jsonl                          the multiple-choice sets, one row per line as `datasets` gives it
    truthfulqa/generation.jsonl              TruthfulQA "generation", the same way
    wmt/{en-fr/newstest2014,en-de/newstest2016,en-ro/newstest2016}.{xx}   one sentence per line, sides aligned
    alpaca_eval/{text_davinci_003,gpt4_1106_preview}_outputs.json        AlpacaEval's reference outputs, verbatim
    pandalm/{testset-inference-v1,testset-v1}.json                       PandaLM's test sets, verbatim
    SOURCES.json                             what was fetched: URL, revision, sha256 of every download and output

Why the hub's files and not the `datasets` library: the project's runtime dependencies stay torch, sentencepiece,
numpy, safetensors and tqdm. The hub serves each split as a Parquet file at a commit; data/parquet.py reads it, and
the rows are those `datasets.load_dataset(path, name, revision=...)[split]` gives (the same table, read without
pyarrow). A commit fixes a file's content; its sha256, pinned below, checks the bytes that arrived. Where no sha256
could be pinned (winogrande, boolq: see docs/evaluation.md) the file must match the sha256 the hub itself states
for it at that commit (its X-Linked-Etag header), or one given with --sha256sums.

The six WMT directions: wmt14-en-fr/fr-en read the hub's wmt/wmt14 "fr-en" test split, as the harness does. No
revision of wmt/wmt16 could be pinned here, so de-en and ro-en come from Helsinki-NLP/OPUS-MT-testsets at a pinned
commit (newstest2016, the same test sets, one sentence per line; docs/evaluation.md lists what that may change).

Nothing is written until every requested file has arrived and passed its checks; each output is written whole
(temp file + rename), SOURCES.json last. A download that fails is one line naming the source and what to do.
"""
import argparse
import hashlib
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python data/fetch.py` finds util, data/

from data.parquet import read_parquet  # noqa: E402
from util import DataError, atomic_write, check_writable, cli, eval_data_dir, write_json  # noqa: E402

HF = "https://huggingface.co/datasets/{repo}/resolve/{rev}/{path}"
GITHUB = "https://raw.githubusercontent.com/{repo}/{rev}/{path}"

# one entry per downloaded file: the benchmark(s) it serves, where it comes from, its sha256 (None: see the module
# docstring), the rows or lines it must hold, and what it becomes (`kind`: hf_jsonl, wmt, verbatim)
SOURCES = [
    # multiple choice: the dataset_path / dataset_name / split of lm-eval 0.4.13's task YAMLs
    dict(name="arc_challenge", repo="allenai/ai2_arc", rev="210d026faf9955653af8916fad021475a3f00453",
         path="ARC-Challenge/test-00000-of-00001.parquet",
         sha256="62f03257e737aed263f55c6abf87c7bb0028a44a6bdd2a26eb1279eb42c1d1e9", rows=1172,
         kind="hf_jsonl", out="hf/arc_challenge.jsonl", fields=("question", "choices", "answerKey")),
    dict(name="arc_easy", repo="allenai/ai2_arc", rev="210d026faf9955653af8916fad021475a3f00453",
         path="ARC-Easy/test-00000-of-00001.parquet",
         sha256="4160597d618ae851c7eb04e281574f3f654776216ac6b6641588d64527b47177", rows=2376,
         kind="hf_jsonl", out="hf/arc_easy.jsonl", fields=("question", "choices", "answerKey")),
    dict(name="piqa", repo="baber/piqa", rev="142f6d7367fd9877f0fb3b5734ea6a545f54cdd1",
         path="piqa_validation.parquet",
         sha256="2b17ee1215b1ceb2ddabf4c90a05c5a8b833bef9d207960f57d111c43a2080f3", rows=1838,
         kind="hf_jsonl", out="hf/piqa.jsonl", fields=("goal", "sol1", "sol2", "label")),
    dict(name="winogrande", repo="allenai/winogrande", rev="01e74176c63542e6b0bcb004dcdea22d94fb67b5",
         path="winogrande_xl/validation-00000-of-00001.parquet", sha256=None, rows=1267,
         kind="hf_jsonl", out="hf/winogrande.jsonl", fields=("sentence", "option1", "option2", "answer")),
    dict(name="hellaswag", repo="Rowan/hellaswag", rev="218ec52e09a7e7462a5400043bb9a69a41d06b76",
         path="data/validation-00000-of-00001.parquet",
         sha256="899813071e1e95efafec90f856e1987d2150fa4d020fc005df6962c259f660cd", rows=10042,
         kind="hf_jsonl", out="hf/hellaswag.jsonl", fields=("activity_label", "ctx_a", "ctx_b", "endings", "label")),
    dict(name="truthfulqa_mc", repo="truthfulqa/truthful_qa", rev="741b8276f2d1982aa3d5b832d3ee81ed3b896490",
         path="multiple_choice/validation-00000-of-00001.parquet",
         sha256="23f08e230ca4ed66babf3a72419af7cbde1f3d734dd396ac4cf6d088bd162afd", rows=817,
         kind="hf_jsonl", out="hf/truthfulqa_mc.jsonl", fields=("question", "mc1_targets", "mc2_targets")),
    dict(name="boolq", repo="aps/super_glue", rev="3de24cf8022e94f4ee4b9d55a6f539891524d646",
         path="boolq/validation-00000-of-00001.parquet", sha256=None, rows=3270,
         kind="hf_jsonl", out="hf/boolq.jsonl", fields=("passage", "question", "label")),
    dict(name="openbookqa", repo="allenai/openbookqa", rev="388097ea7776314e93a529163e0fea805b8a6454",
         path="main/test-00000-of-00001.parquet",
         sha256="cd5483e366daa230c1c87bbdc512d8b7229f14f6dd04d19fc8b1a3855aaaa8a3", rows=500,
         kind="hf_jsonl", out="hf/openbookqa.jsonl", fields=("question_stem", "choices", "answerKey")),
    dict(name="mmlu", repo="cais/mmlu", rev="c30699e8356da336a370243923dbaf21066bb9fe",
         path="all/test-00000-of-00001.parquet",
         sha256="74a41822ce7d3def56e1682f958469c04642a5336a5ce912fa375fdb90fb25d7", rows=14042,
         kind="hf_jsonl", out="hf/mmlu_test.jsonl", fields=("question", "subject", "choices", "answer")),
    # short generation: truthfulqa_gen and gpt3_translation_benchmarks
    dict(name="truthfulqa_gen", repo="truthfulqa/truthful_qa", rev="741b8276f2d1982aa3d5b832d3ee81ed3b896490",
         path="generation/validation-00000-of-00001.parquet",
         sha256="dfb1004b8ab83b22e8e476c76d5ac6074ff35c43946a724e810de3d83c3e21a5", rows=817,
         kind="hf_jsonl", out="truthfulqa/generation.jsonl",
         fields=("question", "best_answer", "correct_answers", "incorrect_answers")),
    dict(name="wmt14-fr-en", repo="wmt/wmt14", rev="b199e406369ec1b7634206d3ded5ba45de2fe696",
         path="fr-en/test-00000-of-00001.parquet",
         sha256="8b9f62543c776b5e992d15524f76f9fe589d838c1dcb04a8738c21e8c42269f1", rows=3003,
         kind="wmt", out="wmt/en-fr/newstest2014", langs=("en", "fr")),
    *[dict(name=f"wmt16-{pair}.{lang}", host="github", repo="Helsinki-NLP/OPUS-MT-testsets",
           rev="ac0f19c0be3cb4e0d9450fcb2d7a9847c4bdd180", path=f"testsets/{pair}/newstest2016.{lang}",
           sha256=sha, rows=n, kind="verbatim", out=f"wmt/{pair}/newstest2016.{lang}")
      for pair, lang, sha, n in (
          ("en-de", "en", "cd5c112a358d9c99b9557eb358e16d7a94f8fa93ad7aa61bf5f1141f2e1f8854", 2999),
          ("en-de", "de", "738ca1ced4099937127be3208ba70d46e7a93550cd57cfd645f3d35e0e52a254", 2999),
          ("en-ro", "en", "e883f089e3ee88cecd40a509aa743ae60be2d72c37cf1a97462f31855ab5c90b", 1999),
          ("en-ro", "ro", "f19bbf43c1de16c43ccaf8a05aacac3113a0cd2148d9f674c0fec118878abb18", 1999))],
    # long generation: the instructions and reference outputs, from the benchmarks' own repositories
    dict(name="alpaca_eval", host="github", repo="tatsu-lab/alpaca_eval", rev="cd543a149df89434d8a54582c0151c0b945c3d20",
         path="results/text_davinci_003/model_outputs.json",
         sha256="af0bc112f08c88bf589bbfe6fc1036806d0a0f6fec9c4d5a4db860f5afe73b4b", rows=805,
         kind="verbatim", out="alpaca_eval/text_davinci_003_outputs.json"),
    dict(name="alpaca_eval_2", host="github", repo="tatsu-lab/alpaca_eval", rev="cd543a149df89434d8a54582c0151c0b945c3d20",
         path="results/gpt4_1106_preview/model_outputs.json",
         sha256="83db546b872ddebee8965fd05fa48461ee3c32bc695c62fb57f2d214ff741ec4", rows=805,
         kind="verbatim", out="alpaca_eval/gpt4_1106_preview_outputs.json"),
    dict(name="pandalm", host="github", repo="WeOpenML/PandaLM", rev="3871806e72b4832f815ecafd24d3503c73403f48",
         path="data/testset-inference-v1.json",
         sha256="170fef9eb10de404cdb3e2d9c6e3fab5cf656d47bd199cd6b368509e5bfc2967", rows=170,
         kind="verbatim", out="pandalm/testset-inference-v1.json"),
    dict(name="pandalm_human", host="github", repo="WeOpenML/PandaLM", rev="3871806e72b4832f815ecafd24d3503c73403f48",
         path="data/testset-v1.json",
         sha256="cc154f9067c7382d7ea86f8f246511a5e1ac87e1fddd845c5938d789505b07a4", rows=999,
         kind="verbatim", out="pandalm/testset-v1.json"),
]
GROUPS = {"wmt16-de-en": ["wmt16-en-de.en", "wmt16-en-de.de"], "wmt16-ro-en": ["wmt16-en-ro.en", "wmt16-en-ro.ro"],
          "wmt14": ["wmt14-fr-en"], "mc": [s["name"] for s in SOURCES if s["out"].startswith("hf/")],
          "wmt": ["wmt14-fr-en", "wmt16-en-de.en", "wmt16-en-de.de", "wmt16-en-ro.en", "wmt16-en-ro.ro"],
          "long": ["alpaca_eval", "alpaca_eval_2", "pandalm", "pandalm_human"]}


def url_of(src, mirror=None):
    url = (GITHUB if src.get("host") == "github" else HF).format(**src)
    return mirror.rstrip("/") + "/" + url.split("://", 1)[1] if mirror else url


# -----------------------------------------------------------------------------
# the conversions: rows in the source's schema -> the evaluators' files. Pure functions of their input.

def hf_jsonl(rows, fields, name):
    """Rows of a hub split -> JSONL, one row per line with every column, as `datasets` gives it; each row must hold
    the fields the evaluator reads."""
    lines = []
    for i, row in enumerate(rows):
        missing = [f for f in fields if f not in row]
        if missing:
            raise DataError(f"{name}: row {i} has no field {missing[0]!r} (columns: {', '.join(row)})")
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return "".join(lines)


def wmt_sides(rows, langs, name):
    """Rows {"translation": {lang: sentence}} -> one text per language, a sentence per line, aligned"""
    sides = {lang: [] for lang in langs}
    for i, row in enumerate(rows):
        tr = row.get("translation") or {}
        for lang in langs:
            s = tr.get(lang)
            if not isinstance(s, str):
                raise DataError(f"{name}: row {i} has no {lang!r} sentence")
            if "\n" in s:  # eval/gen.py reads one sentence per line: a newline would shift every later pair
                raise DataError(f"{name}: row {i}'s {lang!r} sentence holds a newline")
            sides[lang].append(s)
    return {lang: "".join(s + "\n" for s in lines) for lang, lines in sides.items()}


def count(src, data):
    """The rows or lines of a verbatim file (JSON list or text), to check against the source's count"""
    if src["out"].endswith(".json"):
        try:
            return len(json.loads(data))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
            raise DataError(f"{src['name']}: {url_of(src)} is not a JSON list ({e})") from None
    return data.count(b"\n")


def convert(src, data):
    """Downloaded bytes -> {output path (relative): bytes}, checked against the source's row count"""
    name = src["name"]
    if src["kind"] == "verbatim":
        files, n = {src["out"]: data}, count(src, data)
    else:
        try:
            rows = read_parquet(data)
        except ValueError as e:
            raise DataError(f"{name}: {e}") from None
        n = len(rows)
        if src["kind"] == "wmt":
            files = {f"{src['out']}.{lang}": text.encode() for lang, text in wmt_sides(rows, src["langs"], name).items()}
        else:
            files = {src["out"]: hf_jsonl(rows, src["fields"], name).encode()}
    if n != src["rows"]:
        raise DataError(f"{name}: {n:,} rows, expected {src['rows']:,}: the source is not the pinned one")
    return files


# -----------------------------------------------------------------------------
# downloading

class KeepHubSha(urllib.request.HTTPRedirectHandler):
    """The hub answers a file request with a redirect whose X-Linked-Etag header is the file's sha256 (its git LFS
    object id) at that commit: keep it, to check a file for which no sha256 is pinned here."""
    def __init__(self):
        self.sha = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.sha = self.sha or (headers.get("X-Linked-Etag") or "").strip('"') or None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def download(url, bar, timeout=60):
    """-> (bytes, the sha256 the server states or None)"""
    keep = KeepHubSha()
    opener = urllib.request.build_opener(keep)
    with opener.open(urllib.request.Request(url, headers={"User-Agent": "nanoPLW-fetch"}), timeout=timeout) as r:
        stated = keep.sha or (r.headers.get("X-Linked-Etag") or "").strip('"') or None
        chunks = []
        while chunk := r.read(1 << 20):
            chunks.append(chunk)
            bar.update(len(chunk))
    return b"".join(chunks), stated


def expected_sha(src, url_path, sums, stated):
    """(sha256 the file must have, where that value comes from)"""
    if url_path in sums:
        return sums[url_path], "--sha256sums"
    if src["sha256"]:
        return src["sha256"], "pinned"
    if stated and len(stated) == 64:
        return stated, "the hub's X-Linked-Etag"
    raise DataError(f"{src['name']}: no sha256 is pinned for {url_of(src)} and the server stated none: give it in "
                    f"--sha256sums (a line '<sha256>  {url_path}')")


def read_sums(path):
    """A `sha256sum`-style file: '<sha256>  <url without its scheme>' per line"""
    sums = {}
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise DataError(f"--sha256sums {path}: cannot read it ({e.strerror or e})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            sha, _, name = line.strip().partition(" ")
            if len(sha) != 64 or not name.strip():
                raise DataError(f"--sha256sums {path}:{n}: expected '<sha256>  <path>', got {line.strip()!r}")
            sums[name.strip().lstrip("*")] = sha.lower()
    return sums


def select(only):
    if not only:
        return SOURCES
    names = {s["name"] for s in SOURCES}
    wanted = []
    for item in filter(None, (x.strip() for x in only.split(","))):
        group = GROUPS.get(item, [item] if item in names else None)
        if group is None:
            raise DataError(f"--only: unknown {item!r} (known: {', '.join(sorted(names | set(GROUPS)))})")
        wanted += group
    if not wanted:
        raise DataError(f"--only {only!r} names no source (--list shows them)")
    return [s for s in SOURCES if s["name"] in wanted]


def fetch(sources, out, mirror=None, sums=None, progress=True):
    """Download, check and convert every source, then write the outputs (nothing before all have passed).
    -> the manifest written to out/SOURCES.json"""
    from tqdm import tqdm

    sums = sums or {}
    results = []
    with tqdm(unit="B", unit_scale=True, desc="fetch", disable=None if progress else True) as bar:
        for src in sources:
            url = url_of(src, mirror)
            url_path = url_of(src).split("://", 1)[1]
            try:
                data, stated = download(url, bar)
            except urllib.error.HTTPError as e:
                raise DataError(f"{src['name']}: {url} answered HTTP {e.code} {e.reason}") from None
            except (urllib.error.URLError, OSError, ValueError) as e:  # no network, refused, timed out, bad URL
                raise DataError(f"{src['name']}: cannot download {url} ({getattr(e, 'reason', e)}): check the "
                                f"network, or pass --mirror URL for a copy of the files") from None
            want, how = expected_sha(src, url_path, sums, stated)
            got = hashlib.sha256(data).hexdigest()
            if got != want:
                raise DataError(f"{src['name']}: {url} has sha256 {got}, expected {want} ({how}): a changed or "
                                f"damaged file; nothing was written")
            results.append((src, url, got, how, convert(src, data)))
            if not bar.disable:
                bar.set_postfix_str(src["name"])
    manifest = {"fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "mirror": mirror, "sources": []}
    for src, url, sha, how, files in results:
        for rel, data in files.items():
            atomic_write(out / rel, lambda tmp, data=data: Path(tmp).write_bytes(data))
        manifest["sources"].append({
            "name": src["name"], "repo": src["repo"], "revision": src["rev"], "path": src["path"], "url": url,
            "sha256": sha, "checked_by": how, "rows": src["rows"],
            "outputs": {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}})
    old = out / "SOURCES.json"
    if old.is_file():  # a partial fetch (--only) keeps what an earlier one recorded for the other sources
        try:
            kept = [s for s in json.loads(old.read_text())["sources"]
                    if s["name"] not in {r[0]["name"] for r in results}]
            manifest["sources"] = kept + manifest["sources"]
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    write_json(old, manifest)
    return manifest


def main(argv=None):
    p = argparse.ArgumentParser(description="Fetch the benchmarks' data from their sources (pinned revisions, "
                                            "sha256-checked) into the layout the evaluators read.")
    p.add_argument("--out", help="the data directory (default: $NANOPLW_DATA, else data/eval in the checkout)")
    p.add_argument("--only", help="comma-separated source names or groups (mc, wmt, long; see --list)")
    p.add_argument("--mirror", help="a base URL holding the same files under <host>/<path of the original URL>")
    p.add_argument("--sha256sums", help="'<sha256>  <host>/<path>' lines checked instead of the pinned values")
    p.add_argument("--list", action="store_true", help="print the sources and exit")
    args = p.parse_args(argv)
    sources = select(args.only)
    if args.list:
        for s in sources:
            print(f"{s['name']:<16} {s['repo']}@{s['rev'][:7]} {s['path']} -> {s['out']}"
                  f"{'' if s['sha256'] else '  (sha256: the hub states it)'}")
        return 0
    out = Path(args.out) if args.out else eval_data_dir()
    check_writable(out / "SOURCES.json")  # before any download
    sums = read_sums(args.sha256sums) if args.sha256sums else {}
    t0 = time.time()
    manifest = fetch(sources, out, args.mirror, sums)
    n = sum(len(s["outputs"]) for s in manifest["sources"] if s["name"] in {x["name"] for x in sources})
    print(f"fetched {len(sources)} source file(s) into {out} ({n} file(s) written, {time.time() - t0:.1f} s); "
          f"what came from where: {out / 'SOURCES.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli(main, "fetch.py")
