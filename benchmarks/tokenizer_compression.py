"""Bytes per token of GPT-2's tokenizer against byte-level BPEs trained on the corpus, on held-out text.

Three corpora: Chinese text taken from Debian packages (fetched with `apt-get download` into
$GPTLIT_CACHE/zh-debs on the first run, unpacked with dpkg-deb, nothing installed) and the English
pydoc topics that every Python install carries (gptlit's default corpus); `fortunes` is the
Chinese corpus' fortunes-zh part alone (prose and poems with no markup or English). Each corpus' documents
are shuffled (seed 0) and split 80/20; a byte-level BPE (Hugging Face `tokenizers`: BPE model,
ByteLevel pre-tokenizer with GPT-2's regex, `<|endoftext|>` a special token) is trained on the 80%
at each vocabulary size, in a child process pinned to --cores cores (its wall time and peak RSS,
/proc/self/status VmHWM, are measured there), and every tokenizer is scored on the held-out 20%: UTF-8 bytes / tokens,
documents encoded one by one. GPT-2's tokenizer is gptlit.model.tokenizer.encode, measured in the
same run; the ratio column is bytes/token divided by GPT-2's.

    python benchmarks/tokenizer_compression.py                      # both corpora, 8K/16K/32K
    python benchmarks/tokenizer_compression.py --zh-files a.txt b.txt   # your Chinese text instead
    python benchmarks/tokenizer_compression.py --write-corpus zh        # the Chinese corpus as text files

--write-corpus DIR writes the Chinese corpus' documents as DIR/train/*.txt and DIR/heldout/*.txt, one
document a file, split as the table splits them (the held-out 20% is the text the table scores), so a
model and its tokenizer can be trained on train/ and scored on heldout/ (docs/tokenizers.md).

The Chinese text: fortunes-zh (modern quotations, Tang and Song poems), manpages-zh (zh_CN man
pages, troff markup stripped), debian-reference-zh-cn and libreoffice-help-zh-cn (HTML, tags
stripped). Lines longer than 8 characters that were already seen are dropped (the help pages
repeat their navigation), so held-out text does not repeat training text verbatim.
"""

from __future__ import annotations

import argparse
import gzip
import html.parser
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the gptlit of this checkout

DEBS = ["fortunes-zh", "manpages-zh", "debian-reference-zh-cn", "libreoffice-help-zh-cn"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
HAN = re.compile(r"[\u4e00-\u9fff]")
EOT = "<|endoftext|>"

TRAIN_CHILD = r"""
import json, os, resource, sys, time
os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:int(sys.argv[3])]))
os.environ["RAYON_NUM_THREADS"] = sys.argv[3]
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=int(sys.argv[2]), special_tokens=["<|endoftext|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
def peak_mb():
    # VmHWM: this process' own peak RSS. ru_maxrss is not: Linux carries it over a fork + exec,
    # so it would report the parent's RSS at the fork when that was larger
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
before = peak_mb()
t0 = time.perf_counter()
tok.train([sys.argv[1]], trainer)
seconds = time.perf_counter() - t0
tok.save(sys.argv[4])
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb(), "rss_before_mb": before, "vocab": tok.get_vocab_size()}))
"""


# ---- the Chinese corpus from Debian packages --------------------------------------------------


class HtmlText(html.parser.HTMLParser):
    BLOCK = {"p", "div", "br", "li", "tr", "td", "h1", "h2", "h3", "h4", "h5", "pre", "dt", "dd", "table"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.skip = [], 0

    def handle_starttag(self, tag, attrs):
        self.skip += tag in ("script", "style", "head")
        if tag in self.BLOCK:
            self.out.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "head"):
            self.skip = max(0, self.skip - 1)

    def handle_data(self, data):
        if not self.skip:
            self.out.append(data)


def html_text(p: Path) -> str:
    parser = HtmlText()
    parser.feed(p.read_text("utf-8", "replace"))
    return "".join(parser.out)


TROFF_TEXT = {".SH", ".SS", ".B", ".I", ".BR", ".IR", ".BI", ".IB", ".RB", ".RI", ".TP", ".IP"}
TROFF_ESCAPE = re.compile(r"\\f[BIRP]|\\f\(..|\\[-&e]|\\\(..|\\s[-+]?\d")


def troff_text(p: Path) -> str:
    lines = []
    for line in gzip.open(p, "rt", encoding="utf-8", errors="replace"):
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith("."):
            parts = line.split(None, 1)
            line = parts[1] if len(parts) > 1 and parts[0] in TROFF_TEXT else ""
        lines.append(TROFF_ESCAPE.sub("", line).replace('"', ""))
    return "".join(lines)


def fetch_debs(folder: Path) -> Path:
    """The packages unpacked under folder/root (apt-get download + dpkg-deb -x; nothing is installed)."""
    root = folder / "root"
    if (root / "usr/share/games/fortunes/chinese").is_file():
        return root
    folder.mkdir(parents=True, exist_ok=True)
    print(f"fetching {' '.join(DEBS)} into {folder} (apt-get download)", file=sys.stderr)
    subprocess.run(["apt-get", "download", *DEBS], cwd=folder, check=True)
    for deb in sorted(folder.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def chinese_documents(root: Path) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """([(package, document)], MB per package) from the unpacked packages, repeated long lines dropped."""
    share = root / "usr/share"
    raw: list[tuple[str, str]] = []
    for name in ("chinese", "tang300", "song100"):
        text = ANSI.sub("", (share / "games/fortunes" / name).read_text("utf-8", "replace"))
        raw += [("fortunes-zh", d) for d in text.split("\n%\n")]
    raw += [("manpages-zh", troff_text(p)) for p in sorted((share / "man/zh_CN").rglob("*.gz"))]
    raw += [("debian-reference-zh-cn", html_text(p)) for p in sorted((share / "debian-reference").glob("*.zh-cn.html"))]
    raw += [("libreoffice-help-zh-cn", html_text(p)) for p in sorted((share / "libreoffice/help/zh-CN").rglob("*.html"))]
    seen, docs, sizes = set(), [], {}
    for package, text in raw:
        keep = []
        for line in (s.strip() for s in text.splitlines()):
            if not line or (len(line) > 8 and line in seen):
                continue
            seen.add(line)
            keep.append(line)
        if keep:
            doc = "\n".join(keep)
            docs.append((package, doc))
            sizes[package] = sizes.get(package, 0) + len(doc.encode()) / 1e6
    return docs, sizes


def english_documents() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


# ---- measuring ------------------------------------------------------------------------------------


def split(docs: list[str], held_out: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    cut = int(len(order) * (1 - held_out))
    return [docs[i] for i in order[:cut]], [docs[i] for i in order[cut:]]


def nbytes(docs: list[str]) -> int:
    return sum(len(d.encode("utf-8")) for d in docs)


def gpt2_tokens(docs: list[str]) -> int:
    from gptlit.model.tokenizer import encode

    return sum(len(encode(d)) for d in docs)


def train_bpe(train_file: Path, vocab_size: int, cores: int, out: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", TRAIN_CHILD, str(train_file), str(vocab_size), str(cores), str(out)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def bpe_tokens(tokenizer_json: Path, docs: list[str]) -> int:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    return sum(len(e.ids) for e in tok.encode_batch(docs, add_special_tokens=False))


def measure(name: str, docs: list[str], vocab_sizes: list[int], cores: int, work: Path) -> list[dict]:
    train, test = split(docs)
    train_file = work / f"{name}-train.txt"
    train_file.write_text("\n".join(d.replace(EOT, "") for d in train), encoding="utf-8")
    test_bytes, test_han = nbytes(test), sum(len(HAN.findall(d)) for d in test)
    print(f"{name}: {len(docs):,} documents, {nbytes(docs) / 1e6:.2f} MB; train {nbytes(train) / 1e6:.2f} MB, "
          f"held out {test_bytes / 1e6:.2f} MB ({len(test):,} documents)", file=sys.stderr)
    rows = []
    t0 = time.perf_counter()
    n = gpt2_tokens(test)
    rows.append(dict(corpus=name, tokenizer="gpt2", vocab=50257, tokens=n, bpt=test_bytes / n,
                     han_per_token=test_han / n, train_s=None, peak_rss_mb=None, encode_s=time.perf_counter() - t0))
    for v in vocab_sizes:
        out = work / f"{name}-bpe{v}.json"
        trained = train_bpe(train_file, v, cores, out)
        t0 = time.perf_counter()
        n = bpe_tokens(out, test)
        rows.append(dict(corpus=name, tokenizer="bpe", vocab=v, learned=trained["vocab"], tokens=n, bpt=test_bytes / n, han_per_token=test_han / n,
                         train_s=trained["seconds"], peak_rss_mb=trained["peak_rss_mb"], encode_s=time.perf_counter() - t0,
                         rss_before_mb=trained["rss_before_mb"],
                         train_mb=nbytes(train) / 1e6))
        print(f"  bpe {v}: trained in {trained['seconds']:.1f} s", file=sys.stderr)
    gpt2 = rows[0]["bpt"]
    for r in rows:
        r["ratio"] = r["bpt"] / gpt2
    return rows


def refuse_existing(dest: Path) -> None:
    if dest.exists():
        print(f"--write-corpus {dest}: it exists already; give a new folder (or delete it)", file=sys.stderr)
        sys.exit(2)


def write_corpus(docs: list[str], dest: Path, held_out: float = 0.2) -> tuple[list[str], list[str]]:
    """dest/train/NNNNN.txt and dest/heldout/NNNNN.txt: split()'s two parts, one document a file in
    split()'s (shuffled) order, <|endoftext|> removed as measure() does. Written into a temporary
    folder beside dest and renamed, so dest is whole or absent; an existing dest is refused."""
    refuse_existing(dest)
    train, test = split(docs, held_out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        for part, part_docs in (("train", train), ("heldout", test)):
            (Path(tmp) / part).mkdir()
            for i, d in enumerate(part_docs):
                (Path(tmp) / part / f"{i:05d}.txt").write_text(d.replace(EOT, ""), encoding="utf-8")
        os.replace(tmp, dest)
    print(f"wrote {dest}/train ({len(train):,} documents, {nbytes(train) / 1e6:.2f} MB) and "
          f"{dest}/heldout ({len(test):,} documents, {nbytes(test) / 1e6:.2f} MB)")
    return train, test


def table(rows: list[dict]) -> str:
    head = ["corpus", "tokenizer", "vocab (learned)", "held-out bytes/token", "x GPT-2", "Han chars/token",
            "train text MB", "train s", "peak RSS MB (before training)"]
    cells = [head]
    for r in rows:
        learned = f" ({r['learned']:,})" if r.get("learned") not in (None, r["vocab"]) else ""
        cells.append([r["corpus"], r["tokenizer"], f"{r['vocab']:,}{learned}", f"{r['bpt']:.2f}", f"{r['ratio']:.2f}",
                      f"{r['han_per_token']:.2f}" if r["corpus"] != "english" else "-",
                      f"{r['train_mb']:.1f}" if r.get("train_mb") else "-",
                      f"{r['train_s']:.1f}" if r["train_s"] is not None else "-",
                      f"{r['peak_rss_mb']:.0f} ({r['rss_before_mb']:.0f})" if r["peak_rss_mb"] is not None else "-"])
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    line = lambda c: "| " + " | ".join(x.ljust(w) for x, w in zip(c, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])])


def cpu() -> str:
    name, flags = "cpu", []
    try:
        for ln in open("/proc/cpuinfo"):
            if ln.startswith("model name") and name == "cpu":
                name = ln.split(":", 1)[1].strip()
            elif ln.startswith("flags") and not flags:
                flags = ln.split(":", 1)[1].split()
    except OSError:
        pass
    return name + (" with avx512_bf16" if "avx512_bf16" in flags else " without avx512_bf16")


def scale(args) -> None:
    """Time and peak RSS of training one BPE on --scale-mb MB of distinct files."""
    limit, size = int(args.scale_mb * 1e6), 0
    files = Path(args.scale).read_text().split()
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.txt"
        with open(train_file, "wb") as out:
            for f in files:
                data = Path(f).read_bytes()
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                out.write(data[: limit - size] + b"\n")
                size += min(len(data), limit - size)
                if size >= limit:
                    break
        r = train_bpe(train_file, args.scale_vocab, args.cores, Path(tmp) / "bpe.json")
    print(f"machine: {cpu()}; BPE {args.scale_vocab:,} on {size / 1e6:.1f} MB of files in {args.scale}, "
          f"{args.cores} cores: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB ({r['rss_before_mb']:.0f} before training), "
          f"{r['vocab']:,} tokens learned")


def debian_documents(args) -> list[tuple[str, str]]:
    """[(package, document)] of the Debian packages (fetched on the first run)."""
    cache = Path(os.environ.get("GPTLIT_CACHE") or Path.home() / ".cache/gptlit")
    docs, sizes = chinese_documents(fetch_debs(Path(args.zh_debs) if args.zh_debs else cache / "zh-debs"))
    print("chinese: Debian packages " + ", ".join(f"{k} {v:.2f} MB" for k, v in sizes.items()))
    return docs


def chinese(args) -> list[str]:
    """The Chinese corpus' documents: the --zh-files (one document each) or every Debian package's."""
    if args.zh_files:
        print(f"chinese: {len(args.zh_files)} files given")
        return [Path(f).read_text("utf-8") for f in args.zh_files]
    return [d for _, d in debian_documents(args)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", default="8192,16384,32768", help="BPE vocabulary sizes, comma-separated")
    p.add_argument("--cores", type=int, default=2, help="cores the BPE training may use")
    p.add_argument("--zh-files", nargs="*", help="Chinese text files (one document each) instead of the Debian packages")
    p.add_argument("--zh-debs", default=None, help="where the Debian packages go (default: $GPTLIT_CACHE/zh-debs)")
    p.add_argument("--corpora", default="chinese,fortunes,english",
                   help="chinese: every package; fortunes: fortunes-zh alone (prose and poems, no markup); english: pydocs")
    p.add_argument("--scale", metavar="LIST", help="instead: train one BPE (--scale-vocab) on the first --scale-mb MB "
                   "of the distinct files LIST names (one path a line), concatenated, and print its time and peak RSS")
    p.add_argument("--scale-mb", type=float, default=100.0)
    p.add_argument("--scale-vocab", type=int, default=16384)
    p.add_argument("--write-corpus", metavar="DIR", help="instead: write the Chinese corpus (the Debian packages or "
                   "--zh-files) as DIR/train/*.txt and DIR/heldout/*.txt, one document a file, split as the table "
                   "splits it (shuffled with seed 0, the held-out 20%% in heldout/)")
    args = p.parse_args()
    vocab = [int(v) for v in args.vocab.split(",")]
    if args.scale:
        scale(args)
        return
    if args.write_corpus:
        refuse_existing(Path(args.write_corpus))
        write_corpus(chinese(args), Path(args.write_corpus))
        return
    import tokenizers

    print(f"machine: {cpu()}, {os.cpu_count()} cores visible, BPE trained on {args.cores}; "
          f"tokenizers {tokenizers.__version__}, python {sys.version.split()[0]}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpora = args.corpora.split(",")
        if args.zh_files and "chinese" in corpora:
            rows += measure("chinese", chinese(args), vocab, args.cores, work)
        elif "chinese" in corpora or "fortunes" in corpora:
            docs = debian_documents(args)
            if "chinese" in corpora:
                rows += measure("chinese", [d for _, d in docs], vocab, args.cores, work)
            if "fortunes" in corpora:
                rows += measure("fortunes", [d for p, d in docs if p == "fortunes-zh"], vocab, args.cores, work)
        if "english" in corpora:
            print("english: pydoc_data.topics")
            rows += measure("english", english_documents(), vocab, args.cores, work)
    print(table(rows))


if __name__ == "__main__":
    main()
