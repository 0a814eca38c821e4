import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest
import torch

from gptlit.core.errors import UserError
from gptlit.data.datamodule import GPTDataModule
from gptlit.data.sampler import TrainOrder
from gptlit.data.sources import download
from gptlit.data.windows import WindowDataset, num_windows, split_point
from gptlit.model.tokenizer import EOT_ID, encode


def all_tokens(dm) -> torch.Tensor:
    """The corpus' tokens, read back from the datamodule's token file."""
    return torch.from_numpy(dm.tokens[:].astype("int64"))


@pytest.mark.parametrize("n, L, stride", [(100, 10, 10), (100, 10, 3), (11, 10, 5), (10, 10, 1), (257, 256, 256), (5145, 256, 128)])
def test_window_count_formula(n, L, stride):
    ds = WindowDataset(torch.arange(n), L, stride)
    # count by brute force: every start s with a full input and a target
    brute = len([s for s in range(0, n, stride) if s + L + 1 <= n])
    assert len(ds) == num_windows(n, L, stride) == brute


def test_windows_are_shifted_by_one():
    ds = WindowDataset(torch.arange(50), 8, 5)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.tolist() == list(range(i * 5, i * 5 + 8))
        assert y.tolist() == list(range(i * 5 + 1, i * 5 + 9))
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_split_has_no_crossing_window(corpus):
    dm = GPTDataModule(source="files", path=str(corpus), max_length=32, stride=16, val_fraction=0.2, batch_size=4)
    dm.setup()
    n = len(dm.tokens)
    cut = split_point(n, 0.2)
    assert len(dm.train_set.tokens) == cut and len(dm.val_set.tokens) == n - cut
    assert len(dm.train_set) == num_windows(cut, 32, 16) and len(dm.val_set) == num_windows(n - cut, 32, 16)
    # the last train target is before the cut, the first val input is at the cut
    last, tokens = dm.train_set[len(dm.train_set) - 1][1], all_tokens(dm)
    assert torch.equal(last, tokens[(len(dm.train_set) - 1) * 16 + 1 : (len(dm.train_set) - 1) * 16 + 33])
    assert (len(dm.train_set) - 1) * 16 + 33 <= cut
    assert torch.equal(dm.val_set[0][0], tokens[cut : cut + 32])


def test_book_split_of_verdict_sized_corpus():
    # 5,145 tokens, context 256, stride 256, 10% val: the book's 9 train batches of 2 and 1 val batch
    cut = split_point(5145, 0.1)
    assert num_windows(cut, 256, 256) == 18 and num_windows(5145 - cut, 256, 256) == 2


def test_only_train_shuffled(corpus):
    dm = GPTDataModule(source="files", path=str(corpus), max_length=16, batch_size=4)
    dm.setup()
    dm.set_plan(order=TrainOrder(seed=0))  # the train order follows the shuffle seed (gptlit/data/sampler.py), not torch's RNG
    a = [x for x, _ in dm.train_dataloader()]
    dm.set_plan(order=TrainOrder(seed=1))
    b = [x for x, _ in dm.train_dataloader()]
    assert not all(torch.equal(p, q) for p, q in zip(a, b))
    assert all(torch.equal(p, q) for p, (q, _) in zip(b, dm.train_dataloader()))  # and the same seed, the same order
    val, train_eval = dm.val_dataloader()  # val windows, then the first train windows for train/eval_loss
    v1, v2 = [x for x, _ in val], [x for x, _ in dm.val_dataloader()[0]]
    assert all(torch.equal(p, q) for p, q in zip(v1, v2))
    assert torch.equal(v1[0][0], dm.val_set[0][0])
    te = torch.cat([x for x, _ in train_eval])  # dm.eval_train_batches (5) batches of 4, spread over the split
    idx = dm.train_eval_indices()
    assert len(idx) == 5 * 4 and idx[0] == 0 and idx[-1] == len(dm.train_set) - 1 and idx == sorted(set(idx))
    assert torch.equal(te, torch.stack([dm.train_set[i][0] for i in idx]))
    dm.config.eval_train_batches = 1000  # more than the split holds: every train window once
    assert dm.train_eval_indices() == list(range(len(dm.train_set)))


def test_set_plan_sets_the_loader_batch_and_order(corpus):
    dm = GPTDataModule(source="files", path=str(corpus), max_length=16, batch_size=4)
    dm.setup()
    assert dm.loader_batch_size == 4 and dm.order == TrainOrder()
    dm.set_plan(micro_batch_size=2, order=TrainOrder(seed=3, epoch=1, start_batch=2))
    sampler = dm.train_sampler()
    assert (sampler.batch_size, sampler.step_size, sampler.seed, sampler.epoch, sampler.start_batch) == (2, 4, 3, 1, 2)
    assert next(iter(dm.train_dataloader()))[0].shape == (2, 16)
    dm.set_plan(order=TrainOrder(seed=5))  # the micro-batch size stays
    assert dm.loader_batch_size == 2 and dm.train_sampler().seed == 5
    with pytest.raises(ValueError, match="micro_batch_size=3 must be a positive divisor of data.batch_size=4"):
        dm.set_plan(micro_batch_size=3)


def test_pydocs_default_corpus():
    dm = GPTDataModule(source="pydocs", max_length=128)
    dm.setup()
    assert len(dm.tokens) > 50_000
    assert len(dm.train_set) > 100 and len(dm.val_set) > 10
    assert EOT_ID in all_tokens(dm).tolist()  # documents are separated


def test_folder_and_glob(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text("first file. " * 40)
    (tmp_path / "a" / "two.txt").write_text("second file. " * 40)
    (tmp_path / "a" / "skip.md").write_text("not text " * 40)
    folder = GPTDataModule(source="files", path=str(tmp_path / "a"), max_length=8)
    glob = GPTDataModule(source="files", path=str(tmp_path / "a" / "*.txt"), max_length=8)
    one = GPTDataModule(source="files", path=str(tmp_path / "a" / "one.txt"), max_length=8)
    for dm in (folder, glob, one):
        dm.setup()
    assert all_tokens(folder).tolist() == all_tokens(glob).tolist()
    expected = encode("first file. " * 40) + [EOT_ID] + encode("second file. " * 40)
    assert all_tokens(folder).tolist() == expected
    assert all_tokens(one).tolist() == encode("first file. " * 40)


def test_relative_path_resolves_against_cwd(tmp_path, monkeypatch, corpus):
    monkeypatch.chdir(corpus.parent)
    dm = GPTDataModule(source="files", path=corpus.name, max_length=8)
    dm.setup()
    assert len(dm.tokens) == len(encode(corpus.read_text()))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(source="files", path="nope/missing.txt"), r"data.path=nope/missing.txt: no such file or folder"),
        (dict(source="files", path="nope/*.txt"), r"data.path=nope/\*.txt: the glob .* matches no files"),
        (dict(source="files", path=None), r"data.source=files \(data=text\) needs data.path"),
        (dict(source="books"), r"data.source=books is unknown"),
        (dict(max_length=0), r"data.max_length=0 must be a positive integer"),
        (dict(stride=0), r"data.stride=0"),
        (dict(batch_size=-1), r"data.batch_size=-1"),
        (dict(val_fraction=1.0), r"data.val_fraction=1.0 must be between 0 and 1"),
        (dict(num_workers=-2), r"data.num_workers=-2"),
        (dict(num_proc=0), r"data.num_proc=0 must be a positive integer or null"),
        (dict(max_val_windows=0), r"data.max_val_windows=0 must be a positive integer or null"),
        (dict(text_key=""), r"data.text_key= must be the key or column of the text"),
        (dict(max_lenght=8), r"data.max_lenght is not a data setting: use one of batch_size, cache_dir, "),
    ],
)
def test_bad_values(kwargs, match):
    with pytest.raises(UserError, match=match):
        GPTDataModule(**kwargs)


def test_empty_folder(tmp_path):
    from gptlit.data.readers import corpus_suffixes

    assert corpus_suffixes()[:4] == (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")  # what a folder contributes, by reader
    with pytest.raises(UserError, match=rf"holds no {', '.join(corpus_suffixes())} files; add some"):
        GPTDataModule(source="files", path=str(tmp_path))


def test_empty_and_short_corpus(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError, match=rf"data.path: {empty} is empty; delete it or add text to it"):
        GPTDataModule(source="files", path=str(empty), max_length=32).setup()
    short = tmp_path / "short.txt"
    short.write_text("word" + " word" * 99)  # 100 tokens: 90 train, 10 val
    with pytest.raises(UserError, match=r"100 tokens give 90 train and 10 val tokens"):
        GPTDataModule(source="files", path=str(short), max_length=32).setup()


def test_not_utf8(tmp_path):
    f = tmp_path / "bin.txt"
    f.write_bytes(b"\xff\xfe\x00\x81" * 100)
    with pytest.raises(UserError, match=rf"{f} is not UTF-8 text \(invalid start byte at byte 0\)"):
        GPTDataModule(source="files", path=str(f), max_length=8).setup()


# ---- download (against a local HTTP server) ----------------------------------------------------

@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_download_once_and_check_hash(http_server, tmp_path, monkeypatch):
    root, base = http_server
    text = "It had always been my fate to have a story. " * 50
    (root / "story.txt").write_text(text)
    sha = hashlib.sha256(text.encode()).hexdigest()
    monkeypatch.setenv("GPTLIT_CACHE", str(tmp_path / "cache"))
    dm = GPTDataModule(source="url", url=f"{base}/story.txt", sha256=sha, max_length=16)
    dm.prepare_data()
    cached = tmp_path / "cache" / "story.txt"
    assert cached.read_text() == text
    (root / "story.txt").unlink()  # a second run must not download again
    dm2 = GPTDataModule(source="url", url=f"{base}/story.txt", sha256=sha, max_length=16)
    dm2.prepare_data()
    dm2.setup()
    assert all_tokens(dm2).tolist() == encode(text)


def test_download_wrong_hash_leaves_nothing(http_server, tmp_path):
    root, base = http_server
    (root / "story.txt").write_text("changed text")
    dest = tmp_path / "cache" / "story.txt"
    with pytest.raises(UserError, match="has SHA-256 .* expected 0000"):
        download(f"{base}/story.txt", "0" * 64, dest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_download_offline_message_and_no_partial_file(tmp_path):
    dest = tmp_path / "cache" / "the-verdict.txt"
    # nothing listens on port 9 of loopback: the connection is refused, as offline
    with pytest.raises(UserError, match=r"could not download http://127.0.0.1:9/the-verdict.txt .*offline\? copy the file to"):
        download("http://127.0.0.1:9/the-verdict.txt", None, dest, timeout=5)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_url_source_with_local_copy_checks_hash(tmp_path):
    f = tmp_path / "local.txt"
    f.write_text("a local copy " * 200)
    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    dm = GPTDataModule(source="url", url="http://127.0.0.1:9/x.txt", sha256=sha, path=str(f), max_length=16)
    dm.prepare_data()  # no download attempted
    dm.setup()
    bad = GPTDataModule(source="url", url="http://127.0.0.1:9/x.txt", sha256="1" * 64, path=str(f), max_length=16)
    with pytest.raises(UserError, match="not the expected 1111"):
        bad.setup()
