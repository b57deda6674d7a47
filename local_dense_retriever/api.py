"""The ``/retrieve`` wire format (Search-R1's; docs/protocols.md, "The retrieval API"): request validation and response shapes.

Request: ``{"queries": [str, ...], "topk": int | null, "return_scores": bool}``.
Response: ``{"result": [per-query list], "fingerprint": str}`` where an item is the passage
(``{"id", "contents"}``) or, with ``return_scores``, ``{"document": passage, "score": float}``;
``fingerprint`` (ours, ignored by upstream's clients) names what answered (``fingerprint.py``). A client written for
upstream's server sends the same body and reads the same answer. Other fields are ignored, as
upstream's server ignored them, except a near miss of a field's name (``top_k``, ``returnScores``,
``query``): that is a client's typo, which would otherwise be served with the default silently, so
it gets a 422 naming the field. Search-R1's clients (its trainer, its inference script), verl's
search tool and slime's example all send exactly the three fields.

The models below also make the published OpenAPI schema: every constraint the server enforces on a
request is in the request schema, and every answer it can give has a documented body.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, field_validator, model_validator

from local_dense_retriever.retriever import Hit

# For each field, the names a client may have meant it by: another case, a separator between its
# words, singular for plural. Written in the subset of regex syntax that Python and ECMA-262 (JSON
# Schema's dialect) read alike, so the schema can publish the same rule the server applies.
_NEAR_MISSES = {
    "queries": r"quer(y|ys|ies)",
    "topk": r"top[-_. ]?k",
    "return_scores": r"return[-_. ]?scores?",
}


def _any_case(source: str) -> str:
    return re.sub(r"[a-z]", lambda letter: f"[{letter[0]}{letter[0].upper()}]", source)


_MEANT = {field: re.compile(_any_case(pattern)) for field, pattern in _NEAR_MISSES.items()}
# A property name the request schema forbids: a near miss of a field, but not the field itself.
NEAR_MISS_PATTERN = f"^(?!({'|'.join(_NEAR_MISSES)})$)({'|'.join(_any_case(p) for p in _NEAR_MISSES.values())})$"


def misspelt_fields(body: Any) -> list[str]:
    """One message per key of ``body`` that is a near miss of a field's name."""
    if not isinstance(body, dict):
        return []
    return [f"{key!r} is not a field: did you mean {field!r}?"
            for key in body if key not in _MEANT for field, meant in _MEANT.items() if meant.fullmatch(key)]


def _whole_number(value: Any) -> Any:
    # JSON Schema's integer is any number without a fraction (3.0 too), as JSON has one number
    # type; strings and booleans stay refused.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def request_model(max_queries: int, max_query_chars: int, max_topk: int) -> type[BaseModel]:
    """A request model with the server's bounds (pydantic reports violations as 422)."""
    # The validator below enforces the per-query bound with a message that names the query; the
    # schema states the same bound for schema-driven clients.
    query_schema = {"type": "string", "maxLength": max_query_chars}

    class RetrieveRequest(BaseModel):
        model_config = ConfigDict(json_schema_extra={"propertyNames": {"not": {"pattern": NEAR_MISS_PATTERN}}})

        queries: list[str] = Field(
            min_length=1,
            max_length=max_queries,
            description=f"1 to {max_queries} queries of at most {max_query_chars} characters each; a blank query "
                        "(empty or whitespace only) gets an empty list of its own, the others their passages",
            json_schema_extra={"items": query_schema},
        )
        # None (or absent): the server's --topk. A corpus smaller than topk gives all its passages.
        topk: Annotated[StrictInt, Field(ge=1, le=max_topk), BeforeValidator(_whole_number)] | None = Field(
            default=None, description="passages per query (default: the server's --topk)"
        )
        return_scores: StrictBool = Field(default=False, description='wrap each passage as {"document", "score"}')

        @model_validator(mode="before")
        @classmethod
        def _no_misspelt_fields(cls, body: Any) -> Any:
            if problems := misspelt_fields(body):
                raise ValueError("; ".join(problems))
            return body

        @field_validator("queries")
        @classmethod
        def _queries_are_short(cls, queries: list[str]) -> list[str]:
            for i, query in enumerate(queries):
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


# Response bodies, for the OpenAPI document only (the server writes its JSON directly).


class Passage(BaseModel):
    """A corpus row as stored: contents (a quoted title, a line break, the text), id and any other field of the corpus."""

    model_config = ConfigDict(extra="allow")
    contents: str


class ScoredPassage(BaseModel):
    document: Passage
    score: float


class RetrieveResponse(BaseModel):
    result: list[list[Passage]] | list[list[ScoredPassage]] = Field(
        description="one list per query, best first; at most topk passages (fewer when fewer match)"
    )
    fingerprint: str = Field(description="the id of the index, corpus, encoder and settings that answered (see /health)")


class ErrorMessage(BaseModel):
    detail: str


class ValidationIssue(BaseModel):
    type: str
    loc: list[str | int]
    msg: str


class ValidationErrorBody(BaseModel):
    detail: list[ValidationIssue]


class Health(BaseModel):
    status: Literal["loading", "ready", "failed"]
    config: dict[str, Any] = Field(description="the server's settings (the access token redacted)")
    error: str | None = Field(default=None, description="why loading failed")
    passages: int | None = None
    searcher: dict[str, Any] | None = None
    fingerprint: dict[str, Any] | None = Field(default=None, description="id and parts of what answers searches")
    served: dict[str, Any] | None = None


def _error(description: str, model: type[BaseModel] = ErrorMessage, headers: dict[str, dict] | None = None) -> dict:
    doc: dict = {"model": model, "description": description}
    if headers:
        doc["headers"] = {name: {**header, "required": True} for name, header in headers.items()}
    return doc


# What any path may answer before the app sees the request (local_dense_retriever.http_limits).
HEAD_REFUSALS: dict[int | str, dict] = {
    408: _error("the request head did not arrive within --header_timeout_s; the connection is closed"),
    431: _error("the request head is larger than --max_header_bytes or has more than --max_headers headers; "
                "the connection is closed"),
}


def retrieve_responses(*, with_token: bool) -> dict[int | str, dict]:
    """Every answer ``POST /retrieve`` can give (FastAPI's ``responses``)."""
    responses: dict[int | str, dict] = {
        200: {"model": RetrieveResponse, "description": "the passages for each query"},
        **HEAD_REFUSALS,
        408: _error("the request head did not arrive within --header_timeout_s, or the body within --body_timeout_s; "
                    "the connection is closed"),
        413: _error("the body is larger than --max_body_bytes (from Content-Length, before it is read); the connection is closed"),
        422: _error("the body is not valid JSON or breaks a constraint of the request schema (a near miss of a field's "
                    "name, such as top_k for topk, included)", ValidationErrorBody),
        500: _error("the search failed (the reason is in detail); the next request is served normally"),
        503: _error(
            "the retriever is loading or overloaded, or --max_connections connections are open (then the connection "
            "is closed); retry later",
            headers={"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 0}}},
        ),
    }
    if with_token:
        responses[401] = _error(
            "no or wrong access token (send Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": {"description": "the scheme to use", "schema": {"type": "string", "const": "Bearer"}}},
        )
    return dict(sorted(responses.items()))


HEALTH_RESPONSES: dict[int | str, dict] = {
    200: {"model": Health, "description": "ready"},
    **HEAD_REFUSALS,
    503: {"model": Health, "description": "loading, or loading failed (see error); beyond --max_connections open "
                                         "connections the body is {\"detail\"} and the connection is closed"},
}
