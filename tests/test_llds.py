"""LLDS (search_r1_slime/llds.py) through REAL slime's loss dispatch, at every archived revision
(all three have ``--loss-type custom_loss``: ``slime/backends/training_utils/loss.py`` in 2026-01,
``slime/backends/megatron_utils/loss.py`` from 2026-04). slime's ``loss_function`` runs on CPU,
with one-rank stand-ins for Megatron (tests/fakes/megatron.py) and a gloo group on loopback.

The batches are built by hand: logits from a seeded generator, so the current log-probs are known,
and old log-probs = current + a chosen displacement per token. The expected LLDS term is written
out below token by token, from the paper's definition (arXiv 2512.04220, section on LLDS), not
from the code under test.
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from types import SimpleNamespace

import pytest
import torch

from search_r1_slime import llds
from search_r1_slime.settings import ConfigError
from tests.fakes import megatron
from tests.real_slime import REVISIONS, imported

# 2026-08 warns that its Megatron patch is not applied: there is no Megatron here, by design.
pytestmark = pytest.mark.filterwarnings("ignore:slime grad coalesce patch not applied")

VOCAB = 11
LOSS_PATH = "search_r1_slime.llds.policy_loss_with_llds"


@pytest.fixture(params=REVISIONS)
def slime_loss(request, slime_sources):
    """slime's loss module at one revision, imported with Megatron stood in for on one gloo rank."""
    with megatron.gloo_world() as group:
        stand_ins = megatron.modules(group)
        sys.modules.update(stand_ins)
        try:
            with imported(slime_sources.path(request.param)):
                try:
                    module = importlib.import_module("slime.backends.megatron_utils.loss")
                except ModuleNotFoundError:  # 2026-01: one loss module for both backends
                    module = importlib.import_module("slime.backends.training_utils.loss")
                yield SimpleNamespace(module=module, group=group, mpu=stand_ins["megatron.core.mpu"])
        finally:
            for name in stand_ins:
                sys.modules.pop(name, None)


def slime_args(loss_type: str, **llds_settings) -> SimpleNamespace:
    """The args slime's loss path reads, at slime's defaults (GRPO, PPO clip 0.2/0.28, no KL)."""
    return SimpleNamespace(
        loss_type=loss_type,
        custom_loss_function_path=LOSS_PATH,
        search_r1={"llds": llds_settings},
        calculate_per_token_loss=False,
        recompute_loss_function=False,
        global_batch_size=1,
        qkv_format="thd",
        allgather_cp=False,
        advantage_estimator="grpo",
        use_rollout_logprobs=False,
        eps_clip=0.2,
        eps_clip_high=0.28,
        eps_clip_c=None,
        use_tis=False,
        get_mismatch_metrics=False,
        custom_tis_function_path=None,
        custom_pg_loss_reducer_function_path=None,
        use_opsm=False,
        entropy_coef=0.0,
        use_kl_loss=False,
        rollout_temperature=1.0,
        log_probs_chunk_size=-1,
        rollout_top_p=1.0,
    )


class Response:
    """One sample: its prompt length, ``loss_mask`` (1 = model token, 0 = observation), advantage and
    the displacement ``old - current`` chosen for each response token."""

    def __init__(self, prompt: int, mask: list[int], advantage: float, displacement: list[float]):
        assert len(mask) == len(displacement)
        self.prompt, self.mask, self.advantage, self.displacement = prompt, mask, advantage, displacement


def build(responses: list[Response], seed: int = 0):
    """slime's micro-batch for ``responses`` (one packed sequence) and the logits, a leaf tensor."""
    generator = torch.Generator().manual_seed(seed)
    total = [r.prompt + len(r.mask) for r in responses]
    logits = torch.randn(1, sum(total), VOCAB, generator=generator, dtype=torch.float32, requires_grad=True)
    tokens = [torch.randint(0, VOCAB, (n,), generator=generator) for n in total]
    current = current_log_probs(logits, tokens, responses)
    batch = {
        "unconcat_tokens": tokens,
        "total_lengths": total,
        "response_lengths": [len(r.mask) for r in responses],
        "loss_masks": [torch.tensor(r.mask, dtype=torch.int32) for r in responses],
        "advantages": [torch.full((len(r.mask),), float(r.advantage)) for r in responses],
        "log_probs": [c + torch.tensor(r.displacement) for c, r in zip(current, responses, strict=True)],
        "rollout_log_probs": [],
        "rollout_mask_sums": [torch.tensor(float(sum(r.mask))) for r in responses],
    }
    return batch, logits


def rows(responses: list[Response]) -> list[list[int]]:
    """For each response token, the row of the packed logits that predicts it."""
    out, start = [], 0
    for r in responses:
        out.append([start + r.prompt - 1 + j for j in range(len(r.mask))])
        start += r.prompt + len(r.mask)
    return out


def current_log_probs(logits, tokens, responses) -> list[torch.Tensor]:
    log_softmax = torch.log_softmax(logits.detach()[0], dim=-1)
    return [
        torch.stack([log_softmax[row, tok[r.prompt + j]] for j, row in enumerate(sample_rows)])
        for tok, r, sample_rows in zip(tokens, responses, rows(responses), strict=True)
    ]


def dispatch(slime_loss, args, batch, logits):
    """slime's own ``loss_function`` (one micro-batch, global batch 1: no rescaling), at the signature
    of its revision; returns the loss and the logged metrics by name."""
    loss_function = slime_loss.module.loss_function
    parameters = inspect.signature(loss_function).parameters
    if "parallel_state" in parameters:  # 2026-01: the backend passes its parallel state
        state = slime_loss.module.ParallelState(
            dp_rank=0, dp_src_rank=0, dp_size=1, cp_rank=0, cp_size=slime_loss.mpu.get_context_parallel_world_size(),
            dp_cp_rank=0, dp_cp_size=1, dp_group=slime_loss.group, dp_cp_group=slime_loss.group,
            dp_cp_group_gloo=slime_loss.group, cp_group=slime_loss.group, tp_size=1, tp_rank=0, tp_group=slime_loss.group,
        )
        loss, _, log = loss_function(args, state, batch, 1, logits)
    elif "step_global_batch_size" in parameters:  # 2026-08
        loss, _, log = loss_function(args, batch, 1, 1, logits)
    else:
        loss, _, log = loss_function(args, batch, 1, logits)
    return loss, dict(zip(log["keys"], log["values"][1:].tolist(), strict=True))


def loss_and_grad(slime_loss, args, responses):
    batch, logits = build(responses)
    loss, metrics = dispatch(slime_loss, args, batch, logits)
    loss.backward()
    return loss.detach(), logits.grad[0].clone(), metrics


def expected_term(responses: list[Response], gate: str) -> tuple[float, list[set[int]]]:
    """The LLDS penalty as the paper defines it, written out: per response, tokens of the preserving
    set (advantage >= 0, loss_mask 1) grouped into actions (maximal runs of loss_mask 1); an action
    is gated when its summed displacement is > 0 (gate "response": the sum over the whole response);
    each gated token adds max(0, displacement); each response's sum is divided by its loss_mask
    total, and the responses' means are summed (slime's sum_of_sample_mean). Also returns, per
    response, the indices of gated tokens whose displacement is > 0 (where gradient must reach)."""
    total, pulled = 0.0, []
    for r in responses:
        actions, current = [], []
        for j, m in enumerate(r.mask + [0]):
            if m:
                current.append(j)
            elif current:
                actions.append(current)
                current = []
        if r.advantage < 0:
            actions = []
        if gate == "response":
            whole = sum(r.displacement[j] for a in actions for j in a)
            actions = [[j for a in actions for j in a]] if whole > 0 else []
        gated = [j for a in actions if sum(r.displacement[j] for j in a) > 0 for j in a]
        total += sum(max(0.0, r.displacement[j]) for j in gated) / sum(r.mask)
        pulled.append({j for j in gated if r.displacement[j] > 0})
    return total, pulled


# Three model turns with observations between them: the first action's likelihood fell (sum > 0,
# one token rose), the second's rose (sum < 0, one token fell), the third fell.
THREE_ACTIONS = Response(
    prompt=3,
    mask=[1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 1],
    advantage=0.5,
    displacement=[0.3, -0.1, 0.2, 0.9, 0.9, 0.4, -0.6, 0.9, 0.9, 0.9, 0.05, 0.1],
)
# Its likelihood fell everywhere, but its advantage is negative: not in the preserving set.
NEGATIVE = Response(prompt=2, mask=[1, 1, 1, 0, 1], advantage=-1.0, displacement=[0.5, 0.4, 0.3, 0.0, 0.2])
# Advantage 0 (a group of equal rewards) is preserved; its likelihood rose: nothing to pull up.
ROSE = Response(prompt=4, mask=[1, 1, 1, 1], advantage=0.0, displacement=[-0.2, -0.1, -0.3, -0.05])


def test_coef_0_is_slimes_policy_loss_bit_for_bit(slime_loss):
    responses = [THREE_ACTIONS, NEGATIVE, ROSE]
    plain, plain_grad, plain_metrics = loss_and_grad(slime_loss, slime_args("policy_loss"), responses)
    ours, ours_grad, ours_metrics = loss_and_grad(slime_loss, slime_args("custom_loss", coef=0.0), responses)

    assert torch.equal(ours, plain) and torch.equal(ours_grad, plain_grad)
    assert {k: ours_metrics[k] for k in plain_metrics} == plain_metrics
    # Off, the term logs nothing of its own; the signals stay (old log-probs, reduced per response).
    assert set(ours_metrics) - set(plain_metrics) == {llds.NONNEG_FRAC_KEY, llds.NONNEG_LOGPROB_KEY, llds.NEG_LOGPROB_KEY}
    batch, _ = build(responses)
    means = [float((lp * m).sum() / m.sum()) for lp, m in zip(batch["log_probs"], batch["loss_masks"], strict=True)]
    assert ours_metrics[llds.NONNEG_FRAC_KEY] == pytest.approx(2.0)  # THREE_ACTIONS and ROSE
    assert ours_metrics[llds.NONNEG_LOGPROB_KEY] == pytest.approx(means[0] + means[2], rel=1e-5)
    assert ours_metrics[llds.NEG_LOGPROB_KEY] == pytest.approx(means[1], rel=1e-5)


@pytest.mark.parametrize("gate", ["action", "response"])
def test_the_term_and_its_gradient_follow_the_papers_definition(slime_loss, gate):
    responses = [THREE_ACTIONS, NEGATIVE, ROSE]
    coef = 0.2
    plain, plain_grad, _ = loss_and_grad(slime_loss, slime_args("policy_loss"), responses)
    ours, ours_grad, metrics = loss_and_grad(slime_loss, slime_args("custom_loss", coef=coef, gate=gate), responses)
    term, pulled = expected_term(responses, gate)

    assert term > 0
    # Displacement of the preserving set, a mean per response: THREE_ACTIONS 0.35 / 7, ROSE -0.65 / 4.
    assert metrics[llds.DISPLACEMENT_KEY] == pytest.approx(0.35 / 7 - 0.65 / 4, rel=1e-4)
    assert metrics[llds.LOSS_KEY] == pytest.approx(coef * term, rel=1e-5)
    assert float(ours - plain) == pytest.approx(coef * term, rel=1e-4)
    # The term's gradient reaches exactly the logits rows of gated tokens whose likelihood fell.
    changed = {row for row in range(ours_grad.shape[0]) if not torch.equal(ours_grad[row], plain_grad[row])}
    assert changed == {rows(responses)[i][j] for i, tokens in enumerate(pulled) for j in tokens}
    if gate == "action":
        # One by one: actions 1 and 3 of THREE_ACTIONS (not 2, whose likelihood rose in sum).
        assert pulled == [{0, 2, 10, 11}, set(), set()]
        assert metrics[llds.GATED_KEY] == pytest.approx(2 / 3)
    else:
        assert pulled == [{0, 2, 5, 10, 11}, set(), set()]
        assert metrics[llds.GATED_KEY] == pytest.approx(1.0)


def test_with_use_rollout_logprobs_the_displacement_is_against_the_rollout_log_probs(slime_loss):
    # As slime's policy loss: old = rollout_log_probs; the recomputed log_probs (here off by 1) are not used.
    responses = [THREE_ACTIONS, NEGATIVE, ROSE]
    batch, logits = build(responses)
    batch["rollout_log_probs"], batch["log_probs"] = batch["log_probs"], [lp - 1.0 for lp in batch["log_probs"]]
    args = slime_args("custom_loss", coef=0.2)
    args.use_rollout_logprobs = True
    _, metrics = dispatch(slime_loss, args, batch, logits)
    assert metrics[llds.LOSS_KEY] == pytest.approx(0.2 * expected_term(responses, "action")[0], rel=1e-5)


@pytest.mark.parametrize("response", [NEGATIVE, ROSE], ids=["negative_advantage", "likelihood_rose"])
def test_a_response_outside_the_gate_adds_nothing(slime_loss, response):
    plain, plain_grad, _ = loss_and_grad(slime_loss, slime_args("policy_loss"), [response])
    ours, ours_grad, metrics = loss_and_grad(slime_loss, slime_args("custom_loss", coef=0.2), [response])
    assert torch.equal(ours, plain) and torch.equal(ours_grad, plain_grad)
    assert metrics[llds.LOSS_KEY] == 0.0 and metrics[llds.GATED_KEY] == 0.0


def test_context_parallelism_is_refused_in_one_line(slime_loss, monkeypatch):
    monkeypatch.setattr(slime_loss.mpu, "get_context_parallel_world_size", lambda *args, **kwargs: 2)
    batch, logits = build([THREE_ACTIONS])
    with pytest.raises(ValueError) as refused:
        dispatch(slime_loss, slime_args("custom_loss", coef=0.2), batch, logits)
    assert str(refused.value) == (
        "search_r1.llds.coef > 0 needs --context-parallel-size 1 (got 2): LLDS gates whole actions, which context "
        "parallelism splits across ranks; set search_r1.llds.coef: 0 to keep only its signals"
    )


def test_settings_are_checked_by_the_plugins_schema():
    assert llds.settings(SimpleNamespace()).model_dump() == {"coef": 0.2, "gate": "action"}
    assert llds.settings(SimpleNamespace(search_r1={"llds": {"gate": "response"}})).gate == "response"
    with pytest.raises(ConfigError) as bad:
        llds.settings(SimpleNamespace(search_r1={"llds": {"coef": -0.1, "gate": "chunk"}}))
    assert bad.value.problems == [
        "search_r1.llds.coef must be at least 0, got -0.1",
        "search_r1.llds.gate must be 'action' or 'response', got 'chunk'",
    ]
    assert math.isclose(llds.settings(SimpleNamespace(search_r1={"llds": {"coef": 0.5}})).coef, 0.5)
