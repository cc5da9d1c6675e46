"""Fault injection for `clara update`: SIGKILL (or a full disk) at random moments across ingest,
compress and index; rerun; check the store against an uninterrupted run.

    .venv/bin/python benchmarks/fault_injection.py --trials 60 [--model DIR] [--seed 0]

Each trial starts from an empty store ("fresh") or from a store holding an older version of the
corpus ("incremental": changed, added and deleted files, --delete-missing), then:

  hook   CLARA_FAULT kills the run the n-th time it passes a named point (a data file half
         written, before/after the manifest swap, between batches, ...), n drawn from a traced run;
  timer  SIGKILL after a random delay within the clean run's duration (lands anywhere, C code too);
  enospc the n-th point raises ENOSPC instead (a full disk): the run must fail cleanly;
  double a hook kill, then a second hook kill during the rerun.

After the fault the store must pass `check_store` as it is (the last committed snapshot intact);
after a clean rerun: every chunk present exactly once with exactly one memory row, the index
holding exactly the compressed chunks, documents, chunks and search results equal to the
uninterrupted run's; after `gc`, data/ holds exactly the files of the manifest.

A zygote process imports clara and loads the model once, then forks one child per run (children
use one thread: OpenMP pools do not survive fork). The test suite runs a short version of this
(tests/test_faults.py); prints one line per trial and exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clara_cli.checkpoint import load_model

QUERIES = ["the river valley and its old bridges", "a festival of lanterns", "glass furnaces on the island"]
TOPICS = ["river valley", "lantern festival", "glass furnace", "mountain pass", "salt marsh", "clock tower",
          "copper mine", "silk road", "tidal island", "observatory"]


# ---------------------------------------------------------------------------------------------
# the corpus


def _paragraph(rng: random.Random, topic: str, n: int) -> str:
    verbs = ["borders", "shelters", "feeds", "outlasts", "names", "lights", "guards", "measures"]
    things = ["bridges", "orchards", "workshops", "harbours", "archives", "terraces", "markets", "roads"]
    return " ".join(f"The {topic} {rng.choice(verbs)} {rng.randint(2, 90)} {rng.choice(things)}."
                     for _ in range(n))


def write_corpus(root: Path, version: int, seed: int = 0, n_files: int = 10) -> Path:
    """Version 1, or version 2 = version 1 with files changed, deleted and added (and JSONL
    records changed, dropped and added). About 50 chunks with the tiny test model (10 files)."""
    rng = random.Random(seed)
    if root.exists():
        shutil.rmtree(root)
    (root / "notes").mkdir(parents=True)
    files: dict[str, str] = {}
    for i in range(n_files):
        topic = TOPICS[i % len(TOPICS)]
        paras = [_paragraph(rng, topic, rng.randint(2, 6)) for _ in range(rng.randint(1, 3))]
        files[f"notes/{i:02d}-{topic.replace(' ', '-')}.{'md' if i % 3 == 0 else 'txt'}"] = "\n\n".join(paras)
    files["page.html"] = ("<html><head><style>p{}</style><script>var x = 1;</script></head><body><h1>Lanterns</h1>"
                          f"<p>{_paragraph(rng, 'lantern festival', 3)}</p></body></html>")
    records = [{"id": f"r{i}", "text": _paragraph(rng, TOPICS[i % len(TOPICS)], 2)} for i in range(6)]
    if version == 2:
        names = sorted(k for k in files if k.startswith("notes/"))
        for name in names[:3]:  # changed
            files[name] += "\n\n" + _paragraph(rng, "observatory", 3)
        for name in names[3:5]:  # deleted
            del files[name]
        for i in range(3):  # added
            files[f"notes/new-{i}.txt"] = _paragraph(rng, TOPICS[(i + 4) % len(TOPICS)], 4)
        records[1]["text"] = _paragraph(rng, "tidal island", 3)  # changed
        del records[2]  # dropped
        records.append({"id": "r9", "text": _paragraph(rng, "copper mine", 2)})  # added
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


# ---------------------------------------------------------------------------------------------
# the zygote: one process with clara imported and the model loaded, forking a child per job


def _serve(model_dir: str) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch


    model = load_model(model_dir, device="cpu", dtype="fp32")
    out = sys.stdout
    sys.stdout = sys.stderr  # the protocol owns the real stdout
    for line in sys.stdin:
        job = json.loads(line)
        result_file = tempfile.NamedTemporaryFile(prefix="fault-", suffix=".json", delete=False)
        result_file.close()
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: one thread (OpenMP pools do not survive fork), then the job
            code = 0
            try:
                torch.set_num_threads(1)
                import faiss

                faiss.omp_set_num_threads(1)
                result = _job(job, model)
                Path(result_file.name).write_text(json.dumps(result))
            except BaseException as err:  # noqa: BLE001 - report anything to the parent
                Path(result_file.name).write_text(json.dumps({"error": f"{type(err).__name__}: {err}"}))
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        deadline = t0 + job["kill_after"] if job.get("kill_after") is not None else None
        timeout = t0 + float(job.get("timeout", 300))
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            now = time.perf_counter()
            if (deadline is not None and now >= deadline) or now >= timeout:
                os.kill(pid, signal.SIGKILL)
                deadline = None
                timeout = float("inf")
            time.sleep(0.002)
        seconds = time.perf_counter() - t0
        text = Path(result_file.name).read_text()
        os.unlink(result_file.name)
        reply = {"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                 "rc": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                 "seconds": round(seconds, 3), "result": json.loads(text) if text else None}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def _job(job: dict, model) -> dict:
    from clara_cli.store import Store, configure_faults

    if job["op"] == "update":
        from clara_cli.update import update

        configure_faults(job.get("fault"), job.get("trace"))
        try:
            report = update(Store.open(job["store"], create=True), job["paths"], model,
                            delete_missing=True, batch_size=4, progress=False, wait=True)
        except OSError as err:
            return {"oserror": f"{err.strerror} ({err.filename})"}
        finally:
            configure_faults(None)
        return {"summary": report.summary()}
    if job["op"] == "recover":  # as the fault left it; then a clean rerun; then everything
        from clara_cli.update import update

        store = Path(job["store"])
        # A run killed before its store existed leaves no manifest: `clara update` creates it then.
        before = _check(Store.open(store), model, [], gc=False) if (store / "manifest.json").exists() else {}
        try:
            update(Store.open(store, create=True), job["paths"], model, delete_missing=True, batch_size=4,
                   progress=False)
        except OSError as err:
            return {"before": before, "oserror": f"{err.strerror} ({err.filename})"}
        return {"before": before, "after": _check(Store.open(job["store"]), model, job["queries"], gc=True)}
    if job["op"] == "check":
        return _check(Store.open(job["store"]), model, job.get("queries", []), gc=job.get("gc", False))
    raise ValueError(f"unknown job {job['op']!r}")


def _check(store, model, queries: list[str], gc: bool) -> dict:
    """What a trial compares: the store's own checks, its content, and search results."""
    import numpy as np

    from clara_cli.answer import Retriever, search
    from clara_cli.store import DATA_DIR, check_store, indexed_keys

    with store.snapshot() as snap:
        report = check_store(snap)
        out = {"problems": report.problems, "notes": report.notes, "version": snap.version}
        if report.problems:
            return out
        chunks = snap.chunks(["chunk_id", "doc_id", "content_hash"])
        out["chunks"] = sorted(zip(*(chunks.column(c).to_pylist() for c in chunks.column_names), strict=True))
        out["documents"] = sorted(zip(snap.documents().column("doc_id").to_pylist(),
                                      snap.documents().column("content_hash").to_pylist(), strict=True))
        memory_keys = snap.memory_keys()
        out["complete"] = bool(len(memory_keys) == len(snap.chunk_keys())
                               and set(memory_keys.tolist()) == set(snap.chunk_keys().tolist()))
        ids = indexed_keys(snap)
        ids = ids if ids is not None else np.zeros(0, np.int64)
        out["index_exact"] = bool(len(ids) == len(set(ids.tolist())) and set(ids.tolist()) == set(memory_keys.tolist()))
        if queries and out["complete"]:
            hits = search(snap, model, queries, 5, Retriever(snap))
            out["search"] = [[[h.chunk_id, h.score] for h in q] for q in hits]
    if gc:
        store.gc(grace_seconds=0)
        with store.snapshot() as snap:
            names = {e["name"] for e in snap.files()}
        out["data_is_manifest"] = names == {p.name for p in (store.root / DATA_DIR).iterdir()}
    return out


class Zygote:
    """Client side: start the zygote, send jobs, read replies."""

    def __init__(self, model_dir: str | Path):
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        env.pop("CLARA_FAULT", None)
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(model_dir)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)

    def run(self, **job) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fault-injection zygote died")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# trials


class Campaign:
    """Corpus versions, the baseline store and the references, built once; then trials."""

    def __init__(self, zygote: Zygote, work: Path, seed: int = 0, n_files: int = 10):
        self.z = zygote
        self.work = work
        self.v1 = write_corpus(work / "corpus-v1", 1, seed, n_files)
        self.v2 = write_corpus(work / "corpus-v2", 2, seed, n_files)
        self.corpus = work / "corpus"  # what the runs read: a copy of v2 under a stable path
        shutil.copytree(self.v2, self.corpus)
        self.base = work / "base"  # v1, updated cleanly: the start of incremental trials
        self._ok(self.z.run(op="update", store=str(self.base), paths=[str(self.v1)]))
        self.refs: dict[str, dict] = {}
        self.traces: dict[str, list[str]] = {}
        self.clean_seconds: dict[str, float] = {}
        for scenario in ("fresh", "incremental"):
            store = self.start(scenario, "ref-" + scenario)
            trace = work / f"trace-{scenario}.txt"
            reply = self.z.run(op="update", store=str(store), paths=[str(self.corpus)], trace=str(trace))
            self._ok(reply)
            self.clean_seconds[scenario] = reply["seconds"]
            self.traces[scenario] = trace.read_text().split()
            self.refs[scenario] = self.check(store)
            if self.refs[scenario].get("problems") or not self.refs[scenario].get("complete"):
                raise RuntimeError(f"the uninterrupted {scenario} run is not sound: {self.refs[scenario]}")

    @staticmethod
    def _ok(reply: dict) -> None:
        if reply["rc"] != 0 or (reply["result"] or {}).get("oserror"):
            raise RuntimeError(f"a clean run failed: {reply}")

    def start(self, scenario: str, name: str) -> Path:
        store = self.work / name
        if store.exists():
            shutil.rmtree(store)
        if scenario == "incremental":
            shutil.copytree(self.base, store)
        return store

    def check(self, store: Path, queries: bool = True, gc: bool = False) -> dict:
        reply = self.z.run(op="check", store=str(store), queries=QUERIES if queries else [], gc=gc)
        if reply["rc"] != 0:
            return {"problems": [f"check failed: {reply}"]}
        return reply["result"]

    def pick(self, scenario: str, rng: random.Random, position: float | None = None) -> str:
        """A fault point of the traced run: point name plus occurrence, e.g. compress/write:3."""
        trace = self.traces[scenario]
        if position is None:
            i = rng.randrange(len(trace))
        else:  # spread over the points of the three stages, first to last
            staged = [j for j, name in enumerate(trace) if "/" in name]
            i = staged[round(position * (len(staged) - 1))]
        name = trace[i]
        return f"{name}:{trace[:i + 1].count(name)}"

    def trial(self, number: int, scenario: str, mode: str, rng: random.Random, position: float | None = None) -> dict:
        """One trial; returns {ok, what, failures}."""
        store = self.start(scenario, f"trial-{number}")
        failures: list[str] = []
        faults: list[str] = []
        job = {"op": "update", "store": str(store), "paths": [str(self.corpus)]}
        if mode in ("hook", "double", "enospc"):
            faults.append(self.pick(scenario, rng, position) + (":enospc" if mode == "enospc" else ""))
            reply = self.z.run(**job, fault=faults[0])
        else:
            delay = rng.uniform(0, self.clean_seconds[scenario])
            faults.append(f"timer:{delay:.3f}s")
            reply = self.z.run(**job, kill_after=delay)
        if mode == "enospc":
            landed = bool((reply["result"] or {}).get("oserror"))
            if reply["rc"] != 0:
                failures.append(f"a full disk must fail cleanly, got {reply}")
        else:
            landed = reply["signal"] == signal.SIGKILL
            if not landed and reply["rc"] != 0:
                failures.append(f"the run failed instead of being killed: {reply}")
        if mode == "double":
            faults.append(self.pick(scenario, rng))
            self.z.run(**job, fault=faults[1])
        reply = self.z.run(op="recover", store=str(store), paths=[str(self.corpus)], queries=QUERIES)
        result = reply["result"] or {}
        before, final = result.get("before") or {}, result.get("after") or {}
        if reply["rc"] != 0 or result.get("oserror") or not final:
            failures.append(f"the rerun failed: {reply}")
        if before.get("problems"):  # the last committed snapshot, as the fault left it
            failures.append(f"after the fault: {before['problems']}")
        ref = self.refs[scenario]
        if final.get("problems"):
            failures.append(f"after the rerun: {final['problems']}")
        elif final:
            for key in ("documents", "chunks"):
                if final.get(key) != ref[key]:
                    failures.append(f"{key} differ from the uninterrupted run's")
            if not final.get("complete"):
                failures.append("not every chunk has exactly one memory row")
            if not final.get("index_exact"):
                failures.append("the index does not hold exactly the compressed chunks")
            if not _same_search(final.get("search"), ref.get("search")):
                failures.append(f"search differs: {final.get('search')} vs {ref.get('search')}")
            if not final.get("data_is_manifest"):
                failures.append("after gc, data/ is not exactly the manifest's files")
        shutil.rmtree(store, ignore_errors=True)
        stage = faults[0].split("/")[0] if "/" in faults[0] else ("timer" if mode == "timer" else "session")
        return {"trial": number, "scenario": scenario, "mode": mode, "faults": faults, "landed": landed,
                "stage": stage, "ok": not failures, "failures": failures}


def _same_search(a, b, tol: float = 1e-4) -> bool:
    """Same hits with scores within tol (batching changes float rounding). Hits of equal score
    may come in either order (it follows the storage layout), and a tie at the k-th place may
    bring either chunk: the chunks scoring above the k-th score must be the same."""
    if a is None or b is None or len(a) != len(b):
        return False
    for qa, qb in zip(a, b, strict=True):
        if len(qa) != len(qb) or any(abs(x[1] - y[1]) > tol for x, y in zip(qa, qb, strict=True)):
            return False
        if qa:
            last = qa[-1][1]
            if sorted(h[0] for h in qa if h[1] > last + tol) != sorted(h[0] for h in qb if h[1] > last + tol):
                return False
    return True


def run_campaign(model_dir: str | Path, trials: int, seed: int = 0, work: Path | None = None,
                 modes: tuple[str, ...] = ("hook", "timer", "enospc", "double"), stratified: bool = False,
                 n_files: int = 10, log=print) -> list[dict]:
    """trials trials cycling through modes and scenarios; stratified spreads hook points evenly
    over the traced run instead of drawing them (used by the quick test)."""
    rng = random.Random(seed)
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="clara-faults-")) if own else work
    results = []
    try:
        with Zygote(model_dir) as z:
            campaign = Campaign(z, work, seed, n_files)
            for scenario, trace in campaign.traces.items():
                stages = sorted({name.split("/")[0] for name in trace if "/" in name})
                log(f"# {scenario}: {len(trace)} fault points in a clean run ({', '.join(stages)}), "
                    f"{campaign.clean_seconds[scenario]:.2f} s")
            for n in range(trials):
                mode = modes[n % len(modes)]
                scenario = ("fresh", "incremental")[(n if stratified else n // len(modes)) % 2]
                position = n / max(1, trials - 1) if stratified and mode != "timer" else None  # first to last
                result = campaign.trial(n, scenario, mode, rng, position)
                results.append(result)
                log(f"{n:3d} {scenario:11s} {mode:6s} {' then '.join(result['faults']):32s} "
                    f"{'landed' if result['landed'] else 'ended first':11s} "
                    f"{'ok' if result['ok'] else 'FAIL: ' + '; '.join(result['failures'])}")
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> int:
    # Run as a script, this folder is sys.path[0]: its kernels.py would shadow the `kernels`
    # package transformers imports.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="Checkpoint folder (default: build the tiny test model).")
    parser.add_argument("--modes", default="hook,timer,enospc,double")
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve)
        return 0
    with tempfile.TemporaryDirectory(prefix="clara-faults-") as tmp:
        model_dir = args.model
        if model_dir is None:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from conftest import build_tiny_model

            model_dir = str(build_tiny_model(Path(tmp) / "tiny"))
        t0 = time.perf_counter()
        results = run_campaign(model_dir, args.trials, args.seed, Path(tmp) / "work",
                               modes=tuple(args.modes.split(",")))
        failed = [r for r in results if not r["ok"]]
        by = {}
        for r in results:
            key = (r["mode"], r["stage"])
            by.setdefault(key, [0, 0])
            by[key][0] += 1
            by[key][1] += r["landed"]
        print(f"\n{len(results)} trials in {time.perf_counter() - t0:.0f} s, {len(failed)} failed")
        for (mode, stage), (n, landed) in sorted(by.items()):
            print(f"  {mode:6s} {stage:9s} {n:3d} trials, {landed:3d} landed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
