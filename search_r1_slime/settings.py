"""The plugin's configuration schema: every ``search_r1.*`` key with its type, range and default.

Declared once, here. ``generate_with_search.SEARCH_R1_CONFIGS`` (upstream's plain dict) is
derived from it, ``generate_with_search.resolve_config`` checks the merged settings against it
before the first generation, the preflight reports the same problems, and both search backends
validate their keyword arguments with it, so a default or a range cannot differ between them.
Every problem is reported with the key's dotted name, e.g.
``search_r1.local.max_queries_per_request must be at least 1, got 0``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_validator
from pydantic.fields import FieldInfo

# What the retrieval client sends as ``Authorization: Bearer`` when search_r1.local.api_key is unset.
RETRIEVAL_API_KEY_ENV = "RETRIEVAL_API_KEY"
# What the serper.dev client sends as X-API-KEY when search_r1.google.api_key is unset.
SERPER_API_KEY_ENV = "SERPER_API_KEY"
# What the LLM judge client sends as ``Authorization: Bearer`` when search_r1.judge.api_key is unset.
JUDGE_API_KEY_ENV = "JUDGE_API_KEY"


# The fewest characters a key may have. A shorter one is no secret (it can be guessed), and the
# messages that quote a server's answer scrub keys from it: a short key such as "2024" or "result"
# would be cut out of the words around it. serper.dev keys have 40; `openssl rand -hex 32` gives 64.
MIN_KEY_CHARS = 16


def resolve_secret(configured: str | None, path: str | None, env: str) -> str | None:
    """The secret to use: the configured one, else the contents of the file ``path`` (surrounding
    whitespace dropped), else the environment variable ``env``; None when none is set (an empty or
    blank variable counts as unset: spaces are no secret, and scrubbing them from messages would
    garble every one). Only the first two come from ``args``, which slime uploads to W&B.
    Raises ``ConfigError`` for a key from ``env`` shorter than ``MIN_KEY_CHARS`` (the others are
    checked with the settings)."""
    if configured:
        return configured
    if path:
        return _read_secret_file(path) or None
    secret = os.environ.get(env, "")
    if not secret.strip():
        return None
    if len(secret) < MIN_KEY_CHARS:
        raise ConfigError([f"{env} holds a key {_TOO_SHORT} (value not shown)"])
    return secret


_TOO_SHORT = f"shorter than {MIN_KEY_CHARS} characters, too short to be a secret"


def _read_secret_file(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def uploaded_secret_problems(override: Mapping[str, Any]) -> list[str]:
    """The keys written literally in ``args.search_r1``: with ``--use-wandb`` slime uploads its
    ``args`` as the W&B run's config, so such a key would leave the machine."""
    problems = []
    for section, env in (("local", RETRIEVAL_API_KEY_ENV), ("google", SERPER_API_KEY_ENV), ("judge", JUDGE_API_KEY_ENV)):
        values = override.get(section)
        if isinstance(values, Mapping) and values.get("api_key"):
            problems.append(
                f"search_r1.{section}.api_key is written in the --custom-config-path YAML while W&B is on "
                f"(--use-wandb), and slime uploads its args, this key included, as the run's W&B config: put the "
                f"key in a file and set search_r1.{section}.api_key_file to its path, or export {env}, instead"
            )
    return problems


class ConfigError(ValueError):
    """The ``search_r1`` configuration is wrong; the message says which key and how to fix it.

    ``problems`` lists every problem found, one sentence each.
    """

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# The top-level key of slime's --custom-config-path YAML that holds these settings, and the
# spellings of it that people write instead (any case, any separator or none, an l for the 1).
SECTION = "search_r1"
_NEAR_SECTION = re.compile(r"search[\W_]*r[\W_]*[1l]", re.IGNORECASE)


def check_section_name(top_level_keys: Iterable[Any]) -> None:
    """Refuse a near miss of ``search_r1`` (``search-r1``, ``searchr1``, ``Search_R1``...) among the
    YAML's top-level keys: slime would set it as an attribute of its own name, the plugin would
    never read it, and the run would go on silently with the defaults."""
    problems = [
        f"top-level key {key!r} is not read by the plugin: name it {SECTION} (lower case, underscore)"
        for key in top_level_keys
        if isinstance(key, str) and key != SECTION and _NEAR_SECTION.fullmatch(key)
    ]
    if problems:
        raise ConfigError(problems)


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _search_urls(value: Any) -> str | list[str]:
    if _is_http_url(value) or (isinstance(value, list) and value and all(_is_http_url(url) for url in value)):
        return value
    raise ValueError(
        f"must be a URL or a non-empty list of URLs (http://host:port/retrieve), got {type(value).__name__}: {value!r}"
    )


def _url(value: Any) -> str:
    if _is_http_url(value):
        return value
    raise ValueError(f"must be an http(s) URL, got {type(value).__name__}: {value!r}")


def _optional_proxy(value: Any) -> str | None:
    if value is None or _is_http_url(value):
        return value
    raise ValueError(f"must be None or an http(s) proxy URL such as http://proxy:3128, got {type(value).__name__}: {value!r}")


def _optional_secret(value: Any) -> str | None:
    # The value is never quoted: it may be a real key put under the wrong name.
    if value is None:
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be None or a non-empty string (got {type(value).__name__}, value not shown)")
    if len(value) < MIN_KEY_CHARS:
        raise ValueError(f"is {_TOO_SHORT} (value not shown)")
    return value


def _optional_secret_file(value: Any) -> str | None:
    # Neither the value nor the file's contents is ever quoted: a key put here by mistake, in place
    # of its file's path, must not end up in a log.
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be None or the path of a file holding the key (got {type(value).__name__}, value not shown)")
    try:
        secret = _read_secret_file(value)
    except UnicodeDecodeError:
        reason = "the file is not UTF-8 text"
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
    else:
        if len(secret) >= MIN_KEY_CHARS:
            return value
        reason = f"the key in it is {_TOO_SHORT}" if secret else "the file is empty"
    raise ValueError(f"cannot be read as a key file ({reason}; the path is not shown, in case it is a key)")


def _optional_url(value: Any) -> str | None:
    if value is None or _is_http_url(value):
        return value
    raise ValueError(
        f"must be None or an http(s) URL such as http://127.0.0.1:30000/v1/chat/completions, got {type(value).__name__}: {value!r}"
    )


def _judge_template(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and "{items}" in value):
        return value
    raise ValueError(f"must be None (ours) or a string holding {{items}}, where the answers to judge go; got {value!r:.80}")


SearchUrls = Annotated[str | list[str], PlainValidator(_search_urls)]
Url = Annotated[str, PlainValidator(_url)]
Proxy = Annotated[str | None, PlainValidator(_optional_proxy)]
OptionalUrl = Annotated[str | None, PlainValidator(_optional_url)]
JudgeTemplate = Annotated[str | None, PlainValidator(_judge_template)]
Secret = Annotated[str | None, PlainValidator(_optional_secret)]
SecretFile = Annotated[str | None, PlainValidator(_optional_secret_file)]


class _Section(BaseModel):
    # strict: YAML's "2" is not 2 and true is not 1; forbid: a misspelt key is an error.
    model_config = ConfigDict(extra="forbid", strict=True)


class _KeyedSection(_Section):
    """A backend section with ``api_key`` and ``api_key_file``: at most one of them."""

    @model_validator(mode="after")
    def _one_key_source(self) -> _KeyedSection:
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("must set api_key or api_key_file, not both")
        return self


class LocalSettings(_KeyedSection):
    """``search_r1.local``: the client of the local retrieval server (``local_search_server``)."""

    search_url: SearchUrls = "http://127.0.0.1:8000/retrieve"  # or a list of servers
    proxy: Proxy = None
    batch_wait: float = Field(0.01, ge=0)  # seconds a query waits for others to share its request
    max_queries_per_request: int = Field(64, ge=1)  # the most queries in one /retrieve request
    cache: bool = True
    cache_size: int = Field(10_000, ge=0)
    max_attempts: int | None = Field(None, ge=1)  # None: retry until search_timeout
    attempt_timeout: float = Field(10.0, gt=0)
    # A longer query is cut to this many characters before it is sent (our server's
    # --max_query_chars default; the encoder reads only its first max_length tokens anyway).
    max_query_chars: int = Field(4096, ge=1)
    api_key: Secret = None  # None: api_key_file, else RETRIEVAL_API_KEY from the environment
    api_key_file: SecretFile = None  # a file holding the token: keeps it out of slime's args (W&B)


class GoogleSettings(_KeyedSection):
    """``search_r1.google``: the serper.dev client (``google_search_server``)."""

    api_key: Secret = None  # None: api_key_file, else SERPER_API_KEY from the environment
    api_key_file: SecretFile = None  # a file holding the key: keeps it out of slime's args (W&B)
    snippet_only: bool = True
    proxy: Proxy = None
    endpoint: Url = "https://google.serper.dev/search"
    cache: bool = True
    cache_size: int = Field(10_000, ge=0)
    max_attempts: int | None = Field(None, ge=1)  # None: retry until search_timeout
    attempt_timeout: float = Field(10.0, gt=0)
    page_timeout: float = Field(5.0, gt=0)  # seconds to fetch and parse one page, within search_timeout
    page_max_bytes: int = Field(1_000_000, ge=1)
    # Fetch result pages on loopback, private, link-local and other non-public addresses too.
    allow_private_pages: bool = False


class AccessSettings(_Section):
    """``search_r1.access``: the page-reading tool of deep-research mode (docs/deep_research.md)."""

    enabled: bool = False  # off: the model has the search tool only, exactly as Search-R1
    tag: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")] = "access"  # the model writes <tag> URL </tag>
    # Any public URL may be opened; otherwise only one shown in an earlier observation of the trajectory.
    any_public_url: bool = False
    max_obs_tokens: int = Field(2000, ge=1)  # cap on one page's observation, in tokens
    page_timeout: float = Field(10.0, gt=0)  # seconds to fetch one page, redirects included
    page_max_bytes: int = Field(2_000_000, ge=1)  # a larger page is refused ("too big"), not cut
    proxy: Proxy = None
    cache: bool = True  # the same URL is fetched once per run (per event loop)
    cache_size: int = Field(10_000, ge=0)
    # Fetch pages on loopback, private, link-local and other non-public addresses too.
    allow_private_pages: bool = False

    @model_validator(mode="after")
    def _tag_is_free(self) -> AccessSettings:
        if self.tag in ("search", "answer", "information", "think"):
            raise ValueError(f"search_r1.access.tag must differ from the tags search, answer, information and think, got {self.tag!r}")
        return self


class JudgeSettings(_KeyedSection):
    """``search_r1.judge``: the LLM judge (``search_r1_slime.judge``, docs/rewards.md)."""

    # The model's OpenAI-compatible chat endpoint, e.g. SGLang's http://host:30000/v1/chat/completions.
    url: OptionalUrl = None  # None: no judge (reward: judge then refuses to start)
    model: str = "default"  # the "model" field of each request (SGLang serves one model, any name)
    api_key: Secret = None  # None: api_key_file, else JUDGE_API_KEY from the environment
    api_key_file: SecretFile = None  # a file holding the key: keeps it out of slime's args (W&B)
    proxy: Proxy = None
    prompt_template: JudgeTemplate = None  # None: search_r1_slime.judge.PROMPT_TEMPLATE
    max_items_per_request: int = Field(8, ge=1)  # answers judged in one request
    batch_wait: float = Field(0.01, ge=0)  # seconds an answer waits for others to share its request
    max_tokens: int = Field(512, ge=1)  # the judge's reply budget
    timeout: float = Field(60.0, gt=0)  # seconds a verdict may take, retries and the batching wait included
    attempt_timeout: float = Field(30.0, gt=0)
    max_attempts: int | None = Field(None, ge=1)  # None: retry until timeout
    cache: bool = True  # the same question, gold answers and answer are judged once
    cache_size: int = Field(100_000, ge=0)

    @model_validator(mode="after")
    def _batch_wait_fits_the_timeout(self) -> JudgeSettings:
        if self.batch_wait >= self.timeout:
            raise ValueError(
                f"needs batch_wait ({self.batch_wait}) below timeout ({self.timeout}): an answer waits that long "
                "before its request is even sent"
            )
        return self


# ---- LLDS (search_r1_slime/llds.py, docs/llds.md) ----
class LldsSettings(_Section):
    """``search_r1.llds``: the likelihood-preserving term that ``search_r1_slime.llds.policy_loss_with_llds``
    adds to slime's policy loss; read only when slime's ``--loss-type custom_loss`` points at it."""

    coef: float = Field(0.2, ge=0)  # the paper's scripts use 0.2; 0: slime's policy loss exactly, signals still logged
    gate: Literal["action", "response"] = "action"  # the paper's A-gate (one run of loss_mask) or R-gate


class SearchDbSettings(_Section):
    """``search_r1.search_db``: the search database: record, replay, paid-search cache and budget
    (``search_r1_slime.search_db``; docs/reproducibility.md)."""

    path: str | None = None  # one SQLite file shared by every rollout worker of the run; None: all off
    record: bool = True  # write every search (query, backend, top_k, fingerprint, results, time)
    # Answer searches from the record: "strict" fails on a search it lacks or a differing
    # fingerprint; "lenient" asks the backend for those (and records them when record is on).
    replay: Literal["off", "strict", "lenient"] = "off"
    # The fingerprint replayed searches must carry (a retrieval server's /health shows its own);
    # None: Google's is computed from search_r1.google, a local record must agree with itself.
    expect_fingerprint: str | None = None
    run: str = Field("default", min_length=1)  # the budget's counter: runs of one name share it
    paid_cache_ttl: float = Field(7 * 24 * 3600.0, ge=0)  # seconds a paid answer is reused; 0: never
    max_paid_requests: int | None = Field(None, ge=0)  # paid (Google) requests of the run; None: no cap
    price_per_request: float = Field(0.0, ge=0)  # for the cost metric, in your currency
    busy_timeout: float = Field(30.0, gt=0)  # seconds to wait for another worker's write


class SearchR1Config(_Section):
    """``search_r1``: the whole plugin configuration."""

    # ---- the turn loop ----
    max_turns: int = Field(2, ge=0)  # search (or invalid-action) rounds before the final answer turn
    topk: int = Field(3, ge=1)  # passages per search
    max_obs_tokens: int = Field(500, ge=1)  # cap on one observation, in tokens (Search-R1's max_obs_length)
    # ---- search ----
    search_concurrency: int = Field(256, ge=1)  # searches in flight at once, per event loop
    # Seconds one search may take once it holds a search_concurrency slot, retries included.
    search_timeout: float = Field(30.0, gt=0)
    # Seconds a search may wait for a slot; past it, it fails without being sent.
    search_slot_timeout: float = Field(300.0, gt=0)
    search_backend: Literal["local", "google"] = "local"
    local: LocalSettings = Field(default_factory=LocalSettings)
    google: GoogleSettings = Field(default_factory=GoogleSettings)
    search_db: SearchDbSettings = Field(default_factory=SearchDbSettings)
    # ---- deep research: the page tool and long horizons (docs/deep_research.md) ----
    access: AccessSettings = Field(default_factory=AccessSettings)
    # The most tool calls (searches and page reads) in one trajectory; None: no cap but max_turns.
    max_tool_calls: int | None = Field(None, ge=1)
    # Tokens kept for the final answer turn: once at most the largest observation cap is left above
    # it, no tool runs after this round and the model is told to answer. 0: off (Search-R1's cut).
    answer_reserve_tokens: int = Field(0, ge=0)
    # The most tokens of prompt plus response; None: only the response budget bounds a trajectory.
    max_context_tokens: int | None = Field(None, ge=1)
    # ---- training ----
    return_logprob: bool = True  # keep rollout log-probs (needed for TIS); False: rollout_log_probs=None
    format_score: float = Field(0.2, ge=0, le=1)  # reward of a well-formed trajectory with a wrong answer
    # ---- reward (docs/rewards.md: each term, its source, the settings of each recipe) ----
    # format_score above is Search-R1's structure_format_score; these two are its other format terms.
    final_format_score: float = Field(0.0, ge=0, le=1)  # an answer that is wrong, in a broken format
    retrieval_score: float = Field(0.0, ge=0, le=1)  # added when well-formed, wrong, and a gold answer was retrieved
    reward: Literal["em", "subem", "f1", "judge"] = "em"  # how the answer is scored
    format_gate: bool = False  # the outcome counts only in a valid format (ASearcher's F1 x format)
    format_penalty: float = Field(0.0, ge=0)  # subtracted from a trajectory in a broken format (R1-Searcher: 2)
    search_penalty: float = Field(0.0, ge=0)  # subtracted per search the model wrote (run or not)
    invalid_action_penalty: float = Field(0.0, ge=0)  # subtracted per model turn without a search or answer
    # Search-R1++'s action-level penalties (its F1+: 0.1 each): once per trajectory without that action.
    no_search_penalty: float = Field(0.0, ge=0)  # subtracted when the model wrote no search
    no_answer_penalty: float = Field(0.0, ge=0)  # subtracted when no model turn answered
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    llds: LldsSettings = Field(default_factory=LldsSettings)

    @model_validator(mode="after")
    def _batch_wait_fits_the_timeout(self) -> SearchR1Config:
        if self.local.batch_wait >= self.search_timeout:
            raise ValueError(
                f"search_r1.local.batch_wait ({self.local.batch_wait}) must be below search_r1.search_timeout "
                f"({self.search_timeout}): a query waits that long before its request is even sent"
            )
        return self

    @model_validator(mode="after")
    def _reward_terms_fit_the_score(self) -> SearchR1Config:
        if self.reward == "judge" and self.judge.url is None:
            raise ValueError(
                "search_r1.reward judge needs search_r1.judge.url, the judge model's /v1/chat/completions URL"
            )
        partial = self.reward == "f1"
        terms = {"format_score": self.format_score, "final_format_score": self.final_format_score, "retrieval_score": self.retrieval_score}
        if partial and (set_terms := [f"{name} ({value})" for name, value in terms.items() if value]):
            raise ValueError(
                f"search_r1.reward f1 gives partial credit, so Search-R1's format terms would pay a partly right answer "
                f"less than a wrong one: set {', '.join(set_terms)} to 0 (search_r1.format_gate and "
                "search_r1.format_penalty are F1's format terms)"
            )
        return self

    @model_validator(mode="after")
    def _pages_can_be_found(self) -> SearchR1Config:
        if self.access.enabled and self.search_backend == "local" and not self.access.any_public_url:
            raise ValueError(
                "search_r1.access.enabled with search_backend local: the local corpus's passages carry no page "
                "addresses, so the model could open no page; use search_backend google, or set "
                "search_r1.access.any_public_url"
            )
        return self

    @model_validator(mode="after")
    def _search_db_has_a_file(self) -> SearchR1Config:
        db = self.search_db
        if db.path is None and (db.replay != "off" or db.max_paid_requests is not None):
            raise ValueError(
                "search_r1.search_db.path must name the SQLite file that replay and max_paid_requests use "
                "(one file shared by every rollout worker of the run)"
            )
        return self

    @classmethod
    def checked(cls, values: Mapping[str, Any]) -> SearchR1Config:
        """Validate ``values``; raise ``ConfigError`` listing every problem by its dotted key."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(_problems(exc)) from None


DEFAULTS = SearchR1Config()


def known_keys(model: type[BaseModel] = SearchR1Config, path: str = "") -> list[str]:
    """Every setting's dotted name, in declaration order."""
    keys = []
    for name, field in model.model_fields.items():
        section = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, _Section) else None
        keys.extend(known_keys(section, f"{path}{name}.") if section else [f"{path}{name}"])
    return keys


def _field(loc: tuple) -> FieldInfo | None:
    model: Any = SearchR1Config
    field = None
    for part in loc:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return None
        field = fields[part]
        model = field.annotation
    return field


def _range(field: FieldInfo | None) -> str:
    metadata = field.metadata if field is not None else []
    ge = next((m.ge for m in metadata if isinstance(m, annotated_types.Ge)), None)
    le = next((m.le for m in metadata if isinstance(m, annotated_types.Le)), None)
    gt = next((m.gt for m in metadata if isinstance(m, annotated_types.Gt)), None)
    if ge is not None and le is not None:
        return f"must be between {ge} and {le}"
    if ge is not None:
        return f"must be at least {ge}"
    return "must be positive" if gt == 0 else f"must be above {gt}"


_TYPE_NAMES = {"int_type": "int", "bool_type": "bool", "float_type": "float", "string_type": "str"}


def _problems(exc: ValidationError) -> list[str]:
    unknown, problems = [], []
    for error in exc.errors():
        loc, kind, value = error["loc"], error["type"], error.get("input")
        dotted = ".".join(str(part) for part in loc)
        name = f"search_r1.{dotted}" if dotted else "search_r1"
        got = f"got {type(value).__name__}: {value!r}"
        if kind == "extra_forbidden":
            unknown.append(dotted)
        elif kind == "value_error":
            reason = str(error["ctx"]["error"])
            problems.append(f"{name} {reason}" if loc else reason)
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            problems.append(f"{name} must be a mapping, {got}")
        elif kind in _TYPE_NAMES:
            problems.append(f"{name} must be {_TYPE_NAMES[kind]}, {got}")
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            problems.append(f"{name} {_range(_field(loc))}, got {value!r}")
        elif kind == "literal_error":
            problems.append(f"{name} must be {error['ctx']['expected']}, got {value!r}")
        else:
            problems.append(f"{name}: {error['msg']}, {got}")
    if unknown:
        problems.insert(
            0,
            f"unknown search_r1 setting(s): {', '.join(sorted(unknown))}. Known settings: {', '.join(known_keys())}",
        )
    return problems
