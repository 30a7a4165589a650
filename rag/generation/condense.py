"""A follow-up question rewritten as a standalone one, for retrieval: ``CONDENSE`` prompt -> chat model.

"And for Berlin?" retrieves nothing useful on its own. The recent turns go into the condense prompt, oldest
dropped first until it fits the endpoint's window; small models often answer instead of rewriting, so their
output is cleaned and, when it is not a question, replaced by the last user question plus the follow-up.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from langchain_core.prompts import BasePromptTemplate

from rag.generation.citations import snippet
from rag.types import Message

if TYPE_CHECKING:
    from rag.llm.endpoints import OpenAICompatibleEndpoint

log = logging.getLogger(__name__)

#: Room kept for a standalone question.
MAX_TOKENS = 96


def fitted_variables(prompt: BasePromptTemplate, history: Sequence[Message], question: str,
                     endpoint: OpenAICompatibleEndpoint) -> dict:
    """The condense prompt's variables, with as many recent turns as fit the endpoint's window."""
    from rag.generation.window import as_pairs

    limit = (endpoint.info.context_window or 2048) - MAX_TOKENS
    turns = [f"{'User' if m.role == 'user' else 'Assistant'}: {snippet(m.content, 600)}" for m in history[-6:]]
    while True:  # oldest turns go first until the condense prompt fits
        variables = {"history": "\n".join(turns), "question": question}
        if not turns or endpoint.prompt_tokens(as_pairs(prompt.format_prompt(**variables).to_messages())) <= limit:
            return variables
        turns.pop(0)


def clean_standalone(out: str, question: str) -> str:
    """Small models wrap the rewrite in quotes, labels or chatter; anything odd falls back to the question."""
    lines = [ln.strip() for ln in out.strip().splitlines() if ln.strip()]
    if not lines:
        return question
    s = re.sub(r"^(standalone question|question|rewritten question)\s*:\s*", "", lines[0], flags=re.I)
    s = s.strip().strip('"“”\'').strip()
    if len(s) < 3 or len(s) > 3 * len(question) + 200:
        return question
    return s


def standalone_question(model_output: str, question: str, history: Sequence[Message]) -> str:
    standalone = clean_standalone(model_output, question)
    if question.rstrip().endswith("?") and not standalone.endswith("?"):
        # Small models answer instead of rewriting; the last user turn plus the follow-up retrieves better
        # than an answer (or a bare "And for Berlin?") does.
        last = next((m.content for m in reversed(history) if m.role == "user"), "")
        log.info("condensing produced %r, not a question; retrieving with the last question added", standalone)
        return f"{snippet(last, 300)} {question}".strip()
    return standalone
