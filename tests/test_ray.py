"""`clara compress --ray` on a real local Ray cluster (head on 127.0.0.1, 2 CPUs): the same bytes
as the single-process job, a crashed worker retried, a killed driver resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from click.testing import CliRunner  # noqa: E402

from clara_cli.checkpoint import load_model  # noqa: E402
from clara_cli.cli import cli  # noqa: E402
from clara_cli.compress import compress_store  # noqa: E402
from clara_cli.compress_ray import CRASH_ONCE_ENV, compress_store_ray  # noqa: E402
from clara_cli.store import Store  # noqa: E402

TOPICS = ["river", "castle", "violin", "comet", "harbor", "glacier", "orchard", "lantern", "meadow", "falcon",
          "copper", "desert", "temple", "canyon"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """`ray start --head --block` in its own process group (ours to stop), 2 CPUs, small object store.
    Workers see CLARA_RAY_CRASH_ONCE: the first batch any actor takes kills that actor once."""
    marker = tmp_path_factory.mktemp("ray") / "crashed-once"
    port = free_port()
    exe = Path(sys.executable).parent / "ray"
    # RAY_AUTH_MODE: a ~/.ray/auth_token left by an earlier local Ray (ray.init creates one) would
    # otherwise make this head demand a token that the test's clients do not send.
    env = {**os.environ, CRASH_ONCE_ENV: str(marker), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen([str(exe), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
                             "--object-store-memory=100000000", "--block"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
                break
            except Exception:
                if time.time() > deadline or head.poll() is not None:
                    raise
                time.sleep(0.5)
        yield {"address": address, "marker": marker}
    finally:
        ray.shutdown()
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(3)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait(10)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, tiny_model_dir) -> Path:
    """A store with 12 chunks, ingested with the tiny model, not compressed."""
    root = tmp_path_factory.mktemp("ray-store")
    corpus = root / "corpus"
    corpus.mkdir()
    for i, t in enumerate(TOPICS[:12]):
        (corpus / f"{t}.txt").write_text(f"The {t} number {i} is described here at some length " * (1 + i % 3))
    store = root / "store"
    result = CliRunner().invoke(cli, ["--store", str(store), "ingest", str(corpus), "--model", str(tiny_model_dir)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return store


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ingested, tiny_model) -> Store:
    """The single-process job's result."""
    path = tmp_path_factory.mktemp("ref") / "store"
    shutil.copytree(ingested, path)
    store = Store(path)
    compress_store(store, tiny_model, batch_size=2, progress=False)
    return store


def memory_of(store: Store) -> dict[int, torch.Tensor]:
    snap = store.snapshot()
    keys = snap.memory_keys()
    return dict(zip(keys.tolist(), snap.read_memory(keys), strict=True))


def assert_same_memory(a: Store, b: Store, exact: bool = True) -> None:
    ma, mb = memory_of(a), memory_of(b)
    assert set(ma) == set(mb) and len(ma) == 12
    for key in ma:
        if exact:  # bitwise: the same bytes as single-process
            assert torch.equal(ma[key], mb[key]), key
        else:
            torch.testing.assert_close(ma[key], mb[key], rtol=1e-4, atol=1e-5)


def test_ray_job_matches_single_process_and_survives_a_worker_crash(ray_cluster, ingested, reference, tiny_model,
                                                                     tmp_path):
    store_path = tmp_path / "store"
    shutil.copytree(ingested, store_path)
    store = Store(store_path)
    report = compress_store_ray(store, tiny_model, address=ray_cluster["address"], batch_size=2, progress=False)
    assert report.compressed == 12 and report.batches == 6
    assert ray_cluster["marker"].exists()  # a worker did die on its first batch, and the job still finished
    assert_same_memory(store, reference)
    assert store.snapshot().verify() == []
    again = compress_store_ray(store, tiny_model, address=ray_cluster["address"], batch_size=2, progress=False)
    assert again.compressed == 0


@pytest.mark.slow  # ~40 s here: two driver processes, each starting its actors
def test_killed_driver_resumes(ray_cluster, ingested, reference, tiny_model_dir, tmp_path):
    store_path = tmp_path / "store"
    shutil.copytree(ingested, store_path)
    exe = Path(sys.executable).parent / "clara"
    cmd = [str(exe), "--store", str(store_path), "compress", "--ray", ray_cluster["address"], "--batch-size", "2",
           "--model", str(tiny_model_dir), "--dtype", "fp32", "--json"]
    start = json.loads((store_path / "manifest.json").read_text())["version"]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and driver.poll() is None:
        if json.loads((store_path / "manifest.json").read_text())["version"] >= start + 2:
            break
        time.sleep(0.05)
    assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(30)
    done = len(Store(store_path).snapshot().memory_keys())
    assert 0 < done < 12
    # the rerun finishes what is pending (in a fresh process: the killed driver's actors are gone)
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert json.loads(rerun.stdout)["compressed"] == 12 - done
    # A resumed job batches the remaining chunks anew (and may choose unmerged LoRA for a short
    # remainder), exactly as a resumed single-process job does: equal up to float rounding.
    assert_same_memory(Store(store_path), reference, exact=False)


def test_model_loads_identically_in_workers(tiny_model):
    """The spec a worker loads from names the same checkpoint and dtype as the driver's."""
    from clara_cli.compress_ray import model_spec

    spec = model_spec(tiny_model)
    again = load_model(spec["path"], device="cpu", dtype=spec["dtype"])
    assert again.fingerprint == tiny_model.fingerprint
    x = np.asarray(again.compress(["a short text"]).numpy())
    assert np.array_equal(x, tiny_model.compress(["a short text"]).numpy())


@pytest.mark.slow
def test_a_cluster_with_token_auth_refusal_names_the_setting(tmp_path):
    """A head started with RAY_AUTH_MODE=token refuses a client without the token with only
    "Failed to connect"; the error says which settings to look at."""
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "t" * 32, "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
                             f"--port={port}", "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats",
                             "--object-store-memory=100000000", "--block"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        time.sleep(10)
        client_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        code = ("from clara_cli.compress_ray import connect\nfrom clara_cli.errors import ClaraError\n"
                f"try:\n    connect('127.0.0.1:{port}')\nexcept ClaraError as e:\n    print('ERR', e)\n")
        out = subprocess.run([sys.executable, "-c", code], env=client_env, capture_output=True, text=True, timeout=180)
        line = next(line for line in out.stdout.splitlines() if line.startswith("ERR"))
        assert f"127.0.0.1:{port}" in line and "RAY_AUTH_MODE=token" in line
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(10)
