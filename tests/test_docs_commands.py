"""Every shell command the docs show runs, as written.

The commands are the lines of the ```bash fences of README.md, docs/*.md and benchmarks/README.md (a line
ending in a backslash goes on). The test runs each one as the docs write it, from a scratch folder, and
changes it in two ways only, both written down below:

- it adds the overrides that make it short (`SHORT`: the nano model, windows of 32 tokens, 2 steps, ...;
  an override the command already has is set to the short value, which is what Hydra does with the
  later of two);
- it puts files it made where the command names a placeholder or a file of the reader's (`artifacts`:
  `<run dir>` is a run the README's `python train.py` trained, `/models/gpt2` a tiny Hugging Face
  folder, `corpus.txt` a small text file, `hellaswag_val.jsonl` the test fixtures, ...).

A command that cannot run here (a GPU, a download, several machines, a server that runs until stopped)
carries the marker `# not run in CI: <why>` on its line, or on a comment line of its fence above it (then
it covers the rest of that fence); the test skips it with that reason and prints how many it skipped
and why. `pip install ...` and the whole-suite `pytest` lines are what `.ci/run` runs: the test checks that
it does. Every other command must run: `test_every_command_is_run_or_marked` (fast) fails on a command
the test does not know how to run and that has no marker. The commands themselves run in the slow suite
(`test_the_commands_of`, one test per page, two commands at a time), and `test_documented_bpb_command`
runs the README's bits-per-byte command alone in the fast suite.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import write_corpus

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SCRIPTS = ("train.py", "sample.py", "eval.py", "export.py", "report.py", "compress.py")
MARK = re.compile(r"#.*?\bnot run in CI: (.+?)\s*$")
CI_RUN = ROOT / ".ci" / "run"


def doc_pages() -> list[Path]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
    return [p for p in pages if p.is_file()]


@dataclass(frozen=True)
class Command:
    page: str  # e.g. docs/sampling.md
    line: int  # where the command starts
    text: str  # as written (continuation lines joined)
    skip: str | None  # the reason of its `not run in CI:` marker

    def argv(self) -> list[str]:
        return shlex.split(self.text, comments=True)

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def doc_commands(pages: list[Path] | None = None, root: Path = ROOT) -> list[Command]:
    """Every command of the ```bash fences of the pages, in order."""
    out = []
    for page in pages or doc_pages():
        name = str(page.relative_to(root))
        fence, fence_skip, pending, start = False, None, "", 0
        for n, line in enumerate(page.read_text().splitlines(), 1):
            if line.startswith("```"):
                fence, fence_skip, pending = line.strip() == "```bash", None, ""
                continue
            if not fence:
                continue
            stripped = line.strip()
            if not pending:
                if not stripped:
                    continue
                if stripped.startswith("#"):
                    if m := MARK.search(stripped):
                        fence_skip = m.group(1)
                    continue
                start = n
            if stripped.endswith("\\"):
                pending += stripped[:-1].rstrip() + " "
                continue
            text = pending + stripped
            pending = ""
            m = MARK.search(text)
            out.append(Command(name, start, text, m.group(1) if m else fence_skip))
    return out


def ci_runs(cmd: Command) -> bool:
    """`.ci/run` runs this command (pip install with these extras or more; pytest as written)."""
    ci = [shlex.split(line, comments=True) for line in CI_RUN.read_text().splitlines()]
    argv = cmd.argv()
    if argv[:3] == ["pip", "install", "-e"]:
        extras = set(re.findall(r"\w+", argv[3].partition("[")[2]))
        return any(c[:3] == argv[:3] and extras <= set(re.findall(r"\w+", c[3].partition("[")[2])) for c in ci if len(c) > 3)
    return any(c[: len(argv)] == argv for c in ci)


def kind(cmd: Command) -> str:
    """'run' (the slow test runs it), 'ci' (.ci/run runs it), 'skip' (marked), or 'unknown'."""
    if cmd.skip:
        return "skip"
    argv = cmd.argv()
    if argv[0] == "pip" or argv == ["pytest"] or argv[:3] == ["pytest", "-m", "slow"]:
        return "ci" if ci_runs(cmd) else "unknown"
    if argv[0] == "python" and len(argv) > 1 and (argv[1] in SCRIPTS or argv[1].startswith("tests/")):
        return "run"
    if argv[0] == "pytest" and all(a.startswith("tests/") for a in argv[1:]):
        return "run"
    return "unknown"


def summary(commands: list[Command]) -> str:
    kinds = Counter(kind(c) for c in commands)
    why = Counter(c.skip for c in commands if c.skip)
    reasons = "; ".join(f"{n} {r}" for r, n in why.most_common())
    return (f"docs commands: {len(commands)} in the ```bash fences: {kinds['run']} run by this test, "
            f"{kinds['ci']} run by .ci/run, {kinds['skip']} not run ({reasons})")


# --- fast: every command is run or marked -------------------------------------------------------------

def test_every_command_is_run_or_marked(capsys):
    commands = doc_commands()
    assert len(commands) > 40, "the scan found too few commands: the fence parser is broken"
    unknown = [str(c) for c in commands if kind(c) == "unknown"]
    assert not unknown, ("commands this test cannot run and that carry no `# not run in CI: <why>` marker "
                         f"(teach the test to run them, or mark them): {unknown}")
    assert sum(kind(c) == "run" for c in commands) > 30
    with capsys.disabled():
        print("\n" + summary(commands))


def test_the_parser_reads_continuations_and_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n```bash\n# not run in CI: needs a GPU\npython train.py a=1 \\\n    b=2\n```\n"
                    "```text\npython not_a_command.py\n```\n```bash\npython eval.py x=1   # fine\n"
                    "torchrun x   # two nodes; not run in CI: several machines\n\n```\n")
    got = doc_commands([page], root=tmp_path)
    assert [(c.line, c.text, c.skip) for c in got] == [
        (4, "python train.py a=1 b=2", "needs a GPU"),
        (11, "python eval.py x=1   # fine", None),
        (12, "torchrun x   # two nodes; not run in CI: several machines", "several machines"),
    ]
    assert got[1].argv() == ["python", "eval.py", "x=1"]


# --- running them -------------------------------------------------------------------------------------

# The overrides that make a command short, by script; where a command already sets the key, the short
# value replaces it (as Hydra's later value would).
SHORT = {
    "train.py": {
        "model": "nano", "data.max_length": "32", "data.batch_size": "4", "trainer.max_steps": "2",
        "trainer.limit_val_batches": "2", "trainer.enable_progress_bar": "false", "sampling.every_n_steps": "0",
    },
    "sample.py": {"max_new_tokens": "5"},
}
# ... only where the command has the key already
SHORT_IF_SET = {
    "trainer.val_check_interval": "2",  # validations within the 2 steps
    "callbacks.eval_task.every_n_steps": "2",
    "callbacks.eval_task.limit": "3",
    "num_samples": "2",
    "limit": "3",
    "hydra.sweeper.n_trials": "2",
}


def shorten(argv: list[str]) -> list[str]:
    script = argv[1] if len(argv) > 1 else ""
    if script not in SHORT or any(a in ("--help", "-h", "--cfg") for a in argv):
        return argv
    short = dict(SHORT[script])
    if script == "train.py":
        if any(a.startswith("ckpt_path=") for a in argv):
            short["trainer.max_steps"] = "3"  # one step more than the run it resumes
        if any(a.startswith("model.init_from=") for a in argv):
            del short["model"]  # the architecture is the weights'
        if "hparams_search=optuna" in argv:
            short["hydra.sweeper.n_trials"] = "2"
        if any(a.startswith("+callbacks/eval_task=") for a in argv):
            short |= {"callbacks.eval_task.every_n_steps": "2", "callbacks.eval_task.limit": "3"}
    keys = {a.partition("=")[0]: i for i, a in enumerate(argv) if "=" in a}
    out = list(argv)
    for key, value in {**{k: v for k, v in SHORT_IF_SET.items() if k in keys}, **short}.items():
        if key in keys:
            out[keys[key]] = f"{key}={value}"
        else:
            out.append(f"{key}={value}")
    return out


class Workspace:
    """A scratch folder with the files the docs' commands name, and the runs they need."""

    def __init__(self, root: Path):
        self.root = root
        self.results: dict[tuple[str, ...], subprocess.CompletedProcess] = {}
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
        self.table: dict[str, str] = {}  # placeholder as the docs write it -> what the test puts there

    def make_files(self) -> None:
        r = self.root
        corpus = write_corpus(r)  # corpus.txt
        shutil.copy(corpus, r / "my_corpus.txt")
        shutil.copy(FIXTURES / "the-verdict.txt", r / "the-verdict.txt")
        (r / "prompts.txt").write_text("The return value of\n\nEvery effort moves you\n")
        (r / "eval_data").mkdir()
        for src, name in (("hellaswag_tiny.jsonl", "hellaswag_val.jsonl"), ("lambada_tiny.jsonl", "lambada_test.jsonl")):
            shutil.copy(FIXTURES / "eval" / src, r / name)
            shutil.copy(FIXTURES / "eval" / src, r / "eval_data" / name)
        web = r / "web-text"
        web.mkdir()
        for i in range(2):
            shutil.copy(corpus, web / f"part-{i}.txt")
        shutil.copytree(web, r / "corpus")
        shutil.copy(FIXTURES / "chinese.txt", r / "chinese.txt")  # docs/data.md's own-language commands
        # docs/data.md's data=hf folders: ./my_dataset (rows with a `body`) and shards/*.jsonl.gz
        text = corpus.read_text().splitlines()
        lines = [json.dumps({"body": "\n".join(text[i:i + 10])}) for i in range(0, len(text), 10)]
        (r / "my_dataset").mkdir()
        (r / "my_dataset" / "part-0.jsonl").write_text("\n".join(lines) + "\n")
        (r / "shards").mkdir()
        for i in range(2):
            with gzip.open(r / "shards" / f"part-{i}.jsonl.gz", "wt") as f:
                f.write("\n".join(line.replace('"body"', '"text"') for line in lines) + "\n")
        shutil.copy(corpus, r / "english.txt")
        (r / "chinese").mkdir()  # docs/evaluation.md's corpus of several documents
        zh = (FIXTURES / "chinese.txt").read_text(encoding="utf-8").splitlines()
        for i in range(4):
            (r / "chinese" / f"part-{i}.txt").write_text("\n".join(zh[i::4]) + "\n", encoding="utf-8")
        self.table |= {"/data/web-text/": f"{web}/", "task.path=...": "task.path=hellaswag_val.jsonl",
                       "bench.path=...": "bench.path=hellaswag_val.jsonl"}

    def make_models(self) -> None:
        """A tiny Hugging Face GPT-2 folder for /models/gpt2 and a tiny book .pth for gpt2-small-124M.pth."""
        transformers = pytest.importorskip("transformers")
        import torch

        torch.manual_seed(0)
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=64))
        hf.save_pretrained(self.root / "models" / "gpt2")
        GPTModel = pytest.importorskip("llms_from_scratch.ch04", reason="the book's code is not installed "
                                       "(pip install --no-deps llms-from-scratch)").GPTModel

        book = GPTModel({"vocab_size": 50257, "context_length": 256, "emb_dim": 32, "n_heads": 2, "n_layers": 1,
                         "drop_rate": 0.0, "qkv_bias": False})
        torch.save(book.state_dict(), self.root / "gpt2-tiny.pth")
        # emb_dim 32 is none of GPT-2's sizes: the number of heads is given (the real file needs none)
        # a model folder holding a tokenizer.json (docs/data.md's /models/Qwen2.5-0.5B): a small byte-level BPE
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train([str(self.root / "corpus.txt")], trainers.BpeTrainer(
            vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        (self.root / "models" / "qwen").mkdir(parents=True)
        tok.save(str(self.root / "models" / "qwen" / "tokenizer.json"))
        self.table |= {"/models/gpt2": str(self.root / "models" / "gpt2"),
                       "/models/Qwen2.5-0.5B": str(self.root / "models" / "qwen"),
                       "model.init_from=gpt2-small-124M.pth": "model.init_from=gpt2-tiny.pth model.n_heads=2"}

    def substitute(self, text: str) -> str:
        for doc, ours in sorted(self.table.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(doc, ours)
        return text

    def argv(self, cmd: Command) -> list[str]:
        return shorten(shlex.split(self.substitute(cmd.text), comments=True))

    def cwd(self, argv: list[str]) -> Path:
        return ROOT if any(a.startswith("tests/") for a in argv) else self.root

    def run(self, cmd: Command) -> subprocess.CompletedProcess:
        argv = self.argv(cmd)
        key = tuple(argv)
        if key not in self.results:
            cwd = self.cwd(argv)
            full = [sys.executable, *(str(ROOT / a) if a in SCRIPTS and cwd == self.root else a for a in argv[1:])] \
                if argv[0] == "python" else [sys.executable, "-m", *argv]
            self.results[key] = subprocess.run(full, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=900)
        return self.results[key]

    def new_dir(self, pattern: str, before: set[Path]) -> Path:
        (found,) = set(self.root.glob(pattern)) - before
        return found


def find(commands: list[Command], page: str, start: str) -> Command:
    (found,) = [c for c in commands if c.page == page and c.text.startswith(start)][:1]
    return found


@pytest.fixture(scope="module")
def ws(tmp_path_factory, request) -> Workspace:
    """The files, and the runs that other commands name: the README's `python train.py` (<run dir>), its
    sweep (the sweep report.py reads) and its Optuna search (the search hydra.sweep.dir continues)."""
    w = Workspace(tmp_path_factory.mktemp("docs-commands"))
    w.make_files()
    w.make_models()
    commands = doc_commands()
    train = find(commands, "README.md", "python train.py")
    assert train.text == "python train.py"
    res = w.run(train)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run = w.new_dir("outputs/*/*", set())
    w.table |= {"<run dir>": str(run), "<run A>": str(run), "<run B or /models/gpt2>": str(run), "<run B>": str(run),
                "<run>": str(run), "outputs/<date>/<time>": str(run)}
    # the runs the docs show by their date: the same run
    for c in commands:
        for dated in re.findall(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", c.text):
            w.table[dated] = str(run)
    # docs/evaluation.md's two runs on chinese.txt, GPT-2's tokenizer and a BPE, compared on bits per byte
    for name, tok in (("run-gpt2", []), ("run-bpe", ["tokenizer=bpe", "tokenizer.vocab_size=512"])):
        argv = shorten(["python", "train.py", "data=text", "data.path=chinese.txt", *tok, f"hydra.run.dir=outputs/{name}"])
        res = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv[2:]], cwd=w.root, env=w.env,
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    multirun = "outputs/multirun/*/*"
    sweep = find(commands, "README.md", "python train.py -m model=nano")
    before = set(w.root.glob(multirun))
    res = w.run(sweep)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    w.table["outputs/multirun/2026-12-01/03-39-50"] = str(w.new_dir(multirun, before))
    if kind(search := find(commands, "README.md", "python train.py -m hparams_search=optuna")) == "run":
        pytest.importorskip("optuna")
        before = set(w.root.glob(multirun))
        res = w.run(search)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        w.table["outputs/multirun/2026-12-01/04-06-52"] = str(w.new_dir(multirun, before))
    yield w
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:  # past pytest's capture, so that CI's log shows it
        with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
            tr.write_line("\n" + summary(commands) + f"; {len(w.results)} distinct command lines ran")


@pytest.mark.slow
@pytest.mark.parametrize("page", [str(p.relative_to(ROOT)) for p in doc_pages()])
def test_the_commands_of(page, ws):
    commands = [c for c in doc_commands() if c.page == page]
    for c in commands:
        if c.skip:
            print(f"skipped ({c.skip}): {c}")
    runnable = [c for c in commands if kind(c) == "run"]
    if not runnable:
        pytest.skip(f"{page}: no command to run ({len(commands)} marked or run by .ci/run)")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(ws.run, runnable))
    failed = [f"{c}\n  ran: {shlex.join(ws.argv(c))}\n  exit {r.returncode}: {(r.stdout + r.stderr)[-1500:]}"
              for c, r in zip(runnable, results) if r.returncode != 0]
    assert not failed, "\n\n".join(failed)
    if page == "docs/pretrained.md":  # the export wrote a Hugging Face folder
        assert (ws.root / "exported" / "config.json").is_file()


# --- fast: the README's bits-per-byte command ----------------------------------------------------------

def test_documented_bpb_command(tmp_path):
    """eval.py task=bpb as the README writes it, on a checkpoint of the fixtures (it crashed with
    `TypeError: 'int' object is not iterable` without compare=)."""
    (cmd,) = [c for c in doc_commands() if c.page == "README.md" and re.search(r"\b(task|bench)=bpb\b", c.text)]
    write_corpus(tmp_path)
    w = Workspace(tmp_path)
    w.table["<run dir>"] = str(FIXTURES / "nano_6df85dd.ckpt")
    res = w.run(cmd)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert re.search(r"^bpb\s+bpb\s+\d+\s+\d+\.\d+", res.stdout, re.M), res.stdout
    assert len(list(tmp_path.glob("outputs/eval/*/*/eval.json"))) == 1
