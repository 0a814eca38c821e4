"""eval.py's work: load a model (and the one to compare with), score one task, print and write the results.

  load_model   a gptlit checkpoint (ckpt=) or pretrained GPT-2 weights (init_from=): a Hugging Face folder or a book .pth
  run_*        one task on one model: its metrics (each an Estimate with its interval), the per-item values
               that a comparison pairs, the items to show
  compare      the paired difference of two models on the same items
  evaluate     the whole of eval.py for a composed config: returns what eval.json holds
  EvalSummary  after `python eval.py -m ...`: every job's scores in one table and eval_summary.json
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gptlit.core.errors import UserError
from gptlit.core.files import atomic_write, user_path
from gptlit.evaluation import stats
from gptlit.evaluation.benchmarks import LAMBADA_TEXT_KEY, TASKS, Benchmark, read_benchmark
from gptlit.evaluation.bpb import LN2, score_corpus
from gptlit.model.tokenizer import tokenizer_of
from gptlit.evaluation.scoring import score_choices, score_last_words
from gptlit.model.gpt import GPT
from gptlit.interop.checkpoints import pick_device


# the task group of eval.py ---------------------------------------------------------------------------
# Stored in Hydra's ConfigStore by eval.py alone, not as conf/task/*.yaml: train.py's `task` is a plain
# value (train | validate | prepare), and a conf/task folder would make every `task=` a group choice there.
TASK_OPTIONS = {
    # loss, perplexity and bits per byte on the data group's corpus (data=text data.path=...)
    "bpb": {"name": "bpb"},
    # HellaSwag-format multiple choice; with_activity_label: "<activity_label>: <ctx>" as lm-evaluation-harness writes it
    "hellaswag": {"name": "hellaswag", "path": "${eval_data}/hellaswag_val.jsonl", "with_activity_label": False},
    # LAMBADA-format last word: JSON Lines (.jsonl, .json: the passage under text_key) or one passage per line
    "lambada": {"name": "lambada", "path": "${eval_data}/lambada_test.jsonl", "text_key": LAMBADA_TEXT_KEY},
}


def register_task_configs() -> None:
    """eval.py's `task` group (task=bpb|hellaswag|lambada). Only eval.py calls it: registered in a process that
    also composes train.yaml, it would turn train.py's task=validate into a group choice."""
    from hydra.core.config_store import ConfigStore

    for name, node in TASK_OPTIONS.items():
        ConfigStore.instance().store(group="task", name=name, node=node)


# models -------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    model: GPT
    source: str  # the path as given
    kind: str  # checkpoint | pretrained
    step: int  # the checkpoint's optimizer step (0 for pretrained weights): the x of TensorBoard's scalars

    def describe(self) -> dict:
        c = self.model.cfg
        return {"source": self.source, "kind": self.kind, "step": self.step, "parameters": self.model.num_params(),
                "context_length": c.context_length, "emb_dim": c.emb_dim, "n_layers": c.n_layers, "n_heads": c.n_heads}


def is_pretrained(path) -> bool:
    """A Hugging Face GPT-2 folder or the book's .pth file (else a gptlit run directory or .ckpt)."""
    p = user_path(path)
    return p.suffix == ".pth" or (p.is_dir() and ((p / "config.json").is_file() or any(p.glob("*.pth"))))


def load_model(path, device: str = "cpu", key: str = "ckpt", pretrained: bool | None = None) -> LoadedModel:
    """The model at `path`, fp32, in eval mode. pretrained=None: decided by what the path holds."""
    from gptlit.interop.checkpoints import find_checkpoint, model_from_checkpoint
    from gptlit.interop.hf import load_pretrained

    if pretrained is None:
        pretrained = is_pretrained(path)
    if pretrained:
        try:
            model = load_pretrained(user_path(path))
        except UserError as e:
            raise UserError(f"{key}={path}: {e}") from None
        return LoadedModel(model.to(device).eval(), str(path), "pretrained", 0)
    if key == "ckpt" and is_pretrained(path):
        raise UserError(f"ckpt={path} holds pretrained weights (a Hugging Face folder or a .pth), not a gptlit run; "
                        f"use init_from={path}")
    found = find_checkpoint(path, prefer="best", key=key)
    model, ckpt = model_from_checkpoint(found, device)
    return LoadedModel(model, str(path), "checkpoint", int(ckpt.get("global_step", 0) or 0))


# one task on one model ----------------------------------------------------------------------------
@dataclass
class TaskResult:
    task: str
    metrics: dict[str, stats.Estimate]
    paired: dict = field(default_factory=dict)  # what compare() pairs, per metric
    items: list[dict] = field(default_factory=list)  # the first `show` items, as eval.json keeps them
    info: dict = field(default_factory=dict)  # n, cut contexts, corpus sizes ...


def _tail(text: str, n: int = 160) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= n else "..." + text[-n:]


def run_choices(model: GPT, bench: Benchmark, batch_size: int, show: int, confidence: float) -> TaskResult:
    res = score_choices(model, bench.items, batch_size)
    acc = np.array([r.pred == r.item.label for r in res])
    acc_norm = np.array([r.pred_norm == r.item.label for r in res])
    items = [{"line": r.item.line, "activity_label": r.item.activity, "context": r.item.context, "label": r.item.label,
              "endings": r.item.endings, "sum_logprob": r.totals, "mean_logprob": r.means, "pred": r.pred,
              "pred_norm": r.pred_norm} for r in res[:show]]
    cut = sum(r.cut > 0 for r in res)
    return TaskResult(bench.name, {"acc": stats.accuracy(acc, confidence), "acc_norm": stats.accuracy(acc_norm, confidence)},
                      {"acc": acc, "acc_norm": acc_norm}, items,
                      {"path": str(bench.path), "n": len(res), "cut_contexts": int(cut)})


def run_last_words(model: GPT, bench: Benchmark, batch_size: int, show: int, confidence: float) -> TaskResult:
    res = score_last_words(model, bench.items, batch_size)
    acc = np.array([r.correct for r in res])
    items = [{"line": r.item.line, "context": r.item.context, "target": r.item.target, "greedy": r.greedy,
              "logprob": r.logprob, "correct": r.correct} for r in res[:show]]
    cut = sum(r.cut > 0 for r in res)
    return TaskResult(bench.name, {"acc": stats.accuracy(acc, confidence)}, {"acc": acc}, items,
                      {"path": str(bench.path), "n": len(res), "cut_contexts": int(cut)})


def run_bpb(model: GPT, dm, batch_size: int, show: int, confidence: float, n_resamples: int, seed: int) -> TaskResult:
    s = score_corpus(model, dm, batch_size)
    unit, u = s.units()
    kw = dict(confidence=confidence, n_resamples=n_resamples, seed=seed, unit=unit)
    loss = stats.ratio(u["all_nats"], u["all_tokens"], **kw)
    ppl = stats.Estimate(math.exp(loss.score), *(None if v is None else math.exp(v) for v in (loss.low, loss.high)),
                         loss.n, loss.method)
    bpb = stats.ratio(u["nats"], u["bytes"], scale=1 / LN2, **kw)
    items = [{"document": i + 1, "tokens": int(t), "bytes": int(b), "loss": float(a / t),
              "bpb": float(n / LN2 / b) if b else None}
             for i, (n, b, a, t) in enumerate(zip(s.doc_nats, s.doc_bytes, s.doc_all_nats, s.doc_all_tokens)) if i < show]
    info = {"corpus": dm.corpus().name, "windows": s.windows, "max_length": dm.config.max_length, "stride": dm.config.stride,
            "tokens": s.tokens, "text_tokens": s.text_tokens, "bytes": s.bytes, "documents": int(len(s.doc_all_tokens)),
            "interval_unit": unit, "n": s.windows}
    return TaskResult("bpb", {"bpb": bpb, "loss": loss, "ppl": ppl}, {"unit": unit, **u}, items, info)


def compare(a: TaskResult, b: TaskResult, confidence: float, n_resamples: int, seed: int) -> dict[str, stats.Estimate]:
    """a - b for each metric, paired over the same items (documents, windows)."""
    kw = dict(confidence=confidence, n_resamples=n_resamples, seed=seed)
    if a.task == "bpb":
        unit, pa, pb = a.paired["unit"], a.paired, b.paired
        out = {"bpb": stats.paired_ratio_difference(pa["nats"], pa["bytes"], pb["nats"], pb["bytes"], 1 / LN2, unit=unit, **kw),
               "loss": stats.paired_ratio_difference(pa["all_nats"], pa["all_tokens"], pb["all_nats"], pb["all_tokens"], unit=unit, **kw)}
        return out
    return {m: stats.paired_difference(a.paired[m], b.paired[m], unit="items", **kw) for m in a.paired}


# printing -----------------------------------------------------------------------------------------
def _iv(e: stats.Estimate | None) -> str:
    if e is None:
        return ""
    return "n/a" if e.low is None else f"[{e.low:.4f}, {e.high:.4f}]"


def table(result: TaskResult, other: TaskResult | None = None, diff: dict | None = None, confidence: float = 0.95) -> str:
    """The console table: one row per metric; with a comparison, the other model's score and the paired difference."""
    pct = f"{confidence:.0%}"
    head = ["task", "metric", "n", "score", f"{pct} interval"]
    if diff:
        head += ["compare", "difference", f"{pct} interval"]
    rows = [head]
    for m, e in result.metrics.items():
        row = [result.task, m, str(e.n), f"{e.score:.4f}", _iv(e)]
        if diff:
            d = diff.get(m)
            row += [f"{other.metrics[m].score:.4f}", f"{d.score:+.4f}" if d else "", _iv(d)]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def shown_items(result: TaskResult) -> str:
    """The first items with their choices and scores, for a reader to check that the scoring makes sense."""
    out = []
    for k, it in enumerate(result.items, 1):
        if result.task == "hellaswag":
            label = f" [{it['activity_label']}]" if it["activity_label"] else ""
            out.append(f"item {k} (line {it['line']}){label}: {_tail(it['context'])}")
            for j, e in enumerate(it["endings"]):
                marks = [w for w, hit in (("label", j == it["label"]), ("acc", j == it["pred"]), ("acc_norm", j == it["pred_norm"])) if hit]
                mark = f"  <- {', '.join(marks)}" if marks else ""
                out.append(f"  {j}  sum {it['sum_logprob'][j]:9.3f}  mean {it['mean_logprob'][j]:7.3f}  {_tail(e, 80)}{mark}")
        elif result.task == "lambada":
            verdict = "right" if it["correct"] else "wrong"
            out.append(f"item {k} (line {it['line']}): {_tail(it['context'])}\n  target {it['target']!r}  greedy "
                       f"{it['greedy']!r}  logprob {it['logprob']:.3f}  {verdict}")
        else:
            bpb = "n/a" if it["bpb"] is None else f"{it['bpb']:.4f}"
            out.append(f"document {it['document']}: {it['tokens']:,} tokens, {it['bytes']:,} bytes, "
                       f"loss {it['loss']:.4f}, bpb {bpb}")
    return "\n".join(out)


def write_tensorboard(out_dir: Path, result: TaskResult, step: int, diff: dict | None = None) -> Path:
    """eval/<task>/<metric> (and <metric>_low, _high, and _diff with a comparison) at the checkpoint's step."""
    from torch.utils.tensorboard import SummaryWriter

    tb = out_dir / "tb"
    w = SummaryWriter(log_dir=str(tb))
    try:
        for m, e in result.metrics.items():
            w.add_scalar(f"eval/{result.task}/{m}", e.score, step)
            if e.low is not None:
                w.add_scalar(f"eval/{result.task}/{m}_low", e.low, step)
                w.add_scalar(f"eval/{result.task}/{m}_high", e.high, step)
            if diff and m in diff:
                w.add_scalar(f"eval/{result.task}/{m}_diff", diff[m].score, step)
    finally:
        w.close()
    return tb


# eval.py ------------------------------------------------------------------------------------------
def _int(cfg, key: str, low: int, allow_none: bool = False):
    v = cfg.get(key)
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        none = " or null" if allow_none else ""
        raise UserError(f"{key}={v} must be an integer >= {low}{none}")
    return v


def _plain(node) -> dict:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def make_datamodule(data: dict, context_length: int):
    """The corpus' windows as training cuts them, every window of the whole corpus (val_all)."""
    from gptlit.data.datamodule import GPTDataModule

    args = {k: v for k, v in data.items() if k != "_target_"}
    if args.get("max_length") is None:
        args["max_length"] = context_length
    if args["max_length"] > context_length if isinstance(args["max_length"], int) else False:
        raise UserError(f"data.max_length={args['max_length']} exceeds the model's context of {context_length}; "
                        f"lower it or leave it null (the model's context)")
    return GPTDataModule(val_all=True, **args)  # DataConfig checks the values; stride None = max_length


def evaluate(cfg, out_dir: Path, warn=None, echo=print) -> dict:
    """The whole of eval.py for a composed config (see conf/eval.yaml); returns eval.json's content."""
    warn = warn or (lambda m: print(f"warning: {m}", file=sys.stderr, flush=True))
    task_cfg = cfg.get("task")
    if not task_cfg or not task_cfg.get("name"):
        raise UserError(f"task is required: task={' | task='.join(TASKS)} (several: python eval.py -m task=hellaswag,lambada)")
    name = task_cfg["name"]
    if name not in TASKS:
        raise UserError(f"task.name={name} is unknown: use one of {', '.join(TASKS)}")
    ckpt, init_from = cfg.get("ckpt"), cfg.get("init_from")
    if not ckpt and not init_from:
        raise UserError("ckpt is required: ckpt=<a .ckpt file or a run directory>, or init_from=<a Hugging Face "
                        "GPT-2 folder or a book .pth file>")
    if ckpt and init_from:
        raise UserError(f"ckpt={ckpt} and init_from={init_from}: give one of them (the other model goes in compare=)")
    batch_size, show = _int(cfg, "batch_size", 1), _int(cfg, "show", 0)
    limit, n_resamples, seed = _int(cfg, "limit", 1, allow_none=True), _int(cfg, "bootstrap", 100), _int(cfg, "seed", 0)
    confidence = cfg.get("confidence", stats.CONFIDENCE)
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise UserError(f"confidence={confidence} must be between 0 and 1 (e.g. 0.95)")
    device = pick_device(cfg.get("device", "auto"))

    bench = None
    if name != "bpb":  # read the file before the model: a bad file fails fast
        opts = {k: v for k, v in _plain(task_cfg).items() if k not in ("name", "path")}
        bench = read_benchmark(name, task_cfg.get("path"), **opts)
        if limit is not None:
            bench.items = bench.items[:limit]

    main = load_model(init_from or ckpt, device, key="init_from" if init_from else "ckpt", pretrained=bool(init_from))
    other = load_model(cfg.get("compare"), device, key="compare") if cfg.get("compare") else None
    echo(f"model: {main.source} ({main.kind}, step {main.step}, {main.model.num_params():,} parameters)"
         + (f"\ncompare: {other.source} ({other.kind}, step {other.step}, {other.model.num_params():,} parameters)" if other else ""))

    def run_on(m: GPT, dm=None) -> TaskResult:
        if name == "bpb":
            return run_bpb(m, dm, batch_size, show, confidence, n_resamples, seed)
        if name == "hellaswag":
            return run_choices(m, bench, batch_size, show, confidence)
        return run_last_words(m, bench, batch_size, show, confidence)

    dm = None
    if name == "bpb":
        ctx = min([main.model.cfg.context_length, *([other.model.cfg.context_length] if other else [])])
        dm = make_datamodule(_plain(cfg.get("data") or {}), ctx)
        dm.use_tokenizer(tokenizer_of(main.model))  # the checkpoint's (bpb.score_corpus retokenizes for another)
        dm.prepare_data()
        dm.setup("validate")
        echo(dm.summary())
    result = run_on(main.model, dm)
    other_result = run_on(other.model, dm) if other else None
    diff = compare(result, other_result, confidence, n_resamples, seed) if other else None

    cut = result.info.get("cut_contexts", 0)
    if cut:
        warn(f"{cut} of {result.info['n']} items were longer than the model's context of "
             f"{main.model.cfg.context_length} tokens; their contexts were cut from the left (cut_contexts in eval.json)")
    if show and result.items:
        echo(shown_items(result))
    echo(table(result, other_result, diff, confidence))
    methods = dict.fromkeys(e.method for e in [*result.metrics.values(), *(diff or {}).values()])
    echo(f"n counts {'documents' if result.info.get('interval_unit') == 'documents' else result.info.get('interval_unit', 'items')}; "
         f"intervals: {'; '.join(methods)}")

    out = {
        "task": name,
        "model": main.describe(),
        "compare": other.describe() if other else None,
        "info": result.info,
        "confidence": confidence,
        "metrics": {m: e.to_dict() for m, e in result.metrics.items()},
        "compare_metrics": {m: other_result.metrics[m].to_dict() for m in result.metrics} if other else None,
        "difference": {m: e.to_dict() for m, e in diff.items()} if diff else None,
        "items": result.items,
    }
    if other and other_result.info.get("cut_contexts"):
        out["info"]["compare_cut_contexts"] = other_result.info["cut_contexts"]
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "eval.json", out)
    tb = write_tensorboard(out_dir, result, main.step, diff)
    echo(f"wrote {out_dir / 'eval.json'} and TensorBoard scalars in {tb}")
    return out


# several tasks: python eval.py -m task=hellaswag,lambada ------------------------------------------
def summary_rows(sweep_dir: Path) -> list[dict]:
    """One row per metric of every job's eval.json under a multirun folder, in job order."""
    import json

    rows = []
    for f in sorted(Path(sweep_dir).glob("*/eval.json"), key=lambda p: (len(p.parent.name.split("_")[0]), p.parent.name)):
        r = json.loads(f.read_text(encoding="utf-8"))
        for m, e in r["metrics"].items():
            d = (r.get("difference") or {}).get(m)
            rows.append({"job": f.parent.name, "task": r["task"], "model": r["model"]["source"], "metric": m, **e,
                         "difference": d})
    return rows


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a dependency
    _HydraCallback = object


class EvalSummary(_HydraCallback):
    """Hydra callback (conf/eval.yaml): when a multirun ends, its jobs' scores as one table and eval_summary.json."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        rows = summary_rows(sweep)
        if not rows:
            return
        head = ["job", "task", "metric", "n", "score", "95% interval", "difference"]
        cells = [head] + [[r["job"], r["task"], r["metric"], str(r["n"]), f"{r['score']:.4f}",
                           "n/a" if r["low"] is None else f"[{r['low']:.4f}, {r['high']:.4f}]",
                           "" if not r["difference"] else f"{r['difference']['score']:+.4f}"] for r in rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        print("\n".join(lines), flush=True)
        atomic_write(sweep / "eval_summary.json", rows)
        print(f"wrote {sweep / 'eval_summary.json'}", flush=True)
