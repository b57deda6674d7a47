"""The ``/retrieve`` wire format (Search-R1's; docs/protocols.md, "The retrieval API"): request validation and response shapes.

Request: ``{"queries": [str, ...], "topk": int | null, "return_scores": bool}``.
Response: ``{"result": [per-query list]}`` where an item is the passage (``{"id", "contents"}``)
or, with ``return_scores``, ``{"document": passage, "score": float}``. A client written for
upstream's server sends the same body and reads the same answer; unknown extra fields are ignored
as upstream's server ignored them.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field, StrictBool, StrictInt, field_validator

from local_dense_retriever.retriever import Hit


def request_model(max_queries: int, max_query_chars: int) -> type[BaseModel]:
    """A request model with the server's bounds (pydantic reports violations as 422)."""

    class RetrieveRequest(BaseModel):
        queries: list[str] = Field(min_length=1, max_length=max_queries)
        # None (or absent): the server's --topk. The upper bound (corpus size) is checked later.
        topk: StrictInt | None = Field(default=None, ge=1)
        return_scores: StrictBool = False

        @field_validator("queries")
        @classmethod
        def _queries_are_text(cls, queries: list[str]) -> list[str]:
            for i, query in enumerate(queries):
                if not query.strip():
                    raise ValueError(f"queries[{i}] is empty or blank; every query must contain text")
                if len(query) > max_query_chars:
                    raise ValueError(
                        f"queries[{i}] has {len(query)} characters; the limit is {max_query_chars} "
                        "(the encoder truncates far sooner anyway)"
                    )
            return queries

    return RetrieveRequest


def format_result(hits_per_query: Sequence[Sequence[Hit]], return_scores: bool) -> dict:
    if return_scores:
        return {"result": [[{"document": h.document, "score": h.score} for h in hits] for hits in hits_per_query]}
    return {"result": [[h.document for h in hits] for hits in hits_per_query]}
