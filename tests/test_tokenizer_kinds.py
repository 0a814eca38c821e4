"""The `tokenizer` group: gpt2 (default), bpe (trained on the run's training text), file (any tokenizer.json);
carried by checkpoints into sampling, evaluation, resume and export; its bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gptlit.core.errors import UserError
from gptlit.data.readers import Corpus
from gptlit.model import tokenizer as T

REPO = Path(__file__).resolve().parents[1]
CHINESE = REPO / "tests" / "fixtures" / "chinese.txt"
TINY = ["model=nano", "data.max_length=32", "data.batch_size=4", "trainer.max_steps=3", "trainer.limit_val_batches=2",
        "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.enable_progress_bar=false",
        "sampling.every_n_steps=0", "callbacks.progress_bar=null", "~logger", "callbacks.lr_monitor=null"]


def run_cli(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def one_line_error(r: subprocess.CompletedProcess, *names: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    for n in names:
        assert n in lines[0], lines[0]
    return lines[0]


def train(tmp: Path, *overrides: str, name: str = "run"):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gptlit.run.runner import build_run

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, *overrides, f"paths.output_dir={tmp / name}"])
    dm, module, trainer, ckpt = build_run(cfg)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    return SimpleNamespace(dir=tmp / name, dm=dm, module=module, trainer=trainer)


# ---- the Tokenizer objects ----------------------------------------------------------------------


MIXED = (REPO / "README.md").read_text(encoding="utf-8")[:6000] + CHINESE.read_text(encoding="utf-8")[:800] + \
    "  x<|endoftext|>y don't   I'll\r\n\t  🤗 naïve\n\n\n  "


def test_gpt2_kind_is_todays_tokenizer_and_keeps_the_cache_key(tmp_path):
    from gptlit.data.token_cache import cache_key

    g = T.gpt2()
    assert g.encode(MIXED) == T.encode(MIXED) and g.decode(g.encode(MIXED)) == MIXED
    assert (g.eot_id, g.vocab_size, g.fingerprint) == (T.EOT_ID, T.VOCAB_SIZE, T.fingerprint())
    f = tmp_path / "a.txt"
    f.write_text("hello")
    c = Corpus("a", files=(f,))
    assert cache_key(c, {}) == cache_key(c, {}, g)  # token caches made before the tokenizer group stay valid
    assert cache_key(c, {}) != cache_key(c, {}, T.train_bpe(["hello world " * 50], 300))


def test_gpt2_tokenizer_json_built_from_the_ranks_gives_tiktokens_ids():
    from tokenizers import Tokenizer as HF

    hf = HF.from_str(T.gpt2().hf_json())
    assert hf.encode(MIXED, add_special_tokens=False).ids == T.encode(MIXED)
    assert hf.get_vocab_size() == T.VOCAB_SIZE and hf.token_to_id(T.EOT_TOKEN) == T.EOT_ID


def test_trained_bpe_compresses_chinese_and_round_trips():
    text = CHINESE.read_text(encoding="utf-8")
    bpe = T.train_bpe([text], 1024)
    assert 257 < bpe.vocab_size <= 1024 and bpe.eot_token == T.EOT_TOKEN and bpe.eot_id == bpe.vocab_size - 1
    assert bpe.encode("\x00\xff")[:1] == [0] or bpe.decode(bpe.encode("\x00ÿ")) == "\x00ÿ"
    ids = bpe.encode(MIXED)
    assert bpe.decode(ids) == MIXED and bpe.eot_id in ids  # <|endoftext|> stays one special token
    assert bpe.bytes_per_token([text]) > 2 * T.gpt2().bytes_per_token([text])
    for tok in (bpe, T.gpt2()):  # bits per byte divides by these: each id's bytes add up to the text's
        tb = tok.token_bytes()
        plain = MIXED.replace(T.EOT_TOKEN, "")
        assert tb[tok.encode(plain)].sum() == len(plain.encode("utf-8")) and tb[tok.eot_id] == 0


def test_training_text_is_the_head_before_the_val_split(tmp_path):
    from gptlit.data.tokenizer_cache import training_texts

    f = tmp_path / "c.txt"
    f.write_text("a" * 9000 + "\n" + "z" * 999, encoding="utf-8")  # 10,000 bytes; the last tenth is z
    got = "".join(training_texts(Corpus("c", files=(f,)), 0.1, 10**9))
    assert got == "a" * 9000  # exactly the first 90% of the bytes: nothing of the val text
    assert "".join(training_texts(Corpus("c", files=(f,)), 0.1, 100)) == "a" * 100  # the sample bound


def test_file_kind_reads_a_tokenizer_json_or_a_folder(tmp_path):
    bpe = T.train_bpe([CHINESE.read_text(encoding="utf-8")], 600)
    bpe.save(tmp_path / "model")
    for p in (tmp_path / "model", tmp_path / "model" / "tokenizer.json"):
        tok = T.from_file(p)
        assert tok.kind == "file" and tok.fingerprint == bpe.fingerprint and tok.encode(MIXED) == bpe.encode(MIXED)


@pytest.mark.parametrize("make,pattern", [
    (lambda d: T.from_settings({"kind": "bpe", "vocab_size": 200}), "tokenizer.vocab_size=200 is too small"),
    (lambda d: T.from_file(d / "nowhere.json"), "no such file or folder"),
    (lambda d: T.from_file(d), "has no tokenizer.json"),
    (lambda d: (d / "bad.json").write_text('{"not": "a tokenizer"}') and T.from_file(d / "bad.json"),
     "is not a Hugging Face tokenizer.json"),
    (lambda d: T.from_spec({"kind": "bpe", "name": "bpe", "json": "{broken"}, "x.ckpt"), "x.ckpt: its stored tokenizer"),
])
def test_bad_tokenizers_are_one_line(tmp_path, make, pattern):
    with pytest.raises(UserError, match=pattern) as e:
        make(tmp_path)
    assert "\n" not in str(e.value)


# ---- runs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bpe")
    return train(tmp, "data=text", f"data.path={CHINESE}", "tokenizer=bpe", "tokenizer.vocab_size=512")


def test_bpe_run_trains_with_its_vocab_and_checkpoints_carry_the_tokenizer(bpe_run):
    from gptlit.interop.checkpoints import load_checkpoint, model_from_checkpoint

    tok = bpe_run.dm.tokenizer
    assert tok.kind == "bpe" and tok.vocab_size <= 512
    assert bpe_run.module.model.cfg.vocab_size == 512 and bpe_run.module.model.tok_emb.weight.shape[0] == 512
    assert int(np.asarray(bpe_run.dm.tokens[0 : len(bpe_run.dm.tokens)]).max()) < tok.vocab_size
    ckpt = load_checkpoint(bpe_run.dir / "checkpoints" / "last.ckpt")
    assert ckpt["tokenizer"]["kind"] == "bpe" and ckpt["tokenizer"]["fingerprint"] == tok.fingerprint
    assert json.loads((bpe_run.dir / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    (bpe_run.dir / "tokenizer.json").unlink()  # the copy in the run dir is for the user: checkpoints hold their own
    model, _ = model_from_checkpoint(bpe_run.dir / "checkpoints" / "last.ckpt")
    assert model.tokenizer.fingerprint == tok.fingerprint


def test_sample_and_eval_use_the_checkpoints_tokenizer(bpe_run, tmp_path):
    r = run_cli("sample.py", f"ckpt={bpe_run.dir}", "prompt=每一次", "sampling=greedy", "max_new_tokens=8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.split("--- sample 1/1 ---\n", 1)[1]
    assert out.startswith("每一次") and any("\u4e00" <= c <= "\u9fff" for c in out[3:]) and "\ufffd" not in out
    r = run_cli("eval.py", f"ckpt={bpe_run.dir}", "bench=bpb", "data=text", f"data.path={CHINESE}", "data.max_length=32",
                f"hydra.run.dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    m, info = res["metrics"], res["info"]
    # bits per byte divides by the UTF-8 bytes of the text under the bpe's ids (about 3 bytes per Chinese character)
    assert 0 < m["bpb"]["score"] < m["loss"]["score"] / np.log(2) / 1.8


def test_compression_line_and_token_cache_per_tokenizer(bpe_run, tmp_path, capsys):
    from gptlit.data.tokenizer_cache import compression_line

    line = compression_line(bpe_run.dm.tokenizer, bpe_run.dm.corpus(), 0.1)
    assert line.startswith("tokenizer: bpe ") and "bytes/token on the training text (gpt2: 1.4" in line
    own = float(line.split(", ")[1].split()[0])
    assert own > 1.7


def test_resume_uses_the_checkpoints_tokenizer_and_refuses_another(bpe_run, tmp_path):
    last = bpe_run.dir / "checkpoints" / "last.ckpt"
    resumed = train(tmp_path, "data=text", f"data.path={CHINESE}", f"ckpt_path={last}", "trainer.max_steps=4")
    assert resumed.dm.tokenizer.fingerprint == bpe_run.dm.tokenizer.fingerprint  # not told: the checkpoint's
    assert resumed.trainer.global_step == 4
    r = run_cli("train.py", *TINY, "data=text", f"data.path={CHINESE}", f"ckpt_path={last}", "tokenizer=bpe",
                "tokenizer.vocab_size=1024", f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path)
    one_line_error(r, "bpe 5", "tokenizer.vocab_size=1024", str(last.name))


def test_init_from_gpt2_weights_refuses_another_tokenizer(tmp_path):
    r = run_cli("train.py", *TINY, "tokenizer=bpe", "model.init_from=/some/gpt2", f"hydra.run.dir={tmp_path / 'x'}",
                cwd=tmp_path)
    one_line_error(r, "model.init_from=/some/gpt2", "tokenizer=bpe", "tokenizer gpt2 50,257")


def test_an_exported_bpe_model_continues_with_its_tokenizer(bpe_run, tmp_path):
    from gptlit.interop.hf import load_pretrained

    r = run_cli("export.py", f"ckpt={bpe_run.dir}", "out=exported", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    model = load_pretrained(tmp_path / "exported")
    assert model.tokenizer.fingerprint == bpe_run.dm.tokenizer.fingerprint  # the folder's tokenizer.json
    run = train(tmp_path, "data=text", f"data.path={CHINESE}", f"model.init_from={tmp_path / 'exported'}")
    assert run.dm.tokenizer.fingerprint == bpe_run.dm.tokenizer.fingerprint and run.module.model.cfg.vocab_size == 512


def test_a_vocabulary_over_65536_ids_is_cached_as_uint32(tmp_path):
    from tokenizers import Tokenizer as HF, models, pre_tokenizers

    from gptlit.data.token_cache import TokenFile, ensure

    words = [f"w{i}" for i in range(70_000)]
    hf = HF(models.WordLevel({**{w: i for i, w in enumerate(words)}, T.EOT_TOKEN: 70_000, "[UNK]": 70_001},
                             unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.save(str(tmp_path / "big.json"))
    tok = T.from_file(tmp_path / "big.json")
    f = tmp_path / "c.txt"
    f.write_text("w1 w69999 w65536\nw3", encoding="utf-8")
    got = ensure(Corpus("c", files=(f,)), tmp_path / "cache", tokenizer=tok)
    assert got.dtype == np.dtype("<u4")
    assert TokenFile(got.path, dtype=got.dtype)[0:4].tolist() == [1, 69999, 65536, 3]


@pytest.mark.parametrize("args,pattern", [
    (["tokenizer=bpe", "tokenizer.vocab_size=100"], "tokenizer.vocab_size=100 is too small"),
    (["tokenizer=file", "tokenizer.path=nowhere/tokenizer.json"], "tokenizer.path=nowhere/tokenizer.json: no such file"),
    (["tokenizer=file", "tokenizer.path=bad.json"], "is not a Hugging Face tokenizer.json"),
])
def test_bad_tokenizer_settings_exit_2_before_any_cache_file(tmp_path, args, pattern):
    (tmp_path / "bad.json").write_text("[1, 2, 3]")
    cache = tmp_path / "cache"
    r = run_cli("train.py", *TINY, "data=text", f"data.path={CHINESE}", *args, f"data.cache_dir={cache}",
                f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path)
    one_line_error(r, pattern)
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-written


def test_damaged_checkpoint_tokenizer_is_one_line(bpe_run, tmp_path):
    from gptlit.interop.checkpoints import load_checkpoint

    ckpt = dict(load_checkpoint(bpe_run.dir / "checkpoints" / "last.ckpt"))
    ckpt["tokenizer"] = {**ckpt["tokenizer"], "json": ckpt["tokenizer"]["json"][:100]}
    torch.save(ckpt, tmp_path / "damaged.ckpt")
    r = run_cli("sample.py", "ckpt=damaged.ckpt", "max_new_tokens=2", cwd=tmp_path)
    one_line_error(r, "damaged.ckpt: its stored tokenizer", "another checkpoint")


# ---- export: transformers gives sample.py's greedy text, offline, for every kind ---------------------


def greedy_parity(model, folder: Path, prompt: str, n: int = 12) -> str:
    transformers = pytest.importorskip("transformers")
    from gptlit.interop.hf import write_hf_folder
    from gptlit.model.generate import SamplingConfig, generate_text

    files = {f.name for f in write_hf_folder(model, folder, tokenizer=True)}
    assert {"tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"} <= files
    ours = generate_text(model, prompt, SamplingConfig(temperature=0.0, max_new_tokens=n, eos_id=None))
    os.environ["HF_HUB_OFFLINE"] = "1"
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    assert ids[0].tolist() == T.tokenizer_of(model).encode(prompt)
    with torch.no_grad():
        out = hf.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id,
                          eos_token_id=None, attention_mask=torch.ones_like(ids))
    theirs = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=False)
    assert theirs == ours
    return ours


def randomized(model, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    model.zero_padding_rows()
    return model.eval()


def test_export_gpt2_tokenizer_gives_the_same_greedy_text(tmp_path):
    from gptlit.model.config import GPTConfig
    from gptlit.model.gpt import GPT

    greedy_parity(randomized(GPT(GPTConfig.from_name("nano"))), tmp_path / "gpt2", "Every effort moves you")


def test_export_bpe_checkpoint_gives_the_same_greedy_text(bpe_run, tmp_path):
    from gptlit.interop.checkpoints import model_from_checkpoint

    model, _ = model_from_checkpoint(bpe_run.dir / "checkpoints" / "last.ckpt")
    text = greedy_parity(randomized(model), tmp_path / "bpe", "每一次努力")
    assert text


def test_file_tokenizer_trains_and_exports(bpe_run, tmp_path):
    saved = bpe_run.dm.tokenizer.save(tmp_path / "tok")
    run = train(tmp_path, "tokenizer=file", f"tokenizer.path={saved[0]}", "data=text", f"data.path={CHINESE}")
    assert run.module.model.cfg.vocab_size == bpe_run.dm.tokenizer.vocab_size
    from gptlit.interop.checkpoints import model_from_checkpoint

    model, _ = model_from_checkpoint(run.dir / "checkpoints" / "last.ckpt")
    assert model.tokenizer.kind == "file"
    greedy_parity(randomized(model), tmp_path / "file", "我们在学习")


def test_compress_command_prints_bytes_per_token_side_by_side(bpe_run, tmp_path):
    r = run_cli("compress.py", str(CHINESE), str(REPO / "README.md"), f"tokenizer={bpe_run.dir}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| ") and "chinese.txt" in ln]
    gpt2, own = (float(x) for x in rows[0].strip("| ").split(" | ")[2:4])
    assert gpt2 < 1.6 and own > 1.7
    one_line_error(run_cli("compress.py", str(CHINESE), "tokenizer=nowhere.json", cwd=tmp_path), "nowhere.json")
