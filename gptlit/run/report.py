"""Which setting won: the summary of a sweep, built from its jobs' files alone.

    python report.py outputs/multirun/<date>/<time>

writes sweep_summary.csv, sweep_summary.md and sweep_val_loss.png into the sweep directory and
prints the table. It reads each job's job_result.json (gptlit.core.job_record.JobRecord) and .hydra/overrides.yaml,
so it works for a finished sweep, an interrupted one and one still running. For an Optuna search
(hparams_search=optuna) it adds the study from optuna.journal: pruned trials, the best trial with the
command line that runs it alone (also in best_params.yaml), and the parameters' importances. train.py -m writes the
same report when the sweep ends (gptlit.run.sweep.SweepSummary, a Hydra callback).
"""

from __future__ import annotations

import csv
import io
import math
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gptlit.core.errors import UserError
from gptlit.core.files import atomic_file, atomic_write
from gptlit.core.job_record import RESULT_FILE, JobRecord, override_values
from gptlit.run.search.summary import BEST_FILE, study_summary  # an Optuna search's study (optuna.journal), if any


CSV_FILE, MD_FILE, PLOT_FILE = "sweep_summary.csv", "sweep_summary.md", "sweep_val_loss.png"
COLUMNS = ["best val/loss", "best step", "final val/loss", "final val/ppl", "steps", "tokens", "wall time (s)",
           "status"]


@dataclass
class Report:
    sweep_dir: Path
    rows: list[dict]  # sorted by best val/loss, the best first
    varying: list[str]  # the override keys whose values differ between jobs
    files: list[Path] = field(default_factory=list)

    study: str | None = None  # an Optuna search's part of the summary (gptlit.run.search.summary.study_summary)

    @property
    def best(self) -> dict | None:
        """The job with the lowest best val/loss among those that neither failed nor were pruned (a pruned
        trial's curve stops early; Optuna's best trial is a complete one too)."""
        ok = [r for r in self.rows if _finite(r["best_val_loss"]) and not r["status"].startswith(("failed", "pruned"))]
        return ok[0] if ok else None


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _alive(pid, host) -> bool:
    if host != socket.gethostname() or not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


def _job_overrides(job_dir: Path, result: dict | None) -> list[str]:
    import yaml

    p = job_dir / ".hydra" / "overrides.yaml"
    if p.is_file():
        return list(yaml.safe_load(p.read_text()) or [])
    return list((result or {}).get("overrides") or [])


def _job_num(job_dir: Path, result: dict | None):
    if result and result.get("job") is not None:
        return int(result["job"])
    head = job_dir.name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


def find_jobs(sweep_dir: Path) -> list[Path]:
    """The sweep's job directories: each child holding a job_result.json or Hydra's .hydra/."""
    return [p for p in sorted(sweep_dir.iterdir())
            if p.is_dir() and ((p / RESULT_FILE).is_file() or (p / ".hydra").is_dir())]


def read_jobs(sweep_dir: Path) -> list[dict]:
    rows = []
    for d in find_jobs(sweep_dir):
        rec = JobRecord.read(d)
        r = rec.to_dict() if rec is not None else None
        status = (r or {}).get("status")
        if status is None:
            status = "incomplete"  # no result yet: not started training, or ended before it could write one
        elif status == "running" and not _alive(r.get("pid"), r.get("host")):
            status = "interrupted"
        rows.append({
            "job": _job_num(d, r),
            "dir": d.name,
            "overrides": override_values(_job_overrides(d, r)),
            "best_val_loss": (r or {}).get("best_val_loss"),
            "best_step": (r or {}).get("best_step"),
            "final_val_loss": (r or {}).get("final_val_loss"),
            "final_val_ppl": (r or {}).get("final_val_ppl"),
            "steps": (r or {}).get("steps"),
            "tokens": (r or {}).get("tokens"),
            "wall_time_s": (r or {}).get("wall_time_s"),
            "status": status,
            "val_curve": (r or {}).get("val_curve") or [],
        })
    return rows


def varying_keys(rows: list[dict]) -> list[str]:
    keys = []
    for row in rows:
        keys += [k for k in row["overrides"] if k not in keys]
    return [k for k in keys if len({repr(row["overrides"].get(k)) for row in rows}) > 1]


def _short(v) -> str:
    """A value for people: a searched float such as 0.00024373700083914676 as 0.0002437 (the CSV keeps it whole)."""
    return f"{v:.4g}" if isinstance(v, float) and len(repr(v)) > 8 else str(v)


def label(row: dict, varying: list[str]) -> str:
    parts = [f"{k}={_short(row['overrides'][k])}" for k in varying if k in row["overrides"]]
    return " ".join(parts) if parts else f"job {row['job']}"


def _sort_key(row):
    """Best val/loss first; then pruned trials (their curves stop early); failed jobs and jobs without a
    val/loss last."""
    b = row["best_val_loss"]
    last = row["status"].startswith("failed") or not _finite(b)
    return (last, row["status"] == "pruned", b if _finite(b) else math.inf,
            row["job"] if row["job"] is not None else 1 << 30)


def _fmt(v, kind: str = "") -> str:
    if v is None:
        return ""
    if kind == "loss":
        return f"{v:.4f}"
    if kind == "ppl":
        return f"{v:.2f}" if v < 1e6 else f"{v:.3g}"
    if kind == "int":
        return f"{int(v):,}"
    if kind == "time":
        return f"{v:.1f}"
    return str(v)


def table_rows(report: Report, formatted: bool) -> list[list]:
    out = []
    for r in report.rows:
        vals = [r["best_val_loss"], r["best_step"], r["final_val_loss"], r["final_val_ppl"], r["steps"],
                r["tokens"], r["wall_time_s"], r["status"]]
        if formatted:
            kinds = ["loss", "int", "loss", "ppl", "int", "int", "time", ""]
            vals = [_fmt(v, k) for v, k in zip(vals, kinds)]
        values = [r["overrides"].get(k, "") for k in report.varying]
        if formatted:
            values = [_short(v) for v in values]
        out.append([r["job"], *values, *vals])
    return out


def markdown(report: Report) -> str:
    head = ["job", *report.varying, *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table_rows(report, formatted=True):
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    best = report.best
    lines.append("")
    if best is not None:
        name = label(best, report.varying)
        name = f"job {best['job']}" + (f" ({name})" if name != f"job {best['job']}" else "")
        lines.append(f"best: {name}: val/loss {best['best_val_loss']:.4f} at step {best['best_step']}, {best['dir']}")
    else:
        lines.append("best: none (no job reached a finite val/loss)")
    if report.study:
        lines += ["", report.study.rstrip("\n")]
    return "\n".join(lines) + "\n"


def write_csv(report: Report, path: Path):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["job", *report.varying, *COLUMNS, "dir"])
    for row, r in zip(table_rows(report, formatted=False), report.rows):
        w.writerow([*row, r["dir"]])
    atomic_write(path, buf.getvalue())


def plot(report: Report, path: Path) -> bool:
    """Val loss of every job against tokens seen, labelled by its varying overrides; the best drawn bold."""
    curves = [(r, [c for c in r["val_curve"] if _finite(c[2])]) for r in report.rows]
    curves = [(r, c) for r, c in curves if c]
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = report.best
    # the legend goes under the axes, one row a job: inside them ("best" place) it hid curves of a search
    fig = plt.figure(figsize=(7, 4 + 0.2 * len(curves)), layout="constrained")
    ax = fig.add_subplot()
    for r, c in reversed(curves):  # the best last, so it is drawn on top
        is_best = best is not None and r is best
        name = label(r, report.varying) + (" (best)" if is_best else "")
        pruned = r["status"] == "pruned"
        if not r["status"].startswith(("ok", "stopped")):
            name += f" [{r['status'].split(':')[0]}]"
        line, = ax.plot([p[1] for p in c], [p[2] for p in c], marker="o" if len(c) < 30 else None, markersize=3,
                        linewidth=2.8 if is_best else 1.2, alpha=1.0 if is_best else 0.75, zorder=3 if is_best else 2,
                        linestyle="--" if r["status"].startswith("failed") else ":" if pruned else "-", label=name)
        if pruned:  # where the search stopped it
            ax.plot([c[-1][1]], [c[-1][2]], marker="x", markersize=9, mew=2, color=line.get_color(), zorder=4)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("val loss")
    ax.set_title(f"sweep {report.sweep_dir.name}: val loss by job")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], fontsize=8, loc="outside lower center")
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return True


def build_report(sweep_dir: Path, echo: bool = True) -> Report:
    """Read the jobs of `sweep_dir`, write the summary files there and (echo) print the table."""
    sweep_dir = Path(sweep_dir)
    rows = read_jobs(sweep_dir)
    rows.sort(key=_sort_key)
    report = Report(sweep_dir, rows, varying_keys(rows), study=study_summary(sweep_dir))
    md = markdown(report)
    write_csv(report, sweep_dir / CSV_FILE)
    atomic_write(sweep_dir / MD_FILE, md)
    report.files = [sweep_dir / CSV_FILE, sweep_dir / MD_FILE]
    if report.study and (sweep_dir / BEST_FILE).is_file():
        report.files.append(sweep_dir / BEST_FILE)
    if plot(report, sweep_dir / PLOT_FILE):
        report.files.append(sweep_dir / PLOT_FILE)
    if echo:
        print(f"sweep summary ({len(rows)} job{'s' if len(rows) != 1 else ''}, sorted by best val/loss): {sweep_dir}")
        print(md, end="")
        print("wrote " + ", ".join(p.name for p in report.files))
    return report


def summarize(sweep_dir: str) -> Report:
    """report.py's work: the report of `sweep_dir` (as typed) written and printed; a UserError where it is
    no sweep directory."""
    d = Path(sweep_dir)
    if not d.is_dir():
        raise UserError(f"{sweep_dir}: no such directory; give a sweep directory (outputs/multirun/<date>/<time>)")
    if not find_jobs(d) and ((d / RESULT_FILE).is_file() or (d / ".hydra").is_dir()):
        sweep = f"; it is a job of the sweep {d.parent}: python report.py {d.parent}" if find_jobs(d.parent) else ""
        raise UserError(f"{sweep_dir} is a single run, not a sweep: its results are its {RESULT_FILE}, loss_plot.png "
                        f"and tb/ (tensorboard --logdir {sweep_dir}); report.py summarizes the jobs of a sweep "
                        f"(python train.py -m ..., outputs/multirun/<date>/<time>){sweep}")
    if not find_jobs(d):
        raise UserError(f"{sweep_dir} holds no sweep jobs (no subdirectory with {RESULT_FILE} or .hydra/); "
                        f"give a sweep directory (outputs/multirun/<date>/<time>)")
    return build_report(d, echo=True)
