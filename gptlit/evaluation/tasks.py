"""The evaluation tasks, one class each, all in the table TASKS: everything eval.py (`bench=<name>`) and
the training callback (gptlit.evaluation.callback.EvalTask) know of a task.

  Task            the base: `name`, `metrics`, `options` (its `bench.*` settings besides `path`, with their
                  defaults) and the steps eval.py takes: `read` (before any model loads, so that a bad file
                  fails fast), `prepare` (once the models are loaded), `run` (one model), `compare` (the paired
                  difference of two models) and `show` (one scored item as text)
  ItemTask        a benchmark file of items scored one by one, the tasks the training callback can score:
                  `read_file`, `score`, `correct` (per item, per metric) and `item` (an item as eval.json keeps it)
  MultipleChoice  items with endings (gptlit.evaluation.benchmarks.Choice): acc and acc_norm

A new task is a class here and its entry in TASKS, its settings in conf/bench/<name>.yaml, a test and a
line in docs/evaluation.md (docs/development.md, "Adding an evaluation task").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from gptlit.core.errors import UserError, check_keys
from gptlit.core.settings import plain
from gptlit.evaluation import stats
from gptlit.evaluation.benchmarks import (LAMBADA_TEXT_KEY, Benchmark, Choice, _json_line, _lines, bench_path,
                                          read_hellaswag, read_lambada)
from gptlit.evaluation.bpb import LN2, score_corpus
from gptlit.model.tokenizer import tokenizer_of
from gptlit.evaluation.scoring import score_choices, score_last_words


@dataclass
class TaskResult:
    task: str
    metrics: dict[str, stats.Estimate]
    paired: dict = field(default_factory=dict)  # what compare() pairs, per metric
    items: list[dict] = field(default_factory=list)  # the first `show` items, as eval.json keeps them
    info: dict = field(default_factory=dict)  # n, cut contexts, corpus sizes ...


@dataclass
class Settings:
    """eval.py's settings every task's run reads."""

    batch_size: int  # the defaults: conf/eval.yaml
    show: int
    confidence: float
    n_resamples: int
    seed: int


def tail(text: str, n: int = 160) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= n else "..." + text[-n:]


class Task:
    name: str  # each task sets these three
    metrics: tuple[str, ...]
    what: str  # one line for the table of tasks
    options: dict = {}  # the task's bench.* settings besides `path`, and their defaults (conf/bench/<name>.yaml too)

    def check(self, node: dict, key: str = "bench") -> dict:
        """The task's options from its config node (defaults filled in); an unknown key is a UserError."""
        check_keys(set(node) - {"name"}, [*self.options, *(("path",) if isinstance(self, ItemTask) else ())], key,
                   f"a setting of {key}={self.name}")
        return {k: node.get(k, v) for k, v in self.options.items()}

    def read(self, node: dict, cfg, limit: int | None):
        """What the task scores, read before any model is loaded."""
        raise NotImplementedError

    def prepare(self, data, models: list, echo):
        """`data` made ready for these models (the GPTs eval.py scores); the same data for each."""
        return data

    def run(self, model, data, s: Settings) -> TaskResult:
        raise NotImplementedError

    def compare(self, a: TaskResult, b: TaskResult, s: Settings) -> dict[str, stats.Estimate]:
        """a - b for each metric, paired over the same items."""
        return {m: stats.paired_difference(a.paired[m], b.paired[m], unit="items", confidence=s.confidence,
                                           n_resamples=s.n_resamples, seed=s.seed) for m in a.paired}

    def show(self, k: int, it: dict) -> str:
        raise NotImplementedError


class ItemTask(Task):
    """A benchmark file of items, each scored on its own: what eval.py and the training callback score alike."""

    default_file: str = ""  # under eval_data/ (conf/bench/<name>.yaml)

    def read_file(self, path, key: str = "bench.path", **options) -> Benchmark:
        raise NotImplementedError

    def score(self, model, items: list, batch_size: int | None, key: str = "bench.path") -> list:
        """One result per item, each with `.cut` (context tokens dropped to fit the model)."""
        raise NotImplementedError

    def correct(self, results: list) -> dict[str, np.ndarray]:
        """Per metric, whether each item was right."""
        raise NotImplementedError

    def item(self, r) -> dict:
        raise NotImplementedError

    def read(self, node: dict, cfg, limit: int | None) -> Benchmark:
        bench = self.read_file(node.get("path"), "bench.path", **self.check(node))
        if limit is not None:
            bench.items = bench.items[:limit]
        return bench

    def run(self, model, bench: Benchmark, s: Settings) -> TaskResult:
        res = self.score(model, bench.items, s.batch_size)
        right = self.correct(res)
        return TaskResult(self.name, {m: stats.accuracy(v, s.confidence) for m, v in right.items()}, right,
                          [self.item(r) for r in res[: s.show]],
                          {"path": str(bench.path), "n": len(res), "cut_contexts": int(sum(r.cut > 0 for r in res))})


class MultipleChoice(ItemTask):
    """Each ending, with a space in front, scored after the context: acc picks the highest summed
    log-likelihood, acc_norm the highest mean per token (llm.c's and build-nanogpt's completion style)."""

    metrics = ("acc", "acc_norm")

    def score(self, model, items, batch_size, key="bench.path"):
        return score_choices(model, items, batch_size, key=key)

    def correct(self, results):
        return {"acc": np.array([r.pred == r.item.label for r in results]),
                "acc_norm": np.array([r.pred_norm == r.item.label for r in results])}

    def item(self, r):
        return {"line": r.item.line, "activity_label": r.item.activity, "context": r.item.context, "label": r.item.label,
                "endings": r.item.endings, "sum_logprob": r.totals, "mean_logprob": r.means, "pred": r.pred,
                "pred_norm": r.pred_norm}

    def show(self, k, it):
        label = f" [{it['activity_label']}]" if it.get("activity_label") else ""
        out = [f"item {k} (line {it['line']}){label}: {tail(it['context'])}"]
        for j, e in enumerate(it["endings"]):
            marks = [w for w, hit in (("label", j == it["label"]), ("acc", j == it["pred"]), ("acc_norm", j == it["pred_norm"])) if hit]
            mark = f"  <- {', '.join(marks)}" if marks else ""
            out.append(f"  {j}  sum {it['sum_logprob'][j]:9.3f}  mean {it['mean_logprob'][j]:7.3f}  {tail(e, 80)}{mark}")
        return "\n".join(out)


class HellaSwag(MultipleChoice):
    name, what = "hellaswag", "multiple choice, HellaSwag's JSON Lines (ctx, endings, label)"
    default_file = "hellaswag_val.jsonl"
    # with_activity_label: "<activity_label>: <ctx>" as lm-evaluation-harness writes it
    options = {"with_activity_label": False}

    def read_file(self, path, key="bench.path", with_activity_label=False):
        return read_hellaswag(path, key, with_activity_label=bool(with_activity_label))


class Lambada(ItemTask):
    """The passage's last word: right when greedy decoding from the context gives exactly its tokens."""

    name, what, metrics = "lambada", "last-word accuracy, LAMBADA (JSON Lines or one passage per line)", ("acc",)
    default_file = "lambada_test.jsonl"
    options = {"text_key": LAMBADA_TEXT_KEY}  # the passage's key in a JSON Lines file

    def read_file(self, path, key="bench.path", text_key=None):
        return read_lambada(path, key, text_key=text_key)

    def score(self, model, items, batch_size, key="bench.path"):
        return score_last_words(model, items, batch_size, key=key)

    def correct(self, results):
        return {"acc": np.array([r.correct for r in results])}

    def item(self, r):
        return {"line": r.item.line, "context": r.item.context, "target": r.item.target, "greedy": r.greedy,
                "logprob": r.logprob, "correct": r.correct}

    def show(self, k, it):
        verdict = "right" if it["correct"] else "wrong"
        return (f"item {k} (line {it['line']}): {tail(it['context'])}\n  target {it['target']!r}  greedy "
                f"{it['greedy']!r}  logprob {it['logprob']:.3f}  {verdict}")


class Piqa(MultipleChoice):
    """PIQA's format: a goal and two solutions, each scored after "Question: <goal>\nAnswer:" (lm-evaluation-harness's
    prompt for PIQA)."""

    name, what = "piqa", "two-choice physical commonsense, PIQA's JSON Lines (goal, sol1, sol2, label)"
    default_file = "piqa_valid.jsonl"

    def read_file(self, path, key="bench.path"):
        p = bench_path(path, key)
        items = []
        for n, line in _lines(p, key, str(path)):
            where = f"{key}={path} line {n}"
            d = _json_line(line, n, key, str(path))
            goal, sols = d.get("goal"), [d.get("sol1"), d.get("sol2")]
            if not all(isinstance(s, str) and s.strip() for s in (goal, *sols)):
                raise UserError(f"{where}: needs a non-empty `goal`, `sol1` and `sol2`; is this a PIQA file?")
            label = d.get("label")
            if isinstance(label, str) and label.strip() in ("0", "1"):
                label = int(label)
            if label not in (0, 1) or isinstance(label, bool):
                raise UserError(f"{where}: label={json.dumps(label)} must be 0 (sol1) or 1 (sol2); PIQA's test split "
                                f"has no labels: use its validation split")
            items.append(Choice(n, f"Question: {goal.strip()}\nAnswer:", [s.strip() for s in sols], label))
        if not items:
            raise UserError(f"{key}={path} holds no items (the file is empty); give PIQA's validation file")
        return Benchmark(self.name, p, items)


class Bpb(Task):
    """Loss, perplexity and bits per byte on the data group's corpus, over the windows training cuts."""

    name, what, metrics = "bpb", "bits per byte, loss and ppl on a corpus (data=text data.path=...)", ("bpb", "loss", "ppl")

    def read(self, node, cfg, limit):
        self.check(node)
        return plain(cfg.get("data")) or {}

    def prepare(self, data, models, echo):
        """The corpus' windows as training cuts them, every window of the whole corpus (val_all), as long as the
        shortest context of the models (the same windows for each)."""
        from gptlit.data.datamodule import GPTDataModule

        context_length = min(m.cfg.context_length for m in models)
        args = {k: v for k, v in data.items() if k != "_target_"}
        if args.get("max_length") is None:
            args["max_length"] = context_length
        if isinstance(args["max_length"], int) and args["max_length"] > context_length:
            raise UserError(f"data.max_length={args['max_length']} exceeds the model's context of {context_length}; "
                            f"lower it or leave it null (the model's context)")
        dm = GPTDataModule(val_all=True, **args)  # DataConfig checks the values; stride None = max_length
        dm.use_tokenizer(tokenizer_of(models[0]))  # the first model's (score_corpus retokenizes for another)
        dm.prepare_data()
        dm.setup("validate")
        echo(dm.summary())
        return dm

    def run(self, model, dm, s):
        c = score_corpus(model, dm, s.batch_size)
        unit, u = c.units()
        kw = dict(confidence=s.confidence, n_resamples=s.n_resamples, seed=s.seed, unit=unit)
        loss = stats.ratio(u["all_nats"], u["all_tokens"], **kw)
        ppl = stats.Estimate(math.exp(loss.score), *(None if v is None else math.exp(v) for v in (loss.low, loss.high)),
                             loss.n, loss.method)
        bpb = stats.ratio(u["nats"], u["bytes"], scale=1 / LN2, **kw)
        items = [{"document": i + 1, "tokens": int(t), "bytes": int(b), "loss": float(a / t),
                  "bpb": float(n / LN2 / b) if b else None}
                 for i, (n, b, a, t) in enumerate(zip(c.doc_nats, c.doc_bytes, c.doc_all_nats, c.doc_all_tokens)) if i < s.show]
        info = {"corpus": dm.corpus().name, "windows": c.windows, "max_length": dm.config.max_length,
                "stride": dm.config.stride, "tokens": c.tokens, "text_tokens": c.text_tokens, "bytes": c.bytes,
                "documents": int(len(c.doc_all_tokens)), "interval_unit": unit, "n": c.windows,
                "tokenizer": tokenizer_of(model).fingerprint}
        return TaskResult(self.name, {"bpb": bpb, "loss": loss, "ppl": ppl}, {"unit": unit, **u}, items, info)

    def compare(self, a, b, s):
        kw = dict(confidence=s.confidence, n_resamples=s.n_resamples, seed=s.seed, unit=a.paired["unit"])
        pa, pb = a.paired, b.paired
        if a.info.get("tokenizer") != b.info.get("tokenizer"):
            # other tokenizers cut other windows, and a paired difference needs units that line up
            raise UserError("compare=: the two models have different tokenizers, so their windows do not pair up; "
                            "run eval.py bench=bpb on each (bits per byte compares across tokenizers) and read "
                            "each model's bpb and interval from its own table")
        return {"bpb": stats.paired_ratio_difference(pa["nats"], pa["bytes"], pb["nats"], pb["bytes"], 1 / LN2, **kw),
                "loss": stats.paired_ratio_difference(pa["all_nats"], pa["all_tokens"], pb["all_nats"], pb["all_tokens"], **kw)}

    def show(self, k, it):
        bpb = "n/a" if it["bpb"] is None else f"{it['bpb']:.4f}"
        return f"document {it['document']}: {it['tokens']:,} tokens, {it['bytes']:,} bytes, loss {it['loss']:.4f}, bpb {bpb}"


TASKS: dict[str, Task] = {t.name: t for t in (Bpb(), HellaSwag(), Lambada(), Piqa())}


def get_task(name, key: str = "bench", items_only: bool = False) -> Task:
    """The task called `name`; an unknown one is a UserError listing the table (items_only: the item tasks)."""
    table = {n: t for n, t in TASKS.items() if isinstance(t, ItemTask) or not items_only}
    if name not in table:
        listed = "; ".join(f"{n}: {t.what}" for n, t in table.items())
        raise UserError(f"{key}={name} is unknown: use one of {', '.join(table)} ({listed})")
    return table[name]
