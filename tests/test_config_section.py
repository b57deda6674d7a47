"""A near miss of the ``search_r1`` key (``search-r1:`` in the --custom-config-path YAML) must stop
the run: slime sets every top-level key of that YAML as an attribute of ``args``, so a misspelt
section would arrive under its own name and the plugin would run on its defaults without a word."""

from __future__ import annotations

import argparse

import pytest

from generate_with_search import ConfigError, resolve_config


@pytest.mark.parametrize("key", ["search-r1", "searchr1", "Search_R1", "SEARCH_R1", "search_R_1", "search r1", "search_rl"])
def test_a_near_miss_of_search_r1_among_slimes_args_is_refused_naming_it(key):
    args = argparse.Namespace(rollout_batch_size=32, hf_checkpoint="/x")
    setattr(args, key, {"max_turns": 4})  # as slime's --custom-config-path does
    with pytest.raises(ConfigError) as exc:
        resolve_config(args)
    assert exc.value.problems == [f"top-level key {key!r} is not read by the plugin: name it search_r1 (lower case, underscore)"]


@pytest.mark.parametrize("key", ["search_r1_extra_flag", "research_r1", "use_search", "search_backend"])
def test_other_args_of_slime_are_left_alone(key):
    args = argparse.Namespace(search_r1={"max_turns": 4}, **{key: True})
    assert resolve_config(args)["max_turns"] == 4
