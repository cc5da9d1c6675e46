"""After a model upgrade a store refuses the new model (exit 5) and says how to move on;
`clara compress --recompress` moves it in one command, keeping its chunks."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from clara_cli.cli import cli
from clara_cli.store import Store
from tests.conftest import build_tiny_model


def test_recompress_moves_a_store_to_another_model(tmp_path: Path, tiny_model_dir: Path):
    other = build_tiny_model(tmp_path / "other", seed=11)  # another compressor: another fingerprint
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(["The Eiffel Tower was completed in 1889.", "Kilimanjaro is in Tanzania.",
                              "The Danube flows into the Black Sea."]):
        (docs / f"d{i}.txt").write_text(text)
    store = tmp_path / "store"
    runner = CliRunner()

    def run(*args, code=0):
        result = runner.invoke(cli, ["--store", str(store), *args], catch_exceptions=False)
        assert result.exit_code == code, (args, result.output, result.stderr)
        return result

    run("update", str(docs), "--model", str(tiny_model_dir), "--dtype", "fp32")
    before = Store.open(store).snapshot()
    chunks, old = before.chunks(["chunk_id"]).num_rows, before.model["fingerprint"]

    refused = run("search", "Eiffel", "--retriever", "latent", "--model", str(other), "--dtype", "fp32", code=5)
    assert "compress --recompress" in refused.stderr

    done = run("compress", "--recompress", "--model", str(other), "--dtype", "fp32", "--json")
    assert "recompressing: 3 memory rows" in done.stderr
    after = Store.open(store).snapshot()
    assert after.model["fingerprint"] != old and after.model["spec"] == str(other)
    assert after.chunks(["chunk_id"]).num_rows == chunks == len(after.memory_keys())  # chunks kept, all compressed
    assert (after.manifest.get("index") or {}).get("ntotal") == chunks  # indexed again
    hits = run("search", "Eiffel", "--retriever", "hybrid", "-k", "1", "--model", str(other), "--dtype", "fp32")
    assert "Eiffel" in hits.stdout
    assert run("verify").exit_code == 0
