"""Every prompt the generator reads, built in one place: the answer prompt of `ask` / `eval` /
training (memory slots, selectively expanded raw texts), the text-RAG baseline's prompt, and
the pretraining prompts of the official code (apple/ml-clara openrlhf/models/modeling_clara.py:
`_blend_qa_prompt`, `_blend_paraphrase_prompt`, `_blend_prompt_and_selected_memory_tokens`).
A chat template without a system role gets the system text merged into the user turn, as the
official code does."""

from __future__ import annotations

import random
from collections.abc import Sequence

SYSTEM_PROMPT = (
    "You are a helpful assistant. Your task is to extract relevant information from "
    "provided documents and to answer to questions as briefly as possible."
)

# Stage-1 system prompts and paraphrase instructions, verbatim from the official code.
QA_SYSTEM = ("You are a helpful assistant. Given a document, your task is to generate some single questions "
             "to cover all key information of the document and answer them sequentially.")
PARAPHRASE_SYSTEM = ("You are a helpful assistant. Your task is follow the instructions to paraphrase the "
                     "background information.")
PARAPHRASE_INSTRUCTIONS = (
    "Background: {docs} means the same as",
    "Background: {docs} Can you put the above sentences in your own terms?",
    "Background: {docs} Please provide a reinterpretation of the preceding background text.",
    "These two expressions are equivalent in essence:\n(1) {docs}\n(2)",
    "Background: {docs} is a paraphrase of what?",
    "Background: {docs} Could you give me a different version of the background sentences above?",
    "In other words, background: {docs} is just another way of saying:",
    "You're getting across the same point whether you say background: {docs} or",
    "Background: {docs} After unpacking the ideas in the background information above, we got:",
    "Background: {docs} Please offer a restatement of the background sentences I've just read.",
    "Background: {docs}, which also means:",
    "Strip away the mystery, and you'll find background: {docs} is simply another rendition of:",
    "The essence of background: {docs} is captured again in the following statement:",
)


def memory_slots(n_mem: int, k: int, sep: bool = True) -> str:
    """`(<MEM0>..<MEM{n-1}><SEP>)` k times: where k documents' memories go, in rank order."""
    return ("".join(f"<MEM{i}>" for i in range(n_mem)) + ("<SEP>" if sep else "")) * k


def answer_user_turn(question: str, n_mem: int, k: int, sep: bool = True, expanded: Sequence[str] = ()) -> str:
    """The question turn: raw texts of the expanded documents (selective expansion, ours), then
    k documents' memory slots, then the question."""
    raw = "".join(f"{text.strip()}\n" for text in expanded)
    return f"Background:\n{raw}{memory_slots(n_mem, k, sep)}\n\nQuestion:{question}"


def text_user_turn(question: str, passages: Sequence[str]) -> str:
    """The text-RAG baseline's question turn: the passages' text where the memory slots would be."""
    return "Background:\n" + "\n\n".join(p.strip() for p in passages) + f"\n\nQuestion:{question}"


def paraphrase_instruction(seed: int, epoch: int, index: int) -> str:
    """One of the official paraphrase templates, chosen reproducibly per (seed, epoch, example)."""
    return random.Random(f"{seed}:{epoch}:{index}").choice(PARAPHRASE_INSTRUCTIONS)


def _render(tokenizer, system: str, user: str) -> tuple[list[dict], str]:
    """(messages, the chat text up to the assistant turn)."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    try:
        return messages, tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as err:  # jinja2 TemplateError "System role not supported"
        if "system" not in str(err).lower():
            raise
    messages = [{"role": "user", "content": system + "\n" + user}]
    return messages, tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def chat_prompt(tokenizer, system: str, user: str) -> str:
    """The chat text up to the assistant turn."""
    return _render(tokenizer, system, user)[1]


def chat_prompt_and_response(tokenizer, system: str, user: str, answer: str) -> tuple[str, str]:
    """(prompt up to the assistant turn, full text with the answer): a training example."""
    messages, prompt = _render(tokenizer, system, user)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}],
                                         add_generation_prompt=False, tokenize=False)
    return prompt, full
