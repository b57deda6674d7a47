"""The log hooks run by REAL slime code, at every revision in ../shared/slime/ (tests/real_slime.py).

slime's own rollout and evaluation logging (``slime.observability.rollout_metrics`` since 2026-08,
``slime.ray.rollout``'s ``_log_rollout_data`` / ``_log_eval_rollout_data`` before) loads our hooks
from the flag values, calls them, and then logs its own metrics; ``wandb`` is a recorder
(tests/fakes/slime_deps.py). Each layout of slime's sink is covered: ``slime.utils.tracking_utils``
(2026-01), ``slime.utils.logging_utils`` (2026-04), ``slime.observability.logging_utils`` (2026-08).
"""

from __future__ import annotations

import importlib
import sys
from types import SimpleNamespace

import pytest

from tests import real_slime
from tests.real_slime import REVISIONS
from tests.test_rollout_metrics import EXPECTED, rollout

# Where each revision keeps the functions that call the custom log hooks.
LOGGING = {
    "2026-01-13": ("slime.ray.rollout", "_log_rollout_data", "_log_eval_rollout_data"),
    "2026-04-30": ("slime.ray.rollout", "_log_rollout_data", "_log_eval_rollout_data"),
    "2026-08-21": ("slime.observability.rollout_metrics", "log_rollout_data", "log_eval_rollout_data"),
}


def slime_args(**overrides) -> SimpleNamespace:
    values = dict(
        custom_rollout_log_function_path="search_r1_slime.rollout_metrics.log_rollout_data",
        custom_eval_rollout_log_function_path="search_r1_slime.rollout_metrics.log_eval_rollout_data",
        load_debug_rollout_data=None, use_wandb=True, use_tensorboard=False, wandb_always_use_train_step=False,
        advantage_estimator="grpo", log_reward_category=None, log_passrate=False, reward_key=None,
        rollout_num_gpus=4, rollout_batch_size=32, n_samples_per_prompt=8, global_batch_size=256,
        n_samples_per_eval_prompt=1, sglang_speculative_algorithm=None,
    )
    return SimpleNamespace(**{**values, **overrides})


@pytest.mark.parametrize("slime", REVISIONS, indirect=True)
def test_slimes_own_logging_runs_our_hooks_and_still_logs_its_metrics(slime):
    module_name, log_rollout, log_eval = LOGGING[slime]
    logging_module = importlib.import_module(module_name)
    from slime.utils.types import Sample

    logged = sys.modules["wandb"].logged
    samples = rollout(Sample)
    for i, sample in enumerate(samples):
        sample.group_index, sample.index, sample.response_length = 0, i, 10 + i
    getattr(logging_module, log_rollout)(7, slime_args(), samples, None, 2.0)
    right, _, wrong, _ = rollout(Sample)
    data = {"nq": {"rewards": [1.0, 0.2], "truncated": [False, False], "samples": [right, wrong]}}
    getattr(logging_module, log_eval)(3, slime_args(), data, None)

    ours, slimes, our_eval, slimes_eval = logged
    assert ours == {**EXPECTED, "rollout/step": 7}
    # slime's own rollout metrics follow at the same step, none of ours among them.
    assert slimes["rollout/step"] == 7
    assert slimes["rollout/response_len/mean"] == 11.5  # (10 + 11 + 12 + 13) / 4
    assert "perf/rollout_time" in slimes and not any(key.startswith("search_r1/") for key in slimes)

    assert our_eval["eval/nq/search_r1/exact_match"] == 0.5 and our_eval["eval/step"] == 3
    assert slimes_eval["eval/nq"] == 0.6 and slimes_eval["eval/step"] == 3


@pytest.mark.parametrize("slime", REVISIONS, indirect=True)
def test_our_hook_logs_at_slimes_train_step(slime):
    """With ``--wandb-always-use-train-step`` slime's step is rollout_id * 32 * 8 // 256 = 7 for rollout 56."""
    from search_r1_slime import rollout_metrics
    from slime.utils.types import Sample

    assert rollout_metrics.log_rollout_data(56, slime_args(wandb_always_use_train_step=True), rollout(Sample), None, 1.0) is False
    assert sys.modules["wandb"].logged == [{**EXPECTED, "rollout/step": 56 * 32 * 8 // 256}]


def test_without_the_archives_real_slime_tests_skip_with_a_reason_and_fail_in_ci(monkeypatch, tmp_path):
    monkeypatch.setattr(real_slime, "ARCHIVES", tmp_path / "absent")
    sources = real_slime.SlimeSources(tmp_path / "unpacked")

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"no slime archive slime-2026-08-21-\*\.tar\.gz in .*absent"):
        sources.path("2026-08-21")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the real-slime tests"):
        sources.path("2026-08-21")
