"""Sequence units: the estimator contract for a policy over token sequences (sequence RL).

A sequence problem calls ``estimator(logits, loss_fn, sequence=space)``. ``logits`` is
``(*batch, prompts, states, K)``: the policy's next-token logits at every prefix state of every prompt
(the prefix tree of :class:`SequenceSpace`; K tokens, the last one end-of-sequence). The estimator
draws ``G`` responses per prompt autoregressively through ``self.rng`` (one categorical draw per
position, so the harness can count, seed and replay them), and calls ``loss_fn`` once on the stacked
tokens ``(G, *batch, prompts, max_len)`` (EOS-padded), which returns each response's loss
``(G, *batch, prompts)`` (the negated reward). The surrogate has shape ``(*batch, prompts)``: its value is
the mean loss of each prompt's group, its gradient the estimate sum_i c_i d log pi(y_i) of the
gradient of sum_prompts E[loss].

Every estimator here is of that form: one coefficient c per response, from the group's (or the
batch's) rewards and lengths only -- the advantage times the loss aggregation's weight
(:meth:`SequenceEstimator.coefficients`). Problems use that to compute exact moments by enumerating
(reward, length) classes instead of token draws.

Loss aggregations (verl's ``loss_agg_mode``; one estimate is the gradient of the prompts' summed
expected loss, so a framework's batch mean over P prompts divides every aggregation by P alike):
'seq-mean-token-sum' (weight 1/G, the unbiased REINFORCE form), 'seq-mean-token-mean' (1/(G len),
the original GRPO loss), 'token-mean' (P / total tokens of the batch, DAPO and verl's default) and
'seq-mean-token-sum-norm' (1/(G max_len), Dr. GRPO's constant).
"""
from __future__ import annotations

import dataclasses

import torch

from estimators.base import Estimator, LossFn, Traits, parameter_trait
from estimators.domains import Count, OneOf, declared_domains

AGGREGATIONS = ("seq-mean-token-sum", "seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
COUPLINGS = ("none", "group", "batch")  # how far a response's coefficient reaches, from narrowest


@dataclasses.dataclass(frozen=True)
class SequenceSpace:
    """The prefix tree of a sequence problem: ``child[s, k]`` is the state after token k at state s,
    -1 where the response ends (k is end-of-sequence, the last token, or the maximum length is
    reached). State 0 is the empty prefix."""

    child: torch.Tensor
    max_len: int

    @property
    def tokens(self) -> int:
        return self.child.shape[1]

    @property
    def eos(self) -> int:
        return self.child.shape[1] - 1


@dataclasses.dataclass
class Responses:
    """G sampled responses per prompt: tokens (G, *batch, P, T) EOS-padded, lengths (G, *batch, P)
    counting the EOS token, log pi(y) differentiable w.r.t. the logits, and ||d log pi(y) / d logits||^2."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    log_prob: torch.Tensor
    score_sq: torch.Tensor


def sample_responses(rng, logits: torch.Tensor, space: SequenceSpace, G: int) -> Responses:
    """G responses per prompt, one categorical draw per position (a deterministic EOS once a response
    has ended, so every estimate makes G * prompts * max_len draws)."""
    K = logits.shape[-1]
    lead = (G, *logits.shape[:-2])
    log_probs = torch.log_softmax(logits, -1).expand(G, *logits.shape)
    child = space.child.to(logits.device)
    state = torch.zeros(lead, dtype=torch.long, device=logits.device)
    active = torch.ones(lead, dtype=torch.bool, device=logits.device)
    eos = torch.nn.functional.one_hot(torch.tensor(K - 1, device=logits.device), K).to(logits.dtype)
    log_prob = logits.new_zeros(lead)
    score_sq = logits.new_zeros(lead)
    lengths = logits.new_zeros(lead)
    tokens = []
    for _ in range(space.max_len):
        index = state[..., None, None].expand(*lead, 1, K)
        step = log_probs.gather(-2, index).squeeze(-2)  # (*lead, K)
        probs = step.detach().exp()
        h = rng.categorical(torch.where(active.unsqueeze(-1), probs, eos), (*lead, K))
        token = torch.where(active, h.argmax(-1), torch.full_like(state, K - 1))
        log_prob = log_prob + torch.where(active, (h * step).sum(-1), torch.zeros_like(log_prob))
        score_sq = score_sq + torch.where(active, ((h - probs) ** 2).sum(-1), torch.zeros_like(score_sq))
        lengths = lengths + active.to(lengths.dtype)
        tokens.append(token.to(logits.dtype))
        following = child[state, token]
        active = active & (following >= 0)
        state = following.clamp_min(0)
    return Responses(torch.stack(tokens, -1), lengths, log_prob, score_sq.detach())


def group_mean_std(x: torch.Tensor, ddof: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over the group axis 0 (keepdim), two-pass (centred) and scaled
    by the largest magnitude, so that neither huge values (squares past float32's range) nor tiny
    ones (squares below it) lose the std; both are exactly r and 0 when a group's values are all
    equal (no float residue: a residue divided by a tiny std is the leave-one-out bug this suite
    tests for). ddof 1 of a single value gives a NaN std."""
    equal = x.amax(0, keepdim=True) == x.amin(0, keepdim=True)
    scale = x.abs().amax(0, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    mean = torch.where(equal, x[:1], (x / scale).mean(0, keepdim=True) * scale)
    centred = torch.where(equal, torch.zeros_like(x), x - mean)
    spread = centred.abs().amax(0, keepdim=True)
    spread = torch.where(spread > 0, spread, torch.ones_like(spread))
    count = x.shape[0] - ddof
    if count <= 0:
        return mean, torch.full_like(mean, float("nan"))
    return mean, ((centred / spread) ** 2).sum(0, keepdim=True).div(count).sqrt() * spread


def leave_one_out(x: torch.Tensor) -> torch.Tensor:
    """For each i along axis 0, the other G - 1 values: shape (G - 1, G, ...), stacked on a new axis 0."""
    G = x.shape[0]
    others = [torch.cat([x[:i], x[i + 1:]], 0) for i in range(G)]
    return torch.stack(others, 1)


@dataclasses.dataclass(frozen=True)
class SequenceTraits(Traits):
    """The traits of an advantage estimator: an estimator's, plus how far a response's coefficient
    reaches (``coupling``) and how the tokens' terms are aggregated (``aggregation``)."""

    coupling: str
    aggregation: str


class _SmallestGroup:
    """``min_group``: the smallest G the class's declared domain allows (read from the class or an
    instance), so the domain is written once."""

    def __get__(self, instance, owner) -> int:
        return declared_domains(owner)["G"].low


class SequenceEstimator(Estimator):
    """Base of the advantage estimators: G responses per prompt, advantages from their rewards, one
    coefficient per response (advantage times aggregation weight); subclasses implement
    :meth:`advantages` and declare ``coupling`` ('none': a response's own reward; 'group': its group's
    rewards; 'batch': every response of the estimate)."""

    family = "sequence RL"
    traits_type = SequenceTraits
    aggregation = "seq-mean-token-sum"  # the default; an instance holds its own
    variables = "sequence"
    needs_loss_backprop = False
    loss_evals = "G"
    advantage_coupling = "group"
    unbiased_advantage = False  # E[advantage * score] is the gradient (a baseline independent of the response)
    domains = {"G": Count(1), "aggregation": OneOf(*AGGREGATIONS)}
    min_group = _SmallestGroup()

    def __init__(self, G: int = 4, aggregation: str = "seq-mean-token-sum"):
        super().__init__()
        self.G = G
        self.aggregation = aggregation

    @parameter_trait(False)
    def unbiased(self) -> bool:
        """Unbiased when the advantage is and each response's weight is the constant 1/G."""
        return self.unbiased_advantage and self.aggregation == "seq-mean-token-sum"

    @parameter_trait("group")
    def coupling(self) -> str:
        """How far a response's coefficient reaches: the advantage's reach, or the batch when the
        aggregation divides by the batch's token count."""
        return "batch" if self.aggregation == "token-mean" else self.advantage_coupling

    def loss_evaluations(self, units: int, categories: int = 2) -> int:
        return self.G

    def check_units(self, units: int) -> None:
        raise ValueError(f"{self.name or type(self).__name__} serves sequence units (a sequence-bandit "
                         f"problem), not a layer of {units} units")

    # -- the advantage and its weight ------------------------------------------------------------
    def advantages(self, rewards: torch.Tensor, lengths: torch.Tensor,
                   reference: torch.Tensor | None) -> torch.Tensor:
        """Advantages (G, *batch, P) from rewards and lengths of the same shape (group axis 0, batch
        axes 0 and -1); ``reference`` (*batch, P) is :meth:`reference_rewards`' output, or None."""
        raise NotImplementedError

    def weights(self, lengths: torch.Tensor, max_len: int) -> torch.Tensor:
        """Each response's weight in the loss aggregation (see the module docstring)."""
        G, prompts = lengths.shape[0], lengths.shape[-1]
        if self.aggregation == "seq-mean-token-sum":
            return torch.full_like(lengths, 1.0 / G)
        if self.aggregation == "seq-mean-token-mean":
            return 1.0 / (G * lengths)
        if self.aggregation == "token-mean":
            return prompts / lengths.sum((0, -1), keepdim=True).expand_as(lengths)
        return torch.full_like(lengths, 1.0 / (G * max_len))

    def coefficients(self, losses: torch.Tensor, lengths: torch.Tensor, reference: torch.Tensor | None,
                     max_len: int) -> torch.Tensor:
        """c (G, *batch, P): the estimate of d sum_p E[loss_p] is sum c_i d log pi(y_i). The reward is
        the negated loss, so c = -advantage * weight."""
        rewards = -losses
        return -self.advantages(rewards, lengths, None if reference is None else -reference) \
            * self.weights(lengths, max_len)

    def reference_losses(self, logits: torch.Tensor, loss_fn: LossFn, space: SequenceSpace) -> torch.Tensor | None:
        """Losses (*batch, P) of extra deterministic responses a baseline needs (ReMax's greedy one),
        or None; counted as loss evaluations."""
        return None

    def observe(self, responses: Responses, losses: torch.Tensor) -> None:
        """Update running statistics after the estimate is formed (stateful estimators)."""

    def forward(self, logits: torch.Tensor, loss_fn: LossFn, *, sequence: SequenceSpace | None = None,
                categorical: bool = False) -> torch.Tensor:
        if sequence is None:
            raise ValueError(f"{self.name or type(self).__name__} serves sequence units: call it with "
                             "sequence=SequenceSpace")
        responses = sample_responses(self.rng, logits, sequence, self.G)
        losses = loss_fn(responses.tokens)
        reference = self.reference_losses(logits, loss_fn, sequence)
        with torch.no_grad():
            c = self.coefficients(losses.detach(), responses.lengths, reference, sequence.max_len)
        term = (c * responses.log_prob).sum(0)
        if self.update_state:
            with torch.no_grad():
                self.observe(responses, losses.detach())
        return losses.mean(0) + (term - term.detach())


def greedy_tokens(logits: torch.Tensor, space: SequenceSpace) -> torch.Tensor:
    """The greedy (argmax) response of every prompt, EOS-padded tokens (*batch, P, T); ties go to the
    lowest token. Deterministic: no draws."""
    K = logits.shape[-1]
    lead = logits.shape[:-2]
    child = space.child.to(logits.device)
    state = torch.zeros(lead, dtype=torch.long, device=logits.device)
    active = torch.ones(lead, dtype=torch.bool, device=logits.device)
    tokens = []
    for _ in range(space.max_len):
        step = logits.detach().gather(-2, state[..., None, None].expand(*lead, 1, K)).squeeze(-2)
        token = torch.where(active, step.argmax(-1), torch.full_like(state, K - 1))
        tokens.append(token.to(logits.dtype))
        following = child[state, token]
        active = active & (following >= 0)
        state = following.clamp_min(0)
    return torch.stack(tokens, -1)
