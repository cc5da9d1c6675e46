"""The output side of `clara eval`: the side-by-side table, its caveats, the Markdown report,
summary/predictions JSONL (written and read back) and the PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .progress import notice

if TYPE_CHECKING:
    from .evaluate import EvalReport, QuestionResult


def _fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


TABLE_COLUMNS = [
    ("system", "system", None), ("EM", "em", 1), ("F1", "f1", 1), ("Cover-EM", "cover_em", 1),
    ("R@1", "recall_at_1", 1), ("R@k", "recall_at_k", 1), ("ctx tok", "context_tokens", 0), ("prefill ms", "prefill_ms", 0),
    ("decode ms", "decode_ms", 0), ("retr ms", "retrieve_ms", 0), ("ans/s", "answers_per_s", 2),
    ("tok/correct", "tokens_per_correct", 0), ("s/correct", "seconds_per_correct", 2),
]


def table_rows(report: EvalReport) -> tuple[list[str], list[list[str]]]:
    columns = [c for c in TABLE_COLUMNS if not (report.k == 1 and c[1] == "recall_at_1")]  # R@1 is R@k
    header = [h.replace("R@k", f"R@{report.k}") for h, _, _ in columns]
    rows = []
    for s in report.systems:
        d = s.to_dict()
        rows.append([d[key] if digits is None else _fmt(d[key], digits) for _, key, digits in columns])
    return header, rows


def machine_note(report: EvalReport) -> str:
    """Where the timings come from (reports written before it was recorded have no machine)."""
    if not report.machine:
        return ""
    return f", on {report.machine} ({report.threads} thread{'s' * (report.threads != 1)})"


def caveats(report: EvalReport) -> list[str]:
    notes = [f"{report.n_questions} questions, top-{report.k} of {report.chunks} chunks, greedy, "
             f"max {report.max_new_tokens} new tokens, {report.dtype}, batch 1{machine_note(report)}.",
             "EM/F1/Cover-EM/R@k in %; ctx tok = prompt tokens the generator reads; "
             "tok/correct and s/correct = totals per Cover-EM-correct answer (retrieve + prefill + decode)."]
    if not report.trained:
        notes.append("clara's adapters are UNTRAINED (fresh LoRA): its retrieval and answers are not "
                     "meaningful yet; the text-RAG rows are the reference.")
    return notes


def format_table(report: EvalReport) -> str:
    """The side-by-side table as aligned plain text."""
    header, rows = table_rows(report)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    out = [line(header)] + [line(r) for r in rows]
    return "\n".join(out + [""] + caveats(report))


def markdown_table(report: EvalReport) -> str:
    header, rows = table_rows(report)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(report: EvalReport, out_dir: str | Path) -> list[Path]:
    """report.md (table, settings, sample answers), summary.jsonl, predictions.jsonl and PNG plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    md = ["# clara eval", "", markdown_table(report), ""] + [f"- {c}" for c in caveats(report)]
    md += ["", "## Settings", "", "```json", json.dumps(report.meta(), indent=2), "```", "",
           "Timing: prefill = prompt building + generate() until the first new token's logits (one forward over the prompt); "
           "decode = the rest of generate(); retrieve = query encoding + search (+ reading memory rows). "
           "Index build (offline): " + ", ".join(f"{s.system} {s.index_s:.1f} s" for s in report.systems
                                                  if s.index_s) + ".",
           "", "![accuracy](accuracy.png)", "![context tokens](context_tokens.png)", "![latency](latency.png)",
           "", "## Sample answers", ""]
    by_q: dict[str, list[QuestionResult]] = {}
    for r in report.results:
        by_q.setdefault(r.question, []).append(r)
    for question, rs in list(by_q.items())[:8]:
        md.append(f"**{question}** (gold: {', '.join(rs[0].answers)})")
        md += [f"- {r.system}: {' '.join(r.prediction.split())[:200] or '(empty)'}" for r in rs]
        md.append("")
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    (out / "summary.jsonl").write_text("".join(json.dumps({**report.meta(), **s.to_dict()}) + "\n"
                                               for s in report.systems), encoding="utf-8")
    (out / "predictions.jsonl").write_text("".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n"
                                                   for r in report.results), encoding="utf-8")
    written += [out / "report.md", out / "summary.jsonl", out / "predictions.jsonl"]
    try:
        written += plot_report(report, out)
    except ImportError:
        notice("matplotlib is not installed: report written without plots")
    return written


def read_report(out_dir: str | Path) -> EvalReport:
    """An EvalReport back from summary.jsonl and predictions.jsonl (to re-plot or re-tabulate)."""
    from .evaluate import EvalReport, QuestionResult, SystemSummary

    out = Path(out_dir)
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    fields = set(SystemSummary.__dataclass_fields__)
    systems = [SystemSummary(**{k: v for k, v in r.items() if k in fields}) for r in rows]
    qfields = set(QuestionResult.__dataclass_fields__)
    results = [QuestionResult(**{k: v for k, v in json.loads(line).items() if k in qfields})
               for line in (out / "predictions.jsonl").read_text().splitlines()]
    meta = rows[0]
    return EvalReport(k=meta["k"], max_new_tokens=meta["max_new_tokens"], n_questions=meta["n_questions"],
                      store=meta["store"], store_version=meta["store_version"], chunks=meta["chunks"],
                      model=meta["model"], fingerprint=meta["fingerprint"], trained=meta["trained"],
                      dtype=meta["dtype"], systems=systems, results=results, seconds=meta["seconds"],
                      machine=meta.get("machine", ""), threads=meta.get("threads", 0))


def plot_report(report: EvalReport, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [s.system for s in report.systems]
    colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"]
    files = []

    metrics = [("EM", "em"), ("F1", "f1"), ("Cover-EM", "cover_em"), (f"Recall@{report.k}", "recall_at_k")]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(1, len(systems))
    x = np.arange(len(metrics))
    for i, s in enumerate(report.systems):
        vals = [getattr(s, key) or 0.0 for _, key in metrics]
        bars = ax.bar(x + (i - (len(systems) - 1) / 2) * width, vals, width, label=s.system,
                      color=colors[i % len(colors)])
        ax.bar_label(bars, fmt="%.0f", fontsize=8, padding=2)
    ax.set_xticks(x, [m for m, _ in metrics])
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title(f"Accuracy, {report.n_questions} questions, top-{report.k}"
                 + ("" if report.trained else "  (clara adapters untrained)"))
    ax.legend(frameon=False)
    fig.tight_layout()
    files.append(out / "accuracy.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)

    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(7, 4.5))
    passage = [s.passage_tokens for s in report.systems]
    other = [s.context_tokens - s.passage_tokens for s in report.systems]
    ax.bar(systems, passage, color=[colors[i % len(colors)] for i in range(len(systems))])
    ax.bar(systems, other, bottom=passage, color="#bbbbbb")
    for i, s in enumerate(report.systems):
        ax.text(i, s.context_tokens, f"{s.context_tokens:.0f}", ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, 1.3 * max([s.context_tokens for s in report.systems] + [1]))
    ax.set_ylabel("tokens read by the generator per question")
    ax.set_title(f"Generator context (top-{report.k})")
    ax.legend(handles=[Patch(facecolor="white", edgecolor="black", label="retrieved documents (system colour)"),
                       Patch(facecolor="#bbbbbb", label="prompt template + question")],
              frameon=False, loc="upper right")
    fig.tight_layout()
    files.append(out / "context_tokens.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    data = [[max(r.total_s, 1e-3) for r in report.results if r.system == name] for name in systems]
    ax1.boxplot(data, tick_labels=systems, showfliers=True)
    ax1.set_yscale("log")
    ax1.set_ylabel("seconds per question (retrieve + prefill + decode)")
    ax1.set_title("Latency distribution (log scale)")
    parts = [("retrieve", "retrieve_ms", "#999999"), ("prefill", "prefill_ms", "#1f77b4"),
             ("decode", "decode_ms", "#ff7f0e")]
    bottom = np.zeros(len(systems))
    for label, key, color in parts:
        vals = np.array([getattr(s, key) / 1000 for s in report.systems])
        ax2.bar(systems, vals, bottom=bottom, label=label, color=color)
        bottom += vals
    for i, s in enumerate(report.systems):
        ax2.text(i, bottom[i], f"{bottom[i]:.1f} s\n{s.new_tokens:.0f} tok", ha="center", va="bottom", fontsize=8)
    ax2.set_ylim(0, 1.25 * max(list(bottom) + [1e-3]))
    ax2.set_ylabel("mean seconds per question")
    ax2.set_title("Where the time goes (new tokens generated)")
    ax2.legend(frameon=False, loc="upper right")
    fig.tight_layout()
    files.append(out / "latency.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)
    return files
