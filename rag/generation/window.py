"""Fit a prompt into one endpoint's context window, exactly: pack, render, count the whole prompt, repack if over.

Packing (rag/generation/packing.py) budgets with counts of the pieces; joined pieces can tokenize differently,
and the chat template adds tokens around them. So the rendered prompt is counted as a whole in the endpoint's
own tokenizer (its chat template applied where the server can) and repacked into a smaller budget while it is
over. The prompt is any ``ChatPromptTemplate`` with the variables ``history``, ``sources`` and ``question``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from langchain_core.messages import BaseMessage
from langchain_core.prompts import BasePromptTemplate

from rag.errors import QuestionTooLongError, RagError
from rag.generation.packing import Packing, format_source, join_sources, pack
from rag.generation.prompts import NO_SOURCES
from rag.settings import Settings
from rag.types import Message, Passage

if TYPE_CHECKING:
    from rag.llm.endpoints import OpenAICompatibleEndpoint

log = logging.getLogger(__name__)

_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def as_pairs(messages: Sequence[BaseMessage]) -> list[tuple[str, str]]:
    """LangChain messages as (role, content) pairs, the form the endpoints count."""
    return [(_ROLES.get(m.type, m.type), m.text) for m in messages]


def lc_history(history: Sequence[Message]) -> list[BaseMessage]:
    from langchain_core.messages import AIMessage, HumanMessage

    return [HumanMessage(m.content) if m.role == "user" else AIMessage(m.content) for m in history]


class WindowPacker:
    """Packs for ``prompt`` under ``settings`` (answer length, history share) in a given endpoint's window."""

    def __init__(self, settings: Settings, prompt: BasePromptTemplate) -> None:
        self.settings = settings
        self.prompt = prompt
        names = {*prompt.input_variables, *getattr(prompt, "optional_variables", ())}
        wrong = sorted(names - {"history", "sources", "question"})
        missing = sorted({"sources", "question"} - names)
        if wrong or missing:  # else the first question fails with a bare KeyError
            raise RagError(
                "the answer prompt's variables are {history} (optional), {sources} and {question}"
                + (f"; it uses {', '.join('{' + w + '}' for w in wrong)}" if wrong else "")
                + (f"; it lacks {', '.join('{' + m + '}' for m in missing)}" if missing else "")
                + " (LangChain's usual {context} and {input} are {sources} and {question} here)")
        #: A prompt without {history} never sends it, so no room is kept for it either.
        self.uses_history = "history" in names

    def variables(self, packing: Packing, question: str) -> dict:
        """The prompt's input for a packing: its kept history, its numbered source blocks, the question."""
        block = join_sources([format_source(s.n, s) for s in packing.sources])
        return {"history": lc_history(packing.history), "sources": block or NO_SOURCES,
                "question": question.strip()}

    def messages(self, packing: Packing, question: str) -> list[BaseMessage]:
        # format_prompt, not invoke: rendering to count is not a run of the chain (tracers would see several)
        return self.prompt.format_prompt(**self.variables(packing, question)).to_messages()

    def _frame(self, question: str) -> tuple[str, str]:
        """What the prompt costs without sources and history: its instructions, and the question's turn."""
        rendered = as_pairs(self.prompt.format_prompt(history=[], sources="", question=question.strip())
                            .to_messages())
        *rest, last = rendered
        return "\n".join(c for _, c in rest), last[1]

    def pack(self, passages: Sequence[Passage], question: str, history: Sequence[Message], *,
             endpoint: OpenAICompatibleEndpoint, context_window: int | None = None,
             extra_margin: int = 0, max_tokens: int | None = None) -> Packing:
        """The packing whose whole rendered prompt fits ``context_window`` (default: the endpoint's) with room
        for an answer of ``max_tokens`` (default: the setting's); its ``prompt_tokens`` is that prompt's exact
        count."""
        ep = endpoint
        window = context_window or ep.info.context_window or 2048
        max_out = max_tokens or self.settings.llm_max_tokens
        if max_out >= window - 64:
            raise RagError(f"RAG_LLM_MAX_TOKENS={max_out} leaves no room in the model's {window}-token context; "
                           f"lower it (a quarter of the window is typical)")
        overhead = ep.chat_overhead()
        margin = ep.margin + extra_margin
        limit = window - max_out
        system, frame = self._frame(question)
        for _ in range(4):
            packing = pack(
                passages, question=frame, system_prompt=system, history=history if self.uses_history else [],
                context_window=window,
                max_output_tokens=max_out, counter=ep, template_overhead=overhead.base,
                turn_overhead=overhead.per_turn, margin=margin, history_share=self.settings.history_share,
            )
            if packing.budget <= 0:
                raise QuestionTooLongError(
                    f"the question is too long for the model's {window}-token context window ({max_out} of it "
                    "reserved for the answer); shorten it or lower RAG_LLM_MAX_TOKENS")
            total = ep.prompt_tokens(as_pairs(self.messages(packing, question)))
            if total <= limit:
                packing.prompt_tokens = total
                return packing
            # Pieces counted apart can tokenize differently once joined: repack into a budget that is smaller
            # than what this packing used by the excess (a larger margin alone may leave the same packing).
            log.info("packed prompt counts %d tokens, %d over the limit; repacking", total, total - limit)
            margin += (total - limit) + max(packing.budget - packing.used, 0)
        raise RagError(f"could not pack a prompt under {limit} tokens; set RAG_LLM_CONTEXT_WINDOW lower")
