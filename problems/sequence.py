"""Sequence bandits: a policy over token sequences, small enough to enumerate every response.

Each of ``prompts`` prompts has its own autoregressive policy over ``vocab`` content tokens and an
end-of-sequence token (the last, so K = vocab + 1 choices per position); a response stops at EOS
(which counts in its length) or at ``max_len`` tokens. The next-token logits depend on the prefix:
'tabular' gives every (prompt, prefix) its own K logits (the parameters), 'linear' computes them as
bias + features(prompt, prefix) @ W with fixed seeded features and bias and W (features x K) the
parameters, at 0. The reward is verifiable: 'exact' (1 for the prompt's target response), 'count'
(the target's tokens matched position by position) or 'correct' (1 when the first token is the
prompt's answer, minus ``length_penalty`` * length / max_len). Prompts differ in difficulty: the
logits along the target (for 'correct' the first choice) are set so that the target has probability
``success`` (default from 0.05 to 0.95), the others are seeded N(0, logit_scale^2).

The loss is sum over prompts of -r (one response per prompt), so a response set's gradient is the
gradient of the prompts' summed expected reward, negated. Every response of a prompt is enumerated
(at most 2^16 per prompt), so E[loss], its gradient and -- by reward class -- the exact mean and
variance of any advantage estimator (``estimators.sequence``) come exactly.
"""
from __future__ import annotations

import copy
import itertools
import math
from typing import Callable, Iterator

import torch

from estimators.base import NotEnumerable
from estimators.sequence import SequenceSpace
from estimators.domains import SEED, Count, Interval, OneOf, Satisfies
from problems import register_problem
from problems.base import EnumerableProblem, LossObserver, Record, TrainingProblem

MAX_RESPONSES = 2**16  # vocab^max_len, the responses of full length, per prompt
MAX_OUTCOMES = 2**21  # reward-class outcomes enumerated for an estimator's exact moments
BLOCK_ELEMENTS = 2**22  # numbers per block of outcomes in the exact moments
REWARDS = ("exact", "count", "correct")
POLICIES = ("tabular", "linear")


def parse_success(text: str, prompts: int) -> tuple[float, ...]:
    """Success probabilities written as numbers in (0, 1) joined by '-' ('0.1-0.5-0.9'), one per
    prompt; empty: evenly spaced from 0.05 to 0.95."""
    if not str(text).strip():
        if prompts == 1:
            return (0.5,)
        return tuple(0.05 + 0.9 * p / (prompts - 1) for p in range(prompts))
    values = []
    for part in str(text).split("-"):
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"success must be probabilities joined by '-', like '0.1-0.5-0.9', got {text!r}") from None
        if not 0.0 < value < 1.0:
            raise ValueError(f"success must be probabilities in (0, 1), got {value} in {text!r}")
        values.append(value)
    if len(values) != prompts:
        raise ValueError(f"success gives {len(values)} probabilities for {prompts} prompts: give one per prompt")
    return tuple(values)


def prefix_tree(vocab: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(child (S, K), tokens (N, T), lengths (N,), path (N, T)) of every response: states are the
    content prefixes shorter than max_len in breadth-first order; a response is a prefix then EOS, or
    max_len content tokens; ``path[n, t]`` is the state where token t was chosen (0 past the end)."""
    K, T = vocab + 1, max_len
    offsets = [sum(vocab**d for d in range(depth)) for depth in range(T + 1)]
    S = offsets[T]
    child = torch.full((S, K), -1, dtype=torch.long)
    for depth in range(T - 1):
        for code in range(vocab**depth):
            for k in range(vocab):
                child[offsets[depth] + code, k] = offsets[depth + 1] + code * vocab + k
    prefixes = [(depth, code) for depth in range(T) for code in range(vocab**depth)]
    full = [(T, code) for code in range(vocab**T)]
    tokens = torch.full((len(prefixes) + len(full), T), vocab, dtype=torch.long)
    lengths = torch.zeros(len(tokens), dtype=torch.long)
    path = torch.zeros(len(tokens), T, dtype=torch.long)
    for n, (depth, code) in enumerate(prefixes + full):
        digits = [(code // vocab ** (depth - 1 - i)) % vocab for i in range(depth)]
        tokens[n, :depth] = torch.tensor(digits, dtype=torch.long)
        lengths[n] = min(depth + 1, T)
        state = 0
        for t in range(int(lengths[n])):
            path[n, t] = state
            if t < depth and t + 1 < T:
                state = int(child[state, digits[t]])
    return child, tokens, lengths, path


def _lengths_of(tokens: torch.Tensor, eos: int) -> torch.Tensor:
    """Response lengths from EOS-padded tokens (..., T): the first EOS's position + 1, else T."""
    T = tokens.shape[-1]
    is_eos = tokens == eos
    first = torch.where(is_eos.any(-1), is_eos.to(torch.int8).argmax(-1), torch.full_like(is_eos[..., 0], T - 1,
                                                                                           dtype=torch.long))
    return first + 1


def _success_format(text: str) -> bool:
    """Empty, or numbers in (0, 1) joined by '-' (how many: one per prompt, checked with prompts)."""
    if not str(text).strip():
        return True
    try:
        return all(0.0 < float(part) < 1.0 for part in str(text).split("-"))
    except ValueError:
        return False


class _SequenceProblemParts:
    """What the gradient problem and the training problem share: the tree, targets, rewards, the
    policy's logit table from its parameter tensor."""

    domains = {"vocab": Count(1), "max_len": Count(1), "prompts": Count(1), "features": Count(1),
               "success": Satisfies(_success_format, "empty (evenly spaced) or probabilities in (0, 1) joined by "
                                    "'-', like '0.1-0.5-0.9'", bad=("0.5-1.5", "half")),
               "reward": OneOf(*REWARDS), "policy": OneOf(*POLICIES), "length_penalty": Interval(0, None),
               "logit_scale": Interval(0, None), "data_seed": SEED}

    def _build(self, vocab: int, max_len: int, prompts: int, success: str, reward: str, policy: str,
               features: int, length_penalty: float, logit_scale: float, data_seed: int) -> None:
        if vocab**max_len > MAX_RESPONSES:
            raise ValueError(f"vocab^max_len must be at most {MAX_RESPONSES} (every response is enumerated), "
                             f"got {vocab}^{max_len} = {vocab**max_len}")
        self.vocab, self.max_len, self.prompts, self.reward_kind, self.policy = vocab, max_len, prompts, reward, policy
        self.features_count, self.length_penalty, self.logit_scale, self.data_seed = (features, length_penalty,
                                                                                     logit_scale, data_seed)
        self.success = parse_success(success, prompts)
        child, tokens, lengths, path = prefix_tree(vocab, max_len)
        self.register_buffer("child", child)
        self.register_buffer("responses", tokens)
        self.register_buffer("response_lengths", lengths)
        self.register_buffer("response_path", path)
        g = torch.Generator().manual_seed(data_seed)
        S, K = child.shape
        target = torch.full((prompts, max_len), vocab, dtype=torch.long)
        content = max(1, max_len - 1)  # the target says max_len - 1 tokens then EOS (one token if max_len = 1)
        target[:, :content] = torch.randint(0, vocab, (prompts, content), generator=g)
        self.register_buffer("target", target)
        table = torch.randn(prompts, S, K, generator=g, dtype=torch.float64) * logit_scale
        for p, q in enumerate(self.success):  # the target's path gets probability q (the first choice: 'correct')
            steps = 1 if reward == "correct" else min(content + 1, max_len)
            state = 0
            for t in range(steps):
                k = int(target[p, t])
                others = torch.cat([table[p, state, :k], table[p, state, k + 1:]])
                q_step = q ** (1.0 / steps)
                table[p, state, k] = math.log(q_step / (1 - q_step)) + torch.logsumexp(others, 0)
                if t + 1 < steps:
                    state = int(child[state, k])
        if policy == "tabular":
            self.register_buffer("logits", table.float())
        else:
            self.register_buffer("bias", table.float())
            self.register_buffer("features", torch.randn(prompts, S, features, generator=g) / math.sqrt(features))
            self.register_buffer("weight", torch.zeros(features, K))

    # -- the policy ---------------------------------------------------------------------------
    @property
    def space(self) -> SequenceSpace:
        return SequenceSpace(self.child, self.max_len)

    def parameter(self) -> torch.Tensor:
        """The tensor the gradient is taken with respect to: the logit table, or W."""
        return self.logits if self.policy == "tabular" else self.weight

    def table(self, parameter: torch.Tensor) -> torch.Tensor:
        """Next-token logits (*lead, P, S, K) from a parameter tensor with leading axes."""
        if self.policy == "tabular":
            return parameter
        return self.bias + torch.einsum("psf,...fk->...psk", self.features.to(parameter.dtype), parameter)

    # -- the reward ---------------------------------------------------------------------------
    @property
    def eos(self) -> int:
        return self.vocab

    def prompt_rewards(self, h: torch.Tensor) -> torch.Tensor:
        """r (..., P) of EOS-padded tokens h (..., P, T), in h's dtype."""
        target = self.target.to(h.device, h.dtype)
        if self.reward_kind == "exact":
            return (h == target).all(-1).to(h.dtype)
        length = _lengths_of(h, self.eos)
        if self.reward_kind == "count":
            positions = torch.arange(self.max_len, device=h.device)
            return ((h == target) & (positions < length.unsqueeze(-1))).sum(-1).to(h.dtype)
        correct = (h[..., 0] == target[:, 0]).to(h.dtype)
        return correct - self.length_penalty * length.to(h.dtype) / self.max_len

    def prompt_losses(self, h: torch.Tensor) -> torch.Tensor:
        """-r (..., P): what an advantage estimator receives, one loss per prompt's response."""
        return -self.prompt_rewards(h)

    def loss(self, h: torch.Tensor) -> torch.Tensor:
        """L(h) = -sum_p r_p(h_p) for one response per prompt, h (..., P, T)."""
        return self.prompt_losses(h).sum(-1)

    # -- enumeration --------------------------------------------------------------------------
    def response_log_probs(self, parameter: torch.Tensor) -> torch.Tensor:
        """log pi_p(y) (P, N) of every response, differentiable w.r.t. ``parameter``."""
        log_probs = torch.log_softmax(self.table(parameter), -1)  # (P, S, K)
        T = self.max_len
        active = torch.arange(T, device=log_probs.device) < self.response_lengths.unsqueeze(-1)  # (N, T)
        picked = log_probs[:, self.response_path, self.responses]  # (P, N, T)
        return torch.where(active, picked, torch.zeros_like(picked)).sum(-1)

    def response_scores(self, parameter: torch.Tensor) -> torch.Tensor:
        """d log pi_p(y) / d parameter (P, N, dim) of every response, from the tree: the sum over its
        steps of onehot(token) - softmax(logits) at the state of the step, mapped to the parameter."""
        probs = torch.softmax(self.table(parameter.detach()), -1)  # (P, S, K)
        P, S, K = probs.shape
        N, T = self.responses.shape
        active = (torch.arange(T, device=probs.device) < self.response_lengths.unsqueeze(-1)).to(probs.dtype)
        step = torch.nn.functional.one_hot(self.responses, K).to(probs.dtype) - probs[:, self.response_path]
        step = step * active.unsqueeze(-1)  # (P, N, T, K)
        per_state = probs.new_zeros(P, N, S, K)
        per_state.scatter_add_(2, self.response_path.expand(P, N, T).unsqueeze(-1).expand(P, N, T, K), step)
        if self.policy == "tabular":
            out = probs.new_zeros(P, N, P, S, K)
            out[torch.arange(P), :, torch.arange(P)] = per_state
            return out.reshape(P, N, -1)
        return torch.einsum("pnsk,psf->pnfk", per_state, self.features.to(probs.dtype)).reshape(P, N, -1)


@register_problem("sequence-bandit",
                  "Token sequences from an autoregressive policy, verifiable rewards, prompts from hard to easy; "
                  "exact by enumeration")
class SequenceBandit(_SequenceProblemParts, EnumerableProblem):
    """The gradient of -sum_p E[r_p] w.r.t. the policy's parameters at the seeded point, for the
    advantage estimators of sequence RL (``variables = 'sequence'``). Scopes ``prompt<p>`` are each
    prompt's logits (tabular policy). Exact moments of an estimator come by enumerating, per prompt,
    the G responses' (reward, length) classes (:meth:`enumerate_moments`): exact for every estimator
    whose coefficients depend on rewards and lengths only."""

    variables = "sequence"

    def __init__(self, vocab: int = 2, max_len: int = 3, prompts: int = 3, success: str = "",
                 reward: str = "exact", policy: str = "tabular", features: int = 8, length_penalty: float = 0.1,
                 logit_scale: float = 1.0, data_seed: int = 0):
        super().__init__()
        self._build(vocab, max_len, prompts, success, reward, policy, features, length_penalty, logit_scale,
                    data_seed)

    @property
    def dim(self) -> int:
        return self.parameter().numel()

    @property
    def units(self) -> int:
        """The categorical units of the logit table: one per prompt and prefix state."""
        return self.prompts * self.child.shape[0]

    def scopes(self) -> dict[str, slice]:
        if self.policy != "tabular" or self.prompts == 1:
            return {}
        block = self.dim // self.prompts
        return {f"prompt{p}": slice(p * block, (p + 1) * block) for p in range(self.prompts)}

    def check_estimator(self, estimator) -> None:
        """Sequence estimators serve any sequence problem (the harness checks the kind of units)."""

    def evaluations_per_estimate(self, estimator) -> int:
        return estimator.loss_evaluations(self.units)

    def sample_gradients(self, estimator, n: int, observe: LossObserver | None = None) -> torch.Tensor:
        parameter = self.parameter().detach()
        per_sample = parameter.expand(n, *parameter.shape).clone().requires_grad_(True)
        loss_fn = self.prompt_losses if observe is None else observe(self.prompt_losses)
        surrogate = estimator(self.table(per_sample), loss_fn, sequence=self.space)
        (grad,) = torch.autograd.grad(surrogate.sum(), per_sample)
        return grad.reshape(n, -1)

    # -- exact values -------------------------------------------------------------------------
    def _float64(self) -> "SequenceBandit":
        return copy.deepcopy(self).to("cpu", torch.float64)

    def success_probabilities(self) -> torch.Tensor:
        """P(target response) per prompt ('correct': P(first token is the answer)), float64."""
        problem = self._float64()
        pi = problem.response_log_probs(problem.parameter()).exp()
        if self.reward_kind == "correct":
            hit = problem.responses[:, 0] == problem.target[:, :1]
        else:
            hit = (problem.responses.unsqueeze(0) == problem.target.unsqueeze(1)).all(-1)
        return (pi * hit).sum(-1)

    def expected_rewards(self) -> torch.Tensor:
        """E[r_p] per prompt, float64."""
        problem = self._float64()
        pi = problem.response_log_probs(problem.parameter()).exp()
        rewards = problem.prompt_rewards(problem.responses.to(torch.float64).unsqueeze(1).expand(-1, self.prompts, -1))
        return (pi * rewards.T).sum(-1)

    def expected_loss(self) -> float:
        return float(-self.expected_rewards().sum())

    def exact_gradient(self) -> torch.Tensor:
        """d/dtheta of sum_p sum_y pi_p(y) (-r_p(y)), by autograd through the enumeration."""
        problem = self._float64()
        parameter = problem.parameter().clone().requires_grad_(True)
        pi = problem.response_log_probs(parameter).exp()
        losses = problem.prompt_losses(problem.responses.to(torch.float64).unsqueeze(1).expand(-1, self.prompts, -1))
        (grad,) = torch.autograd.grad((pi * losses.T).sum(), parameter)
        return grad.reshape(-1)

    def enumerate_gradient(self) -> torch.Tensor:
        """sum_p sum_y pi_p(y) L_p(y) d log pi_p(y), with the scores from the tree (an independent route)."""
        problem = self._float64()
        pi, losses, scores = problem._enumerated_parts()
        return torch.einsum("pn,pnd->d", pi * losses, scores)

    def _enumerated_parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pi (P, N), losses (P, N), scores (P, N, dim)) of every response, on this (float64) copy."""
        parameter = self.parameter()
        pi = self.response_log_probs(parameter).exp()
        losses = self.prompt_losses(self.responses.to(parameter.dtype).unsqueeze(1).expand(-1, self.prompts, -1)).T
        return pi, losses, self.response_scores(parameter)

    def enumerate_moments(self, estimator) -> tuple[torch.Tensor, torch.Tensor, str]:
        """Exact mean and per-coordinate variance (float64) of an advantage estimator's estimates.

        Given the (reward, length) class of each of a group's G responses, the estimate
        sum_i c_i s(y_i) has c fixed (the estimator's coefficients depend on rewards and lengths only)
        and the responses independent within their classes, so E[g | classes] = sum_i c_i mu_class and
        Var(g | classes) = sum_i c_i^2 sigma^2_class per coordinate. The classes' outcomes are
        multisets (the estimate is symmetric in a group's responses), enumerated per prompt when the
        estimator's coupling is 'none' or 'group' (prompts independent: means and variances add), and
        jointly over prompts when it is 'batch'. Raises NotEnumerable when too many."""
        if not hasattr(estimator, "coefficients") or getattr(estimator, "variables", None) != "sequence":
            raise NotEnumerable("the estimator is not an advantage estimator of sequence units")
        P, (N, T), dim = self.prompts, self.responses.shape, self.dim
        if P * N * dim > 2**26:
            raise NotEnumerable(f"{P} x {N} responses x {dim} coordinates are too many scores to hold")
        problem = self._float64()
        estimator = copy.deepcopy(estimator).to(torch.float64)
        pi, losses, scores = problem._enumerated_parts()
        lengths = problem.response_lengths.to(torch.float64)
        classes = [_classes(pi[p], losses[p], lengths, scores[p]) for p in range(P)]
        G = estimator.G
        counts = [math.comb(len(c.loss) + G - 1, G) for c in classes]
        joint = estimator.coupling == "batch"
        outcomes = math.prod(counts) if joint else sum(counts)
        if outcomes > MAX_OUTCOMES:
            raise NotEnumerable(f"{outcomes:,} outcomes of the groups' (reward, length) classes exceed "
                                f"{MAX_OUTCOMES:,} ({'joint over prompts, ' if joint else ''}G = {G})")
        with estimator.frozen():
            reference = estimator.reference_losses(problem.table(problem.parameter()).unsqueeze(0),
                                                   problem.prompt_losses, problem.space)
            if joint:
                mean, variance = _moments(estimator, classes, list(range(P)), reference, T, dim)
            else:
                mean = torch.zeros(dim, dtype=torch.float64)
                variance = torch.zeros(dim, dtype=torch.float64)
                for p in range(P):
                    m, v = _moments(estimator, classes, [p], reference, T, dim)
                    mean, variance = mean + m, variance + v
        how = (f"computed in float64 over {outcomes:,} outcomes of the responses' (reward, length) classes "
               f"({'joint over the prompts' if joint else 'per prompt'}, G = {G})")
        return mean, variance, how


class _Classes:
    """A prompt's responses grouped by (loss, length): probability w, conditional mean score mu and
    per-coordinate conditional variance var of each class with w > 0."""

    def __init__(self, loss, length, w, mu, var):
        self.loss, self.length, self.w, self.mu, self.var = loss, length, w, mu, var


def _classes(pi: torch.Tensor, losses: torch.Tensor, lengths: torch.Tensor, scores: torch.Tensor) -> _Classes:
    keys = torch.stack([losses, lengths], 1)
    possible = pi > 0
    unique, index = torch.unique(keys[possible], dim=0, return_inverse=True)
    pi, scores = pi[possible], scores[possible]
    M = unique.shape[0]
    w = torch.zeros(M, dtype=torch.float64).index_add_(0, index, pi)
    first = torch.zeros(M, scores.shape[1], dtype=torch.float64).index_add_(0, index, pi.unsqueeze(1) * scores)
    mu = first / w.unsqueeze(1)
    second = torch.zeros_like(first).index_add_(0, index, pi.unsqueeze(1) * (scores - mu[index]) ** 2)
    return _Classes(unique[:, 0], unique[:, 1], w, mu, second / w.unsqueeze(1))


def _multisets(M: int, G: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every multiset of G classes out of M as sorted slot classes (C, G), and the number of orderings
    of each, G! / prod n_a!."""
    slots = torch.tensor(list(itertools.combinations_with_replacement(range(M), G)), dtype=torch.long).reshape(-1, G)
    counts = torch.nn.functional.one_hot(slots, M).sum(1)
    orderings = torch.exp(torch.lgamma(torch.tensor(G + 1.0, dtype=torch.float64))
                          - torch.lgamma(counts.to(torch.float64) + 1).sum(1))
    return slots, orderings


def _moments(estimator, classes: list[_Classes], varying: list[int], reference, T: int,
             dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the part of the estimate from the prompts in ``varying``, enumerating
    their groups' class multisets jointly (the other prompts' responses sit in their first class;
    with coupling 'group' or 'none' they do not change these prompts' coefficients).

    Per outcome only the class sums of the coefficients matter: C1_p = sum of c over the prompt's
    responses in each class, C2_p of c^2; E[g | outcome] = sum_p C1_p mu_p and Var(g | outcome) =
    sum_p C2_p var_p. So one pass accumulates E[C1_p], E[C2_p] and E[C1_p' C1_q] (small matrices,
    classes x classes), and the variance is E[Var(g | outcome)] + E[E[g | outcome]^2] - mean^2 per
    coordinate."""
    G, P = estimator.G, len(classes)
    per_prompt = [_multisets(len(classes[p].loss), G) for p in varying]
    sizes = [slots.shape[0] for slots, _ in per_prompt]
    total = math.prod(sizes)
    block = max(1, BLOCK_ELEMENTS // (G * P * 4))
    first = {p: torch.zeros(len(classes[p].loss), dtype=torch.float64) for p in varying}
    second = {p: torch.zeros(len(classes[p].loss), dtype=torch.float64) for p in varying}
    cross = {(p, q): torch.zeros(len(classes[p].loss), len(classes[q].loss), dtype=torch.float64)
             for p in varying for q in varying}
    mass = 0.0
    for start in range(0, total, block):
        codes = torch.arange(start, min(start + block, total))
        B = codes.shape[0]
        probability = torch.ones(B, dtype=torch.float64)
        losses = torch.stack([classes[p].loss[:1].expand(B, G) for p in range(P)], -1)  # (B, G, P)
        lengths = torch.stack([classes[p].length[:1].expand(B, G) for p in range(P)], -1)
        chosen = {}
        for (slots, orderings), size, p in zip(per_prompt, sizes, varying):
            pick = codes % size
            codes = codes // size
            chosen[p] = slots[pick]  # (B, G)
            probability = probability * orderings[pick] * classes[p].w[chosen[p]].prod(1)
            losses[..., p] = classes[p].loss[chosen[p]]
            lengths[..., p] = classes[p].length[chosen[p]]
        ref = None if reference is None else reference.expand(B, P)
        c = estimator.coefficients(losses.movedim(1, 0), lengths.movedim(1, 0), ref, T).movedim(0, 1)  # (B, G, P)
        sums = {}
        for p in varying:
            M = len(classes[p].loss)
            sums[p] = torch.zeros(B, M, dtype=torch.float64).scatter_add_(1, chosen[p], c[..., p])
            first[p] += probability @ sums[p]
            second[p] += probability @ torch.zeros(B, M, dtype=torch.float64).scatter_add_(1, chosen[p], c[..., p] ** 2)
        for p in varying:
            weighted = sums[p] * probability.unsqueeze(1)
            for q in varying:
                cross[p, q] += weighted.T @ sums[q]
        mass += float(probability.sum())
    if not math.isclose(mass, 1.0, rel_tol=1e-9):
        raise NotEnumerable(f"enumerated probabilities sum to {mass}, not 1")
    mean = sum(first[p] @ classes[p].mu for p in varying)
    within = sum(second[p] @ classes[p].var for p in varying)
    between = sum(torch.einsum("ak,ab,bk->k", classes[p].mu, cross[p, q], classes[q].mu)
                  for p in varying for q in varying)
    return mean, (within + between - mean**2).clamp_min(0.0)


@register_problem("sequence-bandit-training",
                  "Policy gradient on a sequence bandit: exact expected reward, exact bias and variance per step")
class SequenceBanditTraining(_SequenceProblemParts, TrainingProblem):
    """Trains ``sequence-bandit(...)``'s parameters from its seeded point by gradient ascent on the
    expected reward: each step one estimate (G responses per prompt, from the run's noise), then SGD
    at ``lr`` (or Adam with ``optimizer='adam'``), for ``steps`` steps. At step 0, every
    ``log_every`` steps and the last it records ``expected_reward`` (the exact mean over prompts),
    ``success_rate`` (the target's probability, mean over prompts), the estimator's exact
    ``exact_bias_norm`` / ``exact_relative_bias`` / ``exact_variance`` / ``exact_cosine`` at the current
    parameters (when enumerable) and ``loss_evals``, the loss evaluations (responses) so far."""

    variables = "sequence"
    domains = {"steps": Count(1), "log_every": Count(1), "lr": Interval(0, None, closed="neither"),
               "optimizer": OneOf("sgd", "adam")}

    def __init__(self, vocab: int = 2, max_len: int = 3, prompts: int = 3, success: str = "",
                 reward: str = "exact", policy: str = "tabular", features: int = 8, length_penalty: float = 0.1,
                 logit_scale: float = 1.0, data_seed: int = 0, steps: int = 200, lr: float = 0.5,
                 optimizer: str = "sgd", log_every: int = 20):
        super().__init__()
        self._build(vocab, max_len, prompts, success, reward, policy, features, length_penalty, logit_scale,
                    data_seed)
        self.steps, self.lr, self.optimizer, self.log_every = steps, lr, optimizer, log_every
        self._spec = dict(vocab=vocab, max_len=max_len, prompts=prompts, success=success, reward=reward,
                          policy=policy, features=features, length_penalty=length_penalty,
                          logit_scale=logit_scale, data_seed=data_seed)

    @property
    def units(self) -> int:
        return self.prompts * self.child.shape[0]

    def check_estimator(self, estimator) -> None:
        """Sequence estimators serve any sequence problem (the harness checks the kind of units)."""

    def evaluations_per_estimate(self, estimator) -> int:
        return estimator.loss_evaluations(self.units)

    def progress_total(self) -> int:
        return self.steps

    def fit(self, estimator, seed: int,
            progress: Callable[[int], None] | None = None) -> Iterator[Record]:
        bandit = SequenceBandit(**self._spec).to(self.device, self.dtype)
        parameter = bandit.parameter()
        optimiser = (torch.optim.SGD if self.optimizer == "sgd" else torch.optim.Adam)([parameter], lr=self.lr)
        evaluations = 0
        per_step = bandit.evaluations_per_estimate(estimator)
        yield from self._records(bandit, estimator, 0, evaluations)
        for step in range(1, self.steps + 1):
            parameter.grad = bandit.sample_gradients(estimator, 1).reshape(parameter.shape).to(parameter.dtype)
            optimiser.step()
            evaluations += per_step
            if progress is not None:
                progress(1)
            if step % self.log_every == 0 or step == self.steps:
                yield from self._records(bandit, estimator, step, evaluations)
        self.trained_model = bandit

    def _records(self, bandit: SequenceBandit, estimator, step: int, evaluations: int) -> Iterator[Record]:
        yield Record("expected_reward", float(bandit.expected_rewards().mean()), step=step)
        yield Record("success_rate", float(bandit.success_probabilities().mean()), step=step)
        yield Record("loss_evals", float(evaluations), step=step)
        try:
            mean, variance, _ = bandit.enumerate_moments(estimator)
        except NotEnumerable:
            return
        truth = bandit.exact_gradient()
        bias = float(torch.linalg.vector_norm(mean - truth))
        norm = float(torch.linalg.vector_norm(truth))
        yield Record("exact_bias_norm", bias, step=step)
        yield Record("exact_relative_bias", bias / norm if norm > 0 else math.nan, step=step)
        yield Record("exact_variance", float(variance.sum()), step=step)
        denominator = float(torch.linalg.vector_norm(mean)) * norm
        yield Record("exact_cosine", float(mean @ truth) / denominator if denominator > 0 else math.nan, step=step)
