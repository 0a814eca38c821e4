"""The book's chapter 5 run over several seeds, beside gptlit's experiment=book_ch05 over the same seeds.

book:   the book's script (llms_from_scratch: GPTModel, GPTDatasetV1 with the text split at 90% of its
        characters, DataLoader(shuffle=True), AdamW(model.parameters(), lr 4e-4, weight decay 0.1),
        train_model_simple with eval_freq 5 and eval_iter 5), torch.manual_seed(seed) first, fp32.
gptlit: python train.py experiment=book_ch05 seed=<seed> trainer.precision=32-true on the same text,
        plus any overrides given with --gptlit (e.g. the settings before issue 29:
        --gptlit optim.decay_all=false data.order=sampler model.pad_vocab_multiple=64 callbacks=no_early_stopping).

After the last epoch both are scored the same way, in eval mode: the mean loss over every training window
("train") and over every validation window ("val"); the last evaluate_model losses (book/train_loss,
book/val_loss in gptlit) are shown too. The text is tests/fixtures/the-verdict.txt (the file data=verdict
downloads). Each run appends one JSON line to --out, so an interrupted sweep keeps the seeds it finished;
the table is printed from that file.

    pip install --no-deps llms-from-scratch==1.0.19
    python benchmarks/book_seeds.py --side book --out /tmp/book_seeds.jsonl
    python benchmarks/book_seeds.py --side gptlit --out /tmp/book_seeds.jsonl
    python benchmarks/book_seeds.py --table /tmp/book_seeds.jsonl

GPT-2 124M takes several seconds a step on 2 CPU cores (about 90 steps and 19 evaluations a run);
--emb-dim/--n-heads/--n-layers narrow both sides alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERDICT = ROOT / "tests" / "fixtures" / "the-verdict.txt"
SEEDS = [1, 2, 3, 4, 5, 123, 1337]


def book_run(seed: int, cfg: dict, epochs: int) -> dict:
    import torch
    from llms_from_scratch import ch05
    from llms_from_scratch.ch02 import GPTDatasetV1
    from llms_from_scratch.ch04 import GPTModel
    from torch.utils.data import DataLoader

    sys.path.insert(0, str(ROOT))
    from gptlit.model.tokenizer import get_tokenizer  # tiktoken's GPT-2 ranks, shipped (tiktoken would download them)

    tok = get_tokenizer()
    text = VERDICT.read_text(encoding="utf-8")
    split = int(0.90 * len(text))  # the book's split: 90% of the characters
    torch.manual_seed(seed)
    model = GPTModel(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0004, weight_decay=0.1)
    n = cfg["context_length"]
    # create_dataloader_v1's loaders, with the shipped tokenizer
    train_loader = DataLoader(GPTDatasetV1(text[:split], tok, n, n), batch_size=2, shuffle=True, drop_last=True)
    val_loader = DataLoader(GPTDatasetV1(text[split:], tok, n, n), batch_size=2, shuffle=False, drop_last=False)
    cpu = torch.device("cpu")
    train, val, _ = ch05.train_model_simple(model, train_loader, val_loader, optimizer, cpu, num_epochs=epochs,
                                            eval_freq=5, eval_iter=5, start_context="Every effort moves you",
                                            tokenizer=tok)
    model.eval()
    with torch.no_grad():
        full_train = ch05.calc_loss_loader(train_loader, model, cpu)  # every batch: every training window
        full_val = ch05.calc_loss_loader(val_loader, model, cpu)
    return {"train": full_train, "val": full_val, "eval_train": train[-1], "eval_val": val[-1],
            "val_min": min(val)}


def gptlit_run(seed: int, cfg: dict, epochs: int, overrides: list[str]) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory(prefix="book-seeds-") as d:
        run = Path(d) / "run"
        model = [f"model.emb_dim={cfg['emb_dim']}", f"model.n_heads={cfg['n_heads']}", f"model.n_layers={cfg['n_layers']}"]
        args = ["experiment=book_ch05", f"data.path={VERDICT}", f"seed={seed}", f"trainer.max_epochs={epochs}",
                "trainer.precision=32-true", "trainer.enable_progress_bar=false", "data.eval_train_batches=1000",
                "callbacks.model_checkpoint=null", "callbacks.last_checkpoint=null", "sampling.every_n_steps=0",
                f"hydra.run.dir={run}", *model, *overrides]
        r = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"gptlit seed {seed} failed:\n{r.stderr[-3000:]}")
        acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
        acc.Reload()
        last = {t: acc.Scalars(t)[-1].value for t in acc.Tags()["scalars"]}
        val = [e.value for e in acc.Scalars("book/val_loss")] if "book/val_loss" in last else [float("nan")]
    # train/eval_loss with data.eval_train_batches above the windows' count: every training window
    return {"train": last["train/eval_loss"], "val": last["val/loss"], "eval_train": last.get("book/train_loss"),
            "eval_val": last.get("book/val_loss"), "val_min": min(val)}


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = []
    for side in dict.fromkeys(r["side"] for r in rows):
        got = sorted((r for r in rows if r["side"] == side), key=lambda r: SEEDS.index(r["seed"]) if r["seed"] in SEEDS else r["seed"])
        out += [f"{side} ({got[0]['model']}, {got[0]['epochs']} epochs)", "",
                "| seed | train (all windows) | val (all windows) | last evaluate_model train / val | min evaluate_model val | s |",
                "|---:|---:|---:|---:|---:|---:|"]
        for r in got:
            out.append(f"| {r['seed']} | {r['train']:.3f} | {r['val']:.3f} | {r['eval_train']:.3f} / {r['eval_val']:.3f} "
                       f"| {r['val_min']:.3f} | {r['seconds']:.0f} |")
        tr, va = [r["train"] for r in got], [r["val"] for r in got]
        out += [f"| mean | {statistics.mean(tr):.3f} | {statistics.mean(va):.3f} | | | |", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=["book", "gptlit"])
    ap.add_argument("--label", help="the side's name in the table (default: --side)")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--emb-dim", type=int, default=768)
    ap.add_argument("--n-heads", type=int, default=12)
    ap.add_argument("--n-layers", type=int, default=12)
    ap.add_argument("--gptlit", nargs="*", default=[], help="extra train.py overrides for the gptlit side")
    ap.add_argument("--out", type=Path, default=Path("book_seeds.jsonl"))
    ap.add_argument("--table", type=Path, help="print the table of a results file and stop")
    a = ap.parse_args()
    if a.table:
        print(table(a.table))
        return
    if not a.side:
        ap.error("--side book|gptlit (or --table FILE)")
    cfg = {"vocab_size": 50257, "context_length": 256, "emb_dim": a.emb_dim, "n_heads": a.n_heads,
           "n_layers": a.n_layers, "drop_rate": 0.1, "qkv_bias": False}
    model = f"emb {a.emb_dim}, {a.n_heads} heads, {a.n_layers} layers, context 256"
    for seed in (int(s) for s in a.seeds.split(",")):
        t = time.time()
        got = book_run(seed, cfg, a.epochs) if a.side == "book" else gptlit_run(seed, cfg, a.epochs, a.gptlit)
        row = {"side": a.label or a.side, "seed": seed, "model": model, "epochs": a.epochs,
               "seconds": time.time() - t, **got}
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
