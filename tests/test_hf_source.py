"""data.source=hf (gptlit.data.sources.HuggingFace): Hugging Face datasets read offline, written once,
tokenized as the same documents in a file would be; one-line errors. Nothing here touches the network:
HF_HUB_OFFLINE=1, and the datasets are built in tmp_path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gptlit.core.errors import UserError
from gptlit.data.datamodule import GPTDataModule

datasets = pytest.importorskip("datasets", reason='data.source=hf needs datasets: pip install -e ".[hf]"')

ROOT = Path(__file__).resolve().parents[1]

DOCS = [
    "The first document.\nIt has two lines.",
    "  leading spaces, a tab\tand trailing newlines\n\n",
    "Non-ASCII: café, 中文, 😀 and a literal <|endoftext|> inside.",
    *(f"document {i}: " + "word " * (i % 7 + 1) for i in range(40)),
]


@pytest.fixture(autouse=True)
def offline_hf(tmp_path, monkeypatch):
    """A private Hugging Face cache, offline mode on, and a private gptlit cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))  # for train.py subprocesses
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("GPTLIT_CACHE", str(tmp_path / "gptlit-cache"))
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)


def write_jsonl(path: Path, docs: list[str], key: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({key: d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return path


def ids(cached) -> list[int]:
    return np.fromfile(cached.path, dtype="<u2").tolist()


def hf(name, **settings) -> GPTDataModule:
    return GPTDataModule(source="hf", name=str(name), max_length=8, **settings)


def test_a_local_folder_gives_the_tokens_of_the_same_jsonl_file(tmp_path):
    f = write_jsonl(tmp_path / "tales" / "train.jsonl", DOCS)
    got = hf(tmp_path / "tales").prepare_tokens()
    want = GPTDataModule(source="files", path=str(f), max_length=8).prepare_tokens()
    assert got.path != want.path and ids(got) == ids(want) and got.n_documents == len(DOCS)
    # the text column was written once under GPTLIT_CACHE/hf, as Parquet
    written = list((tmp_path / "gptlit-cache" / "hf").glob("*.parquet"))
    assert len(written) == 1 and written[0].name.startswith("tales-train-")


def test_split_slice_config_and_data_files_as_load_dataset_takes_them(tmp_path):
    a = write_jsonl(tmp_path / "d" / "a.jsonl", DOCS[:10])
    b = write_jsonl(tmp_path / "d" / "b.jsonl", DOCS[10:])
    both = GPTDataModule(source="files", path=str(tmp_path / "d"), max_length=8).prepare_tokens()
    # the packaged builder `json` with data_files: a list, and split -> files (a dict) picking a split
    listed = hf("json", data_files=[str(a), str(b)]).prepare_tokens()
    assert ids(listed) == ids(both)
    picked = hf("json", data_files={"train": str(a), "test": str(b)}, split="test").prepare_tokens()
    assert ids(picked) == ids(GPTDataModule(source="files", path=str(b), max_length=8).prepare_tokens())
    # a slice of the split; data.config names the builder configuration (a folder has `default`)
    half = hf(tmp_path / "d", split="train[:10]", config="default").prepare_tokens()
    assert ids(half) == ids(GPTDataModule(source="files", path=str(a), max_length=8).prepare_tokens())


def test_a_save_to_disk_folder_and_its_splits(tmp_path):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": DOCS[:20], "n": list(range(20))}),
                               "test": datasets.Dataset.from_dict({"body": DOCS[20:]})})
    dd.save_to_disk(str(tmp_path / "saved"))
    datasets.Dataset.from_dict({"body": DOCS[20:]}).save_to_disk(str(tmp_path / "one"))
    test = hf(tmp_path / "saved", split="test", text_key="body").prepare_tokens()
    one = hf(tmp_path / "one", text_key="body").prepare_tokens()
    want = GPTDataModule(source="files", path=str(write_jsonl(tmp_path / "t.jsonl", DOCS[20:])), max_length=8)
    assert ids(test) == ids(one) == ids(want.prepare_tokens()) and test.n_documents == len(DOCS) - 20
    with pytest.raises(UserError) as e:
        hf(tmp_path / "saved", split="validation", text_key="body")
    assert str(e.value) == (f"data.split=validation: {tmp_path / 'saved'} has the splits train, test; set data.split "
                            f"to one of them (a save_to_disk folder takes no slices)")


def test_a_dataset_in_the_local_cache_loads_by_name_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "tinytales" / "train.jsonl", DOCS)
    first = hf("tinytales").prepare_tokens()  # the local folder; datasets caches it as `tinytales`
    (tmp_path / "tinytales").rename(tmp_path / "moved")
    again = hf("tinytales").prepare_tokens()  # no folder now: read from the Hugging Face cache, offline
    assert ids(again) == ids(first)


def test_written_and_tokenized_once_and_again_when_the_dataset_changes(tmp_path):
    f = write_jsonl(tmp_path / "tales" / "train.jsonl", DOCS)
    dm = hf(tmp_path / "tales")
    first = dm.prepare_tokens()
    written = dm.corpus().files[0]
    stamp = written.stat().st_mtime_ns
    again = hf(tmp_path / "tales").prepare_tokens()
    assert first.built and not again.built and again.path == first.path
    assert hf(tmp_path / "tales").corpus().files[0].stat().st_mtime_ns == stamp  # not written again
    write_jsonl(f, DOCS + ["one more document"])
    changed = hf(tmp_path / "tales").prepare_tokens()
    assert changed.built and changed.path != first.path and changed.n_documents == len(DOCS) + 1
    # another text column is another corpus too
    write_jsonl(f, DOCS[::-1], key="body")
    body = hf(tmp_path / "tales", text_key="body").prepare_tokens()
    assert body.path != changed.path and body.n_documents == len(DOCS)


def test_a_dataset_not_in_the_cache_nor_a_folder_is_one_line(tmp_path):
    cache = tmp_path / "hf-cache"
    for name in ("someone/no-such-dataset", "no_such_folder"):
        with pytest.raises(UserError) as e:
            hf(name)  # when the datamodule is made, before any model
        assert str(e.value) == (
            f"data.name={name} is not in the local Hugging Face cache ({cache}) nor a local folder (HF_HUB_OFFLINE "
            f"is set): load it once online (datasets.load_dataset), or give a folder of .jsonl/.parquet/.txt/.csv "
            f"files or a save_to_disk folder")
    assert not (tmp_path / "gptlit-cache" / "hf").exists()


@pytest.mark.parametrize("settings, message", [
    ({"text_key": "body"}, "data.text_key=body: {d} (split train) has no column 'body' (its columns: text, id); "
                           "set data.text_key to the column of the text"),
    ({"text_key": "id"}, "data.text_key=id: column 'id' of {d} holds Value('int64'), not text (its columns: text, "
                         "id); set data.text_key to the column of the text"),
    ({"split": "validation"}, "data.split=validation: Unknown split \"validation\". Should be one of ['train']; "
                              "set data.split to one of them"),
    ({"config": "nope"}, "data.config=nope: BuilderConfig 'nope' not found. Available: ['default']; "
                         "set data.config to one of them"),
    ({"name": ""}, "data.source=hf needs data.name=<a dataset in the Hugging Face cache, or a local folder>"),
])
def test_bad_settings_are_one_line_naming_the_setting(tmp_path, settings, message):
    d = tmp_path / "tales"
    write_jsonl(d / "train.jsonl", DOCS)
    with pytest.raises(UserError) as e:
        GPTDataModule(**{"source": "hf", "name": str(d), "max_length": 8, **settings})
    assert str(e.value) == message.format(d=d)
    assert not (tmp_path / "gptlit-cache" / "hf").exists()  # nothing written


def test_a_null_text_is_one_line_and_nothing_is_left_half_written(tmp_path):
    datasets.Dataset.from_dict({"text": ["a", "b", None, "d"]}).save_to_disk(str(tmp_path / "nulls"))
    dm = hf(tmp_path / "nulls")
    with pytest.raises(UserError) as e:
        dm.prepare_tokens()
    assert str(e.value) == (f"data.text_key=text: row 2 of {tmp_path / 'nulls'} (train) has no text (null); "
                            f"fix the dataset or pick another column")
    hf_dir = tmp_path / "gptlit-cache" / "hf"
    assert not list(hf_dir.glob("*.parquet")) and not list(hf_dir.glob(".*.partial"))


def test_without_datasets_it_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(UserError) as e:
        hf(tmp_path)
    assert str(e.value).startswith("data.source=hf needs the datasets package (")
    assert str(e.value).endswith('): pip install -e ".[hf]"')


def test_a_tiny_run_trains_on_a_local_dataset(make_cfg, tmp_path):
    from gptlit.run.runner import run

    write_jsonl(tmp_path / "tales" / "train.jsonl", DOCS * 5)
    metrics = run(make_cfg("data=hf", f"data.name={tmp_path / 'tales'}", "trainer.max_steps=2"))
    assert metrics["val/loss"] > 0 and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow  # starts train.py twice
def test_train_py_trains_on_a_local_dataset_and_exits_2_on_a_missing_column(tmp_path):
    write_jsonl(tmp_path / "tales" / "train.jsonl", DOCS * 5)
    common = [sys.executable, str(ROOT / "train.py"), "model=nano", "data=hf", "data.max_length=16",
              "data.batch_size=4", "trainer.max_steps=2", "trainer.limit_val_batches=1", "sampling.every_n_steps=0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([*common, "data.name=tales", f"paths.output_dir={tmp_path / 'run'}"],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    bad = subprocess.run([*common, "data.name=tales", "data.text_key=body", f"paths.output_dir={tmp_path / 'bad'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        f"error: data.text_key=body: tales (split train) has no column 'body' (its columns: text, id); "
        f"set data.text_key to the column of the text")


def test_a_cache_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "tales" / "train.jsonl", DOCS)
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("GPTLIT_CACHE", str(tmp_path / "a-file"))
    dm = hf(tmp_path / "tales")
    with pytest.raises(UserError) as e:
        dm.corpus()
    assert str(e.value).startswith(f"data.source=hf: cannot write {tmp_path / 'a-file' / 'hf'}/tales-train-")
    assert str(e.value).endswith("; set GPTLIT_CACHE to a writable folder with room for the dataset's text")


def test_data_hf_without_a_name_is_one_line(make_cfg):
    from gptlit.run.runner import build_run

    with pytest.raises(UserError) as e:
        build_run(make_cfg("data=hf"))
    assert str(e.value) == "data.source=hf needs data.name=<a dataset in the Hugging Face cache, or a local folder>"
