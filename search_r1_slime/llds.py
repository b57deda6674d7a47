"""LLDS, the likelihood-preserving regulariser of Deng et al., as slime's custom loss.

"On Group Relative Policy Optimization Collapse in Agent Search: The Lazy Likelihood-Displacement"
(arXiv 2512.04220) traces the collapse of GRPO search agents to the log-likelihood of good
responses sinking step after step. LLDS adds, to the policy loss, a penalty on the tokens whose
log-probability fell below the one the step trains against, only where that matters:

* the preserving set: tokens of responses whose advantage is >= 0;
* the displacement of a token: ``old_log_prob - log_prob`` (positive when the likelihood fell);
* the gate: an action (one contiguous run of ``loss_mask == 1``, i.e. one model turn between two
  observations) is penalised only when its summed displacement is > 0 (``gate: action``, the
  paper's A-gate); ``gate: response`` uses the whole response's sum (the R-gate);
* on the gated tokens, ``max(0, displacement)``, reduced like slime's policy loss and multiplied
  by ``search_r1.llds.coef`` (0.2 in the paper's scripts).

Use it with ``--loss-type custom_loss --custom-loss-function-path
search_r1_slime.llds.policy_loss_with_llds``. The policy loss itself is slime's own
``policy_loss_function``, so every slime option (GRPO/GSPO/CISPO, TIS, OPSM, KL loss, entropy)
works as without LLDS; with ``coef: 0`` the loss is slime's, bit for bit, and only the signals are
added. docs/llds.md has the details, the paper's numbers and how to read the signals.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from search_r1_slime.settings import SECTION, ConfigError, LldsSettings, SearchR1Config

# What the term adds to slime's loss metrics (logged as train/<key>): see docs/llds.md.
LOSS_KEY = "llds_loss"  # coef x the reduced penalty: what was added to the loss
GATED_KEY = "llds_gated_frac"  # share of a response's actions the gate turned on
NONNEG_FRAC_KEY = "llds_nonneg_frac"  # share of responses in the preserving set (advantage >= 0)
NONNEG_LOGPROB_KEY = "llds_nonneg_logprob"  # old log-prob of advantage >= 0 tokens (the paper's signal)
NEG_LOGPROB_KEY = "llds_neg_logprob"  # old log-prob of advantage < 0 tokens
DISPLACEMENT_KEY = "llds_nonneg_displacement"  # old - current log-prob of advantage >= 0 tokens (> 0: fell)


def settings(args: Any) -> LldsSettings:
    """``search_r1.llds`` from slime's ``args`` (the ``--custom-config-path`` YAML's section, a dict),
    checked by the plugin's schema; ``ConfigError`` names a bad key by its dotted name."""
    section = getattr(args, SECTION, None) or {}
    if not isinstance(section, Mapping):
        raise ConfigError([f"{SECTION} must be a mapping of settings, got {type(section).__name__}: {section!r}"])
    # Only the llds part: the search settings are checked by the rollout, on the machines that search.
    return SearchR1Config.checked({"llds": section.get("llds", {})}).llds


def policy_loss_with_llds(args: Any, *call: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """slime's policy loss plus the LLDS term, and the LLDS signals in its metrics.

    slime calls a custom loss as ``fn(args, batch, logits, sum_of_sample_mean)`` (2026-04 on,
    ``slime/backends/megatron_utils/loss.py``) or ``fn(args, parallel_state, batch, logits,
    sum_of_sample_mean)`` (2026-01, ``slime/backends/training_utils/loss.py``); the same call, with
    the same arguments, goes to slime's ``policy_loss_function`` of that revision.
    """
    config = settings(args)
    if len(call) == 4:
        from slime.backends.training_utils import loss as slime_loss

        parallel_state, batch, logits, sum_of_sample_mean = call
        cp_size = parallel_state.cp_size
    else:
        from megatron.core import mpu
        from slime.backends.megatron_utils import loss as slime_loss

        batch, logits, sum_of_sample_mean = call
        parallel_state, cp_size = None, mpu.get_context_parallel_world_size()
    if config.coef > 0 and cp_size > 1:
        # Each context-parallel rank holds two slices of every response, so an action's summed
        # displacement is not known on any one rank.
        raise ValueError(
            f"search_r1.llds.coef > 0 needs --context-parallel-size 1 (got {cp_size}): LLDS gates whole actions, "
            "which context parallelism splits across ranks; set search_r1.llds.coef: 0 to keep only its signals"
        )

    loss, metrics = slime_loss.policy_loss_function(args, *call)

    # The log-probs the step trains against, as slime's policy loss picks them.
    old = batch["rollout_log_probs"] if args.use_rollout_logprobs else batch.get("log_probs")
    current = None
    if config.coef > 0 or not old:
        current = _log_probs(slime_loss, args, parallel_state, batch, logits)
    if not old:  # slime reuses the training forward's log-probs: the step is on-policy
        old = [log_prob.detach() for log_prob in current]
    # One sample after another, as slime's reducers take them: cat in sample order.
    nonneg = [(advantage >= 0).to(torch.float32) for advantage in batch["advantages"]]
    old_cat = torch.cat([o.detach() for o in old])
    nonneg_cat = torch.cat(nonneg)
    if config.coef > 0:
        penalty, gated_frac = zip(
            *(
                llds_penalty(log_prob, old_i.detach(), mask, keep, config.gate)
                for log_prob, old_i, mask, keep in zip(current, old, batch["loss_masks"], nonneg, strict=True)
            )
        )
        term = config.coef * sum_of_sample_mean(torch.cat(penalty))
        loss = loss + term
        metrics[LOSS_KEY] = term.detach()
        # A per-response value spread over its tokens: the reducer then averages it per response.
        spread = [torch.ones_like(keep) * share for keep, share in zip(nonneg, gated_frac, strict=True)]
        metrics[GATED_KEY] = sum_of_sample_mean(torch.cat(spread)).detach()
        # Likelihood displacement itself: how far this rollout's earlier optimizer steps moved the
        # preserving set (0 on a rollout's first step).
        displacement = old_cat - torch.cat(current).detach()
        metrics[DISPLACEMENT_KEY] = sum_of_sample_mean(displacement * nonneg_cat).detach()
    metrics[NONNEG_FRAC_KEY] = sum_of_sample_mean(nonneg_cat).detach()
    metrics[NONNEG_LOGPROB_KEY] = sum_of_sample_mean(old_cat * nonneg_cat).detach()
    metrics[NEG_LOGPROB_KEY] = sum_of_sample_mean(old_cat * (1 - nonneg_cat)).detach()
    return loss, metrics


def llds_penalty(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, loss_mask: torch.Tensor, keep: torch.Tensor, gate: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One response's per-token LLDS penalty (before the reducer and the coefficient) and the share
    of its actions the gate turned on (a 0-d tensor: nothing here waits for the device).

    ``keep`` marks the preserving set (advantage >= 0, per token as slime stores advantages). The
    gate is a 0/1 choice made from the values, so gradient reaches ``log_prob`` only through
    ``max(0, displacement)`` on gated tokens.
    """
    displacement = old_log_prob - log_prob
    preserved = loss_mask.to(torch.bool) & keep.to(torch.bool)
    with torch.no_grad():
        runs = _runs(preserved)  # 0 outside the preserving set, k on the k-th action (1-based)
        bins = preserved.numel() + 1  # room for an action per token; bin 0 collects the rest
        sums = displacement.new_zeros(bins).index_add_(0, runs, displacement.detach())
        exists = torch.zeros(bins, dtype=torch.bool, device=runs.device).index_fill_(0, runs, True)
        exists[0] = False
        if gate == "action":
            on = (sums > 0) & exists
        else:  # one decision, from the whole preserving set's sum, for all its actions
            on = (sums[1:].sum() > 0) & exists
        gated = on[runs]
        actions = _runs(loss_mask.to(torch.bool)).max() if loss_mask.numel() else runs.new_zeros(())
        share = on.sum() / actions.clamp_min(1)
    return torch.clamp(displacement, min=0) * gated, share


def _runs(mask: torch.Tensor) -> torch.Tensor:
    """Number each contiguous run of True in a 1-D mask 1, 2, ...; 0 where the mask is False."""
    starts = mask & ~torch.cat([mask.new_zeros(1), mask[:-1]])
    return torch.cumsum(starts, 0) * mask


def _log_probs(slime_loss: Any, args: Any, parallel_state: Any, batch: Mapping, logits: torch.Tensor) -> list[torch.Tensor]:
    """The current policy's per-token log-probs, computed by slime's ``get_log_probs_and_entropy``
    the way its ``policy_loss_function`` calls it at that revision: the custom-loss hook hands us the
    logits, not the log-probs slime's own loss computes from them."""
    compute: Callable = slime_loss.get_log_probs_and_entropy
    parameters = inspect.signature(compute).parameters
    extra: dict[str, Any] = {}
    if "parallel_state" in parameters:  # 2026-01
        extra["parallel_state"] = parallel_state
    if "max_seq_lens" in parameters:  # 2026-01, 2026-04
        extra["max_seq_lens"] = batch.get("max_seq_lens", None)
    if hasattr(slime_loss, "get_rollout_top_p_logprob_kwargs"):  # 2026-08: replayed top-p masks
        extra.update(slime_loss.get_rollout_top_p_logprob_kwargs(args, batch))
    result = compute(
        logits,
        args=args,
        unconcat_tokens=batch["unconcat_tokens"],
        total_lengths=batch["total_lengths"],
        response_lengths=batch["response_lengths"],
        with_entropy=False,
        **extra,
    )
    # 2026-04 on returns (logits, results); 2026-01 the results alone.
    return (result[1] if isinstance(result, tuple) else result)["log_probs"]
