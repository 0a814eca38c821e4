"""The Parquet reader (gptlit.data.readers.ParquetReader): the same tokens as JSON Lines, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gptlit.core.errors import UserError
from gptlit.data.datamodule import GPTDataModule
from gptlit.data.token_cache import Corpus, ensure

ROOT = Path(__file__).resolve().parents[1]

DOCS = [
    "The first document.\nIt has two lines.",
    "  leading spaces, a tab\tand trailing newlines\n\n",
    "Non-ASCII: café, 中文, 😀 and a literal <|endoftext|> inside.",
    "Windows line ends\r\nkept as written, as JSON Lines keeps them.",
    *(f"document {i}: " + "word " * (i % 7 + 1) for i in range(40)),
]


def ids(cached) -> list[int]:
    return np.fromfile(cached.path, dtype="<u2").tolist()


def write_parquet(path: Path, columns: dict, row_group_size: int = 5) -> Path:
    pa = pytest.importorskip("pyarrow", reason='the Parquet reader needs pyarrow: pip install -e ".[parquet]"')
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def write_jsonl(path: Path, key: str, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({key: d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return path


@pytest.mark.parametrize("num_proc, piece_bytes", [(1, 64), (2, 200), (1, 1 << 20)])
def test_parquet_gives_the_token_ids_of_the_same_jsonl(tmp_path, num_proc, piece_bytes):
    pq_file = write_parquet(tmp_path / "docs.parquet", {"body": DOCS, "id": list(range(len(DOCS)))})
    jl_file = write_jsonl(tmp_path / "docs.jsonl", "body", DOCS)
    got = ensure(Corpus("p", files=(pq_file,), options={"text_key": "body"}), tmp_path / "c1", num_proc, piece_bytes)
    want = ensure(Corpus("j", files=(jl_file,), options={"text_key": "body"}), tmp_path / "c2", num_proc, piece_bytes)
    assert ids(got) == ids(want) and got.n_documents == want.n_documents == len(DOCS)


def test_a_folder_takes_parquet_files_through_the_datamodule(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    write_parquet(d / "a.parquet", {"text": DOCS[:20]})
    write_jsonl(d / "b.jsonl", "text", DOCS[20:])
    both = GPTDataModule(source="files", path=str(d), max_length=8)
    jl = GPTDataModule(source="files", path=str(write_jsonl(tmp_path / "all.jsonl", "text", DOCS)), max_length=8)
    assert ids(both.prepare_tokens()) == ids(jl.prepare_tokens())


def test_missing_column_is_one_line_naming_it_and_the_columns_present(tmp_path):
    f = write_parquet(tmp_path / "docs.parquet", {"content": DOCS[:3], "id": [1, 2, 3]})
    dm = GPTDataModule(source="files", path=str(f), max_length=8, cache_dir=str(tmp_path / "c"))
    with pytest.raises(UserError) as e:
        dm.setup()
    assert str(e.value) == (f"data.text_key=text: {f} has no column 'text' (its columns: content, id); "
                            f"set data.text_key to the column of the text")
    assert not list((tmp_path / "c").glob("*.bin"))


@pytest.mark.parametrize("columns, match", [
    ({"text": [1, 2, 3]}, r"data.text_key=text: column 'text' of .* holds int64, not text; set data.text_key"),
    ({"text": ["a", None, "c"]}, r"data.text_key=text: row 1 of .* has no text \(null\)"),
    ({"text": pytest}, r"fake.parquet is not a readable Parquet file \(.+\); check or re-export it"),
])
def test_bad_parquet_content(tmp_path, columns, match):
    if columns["text"] is pytest:  # not Parquet at all
        pytest.importorskip("pyarrow", reason='the Parquet reader needs pyarrow: pip install -e ".[parquet]"')
        f = tmp_path / "fake.parquet"
        f.write_text("this is not a parquet file " * 10)
    else:
        f = write_parquet(tmp_path / "bad.parquet", columns)
    with pytest.raises(UserError, match=match) as e:
        ensure(Corpus("b", files=(f,)), tmp_path / "c", num_proc=1)
    assert "\n" not in str(e.value)


def test_without_pyarrow_a_parquet_file_is_one_line(tmp_path, monkeypatch):
    # runs with or without pyarrow installed: the import is blocked, and the file need not be valid
    f = tmp_path / "docs.parquet"
    f.write_bytes(b"PAR1 not read")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(UserError) as e:
        GPTDataModule(source="files", path=str(tmp_path), max_length=8)  # when the datamodule is made
    assert str(e.value) == f'data.path: {f} is Parquet, which needs pyarrow: pip install -e ".[parquet]"'
    with pytest.raises(UserError, match="needs pyarrow"):  # and when a url source's download is Parquet
        ensure(Corpus("d", files=(f,)), tmp_path / "c", num_proc=1)


@pytest.mark.slow  # starts train.py
def test_without_pyarrow_train_py_exits_2_with_one_line(tmp_path):
    f = tmp_path / "docs.parquet"
    f.write_bytes(b"PAR1 not read")
    block = ("import sys, runpy; sys.modules['pyarrow'] = None; sys.modules['pyarrow.parquet'] = None; "
             "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", block, str(ROOT / "train.py"), "task=prepare", "data=text",
                        f"data.path={f}", f"hydra.run.dir={tmp_path / 'run'}"],
                       cwd=tmp_path, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [f'error: data.path: {f} is Parquet, which needs pyarrow: pip install -e ".[parquet]"']
