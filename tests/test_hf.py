"""OpenAI GPT-2 weights: loading Hugging Face folders and the book's .pth files, export, train.py integration.

Parity is checked against transformers' GPT2LMHeadModel with tiny random weights; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptlit.model.config import GPTConfig
from gptlit.data.windows import num_windows
from gptlit.core.errors import UserError
from gptlit.model.generate import SamplingConfig, generate
from gptlit.interop.hf import load_pretrained, read_pretrained, write_hf_folder
from gptlit.model.gpt import GPT
from gptlit.model.tokenizer import encode

REPO = Path(__file__).resolve().parents[1]


def export_cli():
    """The root export.py command line as a module (its main(argv) runs in-process)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_cli", REPO / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
TINY = dict(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=50257)


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights that make every parameter matter: matrices, biases and LayerNorm gains/shifts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif name.endswith("weight"):  # LayerNorm gain (the only 1-D weights)
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    if isinstance(model, GPT):
        model.zero_padding_rows()
    return model.eval()


def tiny_gptlit(**overrides) -> GPT:
    return randomize_(GPT(GPTConfig.from_name("nano", **overrides)), seed=1)


def to_book_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """A gptlit model in the layout of the book's GPTModel (rasbt/LLMs-from-scratch)."""
    sd, cfg = model.state_dict(), model.cfg
    V, L = cfg.vocab_size, cfg.context_length
    out = {"tok_emb.weight": sd["tok_emb.weight"][:V].clone(), "pos_emb.weight": sd["pos_emb.weight"].clone()}
    for i in range(cfg.n_layers):
        g, b = f"blocks.{i}.", f"trf_blocks.{i}."
        for kind in ("weight", "bias") if cfg.qkv_bias else ("weight",):
            for name, part in zip(("W_query", "W_key", "W_value"), sd[f"{g}attn.qkv.{kind}"].chunk(3)):
                out[f"{b}att.{name}.{kind}"] = part.clone()
        out[f"{b}att.mask"] = torch.triu(torch.ones(L, L), diagonal=1)  # the book's causal-mask buffer
        for book, ours in (("att.out_proj", "attn.proj"), ("ff.layers.0", "mlp.fc"), ("ff.layers.2", "mlp.proj")):
            out[f"{b}{book}.weight"] = sd[f"{g}{ours}.weight"].clone()
            out[f"{b}{book}.bias"] = sd[f"{g}{ours}.bias"].clone()
        for book, ours in (("norm1", "ln1"), ("norm2", "ln2")):
            out[f"{b}{book}.scale"] = sd[f"{g}{ours}.weight"].clone()
            out[f"{b}{book}.shift"] = sd[f"{g}{ours}.bias"].clone()
    out["final_norm.scale"], out["final_norm.shift"] = sd["ln_f.weight"].clone(), sd["ln_f.bias"].clone()
    out["out_head.weight"] = sd["head.weight"][:V].clone()
    return out


@pytest.fixture(scope="module")
def hf_model():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    return randomize_(transformers.GPT2LMHeadModel(transformers.GPT2Config(**TINY)))


@pytest.fixture(scope="module")
def hf_dirs(hf_model, tmp_path_factory) -> dict[str, Path]:
    """The tiny model saved as safetensors (HF's own layout), as a pytorch_model.bin like OpenAI's, and sharded."""
    st = tmp_path_factory.mktemp("hf_safetensors")
    hf_model.save_pretrained(st)
    assert (st / "model.safetensors").is_file()
    pt = tmp_path_factory.mktemp("hf_bin")
    hf_model.save_pretrained(pt, safe_serialization=False)
    if not (pt / "pytorch_model.bin").is_file():  # transformers 5 writes safetensors regardless
        (pt / "model.safetensors").unlink()
        # OpenAI's own file: no "transformer." prefix, no lm_head, causal-mask buffers included
        sd = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
        for i in range(TINY["n_layer"]):
            sd[f"h.{i}.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
            sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        torch.save(sd, pt / "pytorch_model.bin")
    sharded = tmp_path_factory.mktemp("hf_sharded")
    hf_model.save_pretrained(sharded, max_shard_size="1MB")
    assert (sharded / "model.safetensors.index.json").is_file()
    return {"safetensors": st, "bin": pt, "sharded": sharded}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    from pydoc_data.topics import topics

    f = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    f.write_text("\n\n".join(topics[k] for k in sorted(topics)[2:4]), encoding="utf-8")  # about 1,800 tokens
    return f


def hf_logits(hf_model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(input_ids=idx).logits


# loading --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["safetensors", "bin", "sharded"])
def test_logits_match_transformers(hf_model, hf_dirs, fmt):
    model = load_pretrained(hf_dirs[fmt])
    c = model.cfg
    assert (c.vocab_size, c.context_length, c.emb_dim, c.n_heads, c.n_layers) == (50257, 64, 64, 4, 2)
    assert c.qkv_bias and c.tie_embeddings and c.drop_rate == 0.0
    assert model.head.weight is model.tok_emb.weight
    assert model.tok_emb.weight[50257:].abs().sum() == 0  # padding rows stay zero
    idx = torch.randint(0, 50257, (3, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(idx)
    theirs = hf_logits(hf_model, idx)
    assert ours.shape == theirs.shape == (3, 64, 50257)
    assert theirs.abs().max() > 1  # the weights are far from a trivial model
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_greedy_tokens_match_transformers(hf_model, hf_dirs):
    model = load_pretrained(hf_dirs["safetensors"])
    prompt = torch.randint(0, 50257, (2, 10), generator=torch.Generator().manual_seed(4))
    ours = generate(model, prompt, SamplingConfig(temperature=0, max_new_tokens=30, eos_id=None))
    ids = prompt
    for _ in range(30):  # plain argmax, the whole sequence every step
        ids = torch.cat([ids, hf_logits(hf_model, ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert ours.shape == (2, 40)
    assert torch.equal(ours, ids)
    assert len(set(ids[0, 10:].tolist())) > 1  # not a degenerate repeat of one token


def test_shorter_context_slices_positions(hf_model, hf_dirs):
    model = load_pretrained(hf_dirs["safetensors"], context_length=16, drop_rate=0.1)
    assert model.cfg.context_length == 16 and model.pos_emb.weight.shape == (16, 64) and model.cfg.drop_rate == 0.1
    idx = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf_logits(hf_model, idx), atol=1e-4, rtol=0)


# the book's layout ----------------------------------------------------------------------------
@pytest.mark.parametrize("tied,qkv_bias", [(True, True), (False, False)])
def test_book_state_dict(tmp_path, tied, qkv_bias):
    ref = tiny_gptlit(tie_embeddings=tied, qkv_bias=qkv_bias)
    f = tmp_path / "gpt2-tiny.pth"
    torch.save(to_book_state_dict(ref), f)
    with pytest.raises(UserError, match="emb_dim=64 is not one of GPT-2's sizes"):
        load_pretrained(f)
    model = load_pretrained(f, n_heads=4)
    assert model.cfg.tie_embeddings == tied and model.cfg.qkv_bias == qkv_bias
    assert (model.head.weight is model.tok_emb.weight) == tied
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), ref(idx), atol=1e-5, rtol=0)


def test_book_checkpoint_with_optimizer_and_gpt2_head_count(tmp_path):
    # emb_dim 768 is GPT-2 small's width, so 12 heads are inferred; a small vocabulary keeps it light
    ref = randomize_(GPT(GPTConfig(vocab_size=100, context_length=8, emb_dim=768, n_heads=12, n_layers=1, drop_rate=0.0)))
    f = tmp_path / "model_and_optimizer.pth"
    torch.save({"model_state_dict": to_book_state_dict(ref), "optimizer_state_dict": {}}, f)
    cfg, state = read_pretrained(tmp_path)  # a folder with one .pth
    assert (cfg.n_heads, cfg.vocab_size, cfg.context_length, cfg.n_layers) == (12, 100, 8, 1)
    model = load_pretrained(f)
    idx = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), ref(idx), atol=1e-5, rtol=0)


# errors ---------------------------------------------------------------------------------------
def _copy_hf(src: Path, dst: Path, **config_changes) -> Path:
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **config_changes}))
    (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    return dst


@pytest.mark.parametrize(
    "change,pattern",
    [
        ({"activation_function": "relu"}, r'activation_function="relu" is not supported'),
        ({"architectures": ["GPT2ForSequenceClassification"]}, r'architectures=\["GPT2ForSequenceClassification"\] is not supported'),
        ({"model_type": "llama"}, r'model_type="llama" is not supported'),
        ({"layer_norm_epsilon": 1e-6}, r"layer_norm_epsilon=1e-06 is not supported"),
        ({"n_embd": 128, "n_head": 4}, r"tensor wte.weight has shape \(50257, 64\), but the config .* needs \(50257, 128\)"),
        ({"n_positions": 32}, r"tensor wpe.weight has shape \(64, 64\), but the config .* needs \(32, 64\)"),
    ],
)
def test_config_errors(hf_dirs, tmp_path, change, pattern):
    bad = _copy_hf(hf_dirs["safetensors"], tmp_path / "bad", **change)
    with pytest.raises(UserError, match=pattern):
        load_pretrained(bad)


def test_path_errors(hf_dirs, tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        load_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json .* nor a .pth"):
        load_pretrained(tmp_path / "empty")
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    (only_config / "config.json").write_text((hf_dirs["safetensors"] / "config.json").read_text())
    with pytest.raises(UserError, match="no model.safetensors or pytorch_model.bin"):
        load_pretrained(only_config)
    broken = _copy_hf(hf_dirs["safetensors"], tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_pretrained(broken)


def test_unsafe_pickle_is_refused(tmp_path):
    f = tmp_path / "whole_model.pth"
    torch.save(GPT(GPTConfig.from_name("nano")), f)  # a pickled module object, not a state dict
    with pytest.raises(UserError) as e:
        load_pretrained(f)
    msg = str(e.value)
    assert "refused" in msg and "arbitrary Python objects" in msg and "will not load it unsafely" in msg
    assert "gptlit.model.gpt.GPT" in msg and "\n" not in msg


def test_missing_and_unexpected_tensors(tmp_path):
    sd = to_book_state_dict(tiny_gptlit())
    del sd["trf_blocks.1.ff.layers.2.bias"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(UserError, match="tensor trf_blocks.1.ff.layers.2.bias is missing"):
        load_pretrained(tmp_path / "missing.pth", n_heads=4)
    sd = to_book_state_dict(tiny_gptlit())
    sd["trf_blocks.0.att.W_query.weight"] = torch.zeros(64, 32)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(UserError, match=r"trf_blocks.0.att.W_query.weight has shape \(64, 32\).* needs \(64, 64\)"):
        load_pretrained(tmp_path / "shape.pth", n_heads=4)
    sd = to_book_state_dict(tiny_gptlit())
    sd["classifier.weight"] = torch.zeros(2, 64)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(UserError, match="unexpected tensors classifier.weight"):
        load_pretrained(tmp_path / "extra.pth", n_heads=4)


# export ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("tied,qkv_bias", [(True, True), (False, True), (True, False), (False, False)])
def test_export_loads_in_transformers(tmp_path, tied, qkv_bias):
    transformers = pytest.importorskip("transformers")
    model = tiny_gptlit(tie_embeddings=tied, qkv_bias=qkv_bias)
    files = write_hf_folder(model, tmp_path / "out")
    assert sorted(f.name for f in files) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is tied and cfg["vocab_size"] == 50257 and cfg["n_positions"] == 64
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    assert hf.lm_head.weight.shape == (50257, 64)
    assert (hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()) == tied
    if not qkv_bias:
        assert hf.transformer.h[0].attn.c_attn.bias.abs().sum() == 0
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ours = model(idx)
    torch.testing.assert_close(hf_logits(hf, idx), ours, atol=1e-4, rtol=0)
    back = load_pretrained(tmp_path / "out")  # and back into gptlit
    assert back.cfg.tie_embeddings == tied and back.cfg.qkv_bias
    with torch.no_grad():
        torch.testing.assert_close(back(idx), ours, atol=1e-5, rtol=0)


def test_gptlit_does_not_import_transformers():
    # (lightning itself may import transformers when it is installed, so gptlit.run.build is checked by its source)
    code = "import sys, gptlit.interop.hf, gptlit.interop.checkpoints, export; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    for f in (REPO / "gptlit").glob("*.py"):
        assert "import transformers" not in f.read_text() and "from transformers" not in f.read_text(), f


# train.py integration -------------------------------------------------------------------------
def compose(overrides: list[str], hydra_config: bool = False):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides, return_hydra_config=hydra_config)


def common(out: Path, text_file: Path) -> list[str]:
    return [
        "data=text", f"data.path={text_file}", "data.batch_size=8", "trainer.precision=32-true",
        "trainer.accelerator=cpu", "++trainer.enable_progress_bar=false", "callbacks.progress_bar=null",
        f"paths.output_dir={out}", "sampling.every_n_steps=0",
    ]


def test_validate_pretrained_equals_transformers_loss(hf_model, hf_dirs, text_file, tmp_path):
    from gptlit.run.runner import run

    cfg = compose(["task=validate", f"model.init_from={hf_dirs['safetensors']}", "data.max_length=32", "~logger",
                   *common(tmp_path, text_file)])
    metrics = run(cfg)
    from gptlit.run.model_source import model_for_run
    from gptlit.run.plan import resolve

    plan = resolve(cfg, model_for_run)  # the run's model: taken from the weights, not preset mini
    assert plan.model.emb_dim == 64 and plan.model.context_length == 64 and plan.data["max_length"] == 32
    # every window of the whole text: 32 inputs + 1 target token each, non-overlapping
    tokens = torch.tensor(encode(text_file.read_text(encoding="utf-8")))
    n = num_windows(len(tokens), 32, 32)
    windows = torch.stack([tokens[i * 32 : i * 32 + 33] for i in range(n)])
    with torch.no_grad():  # HF shifts labels itself: logits at t predict labels at t + 1
        want = hf_model(input_ids=windows, labels=windows).loss.item()
    assert n > 40
    assert metrics["val/loss"] == pytest.approx(want, abs=1e-4)
    assert metrics["val/ppl"] == pytest.approx(torch.exp(torch.tensor(want)).item(), rel=1e-4)


def test_init_from_contradiction_is_an_error(hf_dirs, text_file, tmp_path):
    from gptlit.run.runner import build_run

    base = [f"model.init_from={hf_dirs['safetensors']}", "~logger", *common(tmp_path, text_file)]
    with pytest.raises(UserError, match=r"model.emb_dim=128 \((config|command line)\) contradicts the weights in .* \(64\); use model=nano"):
        build_run(compose([*base, "model.emb_dim=128"]))
    with pytest.raises(UserError, match="model.context_length=128 .* exceeds the 64 positions"):
        build_run(compose([*base, "model=nano", "model.context_length=128"]))
    with pytest.raises(UserError, match=r"model.init_from=.*missing: .*no such file or folder"):
        build_run(compose([*base, f"model.init_from={tmp_path / 'missing'}"]))


def test_command_line_overrides_must_agree_with_weights(hf_dirs, text_file, tmp_path):
    """As under train.py: Hydra records the command line, so an explicitly picked preset counts."""
    from hydra.core.hydra_config import HydraConfig

    from gptlit.run.runner import build_run

    base = [f"model.init_from={hf_dirs['safetensors']}", "~logger", *common(tmp_path, text_file)]
    try:
        cfg = compose([*base, "model=small"], hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with pytest.raises(UserError, match=r"model.emb_dim=768 \(preset small\) contradicts .* use model=nano"):
            build_run(cfg)
        cfg = compose([*base, "model=nano", "model.qkv_bias=false"], hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with pytest.raises(UserError, match=r"model.qkv_bias=false \(command line\) contradicts .* \(true\); drop the override"):
            build_run(cfg)
        cfg = compose([*base, "model.context_length=16"], hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        _, module, _, _ = build_run(cfg)  # a shorter context: pos_emb sliced, the rest from the weights
        assert module.model.cfg.context_length == 16 and module.model.cfg.emb_dim == 64
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.slow
def test_cli_rejects_preset_that_contradicts_weights(hf_dirs, text_file, tmp_path):
    args = [sys.executable, str(REPO / "train.py"), "model=small", f"model.init_from={hf_dirs['safetensors']}",
            "data=text", f"data.path={text_file}", f"hydra.run.dir={tmp_path}"]
    r = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    assert "error: model.emb_dim=768 (preset small) contradicts the weights in" in r.stderr
    assert "use model=nano or drop the override" in r.stderr


def test_continue_pretraining_validate_checkpoint_and_export(hf_dirs, text_file, tmp_path):
    """Train from the pretrained weights, validate the checkpoint without repeating model=, export it."""
    transformers = pytest.importorskip("transformers")
    from gptlit.interop.checkpoints import model_from_checkpoint
    export_main = export_cli().main
    from gptlit.run.runner import run

    run_dir = tmp_path / "run"
    run(compose([f"model.init_from={hf_dirs['bin']}", "model.context_length=32", "trainer.max_steps=3",
                 "callbacks.early_stopping=null", *common(run_dir, text_file)]))
    best = run_dir / "checkpoints" / "best.ckpt"
    model, _ = model_from_checkpoint(best)
    assert model.cfg.context_length == 32 and model.cfg.emb_dim == 64

    cfg = compose(["task=validate", f"ckpt_path={run_dir}", "~logger", *common(tmp_path / "val", text_file)])
    metrics = run(cfg)  # preset mini is not repeated: the config comes from the checkpoint
    tokens = torch.tensor(encode(text_file.read_text(encoding="utf-8")))
    windows = torch.stack([tokens[i * 32 : i * 32 + 33] for i in range(num_windows(len(tokens), 32, 32))])
    with torch.no_grad():
        want = model(windows[:, :-1], windows[:, 1:]).item()
    assert metrics["val/loss"] == pytest.approx(want, abs=1e-4)

    export_main([f"ckpt={run_dir}", f"out={tmp_path / 'exported'}"])
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "exported").eval()
    idx = windows[:2, :-1]
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(hf, idx), model(idx), atol=1e-4, rtol=0)


def test_export_cli_errors(tmp_path, capsys):
    export_main = export_cli().main

    for argv, pattern in (
        ([f"ckpt={tmp_path / 'nope'}", "out=x"], "no such file or folder"),
        ([f"ckpt={tmp_path}"], "out= is missing"),
        (["ckpt=a", "out=b", "dtype=fp16"], "unknown argument dtype"),
    ):
        with pytest.raises(SystemExit) as e:
            export_main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and pattern in err


def test_exported_weights_follow_the_umask(tmp_path):
    # safetensors writes 0600; the weights were readable by their owner only, unlike config.json
    import os

    old = os.umask(0o022)
    try:
        files = write_hf_folder(tiny_gptlit(), tmp_path / "out")
    finally:
        os.umask(old)
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {"config.json": "0o644", "model.safetensors": "0o644"}
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_a_failed_config_write_leaves_the_previous_config_whole(tmp_path, monkeypatch):
    """config.json is written atomically like every file gptlit writes (gptlit.core.files): a write that fails
    half-way leaves the earlier export's config.json as it was, and no temporary file."""
    import errno
    import os
    from pathlib import Path

    out = tmp_path / "out"
    write_hf_folder(tiny_gptlit(), out)
    before = (out / "config.json").read_text()
    real = Path.write_text

    def half_then_full_disk(self, data, *args, **kwargs):
        if self.name.endswith("config.json") or "config.json" in self.name:
            real(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", half_then_full_disk)
    with pytest.raises(Exception):
        write_hf_folder(tiny_gptlit(n_layers=1), out)
    monkeypatch.undo()
    assert (out / "config.json").read_text() == before
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


# what GPT-2 makes of each model field ----------------------------------------------------------
def test_every_model_field_says_what_gpt2_makes_of_it():
    """A new GPTConfig field needs an entry in hf.HF_FIELDS (a config.json key, the value GPT-2 requires, or not exported)."""
    from gptlit.interop.hf import HF_FIELDS

    assert set(HF_FIELDS) == {f.name for f in dataclasses.fields(GPTConfig)}


@dataclasses.dataclass
class _NormConfig(GPTConfig):  # a model field GPT-2 has no key for, as a future RMSNorm option would be
    norm: str = "rmsnorm"


def test_export_refuses_a_field_gpt2_cannot_express(tmp_path, monkeypatch):
    from gptlit.interop import hf

    model = GPT(GPTConfig.from_name("nano"))
    model.cfg = _NormConfig(**model.cfg.to_dict())
    with pytest.raises(UserError, match=r"model.norm=rmsnorm has no Hugging Face GPT-2 equivalent.*HF_FIELDS"):
        write_hf_folder(model, tmp_path / "unclassified")
    monkeypatch.setitem(hf.HF_FIELDS, "norm", hf.GPT2Only("layernorm"))
    with pytest.raises(UserError, match=r"model.norm=rmsnorm cannot be expressed.*model.norm=layernorm"):
        write_hf_folder(model, tmp_path / "refused")
    assert not (tmp_path / "unclassified").exists() and not (tmp_path / "refused").exists()  # nothing half-written
    model.cfg = _NormConfig(**{**model.cfg.to_dict(), "norm": "layernorm"})
    assert [f.name for f in write_hf_folder(model, tmp_path / "ok")] == ["config.json", "model.safetensors"]


def test_export_cli_refuses_with_one_line(tmp_path, monkeypatch, capsys):
    from gptlit.interop import hf

    cfg = GPTConfig.from_name("nano", qkv_bias=False)
    state = {f"model.{k}": v for k, v in GPT(cfg).state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"model": cfg.to_dict()}}, tmp_path / "x.ckpt")
    monkeypatch.setitem(hf.HF_FIELDS, "qkv_bias", hf.GPT2Only(True))  # as if GPT-2 could not take zero biases
    with pytest.raises(SystemExit) as e:
        export_cli().main([f"ckpt={tmp_path / 'x.ckpt'}", f"out={tmp_path / 'out'}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.qkv_bias=false cannot be expressed" in err
    assert not (tmp_path / "out").exists()


# export.py: an existing export, a read-only folder, an atomic overwrite ----------------------------
def nano_checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    cfg = GPTConfig.from_name("nano")
    state = {f"model.{k}": v for k, v in GPT(cfg).state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"model": cfg.to_dict()}}, path)
    return path


def folder_bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


# what export.py writes: the weights and their config, and the checkpoint's tokenizer (AutoTokenizer's files)
EXPORTED = ["config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]


def test_export_over_an_existing_export_needs_overwrite_and_replaces_it_whole(tmp_path, capsys, monkeypatch):
    from gptlit.run import export as export_module

    a, b = nano_checkpoint(tmp_path / "a.ckpt", 0), nano_checkpoint(tmp_path / "b.ckpt", 1)
    out = tmp_path / "exported"
    export_cli().main([f"ckpt={a}", f"out={out}"])
    first = folder_bytes(out)
    assert sorted(first) == EXPORTED
    capsys.readouterr()

    # before: the second export replaced the first silently
    with pytest.raises(SystemExit) as e:
        export_cli().main([f"ckpt={b}", f"out={out}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err == f"error: out={out} already holds an export ({out}); add overwrite=true to replace it, or give another folder\n"
    assert folder_bytes(out) == first

    # a failure while the new export is written leaves the old one whole, and no temporary folder
    def half_then_fail(model, folder, **kwargs):
        (Path(folder) / "config.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "model.safetensors"))

    monkeypatch.setattr(export_module, "write_hf_folder", half_then_fail)
    with pytest.raises(SystemExit) as e:
        export_cli().main([f"ckpt={b}", f"out={out}", "overwrite=true"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: cannot write out={out}: no space left on the device (")
    assert folder_bytes(out) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "b.ckpt", "exported"]
    monkeypatch.undo()

    export_cli().main([f"ckpt={b}", f"out={out}", "overwrite=true"])
    assert f"replaced the export that was in {out}" in capsys.readouterr().out
    second = folder_bytes(out)
    assert second["model.safetensors"] != first["model.safetensors"]
    from gptlit.interop.hf import load_pretrained
    from gptlit.interop.checkpoints import model_from_checkpoint

    want, _ = model_from_checkpoint(b)
    got = load_pretrained(out)
    torch.testing.assert_close(got.state_dict()["tok_emb.weight"], want.state_dict()["tok_emb.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "b.ckpt", "exported"]  # the old one removed


def test_export_never_replaces_a_folder_of_other_files(tmp_path, capsys):
    ckpt = nano_checkpoint(tmp_path / "a.ckpt", 0)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(SystemExit) as e:
        export_cli().main([f"ckpt={ckpt}", f"out={tmp_path / 'notes'}", "overwrite=true"])
    assert e.value.code == 2 and "is a folder of other files" in capsys.readouterr().err
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    export_cli().main([f"ckpt={ckpt}", f"out={tmp_path / 'empty'}"])  # a new folder, parents made
    (tmp_path / "empty2").mkdir()
    export_cli().main([f"ckpt={ckpt}", f"out={tmp_path / 'empty2'}"])  # an empty folder is no export
    assert sorted(p.name for p in (tmp_path / "empty2").iterdir()) == EXPORTED


def test_export_into_a_read_only_folder_is_one_line(tmp_path, capsys):
    # before: 13-28 lines of tracebacks (PermissionError / OSError: read-only file system), exit 1
    ckpt = nano_checkpoint(tmp_path / "a.ckpt", 0)
    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(ro)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a read-only tmpfs here ({r.stderr.strip() or r.returncode}); needs root")
    try:
        with pytest.raises(SystemExit) as e:
            export_cli().main([f"ckpt={ckpt}", f"out={ro / 'exported'}"])
    finally:
        subprocess.run(["umount", str(ro)])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err == (f"error: cannot write out={ro / 'exported'}: read-only file system ({ro / 'exported'}); "
                   f"nothing was written; choose another folder with out=<folder>\n")
