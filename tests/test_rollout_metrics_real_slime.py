"""The log hooks with REAL slime code: its log_rollout_data / log_eval_rollout_data, or its sink.

slime cannot be installed here (Megatron, SGLang), but its logging path needs only torch, numpy,
httpx and wandb. With a slime checkout in ``SLIME_DIR`` (the launch script's variable), a
subprocess imports slime's own modules with ``wandb`` replaced by a recorder:

* observability layout (2026-08 or later): slime's ``log_rollout_data`` calls our hooks by their
  flag values, then logs its own metrics;
* older layouts (``slime.utils.logging_utils`` from 2026-01, ``slime.utils.tracking_utils``
  before): slime's rollout logging lives in its Ray actor module, so our hook is called directly
  and must find that slime's own sink and step (``ray`` is stubbed: the sink module imports it).

Each test is skipped without a checkout of its layout (``git clone https://github.com/THUDM/slime
/root/slime``, or ``git archive`` of any commit into a folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_rollout_metrics import EXPECTED

REPO = Path(__file__).resolve().parent.parent
SLIME_DIR = Path(os.environ.get("SLIME_DIR", "/root/slime"))



def needs(path: str):
    return pytest.mark.skipif(not (SLIME_DIR / path).is_file(), reason=f"no slime checkout with {path} in SLIME_DIR={SLIME_DIR}")


def run_with_slime(script: str) -> list[dict]:
    """Run ``script`` with slime and this repository importable; return what reached wandb.log."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SLIME_DIR), str(REPO)])}
    done = subprocess.run([sys.executable, "-c", RECORDER + script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


RECORDER = r"""
import atexit, json, sys, types

logged = []
wandb = types.ModuleType("wandb")
wandb.log = lambda metrics, **kwargs: logged.append(dict(metrics))
wandb.define_metric = lambda *args, **kwargs: None
sys.modules["wandb"] = wandb
atexit.register(lambda: print(json.dumps(logged)))
"""

SLIME_LOGS = r"""
from types import SimpleNamespace

from slime.observability.rollout_metrics import log_eval_rollout_data, log_rollout_data
from slime.utils.types import Sample
from tests.test_rollout_metrics import rollout

args = SimpleNamespace(
    custom_rollout_log_function_path="search_r1_slime.rollout_metrics.log_rollout_data",
    custom_eval_rollout_log_function_path="search_r1_slime.rollout_metrics.log_eval_rollout_data",
    load_debug_rollout_data=None, use_wandb=True, use_tensorboard=False, wandb_always_use_train_step=False,
    advantage_estimator="grpo", log_reward_category=None, log_passrate=False, reward_key=None,
    rollout_num_gpus=4, rollout_batch_size=32, n_samples_per_prompt=8, global_batch_size=256,
    n_samples_per_eval_prompt=1, sglang_speculative_algorithm=None,
)
samples = rollout(Sample)
for i, sample in enumerate(samples):
    sample.group_index, sample.index, sample.response_length = 0, i, 10 + i
log_rollout_data(7, args, samples, None, 2.0)
right, _, wrong, _ = rollout(Sample)
data = {"nq": {"rewards": [1.0, 0.2], "truncated": [False, False], "samples": [right, wrong]}}
log_eval_rollout_data(3, args, data, None)
"""

OUR_HOOK_ON_OLDER_SLIME = r"""
from types import SimpleNamespace

sys.modules["ray"] = types.ModuleType("ray")
from search_r1_slime import rollout_metrics
from tests.fakes.sample import NewSample
from tests.test_rollout_metrics import rollout

# wandb_always_use_train_step: slime's step is then rollout_id * 32 * 8 // 256 = 7 for rollout 7.
args = SimpleNamespace(use_wandb=True, use_tensorboard=False, wandb_always_use_train_step=True,
                       rollout_batch_size=32, n_samples_per_prompt=8, global_batch_size=256)
assert rollout_metrics.log_rollout_data(7, args, rollout(NewSample), None, 1.0) is False
"""


@needs("slime/observability/rollout_metrics.py")
def test_slimes_own_logging_runs_our_hooks_and_still_logs_its_metrics():
    ours, slimes, our_eval, slimes_eval = run_with_slime(SLIME_LOGS)

    assert ours == {**EXPECTED, "rollout/step": 7}
    # slime's own rollout metrics follow at the same step, none of ours among them.
    assert slimes["rollout/step"] == 7
    assert slimes["rollout/response_len/mean"] == 11.5  # (10 + 11 + 12 + 13) / 4
    assert "perf/rollout_time" in slimes and not any(key.startswith("search_r1/") for key in slimes)

    assert our_eval["eval/nq/search_r1/exact_match"] == 0.5 and our_eval["eval/step"] == 3
    assert slimes_eval["eval/nq"] == 0.6 and slimes_eval["eval/step"] == 3


@needs("slime/utils/metric_utils.py")
def test_our_hook_finds_an_older_slimes_sink_and_step():
    assert run_with_slime(OUR_HOOK_ON_OLDER_SLIME) == [{**EXPECTED, "rollout/step": 7}]
