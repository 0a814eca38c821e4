"""The token cache: tokenize once, read windows from disk, and every way it can go wrong."""

import gzip
import json
import logging
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gptlit.core.errors import UserError
from gptlit.data.config import DataConfig
from gptlit.data.datamodule import GPTDataModule
from gptlit.data.windows import WindowDataset, split_point
from gptlit.data.readers import reader_options, safe_cut
from gptlit.data.token_cache import Corpus, TokenFile, cache_entry, ensure
from gptlit.model.tokenizer import EOT_ID, encode, gpt2

ROOT = Path(__file__).resolve().parents[1]

# Pieces that stress GPT-2's pre-tokenizer around newlines: whitespace runs, CRLF, lone CR, contractions,
# digits, non-ASCII letters and spaces, a literal <|endoftext|>, characters Python calls space but the regex may not.
ATOMS = [
    "a", "Zq", "é", "中文", "1", "234", " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", "\r", "'s", "'ll", "'VE",
    "!", "...", "<|endoftext|>", "\u00a0", "\u2028", "\u3000", "\x1c", "😀", " \n", " x", "\n ", "-", "\f", "\x85",
]


def adversarial_text(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(ATOMS) for _ in range(n))


def universal(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_ids(cached) -> list[int]:
    return np.fromfile(cached.path, dtype="<u2").tolist()


def file_paths(corpus: Corpus, cache: Path) -> tuple[Path, Path]:
    """The token file and metadata file of a corpus (GPT-2's tokens) in cache."""
    entry = cache_entry(corpus, cache, gpt2(), reader_options(corpus, DataConfig))
    return entry.tokens, entry.meta


def cache_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if not p.name.endswith(".lock")) if d.exists() else []


def test_safe_cut_pieces_tokenize_as_the_whole():
    for seed in range(30):
        data = adversarial_text(400, seed).encode()
        cut = safe_cut(data)
        if cut < 0:
            continue
        a, b = universal(data[:cut].decode()), universal(data[cut:].decode())
        assert encode(a) + encode(b) == encode(a + b)


@pytest.mark.parametrize("num_proc", [1, 2])
def test_chunked_file_equals_whole_file_tokens(tmp_path, num_proc):
    text = adversarial_text(60_000, seed=num_proc)
    f = tmp_path / "big.txt"
    f.write_bytes(text.encode())
    whole = encode(universal(text))
    # 512-byte pieces: hundreds of cuts, each at a safe point
    got = ensure(Corpus("big", files=(f,)), tmp_path / "cache", num_proc=num_proc, piece_bytes=512)
    assert got.built and got.n_documents == 1
    assert read_ids(got) == whole


def test_documents_and_formats(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("plain text file.\nsecond line")
    with gzip.open(d / "b.txt.gz", "wt", encoding="utf-8") as g:
        g.write("gzipped text\nhere")
    (d / "sub" / "c.jsonl").write_text(
        json.dumps({"text": "first doc", "id": 1}) + "\n\n" + json.dumps({"text": "second\ndoc"}) + "\n"
    )
    with gzip.open(d / "sub" / "d.jsonl.gz", "wt", encoding="utf-8") as g:
        g.write(json.dumps({"text": "zipped doc"}) + "\n")
    (d / "skip.md").write_text("not part of the corpus")
    dm = GPTDataModule(source="files", path=str(d), max_length=2, val_fraction=0.2)
    got = dm.prepare_tokens()
    docs = ["plain text file.\nsecond line", "gzipped text\nhere", "first doc", "second\ndoc", "zipped doc"]
    want = encode(docs[0])
    for doc in docs[1:]:
        want += [EOT_ID] + encode(doc)
    assert read_ids(got) == want and got.n_documents == 5 and got.n_tokens == len(want)


def test_cache_hit_and_miss_on_changed_file(tmp_path, caplog):
    f = tmp_path / "c.txt"
    f.write_text("one two three. " * 200)
    corpus = lambda: Corpus("c", files=(f,))  # noqa: E731 - the key is read from the file each time
    first = ensure(corpus(), tmp_path / "cache")
    mtime = first.path.stat().st_mtime_ns
    again = ensure(corpus(), tmp_path / "cache")
    assert first.built and not again.built and again.path == first.path
    assert first.path.stat().st_mtime_ns == mtime  # not written again
    assert read_ids(again) == encode("one two three. " * 200)

    f.write_text("four five six. " * 200)  # same size, new contents and mtime
    os.utime(f, ns=(time.time_ns(), mtime + 1_000_000_000))
    changed = ensure(corpus(), tmp_path / "cache")
    assert changed.built and changed.path != first.path
    assert read_ids(changed) == encode("four five six. " * 200)


def test_datamodule_windows_equal_in_memory_windows(tmp_path):
    # what the datamodule read before the cache: the whole text tokenized in memory (text mode: universal
    # newlines), split, windows over a tensor. Book ch. 5 settings: 256 tokens, stride 256, 10% val.
    text = ("I HAD always thought Jack Gisburn rather a cheap genius--though a good fellow enough.\r\n" * 200
            + "--so it was no great surprise to me to hear that, in the height of his glory. " * 150)
    f = tmp_path / "verdict-like.txt"
    f.write_bytes(text.encode())
    for max_length, stride in [(256, 256), (32, 7)]:
        dm = GPTDataModule(source="files", path=str(f), max_length=max_length, stride=stride, val_fraction=0.1)
        dm.setup()
        tokens = torch.tensor(encode(universal(text)), dtype=torch.int32)
        cut = split_point(len(tokens), 0.1)
        for got, want in [(dm.train_set, WindowDataset(tokens[:cut], max_length, stride)),
                          (dm.val_set, WindowDataset(tokens[cut:], max_length, stride))]:
            assert len(got) == len(want) > 0
            for i in range(len(want)):
                (gx, gy), (wx, wy) = got[i], want[i]
                assert gx.dtype == torch.long and torch.equal(gx, wx) and torch.equal(gy, wy)


def test_windows_pickle_without_tokens(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("the cat sat on the mat. " * 2000)
    dm = GPTDataModule(source="files", path=str(f), max_length=16)
    dm.setup()
    x0 = dm.train_set[3][0]  # opens the memory map in this process
    blob = pickle.dumps(dm.train_set)
    assert len(blob) < 1000  # path and bounds, not 12,000 tokens
    assert torch.equal(pickle.loads(blob)[3][0], x0)
    with pytest.raises(TypeError):
        dm.tokens[5]
    with pytest.raises(ValueError):
        TokenFile(dm.cached.path, 0, dm.cached.n_tokens + 1)


def test_val_windows_capped_and_spread(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("words and more words. " * 3000)
    dm = GPTDataModule(source="files", path=str(f), max_length=8, batch_size=4, max_val_windows=5, eval_train_batches=0)
    dm.setup()
    n = len(dm.val_set)
    assert n > 100 and dm.val_indices() == [0, round((n - 1) / 4), round((n - 1) / 2), round(3 * (n - 1) / 4), n - 1]
    got = torch.cat([x for x, _ in dm.val_dataloader()])
    assert torch.equal(got, torch.stack([dm.val_set[i][0] for i in dm.val_indices()]))
    assert "validating on 5 of them" in dm.summary()
    dm.config.max_val_windows = None
    assert dm.val_indices() is None and sum(len(x) for x, _ in dm.val_dataloader()) == n


def test_truncated_cache_file_is_rebuilt(tmp_path, caplog):
    f = tmp_path / "c.txt"
    f.write_text("a truncated file. " * 500)
    first = ensure(Corpus("c", files=(f,)), tmp_path / "cache")
    with open(first.path, "r+b") as fh:
        fh.truncate(first.path.stat().st_size // 2)
    with caplog.at_level(logging.INFO, logger="gptlit.data.token_cache"):
        again = ensure(Corpus("c", files=(f,)), tmp_path / "cache")
    assert again.built and again.path == first.path
    damaged = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(damaged) == 1 and f"has {first.n_tokens:,} bytes, but its metadata says {first.n_tokens:,} tokens" in damaged[0]
    assert read_ids(again) == encode("a truncated file. " * 500)


# the preparation is slowed down (0.2 s a piece) so that it can be killed midway
SLOW_PREPARE = """
import sys, time
from pathlib import Path
import gptlit.data.token_cache as tc
plain = tc.tokenize_task
def slow(task, key="text"):
    time.sleep(0.2)
    return plain(task, key)
tc.tokenize_task = slow
got = tc.ensure(tc.Corpus("c", files=(Path(sys.argv[1]),)), Path(sys.argv[2]), num_proc=1, piece_bytes=1024)
print("built" if got.built else "cached", got.path, flush=True)
"""


def start_slow_prepare(corpus: Path, cache: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SLOW_PREPARE, str(corpus), str(cache)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_tmp(cache: Path, proc: subprocess.Popen) -> Path:
    deadline = time.time() + 60
    while time.time() < deadline:
        tmp = [p for p in cache.glob(".*.partial") if p.stat().st_size > 0] if cache.exists() else []
        if tmp:
            return tmp[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the preparation never started writing")


@pytest.mark.slow
def test_killed_preparation_leaves_nothing_complete_and_reruns_clean(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("".join(f"line {i} of a corpus that takes a while.\n" for i in range(1000)))  # ~40 pieces
    cache = tmp_path / "cache"
    proc = start_slow_prepare(f, cache)
    wait_for_tmp(cache, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = cache_files(cache)
    assert left and all(n.endswith(".partial") for n in left)  # a partial temp file, nothing that passes for done
    bin_path, meta_path = file_paths(Corpus("c", files=(f,)), cache)
    assert not bin_path.exists() and not meta_path.exists()
    got = ensure(Corpus("c", files=(f,)), cache)
    assert got.built and read_ids(got) == encode(f.read_text())
    assert cache_files(cache) == sorted([bin_path.name, meta_path.name])  # the stale temp file is gone


@pytest.mark.slow
def test_second_process_waits_for_the_first_instead_of_tokenizing(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("".join(f"line {i} shared by two sweep jobs.\n" for i in range(400)))
    cache = tmp_path / "cache"
    first = start_slow_prepare(f, cache)
    wait_for_tmp(cache, first)  # the first holds the lock and is writing
    second = start_slow_prepare(f, cache)
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert first.returncode == second.returncode == 0, err1 + err2
    assert out1.split()[0] == "built" and out2.split()[0] == "cached" and out1.split()[1] == out2.split()[1]


# ---- bad input: one line, and nothing but lock files left in the cache ----------------------------


def bad_inputs(tmp_path: Path):
    big = "fine text here.\n" * 2000
    yield "not_utf8.txt", (big + "caf\xe9\n").encode("latin-1"), rf"not_utf8.txt is not UTF-8 text \(invalid continuation byte at byte {len(big) + 3}\)"
    yield "empty.txt", b"", r"empty.txt is empty; delete it or add text to it"
    yield "empty.txt.gz", gzip.compress(b""), r"empty.txt.gz is empty"
    yield "bad.txt.gz", gzip.compress(big.encode())[:-20], r"bad.txt.gz is not a complete gzip file"
    yield "blank.jsonl", b"\n\n", r"blank.jsonl is empty \(no JSON lines\)"
    yield "bad.jsonl", b'{"text": "ok"}\n{"text": oops}\n', r"line 2 of .*bad.jsonl is not JSON"
    yield "key.jsonl", b'{"text": "ok"}\n{"content": "x", "id": 3}\n', r"data.text_key=text: line 2 of .*key.jsonl has no text under 'text' \(it holds: content, id\); set data.text_key"


@pytest.mark.parametrize("case", range(7))
def test_bad_corpus_file(tmp_path, case):
    name, data, match = list(bad_inputs(tmp_path))[case]
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "good.txt").write_text("a good file comes first. " * 100)
    (d / name).write_bytes(data)
    cache = tmp_path / "cache"
    dm = GPTDataModule(source="files", path=str(d), max_length=8, cache_dir=str(cache), num_proc=1)
    with pytest.raises(UserError, match=match) as e:
        dm.setup()
    assert "\n" not in str(e.value) and str(d / name) in str(e.value)
    assert cache_files(cache) == []


def test_bad_utf8_found_by_a_pool_process(tmp_path):
    f = tmp_path / "late.txt"
    good = "plenty of good text before the bad byte.\n" * 3000
    f.write_bytes(good.encode() + b"\xff tail\n" + b"more\n" * 100)
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=rf"late.txt is not UTF-8 text \(invalid start byte at byte {len(good)}\)"):
        ensure(Corpus("late", files=(f,)), cache, num_proc=2, piece_bytes=4096)
    assert cache_files(cache) == []


def test_unwritable_cache_dir(tmp_path, corpus):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a cache dir under a file can never be created, even by root
    dm = GPTDataModule(source="files", path=str(corpus), max_length=8, cache_dir=str(blocker / "cache"))
    with pytest.raises(UserError, match=rf"the token cache directory {blocker / 'cache'} is not writable \(Not a directory\); set data.cache_dir="):
        dm.setup()


def test_prepare_task_prints_file_tokens_and_time(make_cfg, corpus, capsys):
    from gptlit.run.runner import run

    cfg = make_cfg("task=prepare", "data=text", f"data.path={corpus}")
    run(cfg)
    first = capsys.readouterr().out
    run(cfg)
    second = capsys.readouterr().out
    n = len(encode(corpus.read_text()))
    assert f"tokens: {n:,} (1 document)" in first and "tokenized in" in first
    assert "already in the cache" in second
    path = first.splitlines()[0].removeprefix("token file: ")
    assert np.fromfile(path, dtype="<u2").tolist() == encode(corpus.read_text())


@pytest.mark.slow
def test_disk_full_during_preparation(tmp_path):
    # RLIMIT_FSIZE makes any write past 100 KB fail with EFBIG, as a full disk fails with ENOSPC
    f = tmp_path / "c.txt"
    f.write_text("".join(f"sentence number {i} of the corpus.\n" for i in range(20000)))  # ~150K tokens, 300 KB
    cache = tmp_path / "cache"

    def limit():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "task=prepare", "data=text", f"data.path={f}",
                        f"data.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"],
                       cwd=tmp_path, env=env, preexec_fn=limit, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the disk filled while writing the token cache"), r.stderr
    assert "set data.cache_dir=" in err[0]
    assert cache_files(cache) == []


@pytest.mark.slow
def test_ddp_one_process_tokenizes_ranks_read_disjoint_windows(tmp_path):
    corpus = tmp_path / "numbered.txt"  # every window distinct, so equal windows mean the same window
    corpus.write_text("".join(f"this is line number {i} of the corpus.\n" for i in range(600)))
    out = tmp_path / "run"
    args = [
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "model=nano", "data=text",
        f"data.path={corpus}", "data.max_length=16", "data.batch_size=4", "trainer.max_steps=3",
        "trainer.limit_val_batches=1", "sampling.every_n_steps=0", "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null", "+callbacks.probe._target_=ddp_probe.RankProbe",
        f"+callbacks.probe.dirpath={tmp_path}", f"hydra.run.dir={out}",
    ]
    env = {**os.environ, "GPTLIT_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert log.count("token cache: tokenized") == 1, log  # one process tokenized, the other reused its file
    assert log.count("token cache: " + str(tmp_path / "cache")) >= 1, log
    ranks = [json.loads((tmp_path / f"probe_rank{i}.json").read_text()) for i in range(2)]
    windows = [{tuple(w) for b in p["batches"] for w in b} for p in ranks]
    assert len(windows[0]) == len(windows[1]) == 3 * 4 and not windows[0] & windows[1]
    tokens = encode(corpus.read_text())
    starts = {tuple(tokens[s : s + 16]) for s in range(0, len(tokens) - 16, 16)}
    assert windows[0] | windows[1] <= starts  # every window read is a window of the corpus


def test_a_process_that_is_not_the_preparer_waits_and_never_tokenizes(tmp_path, monkeypatch):
    import threading

    import gptlit.data.token_cache as tc

    f = tmp_path / "a.txt"
    f.write_text("one two three four five six seven eight nine ten " * 50, encoding="utf-8")
    corpus, cache = Corpus("a", files=(f,)), tmp_path / "cache"
    cache.mkdir()
    builds = []
    real_build = tc.build
    monkeypatch.setattr(tc, "build", lambda *a, **k: builds.append(1) or real_build(*a, **k))

    def preparer_later():  # another process's preparation, finishing a little later
        time.sleep(0.3)
        ensure(corpus, cache, num_proc=1, preparer=True)

    t = threading.Thread(target=preparer_later)
    t.start()
    got = ensure(corpus, cache, num_proc=1, preparer=False, poll_s=0.05)
    t.join()
    assert builds == [1]  # the preparer's build alone
    assert got.n_tokens == len(encode(f.read_text(encoding="utf-8"))) and not got.built


@pytest.mark.parametrize("per_node, env, prepares", [
    (False, {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, True),
    (False, {"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, False),  # node 1 waits for node 0's file
    (True, {"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, True),  # its own node-local cache
    (True, {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}, False),
])
def test_data_prepare_per_node_picks_the_preparer(tmp_path, monkeypatch, per_node, env, prepares):
    import gptlit.data.datamodule

    f = tmp_path / "a.txt"
    f.write_text("some text to tokenize " * 400, encoding="utf-8")
    for k, v in {**env, "TORCHELASTIC_RUN_ID": "t1", "GROUP_RANK": env["RANK"]}.items():
        monkeypatch.setenv(k, v)
    seen = []

    def record(*args, preparer, **kwargs):
        seen.append(preparer)
        raise RuntimeError("recorded")

    monkeypatch.setattr(gptlit.data.datamodule, "ensure", record)
    dm = GPTDataModule(source="files", path=str(f), max_length=16, batch_size=2, cache_dir=str(tmp_path / "c"),
                       prepare_per_node=per_node)
    with pytest.raises(RuntimeError):
        dm.prepare_tokens()
    assert seen == [prepares]


def test_waiting_for_a_preparer_that_writes_elsewhere_is_a_one_line_error(tmp_path):
    # node-local cache folders with data.prepare_per_node=false: rank 0 never writes here
    f = tmp_path / "a.txt"
    f.write_text("words " * 100, encoding="utf-8")
    with pytest.raises(UserError, match="set data.prepare_per_node=true"):
        ensure(Corpus("a", files=(f,)), tmp_path / "cache", num_proc=1, preparer=False, poll_s=0.05, wait_s=0.2)
    assert not list(tmp_path.rglob("*.bin"))  # nothing tokenized here


# ---- the lock file and bounded waits ---------------------------------------------------------------


def test_no_lock_file_stays_in_the_cache(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("words and more words " * 50, encoding="utf-8")
    cache = tmp_path / "cache"
    ensure(Corpus("a", files=(f,)), cache, num_proc=1)  # built
    ensure(Corpus("a", files=(f,)), cache, num_proc=1)  # found
    bin_path, meta_path = file_paths(Corpus("a", files=(f,)), cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted([bin_path.name, meta_path.name])


def test_one_process_lock_helper_for_the_cache_and_the_search(tmp_path):
    """gptlit.core.file_lock.ProcessLock: taken without waiting, the holder's note readable, the file gone on release."""
    from gptlit.core.file_lock import ProcessLock

    path = tmp_path / "x.lock"
    a, b = ProcessLock(path, note="process 1 on here"), ProcessLock(path)
    assert a.try_acquire() and not b.try_acquire()
    assert b.holder() == "process 1 on here"
    a.release()
    assert not path.exists() and b.try_acquire()
    b.release()
    assert not path.exists()



def test_sole_writer_publishes_what_the_block_wrote_in_order_and_nothing_else(tmp_path, monkeypatch):
    """gptlit.core.file_lock.sole_writer (the token cache's and the BPE trainer's): killed writers' temporary
    files removed under the lock, the files the block wrote renamed into place in the order given, none when
    it fails or writes nothing, a wait on another holder polled through waiting(), the lock let go each time."""
    import gptlit.core.file_lock as fl

    tokens, meta, lock = tmp_path / "c.bin", tmp_path / "c.json", tmp_path / "c.bin.lock"
    stale = tmp_path / ".c.bin.host-9.partial"
    stale.write_bytes(b"left by a killed writer")
    with pytest.raises(RuntimeError, match="killed"):
        with fl.sole_writer(tokens, meta, lock=lock, tag="t") as (tmp_tokens, tmp_meta):
            assert not stale.exists() and not fl.ProcessLock(lock).try_acquire()  # cleaned, and held
            tmp_tokens.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []  # no temporary file, no lock file, nothing published

    renamed = []
    real_publish = fl.publish
    monkeypatch.setattr(fl, "publish", lambda tmp, path, durable: renamed.append(path.name) or real_publish(tmp, path, durable))
    with fl.sole_writer(tokens, meta, lock=lock, tag="t") as (tmp_tokens, tmp_meta):
        tmp_meta.write_text("{}")  # written first, published last all the same
        tmp_tokens.write_bytes(b"tokens")
    assert renamed == ["c.bin", "c.json"] and tokens.read_bytes() == b"tokens" and meta.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin", "c.json"]

    other = fl.ProcessLock(lock)  # another process prepares; it lets go at the third look
    assert other.try_acquire()
    looks = []
    waiting = lambda: looks.append(1) if len(looks) < 2 else (looks.append(1), other.release())
    with fl.sole_writer(tokens, meta, lock=lock, waiting=waiting, poll_s=0.01) as (tmp_tokens, tmp_meta):
        pass  # the files are complete: nothing is written
    assert len(looks) == 3 and renamed == ["c.bin", "c.json"] and tokens.read_bytes() == b"tokens"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin", "c.json"]

def stalled_preparer(tmp_path):
    """A preparer that started (its lock file and partial file are there) and then stopped writing."""
    f = tmp_path / "a.txt"
    f.write_text("words " * 100, encoding="utf-8")
    corpus, cache = Corpus("a", files=(f,)), tmp_path / "cache"
    cache.mkdir()
    bin_path, _ = file_paths(corpus, cache)
    lock = Path(str(bin_path) + ".lock")
    lock.touch()
    (cache / f".{bin_path.name}.host-1.partial").write_bytes(b"\0" * 64)
    return corpus, cache, lock


def test_waiting_for_a_stalled_preparer_is_bounded(tmp_path):
    corpus, cache, _ = stalled_preparer(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"made no progress for 0 s \(its partial file stayed at 64 bytes\)"):
        ensure(corpus, cache, num_proc=1, preparer=False, poll_s=0.05, wait_s=0.4)
    assert time.monotonic() - t0 < 30  # waited without bound before


def test_waiting_for_a_hung_lock_holder_is_bounded(tmp_path):
    import fcntl

    corpus, cache, lock = stalled_preparer(tmp_path)
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another open file holds the lock: a process that hangs
    try:
        with pytest.raises(UserError, match=r"made no progress"):
            ensure(corpus, cache, num_proc=1, preparer=True, poll_s=0.05, wait_s=0.4)
    finally:
        os.close(fd)
    got = ensure(corpus, cache, num_proc=1, preparer=True, wait_s=0.4)  # released: this process builds it
    assert got.built and not lock.exists()
