"""eval.py and gptlit.evaluation: scoring against transformers' GPT2LMHeadModel, bits per byte against
task=validate's val/loss, the intervals, every bad input, the command line, and the callback in a tiny run.

The benchmark fixtures (tests/fixtures/eval/) are small hand-written files in HellaSwag's and LAMBADA's
formats; the models are tiny with random weights: nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from gptlit.core.errors import UserError
from gptlit.evaluation import stats
from gptlit.evaluation.benchmarks import read_hellaswag, read_lambada, spread
from gptlit.evaluation.scoring import score_choices, score_last_words
from gptlit.model.tokenizer import encode, get_tokenizer

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures" / "eval"
HELLASWAG, LAMBADA_JSONL, LAMBADA_TXT = FIX / "hellaswag_tiny.jsonl", FIX / "lambada_tiny.jsonl", FIX / "lambada_tiny.txt"


def tiny_hf(n_positions: int, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, n_positions=n_positions, vocab_size=50257))
    with torch.no_grad():  # larger than the default init, so that the endings' scores differ clearly
        for p in hf.parameters():
            p.normal_(0.0, 0.3)
    return hf.eval()


@pytest.fixture(scope="module", params=[64, 16], ids=["context64", "context16-cut"])
def pair(request, tmp_path_factory):
    """(transformers model, its Hugging Face folder, gptlit's model read from that folder). Context 16 cuts
    every fixture item's context from the left."""
    from gptlit.interop.hf import load_pretrained

    hf = tiny_hf(request.param)
    folder = tmp_path_factory.mktemp(f"hf{request.param}")
    hf.save_pretrained(folder)
    return hf, folder, load_pretrained(folder)


def reference(hf, ctx: list[int], cont: list[int]) -> tuple[list[float], bool]:
    """transformers' log-probabilities of `cont` after `ctx` (cut from the left to its positions + 1) and
    whether the argmax at each of those positions is the continuation token."""
    seq = (ctx + cont)[-(hf.config.n_positions + 1):]
    with torch.no_grad():
        lp = torch.log_softmax(hf(input_ids=torch.tensor([seq[:-1]])).logits[0].double(), dim=-1)
    rows = range(len(seq) - 1 - len(cont), len(seq) - 1)
    return [float(lp[r, seq[r + 1]]) for r in rows], all(int(lp[r].argmax()) == seq[r + 1] for r in rows)


# --- scoring against transformers -----------------------------------------------------------------

def test_multiple_choice_matches_transformers(pair):
    hf, _, ours = pair
    bench = read_hellaswag(HELLASWAG)
    res = score_choices(ours, bench.items)
    assert len(res) == 6
    for r in res:
        ctx = encode(r.item.context)
        ref = [reference(hf, ctx, encode(" " + e))[0] for e in r.item.endings]
        totals = [sum(x) for x in ref]
        means = [sum(x) / len(x) for x in ref]
        np.testing.assert_allclose(r.totals, totals, atol=1e-4, rtol=0)
        np.testing.assert_allclose(r.means, means, atol=1e-4, rtol=0)
        assert r.pred == int(np.argmax(totals)) and r.pred_norm == int(np.argmax(means))
        assert (r.cut > 0) == (len(ctx) + max(len(encode(" " + e)) for e in r.item.endings) > hf.config.n_positions + 1)
    if hf.config.n_positions == 16:
        assert all(r.cut > 0 for r in res)
    # the two scores do pick differently somewhere, so acc and acc_norm are not the same number by construction
    assert any(r.pred != r.pred_norm for r in res) or hf.config.n_positions == 16


def test_last_word_matches_transformers_and_its_greedy_decoding(pair):
    hf, _, ours = pair
    for path in (LAMBADA_JSONL, LAMBADA_TXT):
        items = read_lambada(path).items
        for r in score_last_words(ours, items):
            ctx, target = encode(r.item.context), encode(r.item.target)
            lps, greedy = reference(hf, ctx, target)
            assert r.logprob == pytest.approx(sum(lps), abs=1e-4)
            assert r.correct == greedy
            # the greedy completion, decoded token by token by transformers itself
            x = torch.tensor([ctx[-hf.config.n_positions:]])
            out = []
            with torch.no_grad():
                for _ in target:
                    nxt = int(hf(input_ids=x[:, -hf.config.n_positions:]).logits[0, -1].argmax())
                    out.append(nxt)
                    x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
            if r.cut == 0:  # with a cut, the positions shift as decoding goes on: only the teacher-forced check applies
                assert r.greedy == get_tokenizer().decode(out)


def test_a_model_that_knows_the_answer_gets_it():
    """Scoring picks the ending the model finds likelier: a model whose head always predicts one token
    gets the item whose ending is that token."""
    from gptlit.model.config import GPTConfig
    from gptlit.model.gpt import GPT
    from gptlit.evaluation.benchmarks import Choice

    model = GPT(GPTConfig(context_length=32, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0))
    word = encode(" apple")
    assert len(word) == 1
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.ln_f.bias.fill_(1.0)  # every position: the same hidden vector ...
        model.tok_emb.weight[word[0]] = 5.0  # ... whose dot product (tied head) is largest for " apple"
    item = Choice(1, "I ate an", ["pear", "apple", "orange"], 1)
    (r,) = score_choices(model, [item])
    assert r.pred == r.pred_norm == 1


# --- bits per byte ----------------------------------------------------------------------------------

def test_bpb_is_val_loss_in_bits_per_byte_on_the_same_windows(corpus, tmp_path):
    """bpb = val/loss / ln 2 * tokens / bytes, with val/loss from task=validate's code (GPTLitModule under a
    Trainer) on the same windows and the bytes counted by the tokenizer itself."""
    import lightning as L

    from gptlit.data.datamodule import GPTDataModule
    from gptlit.evaluation.bpb import score_corpus
    from gptlit.model.config import GPTConfig
    from gptlit.training.lit_module import GPTLitModule

    cfg = GPTConfig.from_name("nano")
    module = GPTLitModule(model=cfg.to_dict())
    dm = GPTDataModule(source="files", path=str(corpus), max_length=32, batch_size=4, val_all=True,
                       max_val_windows=20, eval_train_batches=0)
    trainer = L.Trainer(accelerator="cpu", precision="32-true", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    val_loss = float(trainer.validate(module, datamodule=dm, verbose=False)[0]["val/loss"])
    s = score_corpus(module.model, dm, batch_size=3)
    assert s.windows == 20 and s.tokens == 20 * 32
    enc = get_tokenizer()
    windows = [dm.val_set[i][1].tolist() for i in dm.val_indices()]
    assert s.bytes == sum(len(enc.decode_bytes(y)) for y in windows)  # one document: no separator among them
    assert s.loss == pytest.approx(val_loss, rel=1e-5)
    assert s.bpb == pytest.approx(val_loss / math.log(2) * s.tokens / s.bytes, rel=1e-5)
    assert len(s.doc_all_tokens) == 1 and s.units()[0] == "windows"


def test_bpb_leaves_document_separators_out_and_counts_documents(tmp_path):
    from gptlit.data.datamodule import GPTDataModule
    from gptlit.evaluation.bpb import score_corpus
    from gptlit.model.config import GPTConfig
    from gptlit.model.gpt import GPT
    from gptlit.model.tokenizer import EOT_ID

    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(["The cat sat on the mat and looked at the door. " * 6, "Rain fell on the old town all night. " * 7,
                              "Numbers: 12, 345, 6789 and café, naïve, über. " * 5]):
        (docs / f"{i}.txt").write_text(text, encoding="utf-8")
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("nano")).eval()
    dm = GPTDataModule(source="files", path=str(docs), max_length=16, stride=16, val_all=True, max_val_windows=None)
    s = score_corpus(model, dm)
    assert len(s.doc_all_tokens) == 3 and s.units()[0] == "documents"
    # independently: every window's targets, the separators left out of the nats and the bytes
    nats, nbytes, all_nats = 0.0, 0, 0.0
    enc = get_tokenizer()
    with torch.no_grad():
        for i in range(len(dm.val_set)):
            x, y = dm.val_set[i]
            lp = torch.nn.functional.cross_entropy(model(x[None])[0].double(), y, reduction="none")
            all_nats += float(lp.sum())
            keep = y != EOT_ID
            nats += float(lp[keep].sum())
            nbytes += len(enc.decode_bytes(y[keep].tolist()))
    assert s.tokens - s.text_tokens == 2  # the windows hold the two separators
    assert s.bytes == nbytes
    assert s.bpb == pytest.approx(nats / math.log(2) / nbytes, rel=1e-6)
    assert s.loss == pytest.approx(all_nats / s.tokens, rel=1e-6)
    assert s.doc_all_nats.sum() == pytest.approx(all_nats, rel=1e-6)  # fp32 log-probs summed per document vs the double ones above


# --- intervals --------------------------------------------------------------------------------------

def test_wilson_interval_is_the_textbook_one():
    k, n, z = 7, 10, 1.959963984540054
    p = k / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    e = stats.accuracy([1] * k + [0] * (n - k))
    assert (e.score, e.n) == (0.7, 10)
    assert e.low == pytest.approx(centre - half, abs=1e-9) and e.high == pytest.approx(centre + half, abs=1e-9)


def test_bootstrap_intervals_are_seeded_and_honest():
    rng = np.random.default_rng(3)
    num, den = rng.uniform(50, 150, 200), rng.uniform(80, 120, 200)
    a = stats.ratio(num, den, scale=1 / math.log(2), seed=1)
    assert a == stats.ratio(num, den, scale=1 / math.log(2), seed=1)  # same inputs, same interval
    assert a.low < a.score < a.high and a.n == 200
    small = stats.ratio(num[:20], den[:20], scale=1 / math.log(2), seed=1)
    assert small.high - small.low > a.high - a.low  # fewer documents, wider
    assert stats.ratio(num[:1], den[:1], seed=0).low is None  # one document: no interval, not a fake one
    same = stats.paired_difference(rng.integers(0, 2, 50), np.zeros(50), seed=0)
    assert same.low <= same.score <= same.high
    x = rng.integers(0, 2, 300)
    assert stats.paired_difference(x, x, seed=0).low == stats.paired_difference(x, x, seed=0).high == 0.0
    better = stats.paired_ratio_difference(num, den, num * 1.05, den, seed=0)
    assert better.high < 0  # a model with 5% more loss on every document: the difference excludes 0


# --- bad input ----------------------------------------------------------------------------------------

def _write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


GOOD = json.dumps({"ctx": "A man walks.", "endings": ["he runs.", "he sits."], "label": 0})
BAD_INPUTS = {
    "missing file": ("hellaswag", None, "no such file"),
    "malformed line": ("hellaswag", [GOOD, '{"ctx": "x", "endings": [', GOOD], "line 2: not valid JSON"),
    "label outside endings": ("hellaswag", [GOOD, GOOD.replace('"label": 0', '"label": 2')], "line 2: label=2 is outside the 2 endings"),
    "no label": ("hellaswag", [GOOD.replace('"label": 0', '"label": ""')], "line 1: no label"),
    "endings not a list": ("hellaswag", [GOOD.replace('["he runs.", "he sits."]', '"he runs."')], "line 1: `endings` must be a list"),
    "empty hellaswag": ("hellaswag", ["", "  "], "holds no items"),
    "empty lambada": ("lambada", [], "holds no items"),
    "lambada one word": ("lambada", ["A passage with a last word", "Lonely"], "line 2: the passage has no space"),
    "lambada jsonl no text": ("lambada.jsonl", ['{"text": "a b c"}', '{"passage": "a b c"}'], "line 2: no string `text` field"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_every_bad_input_is_one_line_naming_it(case, tmp_path):
    kind, lines, expect = BAD_INPUTS[case]
    task = kind.split(".")[0]
    path = tmp_path / "nowhere.jsonl" if lines is None else _write(tmp_path, "bench." + ("jsonl" if kind != "lambada" else "txt"), lines)
    reader = read_hellaswag if task == "hellaswag" else read_lambada
    with pytest.raises(UserError) as e:
        reader(str(path))
    msg = str(e.value)
    assert expect in msg and "\n" not in msg
    assert msg.startswith(f"bench.path={path}")


def test_a_continuation_longer_than_the_model_is_refused_by_line(tmp_path):
    from gptlit.model.config import GPTConfig
    from gptlit.model.gpt import GPT

    model = GPT(GPTConfig(context_length=8, emb_dim=16, n_heads=2, n_layers=1))
    p = _write(tmp_path, "long.jsonl", [GOOD, json.dumps({"ctx": "Once", "endings": ["a " * 20, "b"], "label": 1})])
    with pytest.raises(UserError, match=r"bench.path line 2: the continuation alone is \d+ tokens, more than the model's context of 8"):
        score_choices(model, read_hellaswag(p).items)


def test_the_original_release_fields_and_string_labels():
    items = read_hellaswag(HELLASWAG).items
    assert items[1].context == "A man clips a leash to his dog's collar and opens the front door. the dog"  # ctx_a + ctx_b
    assert items[2].label == 1  # "1"
    assert [it.line for it in items] == [1, 2, 3, 4, 6, 7]  # blank line 5 skipped, numbers kept
    labelled = read_hellaswag(HELLASWAG, with_activity_label=True).items
    assert labelled[0].context.startswith("Baking bread: A woman kneads")
    assert spread(10, 3) == [0, 4, 9] and spread(3, None) == [0, 1, 2]


# --- eval.py --------------------------------------------------------------------------------------------

def run_eval(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "eval.py"), *args, "device=cpu"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def only_dir(root: Path) -> Path:
    (found,) = root.glob("outputs/eval/*/*")
    return found


def eval_cfg(**values) -> dict:
    base = dict(ckpt=None, init_from=None, compare=None, limit=None, show=5, batch_size=8, device="cpu",
                confidence=0.95, bootstrap=200, seed=0, data={})
    return {**base, **values}


def test_cut_contexts_are_counted_and_reported_not_refused(tmp_path, capsys):
    from gptlit.evaluation.evaluate import evaluate

    hf = tiny_hf(16)
    hf.save_pretrained(tmp_path / "hf16")
    warnings = []
    out = evaluate(eval_cfg(init_from=str(tmp_path / "hf16"), bench={"name": "hellaswag", "path": str(HELLASWAG)}),
                   tmp_path / "out", warn=warnings.append)
    assert out["info"]["cut_contexts"] == 6 and out["info"]["n"] == 6
    assert len(warnings) == 1 and warnings[0].startswith("6 of 6 items were longer than the model's context of 16 tokens")
    written = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert written["metrics"]["acc"]["n"] == 6 and len(written["items"]) == 5


def test_a_multirun_ends_with_every_task_in_one_table(tmp_path, capsys):
    from omegaconf import OmegaConf

    from gptlit.evaluation.evaluate import EvalSummary, evaluate

    hf = tiny_hf(64)
    hf.save_pretrained(tmp_path / "hf")
    sweep = tmp_path / "sweep"
    for job, task, path in (("0_task=hellaswag", "hellaswag", HELLASWAG), ("1_task=lambada", "lambada", LAMBADA_JSONL)):
        evaluate(eval_cfg(init_from=str(tmp_path / "hf"), bench={"name": task, "path": str(path)}, show=0), sweep / job)
    capsys.readouterr()
    EvalSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    printed = capsys.readouterr().out
    rows = json.loads((sweep / "eval_summary.json").read_text())
    assert [(r["task"], r["metric"], r["n"]) for r in rows] == [("hellaswag", "acc", 6), ("hellaswag", "acc_norm", 6), ("lambada", "acc", 5)]
    assert "1_task=lambada" in printed and "acc_norm" in printed


def test_bpb_task_and_comparison_in_process(tmp_path, corpus):
    from gptlit.evaluation.evaluate import evaluate

    hf_a, hf_b = tiny_hf(64, seed=0), tiny_hf(32, seed=1)
    hf_a.save_pretrained(tmp_path / "a")
    hf_b.save_pretrained(tmp_path / "b")
    lines = []
    data = {"source": "files", "path": str(corpus), "max_length": None, "stride": None, "max_val_windows": 30}
    out = evaluate(eval_cfg(init_from=str(tmp_path / "a"), compare=str(tmp_path / "b"), bench={"name": "bpb"}, data=data),
                   tmp_path / "out", echo=lines.append)
    assert out["info"]["max_length"] == 32  # the shorter context of the two: the same windows for both
    m, c, d = out["metrics"], out["compare_metrics"], out["difference"]
    assert m["bpb"]["score"] == pytest.approx(m["loss"]["score"] / math.log(2) * out["info"]["tokens"] / out["info"]["bytes"])
    assert d["bpb"]["score"] == pytest.approx(m["bpb"]["score"] - c["bpb"]["score"], abs=1e-9)
    assert d["bpb"]["low"] <= d["bpb"]["score"] <= d["bpb"]["high"]
    assert "bootstrap over windows" in m["bpb"]["method"]  # one document: windows resampled, and said so
    assert any(line.startswith("task") and "difference" in line for line in lines)


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(max_workers=2) as ex:
        yield ex


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny training run with the HellaSwag callback every 2 steps (CSV logger): the run directory."""
    from conftest import TINY, compose_cfg, write_corpus
    from gptlit.run.runner import build_run

    root = tmp_path_factory.mktemp("eval_trained")
    corpus = write_corpus(root)
    cfg = compose_cfg([*TINY, "data=text", f"data.path={corpus}", "trainer.accelerator=cpu", "trainer.precision=32-true",
                       "logger=csv", "callbacks.lr_monitor=null", "+callbacks/eval_task=hellaswag",
                       f"callbacks.eval_task.path={HELLASWAG}", "callbacks.eval_task.every_n_steps=2",
                       "callbacks.eval_task.limit=4"], root / "run")
    dm, module, trainer, _ = build_run(cfg)
    trainer.fit(module, datamodule=dm)
    return root / "run", trainer


def test_callback_logs_a_fixed_subset_next_to_val_loss(trained):
    from gptlit.evaluation.callback import EvalTask

    run, trainer = trained
    cb = next(c for c in trainer.callbacks if isinstance(c, EvalTask))
    assert [it.line for it in cb.items] == [1, 3, 4, 7]  # 4 of the 6 items, spread evenly
    assert [s for s, _ in cb.history] == [2, 4]  # every 2 steps; the end (step 4) is not scored twice
    assert set(cb.history[0][1]) == {"eval/hellaswag/acc", "eval/hellaswag/acc_norm"}
    import csv

    rows = list(csv.DictReader(open(run / "csv" / "metrics.csv")))
    assert any(r.get("val/loss") for r in rows)
    logged = [(int(r["step"]), float(r["eval/hellaswag/acc_norm"])) for r in rows if r.get("eval/hellaswag/acc_norm")]
    assert logged == [(s, m["eval/hellaswag/acc_norm"]) for s, m in cb.history]
    assert "eval/hellaswag/acc_norm" in trainer.callback_metrics


def test_callback_without_a_file_stops_before_training(make_cfg):
    from gptlit.run.runner import build_run

    with pytest.raises(UserError, match=r"^callbacks.eval_task.path is required"):
        build_run(make_cfg("+callbacks/eval_task=lambada"))


def test_eval_py_on_pretrained_weights_and_on_a_run(trained, pool, tmp_path_factory):
    """The commands users type: init_from=<HF folder>, ckpt=<run dir> with compare=, and a bad file (exit 2, one line)."""
    run, _ = trained
    root = tmp_path_factory.mktemp("eval_cli")
    tiny_hf(64).save_pretrained(root / "hf")
    (root / "a").mkdir(), (root / "b").mkdir()
    a = pool.submit(run_eval, root / "a", f"init_from={root / 'hf'}", "bench=hellaswag", f"bench.path={HELLASWAG}")
    # the key's old spelling, task=, still works
    b = pool.submit(run_eval, root / "b", f"ckpt={run}", "task=lambada", f"task.path={LAMBADA_TXT}", f"compare={root / 'hf'}")
    c = run_eval(root, f"init_from={root / 'hf'}", "bench=hellaswag", "bench.path=missing/hellaswag_val.jsonl")
    a, b = a.result(), b.result()
    assert a.returncode == 0, a.stderr[-2000:]
    assert "item 5 (line 6)" in a.stdout and "item 6" not in a.stdout  # show=5
    assert any(line.split()[:3] == ["hellaswag", "acc_norm", "6"] for line in a.stdout.splitlines())
    out = only_dir(root / "a")
    res = json.loads((out / "eval.json").read_text())
    assert res["task"] == "hellaswag" and res["model"]["kind"] == "pretrained"
    assert 0 <= res["metrics"]["acc_norm"]["low"] <= res["metrics"]["acc_norm"]["score"] <= res["metrics"]["acc_norm"]["high"] <= 1
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert b.returncode == 0, b.stderr[-2000:]
    res = json.loads((only_dir(root / "b") / "eval.json").read_text())
    assert res["model"]["kind"] == "checkpoint" and res["model"]["step"] == 4 and res["compare"]["kind"] == "pretrained"
    assert res["metrics"]["acc"]["n"] == 3 and set(res["difference"]) == {"acc"}
    assert res["info"]["cut_contexts"] == 0
    assert c.returncode == 2
    err = c.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: bench.path=missing/hellaswag_val.jsonl: no such file")


@pytest.mark.parametrize("values, expect", [
    (dict(init_from="x"), "bench is required: bench=bpb | bench=hellaswag | bench=lambada"),
    (dict(bench={"name": "hellaswag", "path": str(HELLASWAG)}), "ckpt is required"),
    (dict(ckpt="a", init_from="b", bench={"name": "lambada", "path": str(LAMBADA_TXT)}), "give one of them"),
    (dict(ckpt=str(FIX), bench={"name": "bpb"}, show=-1), "show=-1 must be an integer >= 0"),
    (dict(ckpt=str(FIX), bench={"name": "bpb"}, limit=0), "limit=0 must be an integer >= 1 or null"),
    (dict(ckpt=str(FIX), bench={"name": "bpb"}, confidence=95), "confidence=95 must be between 0 and 1"),
    (dict(ckpt=str(FIX), bench={"name": "bpb"}), "has no checkpoints/best.ckpt or last.ckpt"),
], ids=["no task", "no model", "two models", "show", "limit", "confidence", "not a run"])
def test_bad_settings_are_one_line(values, expect, tmp_path):
    from gptlit.evaluation.evaluate import evaluate

    with pytest.raises(UserError) as e:
        evaluate(eval_cfg(**{"device": "cpu", **values}), tmp_path / "out")
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_ckpt_given_pretrained_weights_says_init_from(pair, tmp_path):
    from gptlit.evaluation.evaluate import evaluate

    _, folder, _ = pair
    with pytest.raises(UserError, match=rf"^ckpt={folder} holds pretrained weights .* use init_from={folder}$"):
        evaluate(eval_cfg(ckpt=str(folder), bench={"name": "hellaswag", "path": str(HELLASWAG)}), tmp_path / "out")


# --- the table of tasks -----------------------------------------------------------------------------------

def test_every_task_has_its_config_and_nothing_else():
    from gptlit.evaluation.tasks import TASKS, ItemTask

    assert sorted(p.stem for p in (REPO / "conf" / "bench").glob("*.yaml")) == sorted(TASKS)
    for name, task in TASKS.items():
        assert task.name == name and task.metrics and task.what
        if isinstance(task, ItemTask):
            import yaml

            conf = yaml.safe_load((REPO / "conf" / "bench" / f"{name}.yaml").read_text())
            assert set(conf) == {"name", "path", *task.options}, name  # the class's options, each default once
            assert conf["path"] == "${eval_data}/" + task.default_file


@pytest.mark.parametrize("values, expect", [
    (dict(bench={"name": "hellaswg"}), "bench=hellaswg is unknown: use one of bpb, hellaswag, lambada"),
    (dict(bench={"name": "hellaswag", "path": str(HELLASWAG), "text_key": "x"}),
     "bench.text_key is not a setting of bench=hellaswag: use one of path, with_activity_label"),
], ids=["unknown task", "unknown option"])
def test_unknown_tasks_and_options_are_one_line_listing_the_table(values, expect, tmp_path):
    from gptlit.evaluation.evaluate import evaluate

    with pytest.raises(UserError) as e:
        evaluate(eval_cfg(init_from="x", **values), tmp_path / "out")
    assert str(e.value).startswith(expect) and "\n" not in str(e.value)


def test_the_callback_takes_the_item_tasks_of_the_table():
    from gptlit.evaluation.callback import EvalTask

    with pytest.raises(UserError, match=r"^callbacks.eval_task.task=bpb is unknown: use one of hellaswag, lambada"):
        EvalTask("bpb", None, every_n_steps=2)
    cb = EvalTask("lambada", str(LAMBADA_JSONL), every_n_steps=2, limit=None, text_key="text")
    assert len(cb.items) == 5


def test_eval_py_bits_per_byte_and_an_unknown_task(trained, tmp_path):
    """bench=bpb on a run (it crashed with a TypeError before: min() of one context length), and bench=<unknown>."""
    from conftest import write_corpus

    run, _ = trained
    corpus = write_corpus(tmp_path)
    r = run_eval(tmp_path, f"ckpt={run}", "bench=bpb", "data=text", f"data.path={corpus}", "data.max_val_windows=4")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((only_dir(tmp_path) / "eval.json").read_text())
    assert res["task"] == "bpb" and set(res["metrics"]) == {"bpb", "loss", "ppl"} and res["info"]["windows"] == 4
    bad = run_eval(tmp_path, f"ckpt={run}", "task=hellaswg")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("error: bench=hellaswg is not a bench option: use one of bpb, hellaswag, lambada")


# --- a task added through the table: PIQA's format -----------------------------------------------------

PIQA = FIX / "piqa_tiny.jsonl"  # five items of our own in PIQA's format (goal, sol1, sol2, label)


def test_piqa_format_is_read_and_scored_as_two_choices(tmp_path):
    from gptlit.evaluation.evaluate import evaluate
    from gptlit.evaluation.tasks import TASKS

    items = TASKS["piqa"].read_file(PIQA).items
    assert [it.line for it in items] == [1, 2, 3, 5, 6] and [it.label for it in items] == [0, 1, 0, 0, 1]  # "0" read
    assert items[0].context == "Question: Keep a cut apple from turning brown.\nAnswer:"
    assert items[1].endings == ["Put it in the freezer overnight.", "Switch it off and leave it in a bowl of dry rice."]
    tiny_hf(64).save_pretrained(tmp_path / "hf")
    out = evaluate(eval_cfg(init_from=str(tmp_path / "hf"), bench={"name": "piqa", "path": str(PIQA)}, show=1),
                   tmp_path / "out", echo=lambda *_: None)
    assert out["task"] == "piqa" and set(out["metrics"]) == {"acc", "acc_norm"}
    assert out["metrics"]["acc"]["n"] == 5 and len(out["items"]) == 1 and len(out["items"][0]["sum_logprob"]) == 2
    bad = _write(tmp_path, "bad.jsonl", [PIQA.read_text().splitlines()[0], '{"goal": "x", "sol1": "a", "sol2": "b", "label": 2}'])
    with pytest.raises(UserError, match=r"^bench.path=\S+ line 2: label=2 must be 0 \(sol1\) or 1 \(sol2\)"):
        TASKS["piqa"].read_file(str(bad))
