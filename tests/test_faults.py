"""Crash safety: fault hooks, a short fault-injection campaign (the full one is
benchmarks/fault_injection.py), and a really full disk (a tiny tmpfs)."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from clara_cli.cli import cli
from clara_cli.store import Store, configure_faults, fault_point, faults_enabled, set_fault_stage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_store import tables  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "fault_injection.py"


def load_bench():
    """The benchmark module by path (putting benchmarks/ on sys.path would shadow `kernels`)."""
    spec = importlib.util.spec_from_file_location("fault_injection", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def no_faults():
    yield
    configure_faults(None)
    set_fault_stage("")


def test_fault_hooks_cost_nothing_unset_and_fire_exactly(tmp_path):
    assert not faults_enabled()  # CI runs without CLARA_FAULT: fault_point is one global test
    fault_point("commit")
    with pytest.raises(ValueError, match="CLARA_FAULT"):
        configure_faults("commit")
    trace = tmp_path / "trace"
    configure_faults("ingest/write:2:enospc", str(trace))
    set_fault_stage("ingest")
    fault_point("write")  # the first passage does nothing
    with pytest.raises(OSError) as err:
        fault_point("write")
    assert err.value.errno == errno.ENOSPC
    set_fault_stage("compress")
    fault_point("write")  # compress/write is another point
    assert trace.read_text().split() == ["ingest/write", "ingest/write", "compress/write"]


def test_an_error_after_the_manifest_swap_keeps_the_commit(tmp_path):
    """Regression (found by the campaign): an exception between the manifest swap and the end of
    commit() (a failing directory fsync, ^C) made the writer's abort delete the files the new
    manifest names."""
    store = Store.open(tmp_path / "store", create=True)
    configure_faults("committed:1:enospc")
    with pytest.raises(OSError), store.writer() as txn:
        txn.add_documents(*tables(["a", "b"]))
    configure_faults(None)
    snap = store.snapshot()
    assert snap.version == 1 and snap.documents().num_rows == 2
    assert snap.verify() == [] and snap.consistency() == []


@pytest.mark.parametrize("point", ["write:1", "write:2", "commit:1", "swap:1"])
def test_a_full_disk_at_any_write_leaves_the_last_snapshot(tmp_path, point):
    store = Store.open(tmp_path / "store", create=True)
    with store.writer() as txn:
        txn.add_documents(*tables(["a"]))
    files = sorted(p.name for p in (store.root / "data").iterdir())
    configure_faults(point + ":enospc")
    with pytest.raises(OSError), store.writer() as txn:
        txn.add_documents(*tables(["b"], first_key=10))
        txn.commit()
    configure_faults(None)
    snap = store.snapshot()
    assert snap.version == 1 and snap.documents().column("doc_id").to_pylist() == ["a"]
    assert snap.verify() == [] and sorted(p.name for p in (store.root / "data").iterdir()) == files


def test_kill_and_full_disk_campaign(tiny_model_dir, tmp_path):
    """6 trials spread over a traced run (ingest, compress, index; fresh and incremental stores):
    SIGKILL at a named point, at a random time, twice in a row, and ENOSPC; after each, the store
    as left passes check_store, and after a rerun it equals an uninterrupted run (content,
    memory rows, index, search), with data/ exactly the manifest's files after gc."""
    bench = load_bench()
    lines: list[str] = []
    results = bench.run_campaign(tiny_model_dir, trials=6, seed=3, work=tmp_path / "work", stratified=True,
                                 n_files=5, modes=("hook", "enospc", "timer", "double", "enospc", "hook"),
                                 log=lines.append)
    failed = [r for r in results if not r["ok"]]
    assert not failed, "\n".join(lines)
    stages = {r["stage"] for r in results if r["mode"] != "timer"}
    assert {"ingest", "compress", "index"} <= stages, lines
    assert sum(r["landed"] for r in results) >= 5, lines


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root may mount one; elsewhere the test is skipped)."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(disk: Path, leave: int) -> None:
    """Grow a filler file until only `leave` bytes are free on the disk."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    st = os.statvfs(disk)
    size = max(0, st.f_bavail * st.f_frsize - leave)
    with open(filler, "wb") as f:
        try:
            f.write(b"\0" * size)
        except OSError:
            pass


def test_update_on_a_full_disk_keeps_the_last_snapshot(small_disk, tmp_path, tiny_model_dir):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"d{i}.txt").write_text(f"Document {i} is about the harbour number {i}. " * 3)
    store = small_disk / "store"
    runner = CliRunner()

    def clara(*args):
        return runner.invoke(cli, ["--store", str(store), *args], catch_exceptions=False)

    def search():
        r = clara("search", "harbour", "-k", "3", "--json")
        assert r.exit_code == 0, r.output
        return [json.loads(line)["chunk_id"] for line in r.stdout.splitlines()]

    m = str(tiny_model_dir)
    assert clara("update", str(corpus), "--model", m, "--quiet").exit_code == 0
    hits = search()
    for i in range(3, 9):
        (corpus / f"d{i}.txt").write_text(f"Document {i} tells of lantern {i}, river {i} and a bridge. " * 40)
    outcomes = []
    for leave in (0, 4096, 16384, 65536):
        fill(small_disk, leave)
        version = json.loads((store / "manifest.json").read_text())["version"]
        r = clara("update", str(corpus), "--model", m, "--quiet")
        outcomes.append(r.exit_code)
        assert r.exit_code in (0, 1), r.output
        if r.exit_code == 1:
            assert "No space left on device" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert json.loads((store / "manifest.json").read_text())["version"] >= version
        v = clara("verify")
        assert v.exit_code == 0, v.output  # whatever committed is whole
        if r.exit_code == 1 and leave == 0:
            assert search() == hits  # nothing new could be written: the old answers
    assert outcomes[0] == 1  # a disk with no room at all refuses the update
    (small_disk / "filler").unlink()
    assert clara("update", str(corpus), "--model", m, "--quiet").exit_code == 0
    assert clara("verify").exit_code == 0
    info = json.loads(clara("info", "--json").stdout)
    assert info["documents"] == 9 and info["compressed"] == info["chunks"]
