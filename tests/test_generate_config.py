"""SEARCH_R1_CONFIGS: upstream's keys and defaults, the search_r1 YAML override, validation, and
how the backend settings reach the search functions."""

import asyncio
import sys
import types
from types import SimpleNamespace

import pytest

from generate_with_search import SEARCH_R1_CONFIGS, ConfigError, generate, load_tokenizer, resolve_config, search
from search_r1_slime.preflight import search_problems
from search_r1_slime.search_slots import SearchSlot
from search_r1_slime.settings import LocalSettings, known_keys
from tests.fakes.sample import NewSample
from tests.fakes.sglang import FakeSGLang, Turn
from tests.test_generate_turns import ANSWER_TURN, SEARCH_TURN


def test_defaults_keep_upstreams_keys_and_values():
    local, google = SEARCH_R1_CONFIGS["local"], SEARCH_R1_CONFIGS["google"]
    deep_research = ("access", "max_tool_calls", "answer_reserve_tokens", "max_context_tokens")  # ours, off by default
    top = {k: v for k, v in SEARCH_R1_CONFIGS.items() if k not in ("local", "google", "judge", "llds", "search_db", *deep_research)}
    assert top == {
        "max_turns": 2,
        "topk": 3,
        "max_obs_tokens": 500,
        "search_concurrency": 256,
        "search_timeout": 30,
        "search_slot_timeout": 300,
        "search_backend": "local",
        "return_logprob": True,
        "format_score": 0.2,
        # docs/rewards.md: today's reward (EM with format_score) unless set.
        "final_format_score": 0.0,
        "retrieval_score": 0.0,
        "reward": "em",
        "format_gate": False,
        "format_penalty": 0.0,
        "search_penalty": 0.0,
        "invalid_action_penalty": 0.0,
        "no_search_penalty": 0.0,
        "no_answer_penalty": 0.0,
    }
    assert [SEARCH_R1_CONFIGS[k] for k in deep_research[1:]] == [None, 0, None]
    assert SEARCH_R1_CONFIGS["access"]["enabled"] is False
    # Backends may add tuning keys to their sub-dict (the cross-team contract); upstream's stay.
    assert {k: local[k] for k in ("search_url", "proxy")} == {"search_url": "http://127.0.0.1:8000/retrieve", "proxy": None}
    assert {k: google[k] for k in ("api_key", "snippet_only", "proxy")} == {"api_key": None, "snippet_only": True, "proxy": None}


def test_yaml_section_is_deep_merged_over_the_defaults_without_changing_them():
    before = repr(SEARCH_R1_CONFIGS)
    config = resolve_config(SimpleNamespace(search_r1={"topk": 5, "local": {"proxy": "http://proxy:3128"}}))
    assert config["topk"] == 5
    assert config["local"] == {**SEARCH_R1_CONFIGS["local"], "proxy": "http://proxy:3128"}
    assert config["google"] == SEARCH_R1_CONFIGS["google"]
    assert repr(SEARCH_R1_CONFIGS) == before


@pytest.mark.parametrize("args", [SimpleNamespace(), SimpleNamespace(search_r1=None), SimpleNamespace(search_r1={})])
def test_no_override_gives_the_defaults(args):
    assert resolve_config(args) == SEARCH_R1_CONFIGS


def test_edits_to_the_dict_take_effect_at_call_time(monkeypatch):
    monkeypatch.setitem(SEARCH_R1_CONFIGS, "max_turns", 4)
    assert resolve_config(SimpleNamespace())["max_turns"] == 4


def test_unknown_keys_at_any_depth_are_named():
    with pytest.raises(ConfigError, match=r"unknown search_r1 setting\(s\): local\.serch_url, max_turn\. Known settings: max_turns"):
        resolve_config(SimpleNamespace(search_r1={"max_turn": 3, "local": {"serch_url": "x"}}))


@pytest.mark.parametrize(
    "override, message",
    [
        ({"max_turns": "2"}, r"search_r1\.max_turns must be int, got str: '2'"),
        ({"max_turns": True}, r"search_r1\.max_turns must be int, got bool"),
        ({"max_turns": -1}, r"search_r1\.max_turns must be at least 0, got -1"),
        ({"topk": 0}, r"search_r1\.topk must be at least 1"),
        ({"max_obs_tokens": 0}, r"search_r1\.max_obs_tokens must be at least 1"),
        ({"search_concurrency": 0}, r"search_r1\.search_concurrency must be at least 1"),
        ({"search_timeout": 0}, r"search_r1\.search_timeout must be positive"),
        ({"format_score": 1.5}, r"search_r1\.format_score must be between 0 and 1, got 1\.5"),
        ({"return_logprob": "yes"}, r"search_r1\.return_logprob must be bool"),
        ({"search_backend": "bing"}, r"search_r1\.search_backend must be 'local' or 'google', got 'bing'"),
        ({"local": "http://x"}, r"search_r1\.local must be a mapping"),
        ({"local": {"search_url": 8000}}, r"search_r1\.local\.search_url must be a URL or a non-empty list of URLs"),
        ({"google": {"snippet_only": "no"}}, r"search_r1\.google\.snippet_only must be bool"),
    ],
)
def test_bad_values_get_a_message_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(SimpleNamespace(search_r1=override))


def test_numbers_where_floats_are_expected_are_accepted():
    urls = ["http://a:8000/retrieve", "http://b:8000/retrieve"]
    config = resolve_config(SimpleNamespace(search_r1={"format_score": 0, "search_timeout": 5, "local": {"search_url": urls}}))
    assert (config["format_score"], config["search_timeout"], config["local"]["search_url"]) == (0, 5, urls)


def test_search_r1_that_is_not_a_mapping_is_rejected():
    with pytest.raises(ConfigError, match="search_r1 must be a mapping"):
        resolve_config(SimpleNamespace(search_r1=["topk", 3]))


async def test_every_local_setting_is_forwarded_to_the_backend(monkeypatch):
    calls = []

    async def fake_local_search(search_url, query, top_k=5, timeout=60, proxy=None, **tuning):
        calls.append(dict(search_url=search_url, query=query, top_k=top_k, timeout=timeout, proxy=proxy, **tuning))
        return []

    import local_search_server

    monkeypatch.setattr(local_search_server, "local_search", fake_local_search)
    monkeypatch.setitem(SEARCH_R1_CONFIGS, "local", {**SEARCH_R1_CONFIGS["local"], "batch_wait": 0.005})
    config = resolve_config(SimpleNamespace(search_r1={"topk": 4, "search_timeout": 7, "local": {"proxy": "http://p:3128"}}))

    assert await search("q", config) == []
    assert calls == [{**SEARCH_R1_CONFIGS["local"], "query": "q", "top_k": 4, "timeout": 7, "proxy": "http://p:3128", "batch_wait": 0.005}]
    assert set(calls[0]) - {"query", "top_k", "timeout"} == set(LocalSettings.model_fields)


async def test_google_backend_gets_its_settings_and_no_key_from_us(monkeypatch):
    calls = []

    async def fake_google_search(api_key, query, top_k=5, timeout=60, proxy=None, snippet_only=False, **tuning):
        calls.append(dict(api_key=api_key, query=query, top_k=top_k, timeout=timeout, proxy=proxy, snippet_only=snippet_only, **tuning))
        return [{"document": {"contents": '"T"\nx'}}]

    monkeypatch.setitem(sys.modules, "google_search_server", types.SimpleNamespace(google_search=fake_google_search))
    config = resolve_config(SimpleNamespace(search_r1={"search_backend": "google"}))

    assert await search("q", config) == [{"document": {"contents": '"T"\nx'}}]
    assert calls == [{**SEARCH_R1_CONFIGS["google"], "query": "q", "top_k": 3, "timeout": 30}]
    assert calls[0]["api_key"] is None  # the backend reads SERPER_API_KEY; no key lives in our source


def test_tokenizer_is_loaded_once_per_path(tokenizer_dir):
    assert load_tokenizer(tokenizer_dir) is load_tokenizer(tokenizer_dir)


async def test_searches_in_flight_never_exceed_search_concurrency(world, monkeypatch):
    in_flight, peak = 0, 0

    async def slow_local_search(search_url, query, top_k=5, timeout=60, proxy=None, **tuning):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return [{"document": {"contents": '"Hamlet"\nA play.'}}]

    import local_search_server

    monkeypatch.setattr(local_search_server, "local_search", slow_local_search)
    await world.serve([])
    engines = [await FakeSGLang(world.tokenizer, world.prompt_ids, [Turn(SEARCH_TURN), Turn(ANSWER_TURN)]).__aenter__() for _ in range(4)]
    try:
        runs = []
        for engine in engines:
            args = world.args(search_concurrency=2)
            args.sglang_router_port = engine.port
            runs.append(generate(args, world.sample(NewSample), world.sampling_params()))
        samples = await asyncio.gather(*runs)
    finally:
        for engine in engines:
            await engine.__aexit__(None, None, None)
    assert peak == 2
    assert all(s.status == NewSample.Status.COMPLETED for s in samples)


def test_search_concurrency_works_in_successive_event_loops():
    # A semaphore made at import (upstream) binds to the first loop that waits on it and breaks
    # in the next one; ours is made per running loop.
    async def contend():
        async def hold():
            async with SearchSlot(1, timeout=5):
                await asyncio.sleep(0.01)

        await asyncio.gather(hold(), hold())

    asyncio.run(contend())
    asyncio.run(contend())


# Each of these passed resolve_config and the preflight before, then crashed inside the rollout.
BAD_NESTED = [
    ({"local": {"max_queries_per_request": 0}}, "search_r1.local.max_queries_per_request must be at least 1, got 0"),
    ({"local": {"cache_size": -1}}, "search_r1.local.cache_size must be at least 0, got -1"),
    ({"google": {"cache_size": -1}}, "search_r1.google.cache_size must be at least 0, got -1"),
    ({"local": {"attempt_timeout": 0}}, "search_r1.local.attempt_timeout must be positive, got 0"),
    ({"google": {"attempt_timeout": 0}}, "search_r1.google.attempt_timeout must be positive, got 0"),
    ({"local": {"max_attempts": 0}}, "search_r1.local.max_attempts must be at least 1, got 0"),
    ({"google": {"page_timeout": 0}}, "search_r1.google.page_timeout must be positive, got 0"),
    ({"local": {"batch_wait": -0.1}}, "search_r1.local.batch_wait must be at least 0, got -0.1"),
    (
        {"local": {"proxy": "proxy:3128"}},
        "search_r1.local.proxy must be None or an http(s) proxy URL such as http://proxy:3128, got str: 'proxy:3128'",
    ),
    ({"google": {"proxy": 3128}}, "search_r1.google.proxy must be None or an http(s) proxy URL such as http://proxy:3128, got int: 3128"),
    ({"google": {"endpoint": "google.serper.dev"}}, "search_r1.google.endpoint must be an http(s) URL, got str: 'google.serper.dev'"),
    ({"local": {"search_url": ["http://a:8000/retrieve", 8000]}}, "search_r1.local.search_url must be a URL or a non-empty list of URLs"),
    (
        {"search_timeout": 1, "local": {"batch_wait": 1}},
        "search_r1.local.batch_wait (1.0) must be below search_r1.search_timeout (1.0)",
    ),
    ({"local": {"max_batch_size": 8}}, "unknown search_r1 setting(s): local.max_batch_size. Known settings:"),
]


@pytest.mark.parametrize(("override", "message"), BAD_NESTED)
def test_bad_nested_values_are_rejected_before_the_first_generation(override, message):
    with pytest.raises(ConfigError) as info:
        resolve_config(SimpleNamespace(search_r1=override))
    assert message in str(info.value)


@pytest.mark.parametrize(("override", "message"), BAD_NESTED)
def test_the_preflight_reports_the_same_problem_without_asking_any_server(override, message):
    # The config is checked before any /health request: the default search_url has no server here.
    problems = search_problems(override, timeout_s=0.1)
    assert len(problems) == 1 and message in problems[0], problems


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        resolve_config(SimpleNamespace(search_r1={"topk": 0, "lokal": {}, "local": {"cache_size": -1}, "google": {"page_max_bytes": 0}}))
    assert info.value.problems == [
        f"unknown search_r1 setting(s): lokal. Known settings: {', '.join(known_keys())}",
        "search_r1.topk must be at least 1, got 0",
        "search_r1.local.cache_size must be at least 0, got -1",
        "search_r1.google.page_max_bytes must be at least 1, got 0",
    ]


@pytest.mark.parametrize("section", ["local", "google", "judge"])
def test_a_bad_api_key_is_named_but_never_shown(section):
    with pytest.raises(ConfigError, match=rf"search_r1\.{section}\.api_key must be None or a non-empty string") as info:
        resolve_config(SimpleNamespace(search_r1={section: {"api_key": 1234567890}}))
    assert "1234567890" not in str(info.value)


def test_backend_defaults_are_the_configuration_defaults():
    # A backend called without the plugin (the demo, a script) behaves as the configuration says.
    import inspect

    import google_search_server
    import local_search_server

    local = inspect.signature(local_search_server.local_search).parameters
    google = inspect.signature(google_search_server.google_search).parameters
    assert (local["top_k"].default, local["timeout"].default, local["proxy"].default) == (3, 30, None)
    assert (google["top_k"].default, google["timeout"].default, google["snippet_only"].default) == (3, 30, True)
