"""`clara serve --mcp`: the store as Model Context Protocol tools over stdio, for assistants.

Tools: `search` (top-k chunks with text, score and source), `ask` (an answer read from the
top-k memories, with its sources) and `info`; they return the JSON objects of the CLI's
--json output. stdout carries the protocol, so notices go to stderr as everywhere in clara.
"""

from __future__ import annotations

from typing import Literal

from .answer import DEFAULT_RETRIEVER
from .api import ClaraStore
from .errors import ClaraError


def _server_class():
    try:
        from mcp.server.mcpserver import MCPServer  # mcp >= 2

        return MCPServer, "mcp.server.mcpserver.exceptions"
    except ImportError:  # mcp 1.x
        from mcp.server.fastmcp import FastMCP

        return FastMCP, "mcp.server.fastmcp.exceptions"


def create_mcp(store: ClaraStore):
    """An MCP server whose tools search and answer from `store`."""
    import importlib

    server_class, errors_module = _server_class()
    tool_error = importlib.import_module(errors_module).ToolError
    mcp = server_class("clara", instructions=(
        "Search and answer questions from a clara store: a corpus compressed into CLaRa memory "
        "tokens. `search` returns the best chunks with their text and source; `ask` answers from them."))

    def run(call):
        try:
            return call()
        except ClaraError as err:  # the CLI's one line, with its exit code
            raise tool_error(f"{err} (exit code {err.exit_code})") from None

    @mcp.tool()
    def search(query: str, k: int = 5, retriever: Literal["latent", "bm25", "hybrid"] = DEFAULT_RETRIEVER) -> list[dict]:
        """Top-k chunks of the store for a query: rank, score, chunk_id, doc_id, source, start, end, text.
        retriever: latent (CLaRa memory cosine), bm25 (lexical), hybrid (both, rank-fused)."""
        return run(lambda: [h.to_dict() for h in store.search(query, k=k, retriever=retriever)])

    @mcp.tool()
    def ask(question: str, k: int = 5, max_new_tokens: int = 64,
            retriever: Literal["latent", "bm25", "hybrid"] = DEFAULT_RETRIEVER) -> dict:
        """Answer a question from the top-k chunks' memory tokens: {question, answer, sources,
        context_tokens, timings}."""
        return run(lambda: store.ask(question, k=k, max_new_tokens=max_new_tokens, retriever=retriever).to_dict())

    @mcp.tool()
    def info() -> dict:
        """The store: model, documents, chunks, compressed chunks, bytes, compression ratio."""
        return run(store.info)

    return mcp


def serve_mcp(store: ClaraStore) -> None:
    """Serve MCP over stdin/stdout until the client closes it."""
    create_mcp(store).run("stdio")
