"""benchmarks/tokenizer_compression.py --write-corpus: the corpus as train/ and heldout/ text files,
split as the compression table splits it (docs/tokenizers.md trains and scores models on them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "tokenizer_compression.py"


def write_corpus(files: list[Path], dest: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--zh-files", *map(str, files), "--write-corpus", str(dest)],
                          capture_output=True, text=True, timeout=120)


def test_write_corpus_splits_as_the_table(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from tokenizer_compression import split

    docs = [f"第{i}篇：春眠不觉晓，处处闻啼鸟。\n夜来风雨声 {i}" for i in range(20)]
    docs[3] += "<|endoftext|>尾"  # the separator is no text: removed, as the table's training file does
    files = []
    for i, d in enumerate(docs):
        files.append(tmp_path / f"in{i:02d}.txt")
        files[-1].write_text(d, encoding="utf-8")
    r = write_corpus(files, tmp_path / "zh")
    assert r.returncode == 0, r.stderr
    assert "(16 documents" in r.stdout and "(4 documents" in r.stdout
    clean = [d.replace("<|endoftext|>", "") for d in docs]
    train, held = split(clean)
    read = lambda part: [p.read_text("utf-8") for p in sorted((tmp_path / "zh" / part).glob("*.txt"))]  # noqa: E731
    assert read("train") == train and read("heldout") == held  # the same 80/20, in the shuffled order
    assert sorted(read("train") + read("heldout")) == sorted(clean)
    assert not set(read("train")) & set(read("heldout"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_write_corpus_refuses_an_existing_folder(tmp_path):
    (tmp_path / "a.txt").write_text("一二三", encoding="utf-8")
    (tmp_path / "zh").mkdir()
    (tmp_path / "zh" / "mine.txt").write_text("keep", encoding="utf-8")
    r = write_corpus([tmp_path / "a.txt"], tmp_path / "zh")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"--write-corpus {tmp_path / 'zh'}: it exists already; give a new folder (or delete it)"]
    assert [p.name for p in (tmp_path / "zh").iterdir()] == ["mine.txt"]
