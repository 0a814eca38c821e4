"""eval.py's work: load a model (and the one to compare with), score one task, print and write the results.
The tasks themselves (what is read, how it is scored, paired and shown) are gptlit.evaluation.tasks'.

  load_model   a gptlit checkpoint (ckpt=) or pretrained GPT-2 weights (init_from=): a Hugging Face folder or a book .pth
  evaluate     the whole of eval.py for a composed config: returns what eval.json holds
  EvalSummary  after `python eval.py -m ...`: every job's scores in one table and eval_summary.json
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from gptlit.core.errors import UserError
from gptlit.core.files import atomic_write, user_path
from gptlit.evaluation import stats
from gptlit.evaluation.tasks import Settings, TaskResult, get_task
from gptlit.model.gpt import GPT
from gptlit.interop.checkpoints import pick_device


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
    return columns(rows)


def columns(rows: list[list[str]]) -> str:
    """Rows of cells as aligned text columns; the first row is the head, underlined."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def shown_items(result: TaskResult) -> str:
    """The first items with their choices and scores, for a reader to check that the scoring makes sense."""
    task = get_task(result.task)
    return "\n".join(task.show(k, it) for k, it in enumerate(result.items, 1))


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


def evaluate(cfg, out_dir: Path, warn=None, echo=print) -> dict:
    """The whole of eval.py for a composed config (see conf/eval.yaml); returns eval.json's content."""
    warn = warn or (lambda m: print(f"warning: {m}", file=sys.stderr, flush=True))
    node = cfg.get("bench")
    if not node or not node.get("name"):
        from gptlit.evaluation.tasks import TASKS

        raise UserError(f"bench is required: bench={' | bench='.join(TASKS)} (several: python eval.py -m bench=hellaswag,lambada)")
    name = node["name"]
    task = get_task(name)
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

    s = Settings(batch_size, show, confidence, n_resamples, seed)
    data = task.read(dict(node), cfg, limit)  # before the model: a bad file fails fast

    main = load_model(init_from or ckpt, device, key="init_from" if init_from else "ckpt", pretrained=bool(init_from))
    other = load_model(cfg.get("compare"), device, key="compare") if cfg.get("compare") else None
    echo(f"model: {main.source} ({main.kind}, step {main.step}, {main.model.num_params():,} parameters)"
         + (f"\ncompare: {other.source} ({other.kind}, step {other.step}, {other.model.num_params():,} parameters)" if other else ""))

    data = task.prepare(data, [m.model for m in (main, other) if m is not None], echo)
    result = task.run(main.model, data, s)
    other_result = task.run(other.model, data, s) if other else None
    diff = task.compare(result, other_result, s) if other else None

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


# several tasks: python eval.py -m bench=hellaswag,lambada -----------------------------------------
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
        print(columns(cells), flush=True)
        atomic_write(sweep / "eval_summary.json", rows)
        print(f"wrote {sweep / 'eval_summary.json'}", flush=True)
