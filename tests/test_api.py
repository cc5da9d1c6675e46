"""The Python API (`clara_cli.open_store`): the README's example runs as written, results equal
the CLI's, errors carry the CLI's exit codes; commands that need no model start without torch."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_store import build_tiny_store, json_lines

from clara_cli.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory, tiny_model):
    return build_tiny_store(tmp_path_factory.mktemp("api"), tiny_model)


def clara_json(store: Path, *args: str) -> list[dict]:
    r = CliRunner().invoke(cli, ["--store", str(store), *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json_lines(r.stdout)


def test_readme_example_runs(tmp_path, tiny_model, capsys):
    """The Python API block of the README, run as it is in a folder with clara-store/ and notes/."""
    text = README.read_text()
    block = re.search(r"<!-- tested by tests/test_api.py[^\n]*-->\n```python\n(.*?)```", text, re.S).group(1)
    build_tiny_store(tmp_path, tiny_model)
    (tmp_path / "store").rename(tmp_path / "clara-store")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "nile.md").write_text("The Nile flows north through Egypt.")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(block, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out.splitlines()
    assert "eiffel.txt" in out[0]  # the BM25 hit
    assert out[-1] == "1 added, 1 compressed, 5 indexed"


def test_search_and_ask_equal_the_cli(tiny_store, tiny_model_dir):
    import clara_cli

    m = ["--model", str(tiny_model_dir), "--dtype", "fp32"]
    with clara_cli.open_store(tiny_store, model=str(tiny_model_dir), device="cpu", dtype="fp32") as s:
        assert not s.model_loaded
        hits = s.search("Great Barrier Reef", k=2, retriever="bm25")
        assert not s.model_loaded  # bm25 needs no model
        assert [h.to_dict() for h in hits] == clara_json(tiny_store, "search", "Great Barrier Reef", "-k", "2",
                                                         "--retriever", "bm25", "--json")
        assert hits[0].text.startswith("The Great Barrier Reef") and hits[0].score > 0 and hits[0].source
        for mode in ("latent", "hybrid"):
            got = [h.to_dict() for h in s.search("Great Barrier Reef", k=2, retriever=mode)]
            assert got == clara_json(tiny_store, "search", "Great Barrier Reef", "-k", "2", "--retriever", mode,
                                     "--json", *m)
        answer = s.ask("Who wrote the first program?", k=2, max_new_tokens=4)
        expected = clara_json(tiny_store, "ask", "Who wrote the first program?", "-k", "2", "--max-new-tokens",
                              "4", "--json", *m)[0]
        got = answer.to_dict()
        got.pop("timings"), expected.pop("timings")
        assert got == expected and answer.answer == got["answer"] and len(answer.sources) == 2
        many = s.ask(["Who wrote the first program?", "Where is Kilimanjaro?"], k=2, max_new_tokens=4)
        assert [a.question for a in many] == ["Who wrote the first program?", "Where is Kilimanjaro?"]
        assert many[0].answer == answer.answer
        assert s.info() == clara_json(tiny_store, "info", "--json")[0]


def test_errors_carry_exit_codes(tiny_store, tmp_path, fixture_dir):
    import clara_cli
    from clara_cli.errors import ClaraError

    s = clara_cli.open_store(tiny_store, device="cpu", dtype="fp32")
    for call, code in [(lambda: s.search("x", k=0), 2), (lambda: s.search("x", retriever="dense"), 2),
                       (lambda: s.ask("x", max_new_tokens=0), 2)]:
        with pytest.raises(ClaraError) as err:
            call()
        assert err.value.exit_code == code
    other = clara_cli.open_store(tiny_store, model=str(fixture_dir), device="cpu", dtype="fp32")
    with pytest.raises(ClaraError) as err:
        other.search("reef", k=1)
    assert err.value.exit_code == 5
    with pytest.raises(ClaraError, match="no store"):
        clara_cli.open_store(tmp_path / "nowhere")


DRIVER = """
import sys
from clara_cli.cli import cli
try:
    cli.main(args=sys.argv[1:], prog_name="clara")
except SystemExit as exit:
    code = exit.code
print("LOADED", *[m for m in ("torch", "transformers", "faiss") if m in sys.modules], file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("args", [["--help"], ["info", "--json"], ["search", "reef", "--retriever", "bm25"],
                                  ["verify"], ["gc"], ["serve", "--help"]])
def test_commands_without_a_model_start_without_torch(tiny_store, args):
    r = subprocess.run([sys.executable, "-c", DRIVER, "--store", str(tiny_store), *args], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[-1] == "LOADED", r.stderr  # neither torch nor transformers nor faiss
    with contextlib.suppress(ValueError):
        assert json.loads(r.stdout.splitlines()[0])  # info --json still prints its object


def test_questions_are_answered_between_an_updates_batches(tiny_store, tmp_path, tiny_model_dir):
    """The API's update holds the model for one compression batch at a time, not for the whole
    run: a latent search through the same object during a long update returns before it ends."""
    import shutil
    import threading
    import time

    import clara_cli

    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(30):
        (notes / f"depot-{i}.txt").write_text(f"Depot {i} keeps {i * 7} crates of spare parts.")
    with clara_cli.open_store(store, model=str(tiny_model_dir), device="cpu", dtype="fp32") as s:
        model = s.load_model()
        batch_starts: list[float] = []
        compress = model.compress

        def visible_compress(*args, **kw):  # the real compression, stretched so batches can be told apart
            batch_starts.append(time.perf_counter())
            time.sleep(0.05)
            return compress(*args, **kw)

        model.compress = visible_compress
        reports = []
        writer = threading.Thread(target=lambda: reports.append(s.update([notes], batch_size=1)))
        writer.start()
        deadline = time.monotonic() + 120
        while len(batch_starts) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        hits = s.search("spare parts depot", k=1, retriever="latent")
        answered = time.perf_counter()
        writer.join(timeout=300)
    assert reports and reports[0].compressed == 30 and hits
    assert answered < batch_starts[-1], "the search waited for the whole update"
