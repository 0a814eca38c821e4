"""sample.py end to end: a nano checkpoint trained for two steps, the commands users type, and each error.

Every run is a real `python sample.py ...` subprocess; they run two at a time to keep the file fast.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Every effort moves you"  # sampling=default's prompt (gptlit.model.generate.SampleTextConfig), used by both SampleText and sample.py


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(max_workers=2) as ex:
        yield ex


def launch(pool: ThreadPoolExecutor, cwd: Path, *args: str) -> Future:
    cwd.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(REPO / "sample.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two runs at once on two cores: no oversubscription
    return pool.submit(subprocess.run, cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train nano for 2 steps in-process; keep the run dir, a final checkpoint and SampleText's text."""
    from hydra import compose, initialize_config_dir

    from gptlit.run.runner import build_run
    from gptlit.training.callbacks.sampling import SampleText

    root = tmp_path_factory.mktemp("trained")
    overrides = [
        "model=nano", "trainer.max_steps=2", "data.batch_size=2", "trainer.limit_val_batches=2",
        "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.enable_progress_bar=false",
        "sampling.every_n_steps=1000",  # no sample while training, one at the end (SampleText.at_end)
        "~logger", "callbacks.lr_monitor=null", "callbacks.progress_bar=null", f"paths.output_dir={root / 'run'}",
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    dm, module, trainer, _ = build_run(cfg)
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(root / "final.ckpt")  # the weights SampleText just sampled from
    sampler = next(c for c in trainer.callbacks if isinstance(c, SampleText))
    assert sampler.prompt == PROMPT and len(sampler.samples) == 1
    assert (root / "run" / "checkpoints" / "best.ckpt").is_file()
    return SimpleNamespace(root=root, text=sampler.samples[0][1])


# --- errors (no checkpoint needed: each fails before one is read) ------------------------------

ERRORS = {
    "no_ckpt": ([], "ckpt is required"),
    "missing_ckpt": (["ckpt=nowhere/model.ckpt"], "nowhere/model.ckpt: no such file"),
    "corrupt_ckpt": (["ckpt=../random.ckpt"], "random.ckpt is not a readable checkpoint"),
    "not_gptlit": (["ckpt=../other.ckpt"], "other.ckpt is not a gptlit checkpoint"),
    "missing_prompt_file": (["ckpt=../other.ckpt", "prompt_file=prompts/none.txt"], "prompt_file=prompts/none.txt"),
    "temperature": (["ckpt=../other.ckpt", "sampling.temperature=-0.5"], "sampling.temperature=-0.5"),
    "top_k": (["ckpt=../other.ckpt", "sampling.top_k=0"], "sampling.top_k=0"),
    "top_p_zero": (["ckpt=../other.ckpt", "sampling.top_p=0"], "sampling.top_p=0"),
    "top_p_above_one": (["ckpt=../other.ckpt", "sampling.top_p=1.5"], "sampling.top_p=1.5"),
    # the decoding keys work at the top level as prompt= does (before: Hydra's "Key 'top_p' is not in struct", exit 1)
    "top_p_top_level": (["ckpt=../other.ckpt", "top_p=1.5"], "sampling.top_p=1.5"),
    "temperature_top_level": (["ckpt=../other.ckpt", "temperature=-1"], "sampling.temperature=-1"),
    "init_from_missing": (["init_from=no/gpt2"], "no/gpt2"),
}


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory, pool):
    import torch

    d = tmp_path_factory.mktemp("errors")
    (d / "random.ckpt").write_bytes(os.urandom(4096))
    torch.save({"a": 1}, d / "other.ckpt")  # a valid torch file, not a gptlit checkpoint
    return {name: launch(pool, d / name, *args) for name, (args, _) in ERRORS.items()}  # each in its own cwd


@pytest.mark.parametrize("name", list(ERRORS))
def test_error_is_one_line_and_exit_code_2(error_runs, name):
    r = error_runs[name].result()
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert ERRORS[name][1] in lines[0]
    assert "===" not in r.stdout  # nothing generated


# --- the commands users type ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(trained, pool):
    d = trained.root
    (d / "prompts.txt").write_text("Hello world\n\n   \nThe cat\n", encoding="utf-8")
    long_prompt = " ".join(["word"] * 100)
    return {
        "default": launch(pool, d / "default", "ckpt=../final.ckpt"),
        "seeds": launch(pool, d / "seeds", "ckpt=../final.ckpt", "seed=122", "num_samples=2", "use_cache=false"),
        "run_dir": launch(pool, d / "run_dir", "ckpt=../run", "sampling=greedy", "prompt_file=../prompts.txt",
                          "num_samples=2", "max_new_tokens=6"),
        "multirun": launch(pool, d / "multirun", "-m", f"ckpt={d / 'final.ckpt'}", "max_new_tokens=5",
                           "sampling.temperature=0.5,1.5", "sampling.top_k=5,50"),
        "empty": launch(pool, d / "empty", "ckpt=../final.ckpt", "prompt=''", "max_new_tokens=4"),
        "top_level": launch(pool, d / "top_level", "ckpt=../final.ckpt", "temperature=0.5", "top_k=null", "top_p=0.9",
                            "max_new_tokens=8"),
        "nested": launch(pool, d / "nested", "ckpt=../final.ckpt", "sampling.temperature=0.5", "sampling.top_k=null",
                         "sampling.top_p=0.9", "max_new_tokens=8"),
        "long": launch(pool, d / "long", "ckpt=../final.ckpt", f"prompt='{long_prompt}'", "max_new_tokens=4"),
        # typed as is, unquoted for Hydra: a sweep of a Chinese prompt with an emoji and an accented one
        "non_ascii": launch(pool, d / "non_ascii", "-m", "ckpt=../final.ckpt", f"prompt={CHINESE},café au lait",
                            "max_new_tokens=4"),
    }


CHINESE = "每一次努力都让你前进 🚀"


@pytest.mark.slow  # sample.py's command lines (7 processes): long, rarely broken (issue 28)
def test_prompts_in_chinese_with_emoji_and_accents(runs):
    # before: LexerNoViableAltException from Hydra's override parser, exit 1
    out = ok(runs["non_ascii"].result())
    blocks = out.split("=== temperature=")[1:]
    assert len(blocks) == 2
    assert [b.splitlines()[2][: len(p)] for b, p in zip(blocks, (CHINESE, "café au lait"))] == [CHINESE, "café au lait"]


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r.stdout


@pytest.mark.slow  # sample.py's command lines (7 processes): long, rarely broken (issue 28)
def test_default_sample_is_the_training_callbacks_text(runs, trained):
    out = ok(runs["default"].result())
    assert "=== temperature=1.0 top_k=50 top_p=None seed=123 ckpt=../final.ckpt ===" in out  # sampling=default (gptlit.model.generate.SampleTextConfig)
    assert f"--- sample 1/1 ---\n{PROMPT}{trained.text}\n" in out
    assert len(trained.text) > 20  # 50 tokens of (random-ish) text, not an empty match
    assert list((trained.root / "default" / "outputs" / "samples").glob("*/*/.hydra/config.yaml"))


@pytest.mark.slow  # sample.py's command lines (7 processes): long, rarely broken (issue 28)
def test_sample_i_uses_seed_plus_i_and_cache_off_gives_the_same_text(runs, trained):
    out = ok(runs["seeds"].result())
    assert "seed=122" in out
    assert f"--- sample 2/2 ---\n{PROMPT}{trained.text}\n" in out  # seed 122 + 1 = SampleText's 123
    first = out.split("--- sample 1/2 ---\n")[1].split("--- sample 2/2 ---")[0]
    assert first.startswith(PROMPT) and first != f"{PROMPT}{trained.text}\n"


@pytest.mark.slow  # sample.py's command lines (7 processes): long, rarely broken (issue 28)
def test_run_dir_greedy_and_prompt_file(runs):
    out = ok(runs["run_dir"].result())
    assert "=== temperature=0.0 top_k=None top_p=None seed=123 ckpt=../run/checkpoints/best.ckpt ===" in out
    blocks = re.split(r"^--- (prompt \d/\d, sample \d/\d) ---\n", out, flags=re.M)[1:]
    labels, texts = blocks[0::2], blocks[1::2]
    assert labels == ["prompt 1/2, sample 1/2", "prompt 1/2, sample 2/2", "prompt 2/2, sample 1/2", "prompt 2/2, sample 2/2"]
    assert texts[0].startswith("Hello world") and texts[2].startswith("The cat")
    assert texts[0] == texts[1] and texts[2] == texts[3]  # greedy ignores the seed
    assert len(texts[0]) > len("Hello world\n")


@pytest.mark.slow  # sample.py's command lines (7 processes): long, rarely broken (issue 28)
def test_multirun_prints_one_labelled_block_per_setting(runs, trained):
    out = ok(runs["multirun"].result())
    headers = re.findall(r"^=== temperature=(\S+) top_k=(\S+) top_p=None seed=123 ckpt=(\S+) ===$", out, flags=re.M)
    assert sorted(h[:2] for h in headers) == [("0.5", "5"), ("0.5", "50"), ("1.5", "5"), ("1.5", "50")]
    assert {h[2] for h in headers} == {str(trained.root / "final.ckpt")}  # outside the cwd: shown absolute
    assert out.count("--- sample 1/1 ---") == 4
    assert len(list((trained.root / "multirun" / "outputs" / "samples" / "multirun").glob("*/*/*/.hydra"))) == 4


@pytest.mark.slow  # sample.py's command lines (7 processes): long, rarely broken (issue 28)
def test_empty_prompt_warns_and_starts_from_endoftext(runs):
    r = runs["empty"].result()
    out = ok(r)
    assert "warning: empty prompt: starting from <|endoftext|>" in r.stderr
    assert "--- sample 1/1 ---\n" in out and not out.rstrip().endswith("---")


@pytest.mark.slow  # sample.py's command lines (7 processes): long, rarely broken (issue 28)
def test_long_prompt_warns_and_keeps_the_last_context_length_tokens(runs):
    r = runs["long"].result()
    ok(r)
    assert "warning: prompt has 100 tokens, more than model.context_length=64: keeping its last 64" in r.stderr
    assert r.stderr.count("warning:") == 1


def test_init_from_hugging_face_folder(tmp_path):
    """init_from= samples from a Hugging Face GPT-2 folder; greedy text matches transformers' argmax."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=32, vocab_size=50257)
    ).eval()
    hf.save_pretrained(tmp_path / "tiny-gpt2")
    r = subprocess.run(
        [sys.executable, str(REPO / "sample.py"), "init_from=tiny-gpt2", "sampling=greedy", "max_new_tokens=5",
         f"prompt={PROMPT}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    from gptlit.model.tokenizer import decode, encode

    ids = torch.tensor([encode(PROMPT)])
    with torch.no_grad():
        for _ in range(5):
            ids = torch.cat([ids, hf(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert PROMPT + decode(ids[0, len(encode(PROMPT)):].tolist()) in r.stdout


def test_decoding_keys_at_the_top_level_mean_the_sampling_keys(runs):
    top, nested = ok(runs["top_level"].result()), ok(runs["nested"].result())
    assert "=== temperature=0.5 top_k=None top_p=0.9 seed=123 " in top
    assert top == nested  # the same header and the same text


def test_a_short_generation_shows_no_progress(runs):
    assert "tokens/s" not in runs["default"].result().stderr


def test_ctrl_c_keeps_the_text_and_ends_with_one_line(trained):
    """SIGINT once the first tokens are out: exit 130, the text so far on stdout, one line on stderr."""
    import signal

    p = subprocess.Popen([sys.executable, str(REPO / "sample.py"), "ckpt=../final.ckpt", "sampling=greedy",
                          "max_new_tokens=100000"], cwd=trained.root / "default", stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         # SIGINT's default action, as in a terminal: a shell starts a background job (`pytest &`)
                         # with SIGINT ignored, and its children would inherit that
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        head = ""
        while "--- sample 1/1 ---" not in head:
            line = p.stdout.readline()
            assert line, p.stderr.read()
            head += line
        first = p.stdout.read(len(PROMPT) + 8)  # the prompt, then generated text: generation is under way
        assert first.startswith(PROMPT)
        p.send_signal(signal.SIGINT)
        rest, err = p.communicate(timeout=120)
    finally:
        p.kill()
    # before: a ~60-line KeyboardInterrupt traceback
    assert p.returncode == 130, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    m = re.fullmatch(r"interrupted \(sample 1/1 after ([\d,]+) of 100,000 tokens\): the text above is what was generated",
                     lines[0])
    assert m and 1 <= int(m.group(1).replace(",", "")) < 100000, lines[0]
    assert len(first + rest) > len(PROMPT) + 8 and (first + rest).endswith("\n")


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_reports_rate_and_time_left_throttled():
    import io

    from gptlit.run.sample import Progress

    clock, out = FakeClock(), io.StringIO()
    p = Progress(1000, "sample 1/1", stream=out, clock=clock)  # not a terminal: plain lines every 10 s
    for n in range(1, 1000):
        clock.t = n * 0.1  # 10 tokens/s: 100 s in all
        p(n)
    lines = out.getvalue().splitlines()
    assert lines[0] == "sample 1/1: 20/1,000 tokens, 10.0 tokens/s, about 1 min 38 s left"  # first after 2 s
    assert len(lines) == 10  # at 2, 12, ..., 92 s
    assert lines[-1] == "sample 1/1: 920/1,000 tokens, 10.0 tokens/s, about 8 s left"


def test_progress_is_silent_for_a_generation_of_a_few_seconds():
    import io

    from gptlit.run.sample import Progress

    clock, out = FakeClock(), io.StringIO()
    p = Progress(100, "sample 1/1", stream=out, clock=clock)
    for n in range(1, 100):
        clock.t = n * 0.04  # 4 s in all
        p(n)
    assert out.getvalue() == ""
