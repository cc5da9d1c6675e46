"""clara train: differentiable top-k, data validation, the three stages on the tiny model,
exact resumption, what each stage may change, and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from clara_cli.checkpoint import load_model, read_adapter_tensors
from clara_cli.train import TrainConfig, differentiable_topk, read_records, train
from clara_cli.train.data import PARAPHRASE_INSTRUCTIONS, QA_SYSTEM, paraphrase_instruction
from clara_cli.train.loop import export_model

DOCS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France, completed in 1889.",
    "Mount Kilimanjaro is the highest mountain in Africa, about 5,895 metres above sea level.",
    "Ada Lovelace wrote what is often called the first computer program, for Babbage's engine.",
    "The Danube flows through ten countries and empties into the Black Sea in Romania.",
    "Marie Curie was the first person to win Nobel Prizes in two different sciences.",
    "The Great Wall of China stretches across northern China for thousands of kilometres.",
]
ANSWERS = ["1889", "Africa", "Ada Lovelace", "the Black Sea", "Marie Curie", "China"]
QUESTIONS = ["When was the Eiffel Tower completed?", "Where is Kilimanjaro?", "Who wrote the first program?",
             "Where does the Danube end?", "Who won two Nobel Prizes in sciences?", "Where is the Great Wall?"]


pytestmark = pytest.mark.usefixtures("one_thread")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("train-data")
    pre = []
    for doc, q, a in zip(DOCS, QUESTIONS, ANSWERS, strict=True):
        pre.append({"data_type": "qa", "question": [q], "answers": [a], "docs": [doc]})
        pre.append({"data_type": "paraphrase", "question": [], "answers": [doc], "docs": [doc]})
    qa = [{"question": q, "docs": DOCS[i:] + DOCS[:i], "answer": a, "pos_index": [0]}
          for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS, strict=True))]
    return {"scp": write_jsonl(d / "pretrain.jsonl", pre), "qa": write_jsonl(d / "qa.jsonl", qa)}


def config(stage: str, data_path: Path, out: Path, init: Path, **kw) -> TrainConfig:
    base = {"steps": 24, "batch_size": 4, "dtype": "fp32", "device": "cpu", "top_k": 2, "save_every": 100,
            "lr": 3e-3 if stage != "e2e" else 1e-3, "dropout": False}
    return TrainConfig(stage, str(data_path), str(out), init_from=str(init), **{**base, **kw})


def early_late(result) -> tuple[float, float]:
    losses = [h["loss"] for h in result.history]
    return sum(losses[:4]) / 4, sum(losses[-4:]) / 4


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_model_dir, data):
    """scp -> instruct -> e2e on the tiny model, each from the previous stage's output."""
    root = tmp_path_factory.mktemp("chain")
    results = {}
    results["scp"] = train(config("scp", data["scp"], root / "scp", tiny_model_dir), progress=False)
    results["instruct"] = train(config("instruct", data["qa"], root / "instruct", root / "scp"), progress=False)
    results["e2e"] = train(config("e2e", data["qa"], root / "e2e", root / "instruct"), progress=False)
    return root, results


# ---------------------------------------------------------------------- differentiable top-k
def test_topk_forward_is_the_hard_topk_in_rank_order():
    torch.manual_seed(0)
    scores = torch.randn(3, 20)
    cand = torch.randn(3, 20, 7)
    W, idx = differentiable_topk(scores, k=5, temperature=0.02)
    assert W.shape == (3, 5, 20)
    assert torch.equal(idx, scores.topk(5, dim=-1).indices)  # descending score = rank order
    assert torch.equal(W, torch.zeros_like(W).scatter_(2, idx.unsqueeze(-1), 1.0))  # exactly one-hot
    selected = torch.einsum("bkn,bnd->bkd", W, cand)
    assert torch.equal(selected, torch.stack([cand[b, idx[b]] for b in range(3)]))


def test_topk_gradient_flows_only_through_the_soft_path():
    torch.manual_seed(1)
    scores = torch.randn(2, 20).mul(0.05).requires_grad_(True)  # cosine-like spread, so tau 0.02 is not saturated
    G = torch.randn(2, 3, 20)
    W, idx = differentiable_topk(scores, k=3, temperature=0.02)
    (W * G).sum().backward()

    # reference: the soft distributions alone, slot j masked by the hard picks of slots < j
    s = scores.detach().clone().requires_grad_(True)
    logits, taken, soft = s / 0.02, torch.zeros(2, 20), []
    for j in range(3):
        soft.append(torch.softmax(logits + torch.log(1 - taken + 1e-8), dim=-1))
        taken = taken.scatter(1, idx[:, j:j + 1], 1.0)
    (torch.stack(soft, 1) * G).sum().backward()

    assert scores.grad.abs().sum() > 0
    assert torch.allclose(scores.grad, s.grad, atol=1e-6)
    # the hard one-hot part carries no gradient: dropping W's value (the hard part) keeps it the same
    W2, _ = differentiable_topk(scores, k=3, temperature=0.02)
    g = torch.autograd.grad(((W2 - W2.detach()) * G).sum(), scores)[0]
    assert torch.equal(g, scores.grad)


# ---------------------------------------------------------------------- data
@pytest.mark.parametrize("stage,line,fragment", [
    ("scp", '{"data_type": "qa", "question": ["q"], "answers": ["a", "b"], "docs": ["d"]}',
     '"question" has 1 items but "answers" has 2'),
    ("scp", '{"data_type": "summary", "answers": ["a"], "docs": ["d"]}', '"data_type" must be'),
    ("scp", '{"question": "q", "docs": ["d"], "answer": "a"}', "instruction/e2e record"),
    ("scp", '{"data_type": "paraphrase", "answers": ["a"], "docs": []}', '"docs" must hold'),
    ("instruct", '{"question": "q", "docs": ["d"]}', "no answer"),
    ("instruct", '{"question": "q", "docs": ["d"], "answer": "a", "pos_index": [3]}', "out of range"),
    ("e2e", '{"data_type": "qa", "question": ["q"], "answers": ["a"], "docs": ["d"]}', "pretraining record"),
    ("e2e", '{"question": "q", "docs": "d", "answer": "a"}', '"docs" must be a list of strings'),
    ("e2e", '{"question": "q", "docs": ["d"], "answer": "a"', "malformed JSON"),
    ("e2e", '["q"]', "expected a JSON object"),
])
def test_validation_errors_name_file_and_line(tmp_path, stage, line, fragment):
    from clara_cli.errors import UsageError

    good = {"scp": '{"data_type": "paraphrase", "answers": ["a"], "docs": ["d"]}',
            "instruct": '{"question": "q", "docs": ["d"], "answer": "a"}',
            "e2e": '{"question": "q", "docs": ["d"], "golden_answers": ["a"]}'}[stage]
    path = write_jsonl(tmp_path / "bad.jsonl", [good, "", line])
    with pytest.raises(UsageError) as err:
        read_records(path, stage)
    assert str(err.value).startswith(f"{path}:3: ") and fragment in str(err.value)


def test_answer_fields_in_official_order(tmp_path):
    path = write_jsonl(tmp_path / "ok.jsonl", [
        {"question": "q", "docs": ["d1", "d2"], "answers": ["first", "second"], "pos_index": [1]},
        {"question": "q", "docs": ["d"], "golden_answers": ["gold"]},
    ])
    a, b = read_records(path, "instruct")
    assert (a.answer, a.pos_index, b.answer, b.pos_index) == ("first", [1], "gold", [])


def test_paraphrase_template_is_reproducible_and_varied():
    picks = {paraphrase_instruction(0, 0, i) for i in range(200)}
    assert picks <= set(PARAPHRASE_INSTRUCTIONS) and len(picks) > 5
    assert paraphrase_instruction(3, 1, 7) == paraphrase_instruction(3, 1, 7)


def test_held_out_documents_are_dropped(tmp_path, tiny_model_dir):
    from clara_cli.corpora import wiki_paragraphs
    from clara_cli.errors import ClaraError
    from clara_cli.train.data import HeldOutGuard

    try:
        held = next(wiki_paragraphs("heldout"))["text"]
        kept = next(wiki_paragraphs("train"))["text"]
    except ClaraError:
        pytest.skip("Wikipedia corpus package not installed")
    guard = HeldOutGuard()
    assert guard.is_held_out(held) and guard.is_held_out(held[: len(held) // 2] + " extra words")
    assert not guard.is_held_out(kept)
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"data_type": "paraphrase", "answers": [t], "docs": [t]}
                                                  for t in (held, kept)])
    result = train(config("scp", path, tmp_path / "out", tiny_model_dir, steps=1, batch_size=1), progress=False)
    assert result.records == 1 and result.dropped_heldout == 1


def test_dev_split_is_left_out_of_every_stage(tmp_path, tiny_model_dir):
    from clara_cli.corpora import wiki_paragraphs
    from clara_cli.errors import ClaraError
    from clara_cli.train.data import PretrainRecord, QARecord, drop_dev_documents

    try:
        dev_texts = {p["text"] for p in wiki_paragraphs("dev")}
        dev = next(wiki_paragraphs("dev"))["text"]
        kept = next(p["text"] for p in wiki_paragraphs("train") if p["text"] not in dev_texts)
    except ClaraError:
        pytest.skip("Wikipedia corpus package not installed")
    records = [PretrainRecord("paraphrase", [dev], [], [dev]), PretrainRecord("paraphrase", [kept], [], [kept]),
               QARecord("q1", [dev, kept], "a", [0]), QARecord("q2", [dev, kept], "a", [1])]
    left, dropped = drop_dev_documents(records)
    assert dropped == 2 and left[0] == records[1]
    assert left[1].docs == [kept] and left[1].pos_index == [0]  # the dev candidate left the list
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"data_type": "paraphrase", "answers": [t], "docs": [t]}
                                                  for t in (dev, kept)])
    result = train(config("scp", path, tmp_path / "out", tiny_model_dir, steps=1, batch_size=1), progress=False)
    assert result.records == 1


# ---------------------------------------------------------------------- the stages
def test_each_stage_loss_decreases(chain):
    _, results = chain
    for stage, result in results.items():
        early, late = early_late(result)
        assert result.done and result.step == 24
        assert late < early - 0.05, (stage, early, late)


def test_scp_changes_only_memory_rows_and_both_adapters(chain, tiny_model_dir):
    root, _ = chain
    before, after = load_file(tiny_model_dir / "token_rows.safetensors"), load_file(root / "scp" / "token_rows.safetensors")
    meta = json.loads((root / "scp" / "clara.json").read_text())
    n_mem = meta["config"]["doc_max_length"] // meta["config"]["compr_rate"]
    emb0, emb1 = before["embed_tokens"], after["embed_tokens"]  # the CLaRa rows: <MEM0..n-1>, <AE>, <ENC>, <SEP>
    assert not torch.equal(emb0[:n_mem], emb1[:n_mem])
    assert (emb0[:n_mem] - emb1[:n_mem]).abs().amax(dim=1).min() > 0  # every memory row moved
    assert torch.equal(emb0[n_mem:], emb1[n_mem:])
    assert torch.equal(before["lm_head"], after["lm_head"])  # untied head: not trained
    a0, a1 = read_adapter_tensors(tiny_model_dir), read_adapter_tensors(root / "scp")
    for adapter in ("encoder_adapter", "decoder_adapter"):
        keys = [k for k in a1 if k.startswith(adapter + "/")]
        assert keys and all(not torch.equal(a0[k], a1[k]) for k in keys if "lora_B" in k), adapter
    assert not any(k.startswith("query_reasoner_adapter/") for k in a1)  # stage 1 has no query reasoner


def test_gradients_reach_both_adapters_across_separate_forwards(tiny_model_dir, data):
    """One adapter per forward: the compressor's parameters must still get gradients."""
    from clara_cli.train.loop import _load_start_model
    from clara_cli.train.stages import Trainable, prepare_adapters

    cfg = config("scp", data["scp"], Path("unused"), tiny_model_dir).resolved()
    model = _load_start_model(cfg, None, torch.device("cpu"), torch.float32)
    prepare_adapters(model, "scp", True, 0)
    tm = Trainable(model, "scp")
    loss, _ = tm.step(read_records(data["scp"], "scp")[:2], [(0, 0), (0, 1)], cfg)
    loss.backward()
    for adapter in ("encoder_adapter", "decoder_adapter"):
        grads = [p.grad for n, p in tm.named.items() if f".{adapter}." in n]
        assert grads and all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, adapter
    assert tm.mem_rows.grad is not None and tm.mem_rows.grad.abs().sum() > 0
    frozen = [p for n, p in model.decoder.named_parameters() if n not in tm.named]
    assert all(p.grad is None for p in frozen)


@pytest.mark.parametrize("stage", ["scp", "instruct", "e2e"])
def test_packed_step_is_the_padded_computation(tiny_model_dir, data, stage):
    """Packing without padding is a speed change only: same loss, tokens and gradients (fp32 noise)."""
    from clara_cli.train.loop import _load_start_model
    from clara_cli.train.stages import Trainable, prepare_adapters

    path = data["scp" if stage == "scp" else "qa"]
    cfg = config(stage, path, Path("unused"), tiny_model_dir, top_k=3).resolved()
    model = _load_start_model(cfg, None, torch.device("cpu"), torch.float32)
    prepare_adapters(model, stage, True, 0)
    records = read_records(path, stage)[:4]  # documents and prompts of different lengths
    keys = [(0, i) for i in range(len(records))]
    runs = {}
    for packed in (False, True):
        tm = Trainable(model, stage, packed=packed)
        loss, stats = tm.step(records, keys, cfg)
        loss.backward()
        grads = [p.grad.clone() for p in tm.parameters()]
        runs[packed] = (loss.item(), stats, grads)
        model.decoder.zero_grad(set_to_none=True)
    (l0, s0, g0), (l1, s1, g1) = runs[False], runs[True]
    assert l1 == pytest.approx(l0, rel=1e-5, abs=1e-6) and s1.mse == pytest.approx(s0.mse, rel=1e-4, abs=1e-7)
    assert (s1.tokens, s1.hits, s1.examples) == (s0.tokens, s0.hits, s0.examples)
    assert len(g0) == len(g1) and sum(float(g.abs().sum()) for g in g0) > 0
    for a, b in zip(g0, g1, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5 * float(a.abs().max()) + 1e-8)


@pytest.mark.parametrize("with_mem", [False, True])
def test_chunked_head_losses_are_the_whole_logits_computation(monkeypatch, with_mem):
    """head_group_losses = the LM head's whole [T, V] logits (the <MEM*> columns from the trained
    rows) and F.cross_entropy per group: losses and gradients of h and the rows, in fp32, over
    chunks that cut through groups; with a bf16 head, within bf16 rounding of the fp32 figures."""
    from clara_cli.train import head_loss

    monkeypatch.setattr(head_loss, "CHUNK_ROWS", 7)
    g = torch.Generator().manual_seed(0)
    T, H, V, lo, n_mem, counts = 23, 16, 50, 40, 4, [5, 11, 7]
    h0 = torch.randn(T, H, generator=g)
    head = torch.randn(V, H, generator=g)
    rows0 = torch.randn(n_mem, H, generator=g)
    labels = torch.randint(0, V, (T,), generator=g)
    weights = torch.tensor([0.5, 2.0, -1.0])  # how the step combines the groups' losses

    def run(fn):
        h, rows = h0.clone().requires_grad_(), rows0.clone().requires_grad_()
        losses = fn(h, rows if with_mem else None)
        (losses * weights).sum().backward()
        return losses.detach(), h.grad, rows.grad

    def whole(h, rows, dtype=torch.float32):
        w = head.clone()
        if rows is not None:
            w = torch.cat([w[:lo], rows, w[lo + n_mem:]])
        logits = (h.to(dtype) @ w.to(dtype).T).float()
        per_token = F.cross_entropy(logits, labels, reduction="none")
        return torch.stack([p.mean() for p in per_token.split(counts)])

    ref = run(whole)
    got = run(lambda h, rows: head_loss.head_group_losses(h, head, labels, counts, rows, lo))
    for a, b in zip(ref, got, strict=True):
        if a is None:
            assert b is None and not with_mem
            continue
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a - b).abs().max()
    got16 = run(lambda h, rows: head_loss.head_group_losses(h, head, labels, counts, rows, lo, dtype=torch.bfloat16))
    ref16 = run(lambda h, rows: whole(h, rows, torch.bfloat16))
    for a, b, c in zip(ref, got16, ref16, strict=True):
        if a is not None:  # no further from fp32 than the whole bf16 computation, give or take
            assert (a - b).abs().max() <= 2 * (a - c).abs().max() + 1e-3


@pytest.mark.parametrize("stage", ["scp", "instruct", "e2e", "generator"])
def test_one_pass_step_is_the_accumulated_computation(tiny_model_dir, data, stage):
    """--one-pass is a speed change only: a step's micro-batches in one forward give the losses,
    stats and summed gradients of running them one by one with loss / grad_accum."""
    from clara_cli.train.loop import _load_start_model
    from clara_cli.train.stages import Trainable, prepare_adapters

    path = data["scp" if stage == "scp" else "qa"]
    extra = {"expand_rate": 0.5} if stage == "generator" else {}  # raw text beside memories, too
    cfg = config(stage, path, Path("unused"), tiny_model_dir, top_k=3, **extra).resolved()
    model = _load_start_model(cfg, None, torch.device("cpu"), torch.float32)
    prepare_adapters(model, stage, True, 0)
    records = read_records(path, stage)[:5]
    keys = [(0, i) for i in range(len(records))]
    groups = [(records[:2], keys[:2]), (records[2:], keys[2:])]  # unequal micro-batches: own means
    tm = Trainable(model, stage, packed=True)
    one_by_one = tm.backward_step(groups, cfg, one_pass=False)
    g0 = [p.grad.clone() for p in tm.parameters()]
    for p in tm.parameters():
        p.grad = None
    loss, _ = tm.step_pass(groups, cfg)
    assert loss.item() == pytest.approx(sum(s.loss for s in one_by_one) / len(groups), rel=1e-5)
    passed = tm.backward_step(groups, cfg, one_pass=True)
    g1 = [p.grad.clone() for p in tm.parameters()]
    for a, b in zip(one_by_one, passed, strict=True):
        assert (b.loss, b.mse) == (pytest.approx(a.loss, rel=1e-5), pytest.approx(a.mse, rel=1e-4, abs=1e-7))
        assert (b.tokens, b.examples) == (a.tokens, a.examples)
    assert one_by_one[0].loss != pytest.approx(one_by_one[1].loss, rel=1e-3)  # the groups differ
    assert sum(float(g.abs().sum()) for g in g0) > 0
    for a, b in zip(g0, g1, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5 * float(a.abs().max()) + 1e-8)


@pytest.mark.parametrize("mode", ["merged_lora", "fused_lora"])
@pytest.mark.parametrize("stage", ["scp", "e2e"])
def test_merged_lora_is_peft_computation(tiny_model_dir, data, stage, mode):
    """merged_lora (a CPU's) and fused_lora (a GPU's) are speed changes only: two optimizer steps
    give peft's losses and gradients (the second after SGD changed A and B, so a stale merged
    weight would show), and a pass without gradients (e2e's frozen memories) keeps peft's path."""
    from clara_cli.train.loop import _load_start_model
    from clara_cli.train.stages import Trainable, prepare_adapters

    path = data["scp" if stage == "scp" else "qa"]
    cfg = config(stage, path, Path("unused"), tiny_model_dir, top_k=2).resolved()
    records = read_records(path, stage)[:4]
    keys = [(0, i) for i in range(len(records))]
    groups = [(records[:2], keys[:2]), (records[2:], keys[2:])]
    runs = []
    for merged in (False, True):
        model = _load_start_model(cfg, None, torch.device("cpu"), torch.float32)
        prepare_adapters(model, stage, True, 0)
        tm = Trainable(model, stage, packed=True, **{mode: merged})
        if stage == "e2e":
            tm.cache_documents([d for r in records for d in r.docs])
        opt = torch.optim.SGD(tm.parameters(), lr=10.0)  # not Adam: its first step is sign(g), noise and all
        steps = []
        for _ in range(2):
            stats = tm.backward_step(groups, cfg, one_pass=True)
            steps.append(([s.loss for s in stats], [p.grad.clone() for p in tm.parameters()]))
            opt.step()
            opt.zero_grad()
        if merged:
            if mode == "merged_lora":
                assert any(m.clara_merged for m in tm.merged_lora.layers), "no layer took the merged path"
            else:  # nothing merged; the fused node in the graph
                assert not any(m.clara_merged for m in tm.merged_lora.layers)
                assert fused_node_in_graph(tm, records[:2], cfg)
            assert not any(m.clara_merged_on for m in tm.merged_lora.layers)  # only inside a pass
        runs.append(steps)
    for (loss_a, grads_a), (loss_b, grads_b) in zip(*runs, strict=True):
        assert loss_b == pytest.approx(loss_a, rel=1e-5)
        assert sum(float(g.abs().sum()) for g in grads_a) > 0
        for a, b in zip(grads_a, grads_b, strict=True):  # float noise, summed in another order
            assert float((a - b).norm()) <= 1e-4 * float(a.norm()) + 1e-10
    assert runs[0][0][0] != pytest.approx(runs[0][1][0], rel=1e-4)  # the first step changed the model


def fused_node_in_graph(tm, records, cfg) -> bool:
    """Whether a pass's autograd graph holds merged_lora's fused LoRA node."""
    loss, _ = tm.step_pass([(records, [(0, i) for i in range(len(records))])], cfg)
    seen, todo = set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "_FusedLoraLinearBackward":
            return True
        todo.extend(n for n, _ in node.next_functions)
    return False


def test_compiled_blocks_are_the_same_computation(tiny_model_dir, data):
    """--compile is a speed change only: the packed scp step gives the eager loss and gradients."""
    from clara_cli.train.loop import _load_start_model
    from clara_cli.train.stages import Trainable, compile_layers, prepare_adapters

    cfg = config("scp", data["scp"], Path("unused"), tiny_model_dir).resolved()
    model = _load_start_model(cfg, None, torch.device("cpu"), torch.float32)
    prepare_adapters(model, "scp", True, 0)
    records = read_records(data["scp"], "scp")[:4]
    keys = [(0, i) for i in range(len(records))]
    runs = []
    for compiled in (False, True):
        if compiled:
            compile_layers(model, fall_back=False)
        tm = Trainable(model, "scp", packed=True)
        for size in (4, 3):  # a second packed length: dynamic shapes, no recompilation error
            loss, stats = tm.step(records[:size], keys[:size], cfg)
            loss.backward()
        runs.append((loss.item(), stats.tokens, [p.grad.clone() for p in tm.parameters()]))
        model.decoder.zero_grad(set_to_none=True)
        tm.mem_rows.grad = None
    (l0, t0, g0), (l1, t1, g1) = runs
    assert l1 == pytest.approx(l0, rel=1e-5) and t1 == t0
    for a, b in zip(g0, g1, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5 * float(a.abs().max()) + 1e-8)


def test_compile_by_default_only_where_it_pays_off(tiny_model):
    from clara_cli.train.stages import COMPILE_MIN_STEPS, compile_pays_off

    # the tiny model's steps take milliseconds: compiling would cost more than it saves
    assert not compile_pays_off(tiny_model, torch.device("cpu"), 10 * COMPILE_MIN_STEPS)
    assert not compile_pays_off(tiny_model, torch.device("cpu"), 1)


def test_matmul_attention_backward_only_in_bf16_on_a_cpu():
    from clara_cli.train.stages import matmul_attention_backward_pays_off as pays

    cpu = torch.device("cpu")
    assert pays(True, cpu, torch.bfloat16)
    assert not pays(True, cpu, torch.float32)  # measured 0.97x the step in fp32: flash stays
    assert not pays(False, cpu, torch.bfloat16)  # compiled with the blocks: eager runs would compile it alone
    assert not pays(True, torch.device("cuda"), torch.bfloat16)


def test_stage_adapters_and_frozen_parts(chain):
    root, _ = chain
    ins, e2e = read_adapter_tensors(root / "instruct"), read_adapter_tensors(root / "e2e")
    rows_ins = load_file(root / "instruct" / "token_rows.safetensors")
    rows_e2e = load_file(root / "e2e" / "token_rows.safetensors")
    # e2e: compressor and memory rows frozen; query reasoner born from the compressor and trained
    for k in (k for k in ins if k.startswith("encoder_adapter/")):
        assert torch.equal(ins[k], e2e[k])
        qr = k.replace("encoder_adapter/", "query_reasoner_adapter/")
        assert qr in e2e and not torch.equal(ins[k], e2e[qr])
    assert all(torch.equal(rows_ins[k], rows_e2e[k]) for k in rows_ins)
    assert any(not torch.equal(ins[k], e2e[k]) for k in ins if k.startswith("decoder_adapter/"))


def test_trained_checkpoint_loads_with_a_new_fingerprint(chain, tiny_model):

    root, results = chain
    for stage in ("scp", "e2e"):
        model = load_model(str(root / stage), device="cpu", dtype="fp32")
        assert model.trained and model.fingerprint == results[stage].fingerprint
        assert model.fingerprint != tiny_model.fingerprint
    model.generate(["Where is the Great Wall?"], [model.compress(DOCS[:2])], max_new_tokens=3)


def test_export_casts_to_bf16_and_loads(chain, tmp_path):

    root, results = chain
    dst = export_model(root / "e2e", tmp_path / "shipped", dtype="bf16")
    assert not (dst / "trainer.pt").exists()
    assert all(t.dtype == torch.bfloat16 for t in read_adapter_tensors(dst).values())
    model = load_model(str(dst), device="cpu", dtype="bf16")
    assert model.fingerprint == json.loads((dst / "clara.json").read_text())["fingerprint"]
    assert set(model.config.adapters) == {"encoder_adapter", "decoder_adapter", "query_reasoner_adapter"}
    # One file per adapter (the shipped default stays under the repository's per-file limit) ...
    assert sorted(p.name for p in dst.glob("adapters*")) == [
        "adapters-decoder_adapter.safetensors", "adapters-encoder_adapter.safetensors",
        "adapters-query_reasoner_adapter.safetensors"]
    # ... and a folder written before the split (all adapters in one file) loads as the same model.
    from safetensors.torch import save_file

    legacy = tmp_path / "legacy"
    shutil.copytree(dst, legacy)
    save_file(read_adapter_tensors(dst), str(legacy / "adapters.safetensors"))
    for p in legacy.glob("adapters-*"):
        p.unlink()
    assert load_model(str(legacy), device="cpu", dtype="bf16").fingerprint == model.fingerprint


def test_export_records_the_expand_setting_outside_the_fingerprint(chain, tmp_path):
    """`--expand N` is how `ask` reads sources by default, not a weight: stores stay bound."""
    root, _ = chain
    plain = load_model(str(export_model(root / "e2e", tmp_path / "plain", dtype="bf16")), device="cpu", dtype="bf16")
    dst = export_model(root / "e2e", tmp_path / "expand1", dtype="bf16", expand=1)
    model = load_model(str(dst), device="cpu", dtype="bf16")
    assert (plain.config.expand, model.config.expand) == (0, 1)
    assert json.loads((dst / "clara.json").read_text())["config"]["expand"] == 1
    assert model.fingerprint == plain.fingerprint


def test_truncate_lora_keeps_the_best_low_rank_product():
    """Eckart-Young: the rank-k pair's product is B·A's SVD cut at k, and a pair whose product
    already has rank <= k comes back with the same product."""
    from clara_cli.train.loop import truncate_lora

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 20, generator=g), torch.randn(12, 8, generator=g)
    low_a, low_b = torch.randn(3, 20, generator=g), torch.randn(12, 3, generator=g)
    tensors = {"enc/m.q_proj.lora_A.weight": a, "enc/m.q_proj.lora_B.weight": b,
               "enc/m.v_proj.lora_A.weight": torch.cat([low_a, torch.zeros(5, 20)]),
               "enc/m.v_proj.lora_B.weight": torch.cat([low_b, torch.zeros(12, 5)], dim=1),
               "rows": torch.ones(2)}
    out = truncate_lora(tensors, 4)
    assert out["enc/m.q_proj.lora_A.weight"].shape == (4, 20)
    assert out["enc/m.q_proj.lora_B.weight"].shape == (12, 4)
    u, s, vh = torch.linalg.svd((b @ a).double())
    best = (u[:, :4] * s[:4]) @ vh[:4]
    got = out["enc/m.q_proj.lora_B.weight"].double() @ out["enc/m.q_proj.lora_A.weight"].double()
    assert torch.allclose(got, best, atol=1e-4)
    exact = out["enc/m.v_proj.lora_B.weight"] @ out["enc/m.v_proj.lora_A.weight"]
    assert torch.allclose(exact, low_b @ low_a, atol=1e-4)
    assert torch.equal(out["rows"], tensors["rows"])
    with pytest.raises(Exception, match="rank 8 already"):
        truncate_lora(tensors, 8)


def test_export_at_a_lower_rank_loads_with_the_same_scale(chain, tmp_path):
    """`export --rank`: a model of the lower rank, whose LoRA deltas (scale x B·A) are the
    truncated originals, bound to a new fingerprint (stores must be recompressed)."""
    from clara_cli.train.loop import truncate_lora

    root, _ = chain
    src = root / "e2e"
    full = load_model(str(src), device="cpu", dtype="fp32")
    r = full.config.lora_r
    dst = export_model(src, tmp_path / "low", dtype="fp32", rank=r // 2)
    low = load_model(str(dst), device="cpu", dtype="fp32")
    assert low.config.lora_r == r // 2
    assert low.config.lora_alpha / low.config.lora_r == full.config.lora_alpha / r
    assert json.loads((dst / "clara.json").read_text())["rank_reduced"] == {"from": r, "to": r // 2}
    assert low.fingerprint != full.fingerprint
    want = truncate_lora(read_adapter_tensors(src), r // 2)
    got = read_adapter_tensors(dst)
    assert set(got) == set(want)
    assert all(torch.allclose(got[k], want[k]) for k in want)


def test_a_model_trained_on_after_a_cut_keeps_the_record_of_it(chain, tmp_path, data):
    """Stages trained after `export --rank` (the generator on the cut compressor's memories) keep
    clara.json's rank_reduced through their checkpoints and the final export."""
    root, _ = chain
    r = load_model(str(root / "e2e"), device="cpu", dtype="fp32").config.lora_r
    cut = export_model(root / "e2e", tmp_path / "cut", dtype="fp32", rank=r // 2)
    train(config("instruct", data["qa"], tmp_path / "after", cut, steps=2), progress=False)
    after = json.loads((tmp_path / "after" / "clara.json").read_text())
    assert after["rank_reduced"] == {"from": r, "to": r // 2} and after["config"]["lora_r"] == r // 2
    shipped = export_model(tmp_path / "after", tmp_path / "shipped", dtype="bf16")
    assert json.loads((shipped / "clara.json").read_text())["rank_reduced"] == {"from": r, "to": r // 2}
    train(config("instruct", data["qa"], tmp_path / "uncut", root / "e2e", steps=2), progress=False)
    assert "rank_reduced" not in json.loads((tmp_path / "uncut" / "clara.json").read_text())


def test_bf16_base_with_fp32_lora_masters_runs_every_stage(tmp_path, tiny_model_dir, data):
    """The CPU fast path: bf16 base weights under autocast, fp32 LoRA and memory-row masters."""
    prev = tiny_model_dir
    for stage, path in (("scp", data["scp"]), ("instruct", data["qa"]), ("e2e", data["qa"])):
        result = train(config(stage, path, tmp_path / stage, prev, steps=2, dtype="bf16"), progress=False)
        assert result.done and result.dtype == "bf16" and all(h["loss"] == h["loss"] for h in result.history)
        prev = tmp_path / stage
    adapters = read_adapter_tensors(prev)
    assert all(t.dtype == torch.float32 for t in adapters.values())  # the masters, for exact resumption
    assert all(t.dtype == torch.bfloat16 for t in load_file(prev / "token_rows.safetensors").values())


# ---------------------------------------------------------------------- resumption
@pytest.mark.parametrize("stage", ["scp", "e2e"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, tiny_model_dir, chain, data, stage):
    root, _ = chain
    init, path = (tiny_model_dir, data["scp"]) if stage == "scp" else (root / "instruct", data["qa"])
    kw = {"steps": 7, "batch_size": 3, "grad_accum": 2, "dropout": True, "warmup_ratio": 0.3}  # RNG + schedule matter
    straight = train(config(stage, path, tmp_path / "a", init, **kw), progress=False)
    first = train(config(stage, path, tmp_path / "b", init, **kw), progress=False, stop_after=3)
    assert not first.done and first.step == 3
    resumed = train(config(stage, path, tmp_path / "b", init, save_every=2, **kw), progress=False)
    assert resumed.done and resumed.resumed_from == 3 and resumed.step == 7
    for what, read in (("adapters", read_adapter_tensors), ("rows", lambda d: load_file(d / "token_rows.safetensors"))):
        a, b = read(tmp_path / "a"), read(tmp_path / "b")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), what
    sa = torch.load(tmp_path / "a" / "trainer.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "trainer.pt", weights_only=True)
    assert all(torch.equal(x["exp_avg_sq"], y["exp_avg_sq"])
               for x, y in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values(), strict=True))
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]


def test_one_pass_training_run_equals_the_accumulating_one(tmp_path, tiny_model_dir, data):
    """The trainer with --one-pass (default) and --pass-per-micro-batch: the same loss history
    and the same adapters, to fp32 noise (no dropout, so both draw the same randomness)."""
    kw = {"steps": 3, "batch_size": 3, "grad_accum": 2, "dropout": False}
    runs = {one: train(config("scp", data["scp"], tmp_path / str(one), tiny_model_dir, one_pass=one, **kw),
                       progress=False) for one in (True, False)}
    for a, b in zip(runs[True].history, runs[False].history, strict=True):
        assert (a["loss"], a["mse"]) == (pytest.approx(b["loss"], rel=1e-4), pytest.approx(b["mse"], rel=1e-3, abs=1e-6))
    assert runs[True].tokens_per_s > 0 and runs[True].examples_seen == runs[False].examples_seen == 18
    # each step's wall time and tokens, for the speed of any stretch of a run: the same steps, the same tokens
    assert all(h["seconds"] > 0 and h["tokens"] > 0 for h in runs[True].history)
    assert [h["tokens"] for h in runs[True].history] == [h["tokens"] for h in runs[False].history]
    one, per = read_adapter_tensors(tmp_path / "True"), read_adapter_tensors(tmp_path / "False")
    assert one.keys() == per.keys()
    for k in one:
        assert torch.allclose(one[k], per[k], rtol=1e-3, atol=1e-6), k


def test_keep_every_keeps_a_loadable_model_of_those_steps(tmp_path, tiny_model_dir, data):
    """--keep-every N: OUT-steps/step-N holds that step's model (no trainer state), even once
    the run has gone past it; a resumed run with another --keep-every is the same run."""
    from clara_cli.checkpoint import load_model
    from clara_cli.train import kept_steps_dir

    out = tmp_path / "run"
    train(config("scp", data["scp"], out, tiny_model_dir, steps=5, keep_every=2), progress=False, stop_after=3)
    result = train(config("scp", data["scp"], out, tiny_model_dir, steps=5, keep_every=4), progress=False)
    assert result.done and result.resumed_from == 3
    kept = kept_steps_dir(out)
    assert sorted(p.name for p in kept.iterdir()) == ["step-2", "step-4"]
    final = read_adapter_tensors(out)
    for step in (2, 4):
        folder = kept / f"step-{step}"
        assert not (folder / "trainer.pt").exists() and not (folder / "train_state.json").exists()
        assert json.loads((folder / "clara.json").read_text())["training"]["step"] == step
        assert load_model(str(folder), device="cpu", dtype="fp32").trained
    step2 = read_adapter_tensors(kept / "step-2")
    assert any(not torch.equal(step2[k], final[k]) for k in final)  # two more steps changed them
    train(config("scp", data["scp"], tmp_path / "four", tiny_model_dir, steps=5), progress=False, stop_after=4)
    four, kept4 = read_adapter_tensors(tmp_path / "four"), read_adapter_tensors(kept / "step-4")
    assert all(torch.equal(four[k], kept4[k]) for k in four)  # step 4 as a run stopped there holds it


def test_finished_run_does_no_work_and_other_settings_are_refused(chain, data):
    from clara_cli.errors import UsageError

    root, results = chain
    again = train(config("e2e", data["qa"], root / "e2e", root / "instruct"), progress=False)
    assert again.done and again.seconds == 0.0 and again.fingerprint == results["e2e"].fingerprint
    with pytest.raises(UsageError, match="other settings"):
        train(config("e2e", data["qa"], root / "e2e", root / "instruct", lr=1e-2), progress=False)
    with pytest.raises(UsageError, match="holds a e2e run"):
        train(config("scp", data["scp"], root / "e2e", root / "instruct"), progress=False)


def test_auto_dtype_resumes_a_run_started_with_the_dtype_it_means(tmp_path, tiny_model_dir, data):
    """`--dtype bf16` on a machine where auto is bf16 (or fp32 where auto is fp32) is the same
    run: `make train-*` (auto) resumes it; another dtype is still refused."""
    from clara_cli.errors import UsageError
    from clara_cli.model import dtype_name, resolve_dtype

    meant = dtype_name(resolve_dtype("auto"))
    other = "fp32" if meant != "fp32" else "bf16"
    out = tmp_path / "run"
    train(config("scp", data["scp"], out, tiny_model_dir, steps=2, dtype=meant), progress=False, stop_after=1)
    with pytest.raises(UsageError, match="other settings"):
        train(config("scp", data["scp"], out, tiny_model_dir, steps=2, dtype=other), progress=False)
    resumed = train(config("scp", data["scp"], out, tiny_model_dir, steps=2, dtype="auto"), progress=False)
    assert resumed.resumed_from == 1 and resumed.done


def test_a_setting_added_after_a_run_started_resumes_at_its_default(tmp_path, tiny_model_dir, data):
    """A run started before a setting existed ran with its default: it resumes, unless the
    setting is now asked otherwise."""
    from clara_cli.errors import UsageError

    out = tmp_path / "run"
    train(config("scp", data["scp"], out, tiny_model_dir, steps=2), progress=False, stop_after=1)
    state = json.loads((out / "train_state.json").read_text())
    del state["config"]["lora_r"]  # as written before --lora-r existed
    (out / "train_state.json").write_text(json.dumps(state))
    with pytest.raises(UsageError, match="lora_r 16 -> 8"):
        train(config("scp", data["scp"], out, tiny_model_dir, steps=2, lora_r=8), progress=False)
    resumed = train(config("scp", data["scp"], out, tiny_model_dir, steps=2), progress=False)
    assert resumed.resumed_from == 1 and resumed.done


def test_fresh_start_takes_the_lora_rank(tmp_path, tiny_model_dir, data):
    """`--lora-r` (fresh starts): every adapter gets that rank, alpha 2r, and the saved model loads so."""
    base = tiny_model_dir.parent / "base"
    cfg = config("scp", data["scp"], tmp_path / "r4", None, steps=1, batch_size=2, lora_r=4, base_model=str(base))
    cfg.init_from = None
    train(cfg, progress=False)
    model = load_model(str(tmp_path / "r4"), device="cpu", dtype="fp32")
    assert (model.config.lora_r, model.config.lora_alpha) == (4, 8)
    ranks = {p.shape[0] for n, p in model.decoder.named_parameters() if "lora_A" in n}
    assert ranks == {4}


def test_crash_between_renames_recovers_previous_checkpoint(tmp_path, tiny_model_dir, data):
    out = tmp_path / "run"
    train(config("scp", data["scp"], out, tiny_model_dir, steps=4), progress=False, stop_after=2)
    out.rename(tmp_path / ".run.prev")  # as if killed after moving OUT aside, before the new one arrived
    (tmp_path / ".run.ckpt.zzz").mkdir()  # and a half-written temp folder
    result = train(config("scp", data["scp"], out, tiny_model_dir, steps=4), progress=False)
    assert result.resumed_from == 2 and result.done
    assert not (tmp_path / ".run.prev").exists() and not (tmp_path / ".run.ckpt.zzz").exists()


# ---------------------------------------------------------------------- prompts and CLI
def test_scp_prompt_is_the_official_stage1_template(tiny_model):
    from clara_cli.train.data import chat_prompt_and_response, memory_slots

    slots = memory_slots(4, 1)
    prompt, full = chat_prompt_and_response(tiny_model.tokenizer, QA_SYSTEM, f"Background:\n{slots}",
                                            "Question: q\nAnswer: a")
    assert prompt == ("<|im_start|>system\n" + QA_SYSTEM + "<|im_end|>\n<|im_start|>user\nBackground:\n"
                      "<MEM0><MEM1><MEM2><MEM3><SEP><|im_end|>\n<|im_start|>assistant\n")
    assert full == prompt + "Question: q\nAnswer: a<|im_end|>\n"


def test_cli_train_json_and_bad_data(tmp_path, tiny_model_dir, data):
    from click.testing import CliRunner

    from clara_cli.cli import cli
    from clara_cli.model import cpu_name

    runner = CliRunner()
    res = runner.invoke(cli, ["train", "scp", str(data["scp"]), "--out", str(tmp_path / "o"), "--init-from",
                              str(tiny_model_dir), "--steps", "2", "--batch-size", "2", "--dtype", "fp32",
                              "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["step"] == 2 and summary["done"] and summary["tokens_per_s"] > 0
    assert (summary["machine"], summary["dtype"]) == (cpu_name(), "fp32")  # whose speed, in which dtype
    # Without a terminal (nohup, cron) there is no bar: one line per checkpoint says how far it got.
    res = runner.invoke(cli, ["train", "scp", str(data["scp"]), "--out", str(tmp_path / "q"), "--init-from",
                              str(tiny_model_dir), "--steps", "2", "--batch-size", "2", "--dtype", "fp32",
                              "--device", "cpu", "--save-every", "1"])
    assert res.exit_code == 0, res.output
    assert "train scp: step 1/2, loss " in res.stderr and "train scp: step 2/2, loss " in res.stderr
    assert f"tokens/s [{cpu_name()}, fp32]; model in " in res.stdout
    # --stop-at-step: a time-boxed run stops with a checkpoint; the same command without it finishes.
    args = ["train", "scp", str(data["scp"]), "--out", str(tmp_path / "r"), "--init-from", str(tiny_model_dir),
            "--steps", "3", "--batch-size", "2", "--dtype", "fp32", "--device", "cpu", "--json"]
    for extra, step, done in ((["--stop-at-step", "2"], 2, False), (["--stop-at-step", "2"], 2, False), ([], 3, True)):
        res = runner.invoke(cli, args + extra)
        assert res.exit_code == 0, res.output
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        assert (summary["step"], summary["done"], summary["total_steps"]) == (step, done, 3)
    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"question": "q", "docs": ["d"], "answer": "a"}'])
    res = runner.invoke(cli, ["train", "scp", str(bad), "--out", str(tmp_path / "p"), "--init-from",
                              str(tiny_model_dir)])
    assert res.exit_code == 2 and f"{bad}:1: " in res.stderr and len(res.stderr.strip().splitlines()) == 1
    shutil.rmtree(tmp_path / "o")


@pytest.mark.slow  # ~20-40 s: a second Python process importing torch + transformers
def test_kill_9_then_rerun_resumes_to_the_same_weights(tmp_path, tiny_model_dir, data):
    """A real `clara train` process killed with SIGKILL mid-run; the same command then finishes it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["train", "scp", str(data["scp"]), "--init-from", str(tiny_model_dir), "--steps", "12",
            "--batch-size", "2", "--save-every", "1", "--dtype", "fp32", "--device", "cpu", "--lr", "3e-3",
            "--top-k", "2", "--no-dropout"]
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "clara_cli.cli", *args, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state, deadline = out / "train_state.json", time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if state.is_file() and json.loads(state.read_text())["step"] >= 3:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = json.loads(state.read_text())["step"]
    if killed_at >= 12:
        pytest.skip("the run finished before it could be killed")
    cfg = dict(steps=12, batch_size=2, lr=3e-3)  # save_every may differ between runs
    resumed = train(config("scp", data["scp"], out, tiny_model_dir, **cfg), progress=False)
    assert resumed.done and resumed.resumed_from == killed_at
    straight = train(config("scp", data["scp"], tmp_path / "straight", tiny_model_dir, **cfg), progress=False)
    a, b = read_adapter_tensors(out), read_adapter_tensors(tmp_path / "straight")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert straight.fingerprint and resumed.loss_last == pytest.approx(straight.loss_last, abs=1e-5)


@pytest.mark.slow  # a dozen processes importing torch + transformers
def test_gpu_recipe_script_runs_on_a_tiny_budget(tmp_path, tiny_model_dir):
    """scripts/train_gpu.sh end to end (five synth data sets, the shipped recipe's eight runs, export)
    with SMOKE=1 on the CPU: the recipe of the shipped default model, from scripts/train_written.sh."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "SMOKE": "1", "BASE_MODEL": str(tiny_model_dir.parent / "base"), "DEVICE": "cpu",
           "PY": sys.executable, "OMP_NUM_THREADS": "1", "JOBS": "2"}
    run = subprocess.run(["bash", str(root / "scripts" / "train_gpu.sh"), str(tmp_path / "out")], env=env,
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    model = load_model(str(tmp_path / "out" / "model"), device="cpu", dtype="fp32")
    assert model.trained and set(model.config.adapters) == {"encoder_adapter", "decoder_adapter",
                                                            "query_reasoner_adapter"}
    assert model.config.expand == 1
    meta = json.loads((tmp_path / "out" / "model" / "clara.json").read_text())
    # the stages of the shipped default (tests/test_default_model.py), with the same data files
    shipped = json.loads((root / "clara_cli" / "default_model" / "clara.json").read_text())
    assert meta["training"]["stage"] == "retrieval" and meta["rank_reduced"] == {"from": 64, "to": 16}
    assert [(h["stage"], h["data"]) for h in meta["history"]] == [("scp", "pretrain.jsonl"), ("scp", "qa.jsonl"),
        ("scp", "qa.jsonl"), ("scp", "qa-new.jsonl"), ("scp", "qa.jsonl"), ("scp", "qa-new.jsonl"),
        ("generator", "instruct-mix.jsonl")] == [(h["stage"], h["data"]) for h in shipped["history"]]


def test_clara_json_keeps_every_stage_the_model_went_through(chain, tmp_path):
    root, _ = chain
    meta = json.loads((root / "e2e" / "clara.json").read_text())
    assert [h["stage"] for h in meta["history"]] == ["scp", "instruct"] and meta["training"]["stage"] == "e2e"
    export_model(root / "e2e", tmp_path / "shipped", "bf16")
    shipped = json.loads((tmp_path / "shipped" / "clara.json").read_text())
    assert shipped["history"] == meta["history"] and shipped["training"] == meta["training"]
    assert meta["training"]["data"] == "qa.jsonl" and "/" not in json.dumps([meta["training"], *meta["history"]])


def test_history_of_a_run_resumed_from_its_own_export(tmp_path):
    """`make train-generator` resumes with --init-from default after step N was shipped: the
    shipped model's record of this very run is not a stage of its own."""
    from clara_cli.train.loop import training_history

    earlier = {"stage": "retrieval", "step": 200, "total_steps": 200, "data_sha256": "aa"}
    shipped = {"stage": "generator", "step": 100, "total_steps": 220, "data_sha256": "bb"}
    (tmp_path / "clara.json").write_text(json.dumps({"history": [earlier], "training": shipped}))
    this_run = {**shipped, "step": 120}
    assert training_history(str(tmp_path), this_run) == [earlier]
    other_run = {**shipped, "total_steps": 300}
    assert training_history(str(tmp_path), other_run) == [earlier, shipped]


def test_cpu_training_says_which_allocator_to_preload(tmp_path, tiny_model_dir, data):
    """Under glibc malloc `clara train` names the preload `make train-*` uses; under it, nothing."""
    import os
    import subprocess
    import sys

    from clara_cli.train.allocator import JEMALLOC_CONF, allocator_advice, jemalloc_library

    lib = jemalloc_library()
    if lib is None:
        pytest.skip("no ray wheel with libjemalloc.so")
    probe = ("from clara_cli.train.allocator import allocator, allocator_advice; "
             "print(allocator()); print(allocator_advice())")
    env = {**os.environ, "LD_PRELOAD": str(lib), "MALLOC_CONF": JEMALLOC_CONF}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [f"jemalloc, MALLOC_CONF={JEMALLOC_CONF!r}", "None"]
    if "libjemalloc" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("the tests themselves run under jemalloc")
    advice = allocator_advice()
    assert f"LD_PRELOAD={lib} MALLOC_CONF={JEMALLOC_CONF}" in advice
    from click.testing import CliRunner

    from clara_cli.cli import cli

    res = CliRunner().invoke(cli, ["train", "scp", str(data["scp"]), "--out", str(tmp_path / "o"), "--init-from",
                                   str(tiny_model_dir), "--steps", "1", "--batch-size", "2", "--dtype", "fp32",
                                   "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    assert advice in res.stderr


def test_random_base_has_the_shape_and_tokenizer_but_not_the_weights(tmp_path, tiny_model_dir):
    """scripts/random_base.py (the GPU check's stand-in for weights that cannot travel): the same
    config and tokenizer, so the same computation; other values."""
    import importlib.util

    from safetensors.torch import load_file

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("random_base", root / "scripts" / "random_base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    src = tiny_model_dir.parent / "base"
    dst = module.random_base(src, tmp_path / "random")
    assert json.loads((dst / "config.json").read_text())["hidden_size"] == json.loads(
        (src / "config.json").read_text())["hidden_size"]
    assert (dst / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    real, rand = load_file(src / "model.safetensors"), load_file(dst / "model.safetensors")
    shared = set(real) & set(rand)
    assert shared and all(real[k].shape == rand[k].shape for k in shared)
    assert any(not torch.equal(real[k].float(), rand[k].float()) for k in shared if real[k].dim() == 2)
