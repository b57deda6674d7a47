"""Demonstration: GRPO on a tiny multi-turn search task, without and with LLDS, on CPU.

The task (synthetic, a toy of Search-R1's loop): a prompt is one of ``--questions`` question tokens.
The policy's first action is a two-token search key; the environment answers with one
observation token, the question's answer when the key is the question's own and "nothing found"
otherwise; the policy's second action is an answer token and a stop token. Reward 1 for the right
answer followed by the stop token, else 0. ``loss_mask`` is 1 on the four action tokens, 0 on the
observation: two actions per response, as LLDS's action gate sees them.

The policy is a small GRU. Each step samples ``--group`` responses for each of ``--prompts``
questions, computes GRPO advantages ((reward - group mean) / (group std + 1e-6)), then takes
``--updates`` Adam steps on mini-batches of them with the PPO-clip loss (0.2 / 0.28, as slime's
defaults in our launch script), each response's token mean averaged over responses (slime's
``sum_of_sample_mean`` over the global batch). Several updates per rollout are what give
``old_log_prob - log_prob`` a value: with one update per rollout the first and only mini-batch
trains against the very policy it is computed with, and LLDS adds nothing (docs/llds.md).

The LLDS run adds ``coef`` x the penalty of ``search_r1_slime.llds.llds_penalty`` (the function
the slime loss uses), action gate, reduced the same way. Both runs start from the same weights
and the same random stream.

Printed and plotted per step: the mean reward; the mean old log-prob of the tokens of
non-negative-advantage responses (the paper's early warning: it stagnates, then falls, before a
collapse); and its shift over the step, the mean of ``new - old`` log-prob over those tokens
after the step's updates (below 0: the step displaced the likelihood of the responses it should
have kept or raised, the paper's "lazy likelihood displacement").

Target: LLDS displaces the preserving set's likelihood on fewer than half as many steps as plain
GRPO does. It says what this toy shows, nothing about a real model (docs/llds.md).

Run from the repository root (needs the ``bench`` extra, for matplotlib):
    python -m bench.llds_collapse [--seed 0] [--plot docs/llds_bench.png]
"""

from __future__ import annotations

import argparse
import time

import torch

from search_r1_slime.llds import llds_penalty


class Task:
    """Token ids: questions, key tokens, observation tokens (one answer each + "nothing found"),
    answer tokens, and the stop token with one wrong filler."""

    def __init__(self, questions: int, key_tokens: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.questions, self.key_tokens = questions, key_tokens
        self.q0 = 0
        self.k0 = questions
        self.o0 = self.k0 + key_tokens  # observation: the answer's token, or o0 + questions = "nothing found"
        self.a0 = self.o0 + questions + 1
        self.stop, self.filler = self.a0 + questions, self.a0 + questions + 1
        self.vocab = self.filler + 1
        self.key = torch.randint(0, key_tokens, (questions, 2), generator=generator)
        self.answer = torch.randperm(questions, generator=generator)
        # What the policy may emit at each response position (the grammar): key, key, -, answer, stop.
        self.allowed = [
            range(self.k0, self.k0 + key_tokens),
            range(self.k0, self.k0 + key_tokens),
            None,
            range(self.a0, self.a0 + questions),
            range(self.stop, self.filler + 1),
        ]
        self.loss_mask = torch.tensor([1, 1, 0, 1, 1])

    def observe(self, q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        found = (keys == self.k0 + self.key[q]).all(dim=1)
        return torch.where(found, self.o0 + self.answer[q], torch.full_like(q, self.o0 + self.questions))

    def reward(self, q: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
        return ((response[:, 3] == self.a0 + self.answer[q]) & (response[:, 4] == self.stop)).float()


class Policy(torch.nn.Module):
    def __init__(self, vocab: int, width: int = 64):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.rnn = torch.nn.GRU(width, width, batch_first=True)
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(tokens))[0])


def grammar_mask(task: Task) -> torch.Tensor:
    """-inf on the tokens not allowed at each response position (0 where allowed)."""
    mask = torch.full((5, task.vocab), float("-inf"))
    for position, allowed in enumerate(task.allowed):
        if allowed is not None:
            mask[position, list(allowed)] = 0.0
    return mask


def response_log_probs(policy: Policy, task: Task, mask: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
    """Per-token log-probs of the 5 response positions (the observation's is 0 and masked out)."""
    logits = policy(sequences[:, :-1]) + mask
    logits = torch.where(torch.isinf(mask) & torch.isinf(mask).all(dim=1, keepdim=True), 0.0, logits)
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, sequences[:, 1:, None])[..., 0]
    return log_probs * task.loss_mask


@torch.no_grad()
def rollout(policy: Policy, task: Task, mask: torch.Tensor, q: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    sequences = q[:, None]
    for position in range(5):
        if position == 2:
            token = task.observe(q, sequences[:, 1:3])
        else:
            logits = policy(sequences)[:, -1] + mask[position]
            token = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]
        sequences = torch.cat([sequences, token[:, None]], dim=1)
    return sequences


def train(args: argparse.Namespace, coef: float) -> list[dict]:
    torch.set_num_threads(1)  # tiny tensors: threads only contend
    torch.manual_seed(args.seed)
    task = Task(args.questions, args.key_tokens, args.seed)
    policy = Policy(task.vocab)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.lr)
    mask = grammar_mask(task)
    generator = torch.Generator().manual_seed(args.seed + 1)
    history = []
    for step in range(args.steps):
        q = torch.randint(0, task.questions, (args.prompts,), generator=generator).repeat_interleave(args.group)
        sequences = rollout(policy, task, mask, q, generator)
        reward = task.reward(q, sequences[:, 1:])
        grouped = reward.view(args.prompts, args.group)
        advantage = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-6)).flatten()
        with torch.no_grad():
            old = response_log_probs(policy, task, mask, sequences)
        nonneg = advantage >= 0
        per_response = (old * task.loss_mask).sum(1) / task.loss_mask.sum()
        record = {
            "step": step,
            "reward": float(reward.mean()),
            "nonneg_logprob": float(per_response[nonneg].mean()),
            "llds_term": 0.0,
        }
        order = torch.randperm(len(q), generator=generator)
        for batch in order.chunk(args.updates):
            log_probs = response_log_probs(policy, task, mask, sequences[batch])
            ratio = torch.exp(log_probs - old[batch])
            adv = advantage[batch, None]
            clipped = torch.clamp(ratio, 1 - 0.2, 1 + 0.28)
            pg = torch.maximum(-adv * ratio, -adv * clipped)
            loss = ((pg * task.loss_mask).sum(1) / task.loss_mask.sum()).mean()
            if coef > 0:
                penalties = [
                    llds_penalty(lp, o, task.loss_mask, (a >= 0).expand_as(task.loss_mask).float(), "action")[0]
                    for lp, o, a in zip(log_probs, old[batch], advantage[batch], strict=True)
                ]
                term = coef * (torch.stack(penalties) * task.loss_mask).sum(1).div(task.loss_mask.sum()).mean()
                loss = loss + term
                record["llds_term"] += float(term.detach()) / args.updates
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            new = response_log_probs(policy, task, mask, sequences)
        # Likelihood displacement of this step: how the preserving set's log-prob moved (< 0: fell).
        record["nonneg_shift"] = float(((new - old) * task.loss_mask).sum(1)[nonneg].mean() / task.loss_mask.sum())
        history.append(record)
    return history


def smooth(values: list[float], window: int) -> list[float]:
    return [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.llds_collapse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--updates", type=int, default=8, help="optimizer steps per rollout (mini-batches)")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--coef", type=float, default=0.2, help="LLDS coefficient of the second run")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--key-tokens", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="write the PNG here")
    args = parser.parse_args()

    runs = {}
    for name, coef in (("GRPO", 0.0), (f"GRPO + LLDS {args.coef}", args.coef)):
        started = time.perf_counter()
        runs[name] = train(args, coef)
        print(f"{name}: {time.perf_counter() - started:.0f} s")
    window = max(1, args.steps // 30)
    columns = ("reward", "nonneg_logprob", "nonneg_shift", "llds_term")
    print(f"moving means over {window} steps")
    print("step  " + "  ".join(f"{name:>57}" for name in runs))
    print("      " + "  ".join("  ".join(f"{c:>13}" for c in columns) for _ in runs))
    for step in list(range(0, args.steps, max(1, args.steps // 10))) + [args.steps - 1]:
        cells = [
            f"{smooth([h[c] for h in history], window)[step]:>13.4f}" for history in runs.values() for c in columns
        ]
        print(f"{step:>4}  " + "  ".join(cells))
    displaced = {name: sum(h["nonneg_shift"] < 0 for h in history) for name, history in runs.items()}
    plain, regularised = displaced.values()
    for name, history in runs.items():
        last = history[-50:]
        print(
            f"{name}: preserving set displaced on {displaced[name]} of {args.steps} steps; "
            f"mean reward over the last {len(last)} steps {sum(h['reward'] for h in last) / len(last):.3f}"
        )
    passed = regularised < plain / 2
    print(f"target: LLDS displaced on fewer than half as many steps as GRPO: {'PASS' if passed else 'FAIL'}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(6.4, 6.4), sharex=True)
        for name, history in runs.items():
            steps = [h["step"] for h in history]
            top.plot(steps, smooth([h["nonneg_logprob"] for h in history], window), label=name)
            middle.plot(steps, smooth([h["nonneg_shift"] for h in history], window), label=name)
            bottom.plot(steps, smooth([h["reward"] for h in history], window), label=name)
        top.set_ylabel("old log-prob,\nadvantage >= 0")
        middle.set_ylabel("its shift over\nthe step")
        middle.axhline(0.0, color="grey", linewidth=0.5)
        bottom.set_ylabel("mean reward")
        bottom.set_xlabel(f"GRPO step ({args.updates} optimizer steps each; moving mean over {window})")
        top.legend()
        figure.tight_layout()
        figure.savefig(args.plot, dpi=80)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
