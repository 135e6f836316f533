"""Exact moments of continuous-noise estimators by quadrature, beside enumeration of their discrete draws.

An estimator declares the law of every continuous draw a call makes (:meth:`Estimator.noise_laws`:
uniform, logistic, normal, Gumbel over categories, a flat Dirichlet over two, Beta, with the
breakpoints where a sample changes value, the Gumbel-max argmax, and averaged conditional copies).
The harness replays chosen noise values through the estimator (:class:`QuadratureNoise`, the
continuous counterpart of :class:`~estimators.base.ReplayNoise`, which it extends: discrete draws are
enumerated as before) and integrates with composite rules built per law: Gauss-Legendre between the
breakpoints on the uniform's [0, 1] and on the logistic's u = sigm(L) (end pieces stretched by r^4
where the estimate grows with the noise), Gauss-Legendre with the density between fixed and declared
breakpoints on [-9, 9] for the normal (the tails beyond hold 2e-19), Gauss-Jacobi for the Beta, and
for Gumbels over K <= 3 categories the argmax enumerated and the others' ratios to the winner
integrated (Duffy's map at K = 3).

What each coordinate of the estimate depends on is probed first, at random base points: which noise
dimensions it changes with, and whether inside a piece or only across breakpoints (then one node
per piece, weighted by the piece's exact probability, is exact), and which discrete draws (the
others are held at one outcome instead of enumerated). Each group of coordinates is integrated over
its own dimensions and draws only: a pathwise estimator on a separable loss is one small integral
per unit. Where, given a few outer dimensions, a coordinate is a sum of functions of separate
groups of the others (no mixed difference between them), the groups are integrated one at a time
(the anchored decomposition, :class:`_Split`). Each group climbs a ladder of rules (product rules
of 2, 3, 4, 6, ... nodes per piece, then Smolyak sparse grids where a product rule would be too
coarse) until two successive rules agree to QUADRATURE_TOLERANCE of the estimate's scale, spending
at most 2^MAX_ENUMERATION_BITS evaluations in all; otherwise no exact moments, and the note says why.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math
import time

import numpy as np
import scipy.special
import torch

from bench.enumeration import MAX_ENUMERATION_BITS, ENUMERATION_ELEMENTS, mixed_radix, outcome_count
from bench.metrics import ExactMoments
from estimators.base import Estimator, Noise, NoiseLaw, NotEnumerable, ReplayNoise

MAX_QUADRATURE_EVALUATIONS = 2**MAX_ENUMERATION_BITS
QUADRATURE_TOLERANCE = 1e-8  # |order n - order 2n| relative to max_i (|E g_i| + sd g_i), squared for variances
NORMAL_TRUNCATION = 9.0  # N(0, 1) integrated on [-9, 9]: 2 Phi(-9) = 2.3e-19 left out
NORMAL_PIECES = (-6.0, -3.0, 0.0, 3.0, 6.0)  # fixed breakpoints of the normal's rule: pieces of length <= 3
PROBE_ROWS = 8  # base points of the dependency probe (each with its own discrete draws)
PROBE_ORDER = 3  # nodes per piece the probe moves through
QUADRATURE_NOTE = "computed in float64 by quadrature"  # how a run's exact_moments note starts
DRAWN_BY = {"uniform": ("uniform",), "logistic": ("logistic",), "normal": ("normal",),
            "gumbel": ("gumbel", "flat-dirichlet"), "beta": ("beta",)}


class NotIntegrable(NotEnumerable):
    """The estimator's continuous noise cannot be integrated here (undeclared, or not as declared)."""


@dataclasses.dataclass
class Layout:
    """What one estimate draws, in draw order: discrete arities (enumerated) and, per continuous
    dimension, its law and its number of pieces (breakpoints + 1); ``copies``: the K of averaged
    copies (1 when none)."""

    arities: list[int] = dataclasses.field(default_factory=list)
    pieces: list[int] = dataclasses.field(default_factory=list)
    kinds: list[str] = dataclasses.field(default_factory=list)
    blocks: list[int] = dataclasses.field(default_factory=list)  # dimensions of one block are integrated together
    copies: int = 1
    conditioning: int = 0  # discrete draws before the averaged copies (they are i.i.d. given these)


MAX_NODES = 64


def _table(roots) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of the n-point rule in row n (1 <= n <= MAX_NODES), zero-padded."""
    nodes = torch.zeros(MAX_NODES + 1, MAX_NODES, dtype=torch.float64)
    weights = torch.zeros(MAX_NODES + 1, MAX_NODES, dtype=torch.float64)
    for n in range(1, MAX_NODES + 1):
        t, w = roots(n)
        nodes[n, :n], weights[n, :n] = torch.from_numpy(np.asarray(t)), torch.from_numpy(np.asarray(w))
    return nodes, weights


LEGENDRE = _table(scipy.special.roots_legendre)  # on [-1, 1], weight 1
LAGUERRE = _table(scipy.special.roots_laguerre)  # on [0, inf), weight exp(-y)


def _piece_edges(kind: str, breaks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper) edges of every piece in the integration variable, shape (..., pieces)."""
    if kind in ("uniform", "flat-dirichlet", "gumbel", "beta"):  # the Gumbel's ratio variable t in [0, 1] too
        inner, low, high = breaks.clamp(0, 1), 0.0, 1.0
    elif kind in ("logistic", "logistic-tails"):  # in its CDF u = sigm(L)
        inner, low, high = torch.sigmoid(breaks), 0.0, 1.0
    elif kind == "normal":
        fixed = breaks.new_tensor(NORMAL_PIECES).expand(*breaks.shape[:-1], len(NORMAL_PIECES))
        inner = torch.cat([breaks.clamp(-NORMAL_TRUNCATION, NORMAL_TRUNCATION), fixed], -1)
        low, high = -NORMAL_TRUNCATION, NORMAL_TRUNCATION
    else:
        raise NotIntegrable(f"no quadrature rule for {kind} noise")
    inner = inner.sort(-1).values
    end = inner.new_ones(*inner.shape[:-1], 1)
    lower = torch.cat([end * low, inner], -1)
    upper = torch.cat([inner, end * high], -1)
    return lower, upper


def rule_nodes(kind: str, breaks: torch.Tensor, index: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Node ``index`` (piece index // n, node index % n) of the composite rule of ``n`` nodes per
    piece, for each element: (its value in the integration variable, its weight), shapes of
    ``index``. ``breaks``: (*index.shape, breakpoints) in the law's own variable; ``n``: broadcastable
    to ``index``. The one-node rule weighs its piece's midpoint by the piece's exact mass (exact for
    an estimate constant on the piece, whatever the law's density)."""
    lower, upper = _piece_edges(kind, breaks.to(torch.float64))
    n = n.expand(index.shape)
    piece, node = index // n, index % n
    lo = lower.gather(-1, piece.unsqueeze(-1)).squeeze(-1)
    hi = upper.gather(-1, piece.unsqueeze(-1)).squeeze(-1)
    t = LEGENDRE[0].to(lo.device)[n, node]
    w = LEGENDRE[1].to(lo.device)[n, node]
    if kind == "logistic":
        return torch.logit(lo + (hi - lo) * (t + 1) / 2), (hi - lo) / 2 * w
    if kind == "logistic-tails":
        x, weight = _logistic_nodes(lo, hi, t, w, n, node)
        return x, torch.where(n == 1, hi - lo, weight)
    x = lo + (hi - lo) * (t + 1) / 2
    weight = (hi - lo) / 2 * w
    if kind == "normal":
        mass = torch.special.ndtr(hi) - torch.special.ndtr(lo)
        weight = torch.where(n == 1, mass, weight * torch.exp(-x * x / 2) / math.sqrt(2 * math.pi))
    return x, weight


TAIL_POWER = 4  # the logistic's end pieces: u - 0 or 1 - u = (piece length) r^4, r in [0, 1]


def _logistic_nodes(lo, hi, t, w, n, node):
    """The logistic law in u = sigm(L) for an estimate that grows with L (``NoiseLaw.grows``):
    Gauss-Legendre between breakpoints; on the two end pieces (touching u = 0 or 1, where L runs
    off to infinity and the estimate has a log singularity in u) the distance to the end is the
    piece's length times r^4, which turns log r into r^3 log r (the rule's error falls like n^-8
    instead of n^-2). Without breakpoints one plain piece. Returns (L, weight). (A bounded estimate,
    sigm((a + L) / tau) and the like, stays with plain Gauss-Legendre in u, where it is a rational
    function when 1 / tau is an integer.)"""
    r = (t + 1) / 2
    upper_end, lower_end = hi >= 1, lo <= 0
    whole = upper_end & lower_end  # no breakpoint: plain Gauss-Legendre on [0, 1] (bounded integrands)
    upper_end, lower_end = upper_end & ~whole, lower_end & ~whole
    length = hi - lo
    jacobian = TAIL_POWER * r ** (TAIL_POWER - 1)
    weight = torch.where(upper_end | lower_end, length / 2 * w * jacobian, length / 2 * w)
    power = r**TAIL_POWER
    log_power = TAIL_POWER * torch.log(r)
    u = torch.where(lower_end, hi * power, lo + length * r)
    upper_value = torch.log1p(-length * power) - torch.log(length) - log_power  # log u - log(1 - u)
    middle_value = torch.logit(u)
    lower_value = torch.log(hi) + log_power - torch.log1p(-hi * power)
    value = torch.where(upper_end & ~lower_end, upper_value, torch.where(lower_end, lower_value, middle_value))
    return value, weight


def _values(kind: str, x: torch.Tensor) -> torch.Tensor:
    """The law's own variable at integration variable ``x`` (the same for every law here)."""
    return x


class _Declared:
    """Reads the laws the estimator declares for each call (a forward pre-hook hands the call's
    logits in) and lays out each continuous draw: rows, elements per copy, copies, breakpoints."""

    def begin_call(self, estimator: Estimator, logits: torch.Tensor, categorical: bool) -> None:
        laws = estimator.noise_laws(logits.detach(), categorical)
        if laws is None:
            raise NotIntegrable(f"{estimator.name or type(estimator).__name__} does not declare the law of its "
                                "continuous noise")
        self.laws, self.law_index = list(laws), 0

    def next_law(self, method: str) -> NoiseLaw:
        laws = getattr(self, "laws", None)
        if laws is None:
            raise NotIntegrable("a continuous draw outside a call whose noise laws are declared")
        if self.law_index >= len(laws):
            raise NotIntegrable(f"the estimator made more continuous draws than the {len(laws)} it declares")
        law = laws[self.law_index]
        self.law_index += 1
        if law.kind not in DRAWN_BY[method]:
            raise NotIntegrable(f"the estimator drew {method} noise where it declares {law.kind}")
        if law.argmax_of is not None and (law.kind != "gumbel" or law.lead):
            raise NotIntegrable("argmax_of is declared only for a Gumbel draw without leading axes")
        return law

    @staticmethod
    def layout(law: NoiseLaw, shape) -> tuple[int, int, int, tuple[int, ...]]:
        """(rows, copies, elements per copy per row, shape of one copy per row) of a draw."""
        shape = tuple(shape)
        if len(shape) <= law.lead:
            raise NotIntegrable(f"a draw of shape {shape} has no batch axis after {law.lead} leading axes")
        lead, rows, event = shape[:law.lead], shape[law.lead], shape[law.lead + 1:]
        copies = lead[0] if law.copies else 1
        per_copy = (lead[1:] if law.copies else lead) + event
        if law.kind == "flat-dirichlet":
            if not event or event[-1] != 2:
                raise NotIntegrable("a flat Dirichlet over K > 2 categories: the estimate's discontinuities cut "
                                    "the simplex along lines that no product rule follows")
            per_copy = per_copy[:-1]
        return rows, copies, math.prod(per_copy), per_copy

    @staticmethod
    def element_breaks(law: NoiseLaw, shape, rows: int, elements: int) -> torch.Tensor:
        """Breakpoints per row and element (of the first copy): (rows, elements, breakpoints)."""
        shape = tuple(shape)
        target = shape[:-1] if law.kind == "flat-dirichlet" else shape
        if law.breaks is None:
            return torch.zeros(rows, elements, 0, dtype=torch.float64)
        breaks = law.breaks.detach().to(torch.float64)
        breaks = breaks.expand(*target, breaks.shape[-1]).movedim(law.lead, 0)
        if law.copies:
            breaks = breaks[:, 0]
        return breaks.reshape(rows, elements, -1)


class LawCounter(_Declared, Noise):
    """Draws like :class:`Noise` (one estimate) and records the layout: discrete arities, and the
    pieces of every continuous dimension (averaged copies: one copy's, all copies replay it)."""

    def __init__(self, generator: torch.Generator):
        super().__init__(generator)
        self.found = Layout()

    def _rand(self, shape, like):
        return torch.rand(shape, generator=self.generator, device=like.device, dtype=like.dtype)

    def bernoulli(self, probs, shape=None):
        shape = probs.shape if shape is None else torch.Size(shape)
        self.found.arities.extend([2] * math.prod(shape))
        return (self._rand(shape, probs) < probs).to(probs.dtype)

    def categorical(self, probs, shape=None):
        shape = torch.Size(probs.shape if shape is None else shape)
        self.found.arities.extend([shape[-1]] * math.prod(shape[:-1]))
        index = torch.multinomial(probs.expand(shape).reshape(-1, shape[-1]).to(torch.float64), 1,
                                  generator=self.generator).reshape(shape[:-1])
        return torch.nn.functional.one_hot(index, shape[-1]).to(probs.dtype)

    def _continuous(self, method: str, shape, like) -> NoiseLaw:
        law = self.next_law(method)
        rows, copies, elements, per_copy = self.layout(law, shape)
        if law.copies:
            if self.found.copies != 1 or self.found.pieces:
                raise NotIntegrable("averaged copies are integrated only as the first and only continuous draw")
            self.found.copies, self.found.conditioning = copies, len(self.found.arities)
        if law.kind == "gumbel":
            if law.breaks is not None:
                raise NotIntegrable("Gumbel noise takes argmax_of, not breakpoints")
            K = per_copy[-1]
            if K > 3:
                raise NotIntegrable(f"Gumbel noise over {K} > 3 categories: given the argmax, the density of the "
                                    "others' ratios is singular on faces where several vanish (handled up to K = 3)")
            units = elements // K
            self.found.arities.extend([K] * units)
            self.found.pieces.extend([2, 1][:K - 1] * units)
            self.found.kinds.extend([law.kind] * (units * (K - 1)))
            first = len(self.found.blocks)
            self.found.blocks.extend(first + u for u in range(units) for _ in range(K - 1))
            return law
        breaks = self.element_breaks(law, shape, rows, elements)
        pieces = breaks.shape[-1] + 1 + (len(NORMAL_PIECES) if law.kind == "normal" else 0)
        self.found.pieces.extend([pieces] * elements)
        self.found.kinds.extend([law.kind] * elements)
        first = len(self.found.blocks)
        self.found.blocks.extend(range(first, first + elements))
        return law

    def uniform(self, shape, like):
        self._continuous("uniform", shape, like)
        return self._rand(shape, like)

    def logistic(self, shape, like):
        self._continuous("logistic", shape, like)
        u = self._rand(shape, like).clamp(torch.finfo(like.dtype).tiny, 1 - torch.finfo(like.dtype).eps)
        return torch.log(u) - torch.log1p(-u)

    def normal(self, shape, like):
        self._continuous("normal", shape, like)
        return torch.randn(shape, generator=self.generator, device=like.device, dtype=like.dtype)

    def gumbel(self, shape, like):
        self._continuous("gumbel", shape, like)
        u = self._rand(shape, like).clamp(torch.finfo(like.dtype).tiny, 1 - torch.finfo(like.dtype).eps)
        return -torch.log(-torch.log(u))

    def beta(self, alpha, beta, shape, like):
        law = self._continuous("beta", shape, like)
        if not (math.isclose(law.shape[0], alpha, rel_tol=1e-12) and math.isclose(law.shape[1], beta, rel_tol=1e-12)):
            raise NotIntegrable(f"the estimator drew Beta({alpha:g}, {beta:g}) noise where it declares "
                                f"Beta({law.shape[0]:g}, {law.shape[1]:g})")
        return Noise.beta(self, alpha, beta, shape, like)


@functools.lru_cache(maxsize=16)
def jacobi_table(alpha: float, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Jacobi rules for Beta(alpha, beta) on [0, 1]: row n holds the n-point rule's nodes and
    weights (normalised to sum to 1: the weight function is the density), zero-padded. Exact for a
    polynomial of degree 2n - 1 times the density, so a smooth estimate converges geometrically
    whatever the density's power singularities at 0 and 1."""
    nodes = torch.zeros(MAX_NODES + 1, MAX_NODES, dtype=torch.float64)
    weights = torch.zeros(MAX_NODES + 1, MAX_NODES, dtype=torch.float64)
    for n in range(1, MAX_NODES + 1):
        t, w = scipy.special.roots_jacobi(n, beta - 1, alpha - 1)  # weight (1 - t)^(beta-1) (1 + t)^(alpha-1)
        nodes[n, :n] = torch.from_numpy((1 + np.asarray(t)) / 2)
        weights[n, :n] = torch.from_numpy(np.asarray(w) / np.sum(w))
    return nodes, weights


class QuadratureNoise(_Declared, ReplayNoise):
    """Replays discrete draws (``configs``, as :class:`ReplayNoise`) and continuous nodes: row s,
    column j of ``indices`` picks node indices[s, j] of continuous dimension j's composite rule of
    orders[s, j] nodes per piece. ``weight`` accumulates the product of the quadrature weights of
    the ``free`` dimensions (the others are held at their node, not integrated). Averaged copies all
    replay the same value (one copy's integrals; the harness weighs them for K)."""

    def __init__(self, configs: torch.Tensor, indices: torch.Tensor, orders: torch.Tensor, free: torch.Tensor,
                 held: torch.Tensor | None = None):
        super().__init__(configs)
        self.indices, self.orders, self.free = indices, orders, free
        self.held = torch.zeros(configs.shape[1], dtype=torch.bool, device=configs.device) if held is None else held
        self.column = 0
        self.weight = torch.ones(indices.shape[0], dtype=torch.float64, device=indices.device)
        self.draw_log_probs: list[torch.Tensor] = []  # (rows, entries) per discrete draw, in order

    def bernoulli(self, probs, shape=None):
        """As :class:`ReplayNoise`; a held draw (one whose outcome no estimate of the group depends
        on) is replayed at its given outcome without its probability: summing over its outcomes
        would multiply by 1."""
        start, before = self.offset, self.log_prob
        bits = super().bernoulli(probs, shape)
        shape = torch.Size(probs.shape if shape is None else shape)
        p, b = probs.expand(shape).to(torch.float64), bits.to(torch.float64)
        log_p = torch.where(b > 0, torch.log(p), torch.log1p(-p)).movedim(-2, 0).reshape(b.shape[-2], -1)
        return self._record(start, before, log_p, bits)

    def categorical(self, probs, shape=None):
        start, before = self.offset, self.log_prob
        one_hot = super().categorical(probs, shape)
        shape = torch.Size(probs.shape if shape is None else shape)
        index = one_hot.argmax(-1, keepdim=True)
        log_p = torch.log(probs.expand(shape).to(torch.float64)).gather(-1, index).squeeze(-1)
        return self._record(start, before, log_p.movedim(-2, 0).reshape(self.configs.shape[0], -1), one_hot)

    def _record(self, start: int, before: torch.Tensor, log_p: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
        self.draw_log_probs.append(log_p)
        self.log_prob = before + torch.where(self.held[start:self.offset], 0.0, log_p).sum(-1)
        return drawn

    def rademacher(self, shape, like):
        half = torch.full((), 0.5, dtype=like.dtype, device=like.device)
        return self.bernoulli(half, shape) * 2 - 1

    def _continuous(self, method: str, shape, like) -> torch.Tensor:
        law = self.next_law(method)
        rows, copies, elements, per_copy = self.layout(law, shape)
        if rows != self.indices.shape[0]:
            raise NotIntegrable(f"replay expects draws over {self.indices.shape[0]} rows, got shape {tuple(shape)}")
        if law.kind == "gumbel":
            K = per_copy[-1]
            if law.argmax_of is None:
                location = torch.zeros(rows, elements // K, K, dtype=torch.float64, device=self.indices.device)
            else:
                location = law.argmax_of.detach().to(torch.float64).expand(shape).reshape(rows, -1, K)
            taken = self._gumbel_given_argmax(location).reshape(rows, elements)
        elif law.kind == "beta":
            columns = self._columns(elements)
            nodes, weights = jacobi_table(*law.shape)
            n, index = self.orders[:, columns], self.indices[:, columns]
            taken = nodes.to(index.device)[n, index]
            self._weigh(weights.to(index.device)[n, index], columns)
        else:
            breaks = self.element_breaks(law, shape, rows, elements).to(self.indices.device)
            kind = "logistic-tails" if law.kind == "logistic" and law.grows else law.kind
            taken = _values(kind, self._nodes(kind, breaks, elements))
        if law.copies:
            taken = taken.unsqueeze(1).expand(rows, copies, elements)
        values = taken.reshape(rows, *((copies,) if law.copies else ()), *per_copy)
        if law.kind == "flat-dirichlet":
            values = -torch.log(torch.stack([values, 1 - values], -1))
        return values.movedim(0, law.lead).to(like.dtype)

    def _columns(self, count: int) -> slice:
        stop = self.column + count
        if stop > self.indices.shape[1]:
            raise NotIntegrable("the estimator drew more continuous noise than was counted")
        taken, self.column = slice(self.column, stop), stop
        return taken

    def _nodes(self, kind: str, breaks: torch.Tensor, count: int) -> torch.Tensor:
        """The next ``count`` dimensions' nodes (rows, count); their free weights join ``weight``."""
        columns = self._columns(count)
        x, weight = rule_nodes(kind, breaks, self.indices[:, columns], self.orders[:, columns])
        self._weigh(weight, columns)
        return x

    def _weigh(self, weight: torch.Tensor, columns: slice) -> None:
        """The free dimensions' node weights join the row's weight."""
        free = self.free[columns]
        self.weight = self.weight * torch.where(free, weight, torch.ones_like(weight)).prod(-1)

    def _gumbel_given_argmax(self, location: torch.Tensor) -> torch.Tensor:
        """Gumbels G (rows, units, K <= 3), up to a shift per unit, given the argmax D of location + G.

        D is replayed as a categorical draw (P = softmax(location)). Given D, the exponentials
        X_k = exp(-(location_k + G_k)) (rates lambda_k = exp(location_k)) race: with Lambda the sum
        of the rates, e_0 = Lambda X_D and e_j = lambda_j (X_j - X_D) are i.i.d. Exp(1), so
        X_j / X_D = 1 + c_j (1 - u_j) / u_j with c_j = Lambda / lambda_j and u_j = e_0 / (e_0 + e_j)
        in (0, 1]: the estimate is smooth in each u_j (the winner is the reference). K = 2: u is
        uniform. K = 3: (u_1, u_2) has density 2 u_1 u_2 / (u_1 + u_2 - u_1 u_2)^3, singular at the
        corner where both vanish; the first dimension's two pieces pick the triangle u_2 <= u_1 or
        u_1 < u_2, and Duffy's map (the smaller u = s times the larger) makes it 4 s / (1 + s - u s)^3."""
        rows, units, K = location.shape
        one_hot = self.categorical(torch.softmax(location, -1))
        columns = self._columns(units * (K - 1))
        free = self.free[columns].reshape(units, K - 1)
        if bool((free.any(-1) != free.all(-1)).any()):
            raise NotIntegrable("the Gumbels of one unit are integrated together (their density does not factor)")
        free = free.all(-1)
        split = location.new_tensor([0.5, 1.0] if K == 3 else [1.0]).repeat(units).reshape(1, units * (K - 1), 1)
        t, weight = rule_nodes("gumbel", split.expand(rows, -1, -1), self.indices[:, columns],
                               self.orders[:, columns])  # K = 3: the first dimension's pieces are the triangles
        t, weight = t.reshape(rows, units, K - 1), weight.reshape(rows, units, K - 1)
        joint = weight.prod(-1)
        if K == 2:
            u = t
        else:
            first = t[..., 0] < 0.5
            big = torch.where(first, 2 * t[..., 0], 2 * t[..., 0] - 1)
            small = big * t[..., 1]
            u = torch.stack([torch.where(first, big, small), torch.where(first, small, big)], -1)
            density = 4 * t[..., 1] / (1 + t[..., 1] - big * t[..., 1]) ** 3  # 2 (dt -> du) x 2 s / (...)^3
            one_node = (self.orders[:, columns] == 1).reshape(rows, units, K - 1).all(-1)
            joint = joint * torch.where(one_node, 1.0, density)  # one node per triangle: its mass, 1/2
        self.weight = self.weight * torch.where(free, joint, torch.ones_like(joint)).prod(-1)
        others = torch.arange(K, device=location.device).expand(rows, units, K)[one_hot == 0]
        others = others.reshape(rows, units, K - 1)
        c = 1 / torch.softmax(location, -1).gather(-1, others)  # Lambda / lambda_j
        ratio = torch.ones_like(location).scatter(-1, others, 1 + c * (1 - u) / u)
        return -torch.log(ratio) - location

    def uniform(self, shape, like):
        return self._continuous("uniform", shape, like)

    def logistic(self, shape, like):
        return self._continuous("logistic", shape, like)

    def normal(self, shape, like):
        return self._continuous("normal", shape, like)

    def gumbel(self, shape, like):
        return self._continuous("gumbel", shape, like)

    def beta(self, alpha, beta, shape, like):
        return self._continuous("beta", shape, like)


def _declare_calls(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook: hand each call's logits to a noise source that reads declared laws."""
    begin = getattr(getattr(module, "rng", None), "begin_call", None)
    logits = args[0] if args else kwargs.get("logits")
    if begin is not None and isinstance(logits, torch.Tensor):
        begin(module, logits, bool(kwargs.get("categorical", False)))


@dataclasses.dataclass
class _Integrand:
    """The float64 problem and frozen estimator, replayed on chosen discrete draws and nodes."""

    estimator: Estimator
    problem: object
    device: torch.device

    def count(self) -> Layout:
        counter = LawCounter(torch.Generator(self.device).manual_seed(0))
        with self.estimator.drawing_from(counter), self.estimator.frozen():
            self.problem.sample_gradients(self.estimator, 1)
        return counter.found

    def replay(self, layout: Layout, configs: torch.Tensor, indices: torch.Tensor, orders: torch.Tensor,
               free: torch.Tensor, held: torch.Tensor | None = None,
               noise_out: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(estimates (rows, dim), weights (rows,)): P(discrete draws) x the free dimensions' weights."""
        noise = QuadratureNoise(configs.to(self.device, torch.float64), indices.to(self.device),
                                orders.to(self.device).expand(indices.shape), free.to(self.device),
                                None if held is None else held.to(self.device))
        if noise_out is not None:
            noise_out.append(noise)
        with self.estimator.drawing_from(noise), self.estimator.frozen():
            estimates = self.problem.sample_gradients(self.estimator, indices.shape[0]).detach().to(torch.float64)
        if noise.offset != len(layout.arities) or noise.column != len(layout.pieces):
            raise NotIntegrable(f"the estimator made {noise.offset} discrete and {noise.column} continuous draws, "
                                f"not the {len(layout.arities)} and {len(layout.pieces)} counted")
        return estimates, torch.exp(noise.log_prob) * noise.weight


def _probe_rows(layout: Layout, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Base points (random discrete draws and nodes) and, for each continuous dimension, the same
    points with that dimension moved through every node of every piece of the PROBE_ORDER rule:
    (configs, indices, the dimension each row moves, -1 for a base row). A moved dimension's rows
    come piece by piece, node by node, PROBE_ROWS at a time."""
    radix = torch.tensor(layout.arities, dtype=torch.long)
    sizes = torch.tensor(layout.pieces, dtype=torch.long) * PROBE_ORDER
    configs = torch.randint(0, 2**62, (PROBE_ROWS, len(layout.arities)), generator=generator) % radix
    indices = torch.randint(0, 2**62, (PROBE_ROWS, len(layout.pieces)), generator=generator) % sizes
    all_configs, all_indices, moved = [configs], [indices], [-1] * PROBE_ROWS
    for j, pieces in enumerate(layout.pieces):
        for index in range(pieces * PROBE_ORDER):
            changed = indices.clone()
            changed[:, j] = index
            all_configs.append(configs)
            all_indices.append(changed)
            moved += [j] * PROBE_ROWS
    return torch.cat(all_configs), torch.cat(all_indices), moved


def dependencies(integrand: _Integrand, layout: Layout) -> tuple[torch.Tensor, torch.Tensor, bool, torch.Tensor]:
    """(depends, varies, coupled, steers). depends (dim, continuous dimensions): which coordinates of the
    estimate change with which noise dimension, found by moving each dimension through every node
    of every piece of the PROBE_ORDER rule at PROBE_ROWS random base points; varies: which change
    with it inside a piece (the others are constant on each piece: one node per piece integrates
    them exactly, as enumeration would); coupled: whether one example's estimate changes with the
    other rows' draws, replayed alone, beside other rows, and beside different ones; steers
    (continuous dimensions, discrete draws): whose probability changes with which noise dimension
    (STS's Bernoulli after its Beta): a coordinate that enumerates such a draw varies with that
    dimension, and no group is split (:class:`_Split` needs the draws independent of the noise)."""
    generator = torch.Generator().manual_seed(0)
    configs, indices, moved = _probe_rows(layout, generator)
    free = torch.ones(len(layout.pieces), dtype=torch.bool)
    order = torch.tensor(PROBE_ORDER)
    noises: list = []
    estimates, _ = integrand.replay(layout, configs, indices, order, free, noise_out=noises)
    draw_log_probs = noises[0].draw_log_probs
    log_prob = (torch.cat(draw_log_probs, 1) if draw_log_probs else torch.zeros(len(configs), 0)).cpu()
    scale = float(estimates.abs().max()) if estimates.numel() else 0.0
    dim = estimates.shape[1]
    steers = torch.zeros(len(layout.pieces), log_prob.shape[1], dtype=torch.bool)
    depends = torch.zeros(dim, len(layout.pieces), dtype=torch.bool)
    varies = torch.zeros_like(depends)
    moved_t = torch.tensor(moved)
    base = estimates[:PROBE_ROWS]
    for j, pieces in enumerate(layout.pieces):
        rows = estimates[moved_t == j].reshape(pieces, PROBE_ORDER, PROBE_ROWS, dim)
        depends[:, j] = ((rows - base).abs() > 1e-12 * scale).flatten(0, 2).any(0)
        varies[:, j] = ((rows - rows[:, :1]).abs() > 1e-12 * scale).flatten(0, 2).any(0)
        moved_log_prob = log_prob[moved_t == j].reshape(pieces, PROBE_ORDER, PROBE_ROWS, -1)
        change = (moved_log_prob - moved_log_prob[:, :1]).abs()
        steers[j] = (change.nan_to_num(nan=0.0) > 1e-12).flatten(0, 2).any(0)
    alone = integrand.replay(layout, configs[:1], indices[:1], order, free)[0][0]
    beside = integrand.replay(layout, configs[:4], indices[:4], order, free)[0][0]
    others = torch.cat([configs[:1], configs[4:7]]), torch.cat([indices[:1], indices[4:7]])
    with_others = integrand.replay(layout, *others, order, free)[0][0]
    tolerance = 1e-9 * float(alone.abs().max()) if alone.numel() else 0.0
    same = all(torch.allclose(alone, b, rtol=1e-9, atol=tolerance) for b in (beside, with_others))
    return depends, varies, not same, steers


@dataclasses.dataclass
class _Draws:
    """Which coordinates of the estimate change with which discrete draw (``depends``, (dim,
    draws)); ``holdable``: draws that change no other draw's probability nor a continuous weight
    (a group whose estimate does not change with one holds it at ``held``, its likeliest outcome,
    instead of enumerating it)."""

    depends: torch.Tensor
    holdable: torch.Tensor
    held: torch.Tensor


def discrete_dependencies(integrand: _Integrand, layout: Layout) -> _Draws:
    """Move each discrete draw through all its outcomes at PROBE_ROWS random base points (discrete
    draws and nodes) and see which coordinates change, and whether the other draws' probabilities
    or the continuous weights do."""
    count, dim = len(layout.arities), integrand.problem.dim
    if not count:
        empty = torch.zeros(0, dtype=torch.long)
        return _Draws(torch.zeros(dim, 0, dtype=torch.bool), empty.bool(), empty)
    generator = torch.Generator().manual_seed(2)
    radix = torch.tensor(layout.arities, dtype=torch.long)
    sizes = torch.tensor(layout.pieces, dtype=torch.long) * PROBE_ORDER
    configs = torch.randint(0, 2**62, (PROBE_ROWS, count), generator=generator) % radix
    indices = torch.randint(0, 2**62, (PROBE_ROWS, len(layout.pieces)), generator=generator) % sizes
    moved_configs = [configs]
    for k, arity in enumerate(layout.arities):
        for outcome in range(arity):
            changed = configs.clone()
            changed[:, k] = outcome
            moved_configs.append(changed)
    every = torch.cat(moved_configs)
    noises: list = []
    estimates, _ = integrand.replay(layout, every, indices.repeat(len(moved_configs), 1), torch.tensor(PROBE_ORDER),
                                    torch.ones(len(layout.pieces), dtype=torch.bool), noise_out=noises)
    log_p = torch.cat(noises[0].draw_log_probs, 1).cpu()
    weight = noises[0].weight.cpu()
    scale = float(estimates.abs().max()) if estimates.numel() else 0.0
    depends = torch.zeros(dim, count, dtype=torch.bool)
    holdable = torch.ones(count, dtype=torch.bool)
    held = torch.zeros(count, dtype=torch.long)
    start = PROBE_ROWS
    for k, arity in enumerate(layout.arities):
        rows = slice(start, start + arity * PROBE_ROWS)
        start = rows.stop
        moved = estimates[rows].cpu().reshape(arity, PROBE_ROWS, dim)
        depends[:, k] = ((moved - estimates[:PROBE_ROWS].cpu()).abs() > 1e-12 * scale).flatten(0, 1).any(0)
        others = torch.cat([log_p[:, :k], log_p[:, k + 1:]], 1)
        base_others = others[:PROBE_ROWS].repeat(arity, 1)
        same_others = torch.allclose(others[rows], base_others, rtol=1e-12, atol=1e-12, equal_nan=True)
        same_weight = torch.allclose(weight[rows], weight[:PROBE_ROWS].repeat(arity), rtol=1e-12, atol=0)
        holdable[k] = same_others and same_weight
        held[k] = int(log_p[rows, k].reshape(arity, PROBE_ROWS)[:, 0].argmax())
    return _Draws(depends, holdable, held)


@dataclasses.dataclass
class _Group:
    """Coordinates of the estimate that depend on the same continuous dimensions: ``dimensions``,
    which they vary with inside a piece (integrated by the rule ladder), and ``fixed``, on whose
    every piece they are constant (one node per piece with the piece's exact mass: enumerated)."""

    coordinates: torch.Tensor  # long indices
    dimensions: list[int]
    fixed: list[int] = dataclasses.field(default_factory=list)
    split: _Split | None = None
    draws: list[int] | None = None  # the discrete draws enumerated (None: all); the others are held
    held: torch.Tensor | None = None  # (draws,) the outcome every draw is held at when not enumerated

    def arities(self, layout: Layout) -> list[int]:
        return layout.arities if self.draws is None else [layout.arities[k] for k in self.draws]

    def held_mask(self, layout: Layout) -> torch.Tensor | None:
        if self.draws is None:
            return None
        mask = torch.ones(len(layout.arities), dtype=torch.bool)
        mask[self.draws] = False
        return mask

    def configs(self, layout: Layout, digits: torch.Tensor) -> torch.Tensor:
        """Full discrete configurations from the digits of the enumerated draws."""
        if self.draws is None:
            return digits
        full = self.held.expand(digits.shape[0], -1).clone()
        full[:, self.draws] = digits
        return full


@dataclasses.dataclass
class _Split:
    """Given the ``outer`` dimensions (with the discrete draws and the fixed dimensions' pieces),
    the group's estimate is a sum of functions of one ``component`` of the other dimensions each
    (no two components interact), so its conditional mean and variance are sums of integrals over
    one component at a time: f = f(x_O, c) + sum_c [f(x_O, x_c, c) - f(x_O, c)] with the other
    dimensions at an anchor c (the anchored decomposition, exact for such an f)."""

    outer: list[int]
    components: list[list[int]]

    def describe(self) -> str:
        widest = max(len(c) for c in self.components)
        return (f"conditionally on {len(self.outer)} dimension(s), additive over {len(self.components)} "
                f"independent components of at most {widest} dimension(s)")


INTERACTION_TOLERANCE = 1e-10  # a mixed difference below this share of the estimate's scale is rounding
MAX_SPLIT_UNITS = 4  # the outer dimensions of a split are at most this many blocks


def interactions(integrand: _Integrand, layout: Layout) -> torch.Tensor:
    """(dim, dimensions, dimensions): which coordinates of the estimate have a non-zero mixed
    difference f(x) - f(x_j') - f(x_k') + f(x_j', x_k') in dimensions j and k (of different
    blocks), at PROBE_ROWS random base points (discrete draws, pieces and nodes) each moved to a
    random other node; zero everywhere means the estimate is a sum of a function without x_j and
    one without x_k."""
    P = len(layout.pieces)
    generator = torch.Generator().manual_seed(1)
    radix = torch.tensor(layout.arities, dtype=torch.long)
    sizes = torch.tensor(layout.pieces, dtype=torch.long) * PROBE_ORDER
    configs = torch.randint(0, 2**62, (PROBE_ROWS, len(layout.arities)), generator=generator) % radix
    indices = torch.randint(0, 2**62, (PROBE_ROWS, P), generator=generator) % sizes
    others = (indices + 1 + torch.randint(0, 2**62, (PROBE_ROWS, P), generator=generator) % (sizes - 1)) % sizes
    pairs = [(j, k) for j in range(P) for k in range(j + 1, P) if layout.blocks[j] != layout.blocks[k]]
    found = torch.zeros(integrand.problem.dim, P, P, dtype=torch.bool)
    if not pairs:
        return found
    rows = []
    for j, k in pairs:
        for move in ((), (j,), (k,), (j, k)):
            moved = indices.clone()
            moved[:, list(move)] = others[:, list(move)]
            rows.append(moved)
    free = torch.ones(P, dtype=torch.bool)
    every = torch.cat(rows)
    estimates = torch.cat([integrand.replay(layout, configs.repeat(len(chunk) // PROBE_ROWS, 1), chunk,
                                            torch.tensor(PROBE_ORDER), free)[0]
                           for chunk in every.split(PROBE_ROWS * 4 * 256)])
    values = estimates.reshape(len(pairs), 4, PROBE_ROWS, -1)
    mixed = values[:, 0] - values[:, 1] - values[:, 2] + values[:, 3]
    scale = float(values.abs().max())
    hit = (mixed.abs() > INTERACTION_TOLERANCE * scale).any(1)  # (pairs, dim)
    for (j, k), row in zip(pairs, hit):
        found[:, j, k] = found[:, k, j] = row
    return found


def _split(group: _Group, interact: torch.Tensor, layout: Layout) -> _Split | None:
    """The cheapest split of the group's varying dimensions into outer blocks and at least two
    non-interacting components of the rest (cost of a product rule of 16 nodes per piece), or None."""
    if len(group.dimensions) < 2 or layout.copies > 1:
        return None
    linked = interact[group.coordinates].any(0)
    units: dict[int, list[int]] = {}
    for j in group.dimensions:
        units.setdefault(layout.blocks[j], []).append(j)
    blocks = list(units.values())

    def size(dims) -> int:
        return math.prod(layout.pieces[j] * 16 for j in dims)

    edges = {(a, b) for a, b in itertools.combinations(range(len(blocks)), 2)
             if bool(linked[blocks[a]][:, blocks[b]].any())}
    best = None
    for count in range(0, min(MAX_SPLIT_UNITS, len(blocks) - 2) + 1):
        for outer in itertools.combinations(range(len(blocks)), count):
            rest = [b for b in range(len(blocks)) if b not in outer]
            parent = {b: b for b in rest}

            def root(b):
                while parent[b] != b:
                    b = parent[b]
                return b

            for a, b in itertools.combinations(rest, 2):
                if (a, b) in edges:
                    parent[root(a)] = root(b)
            joined: dict[int, list[int]] = {}
            for b in rest:
                joined.setdefault(root(b), []).extend(blocks[b])
            if len(joined) < 2:
                continue
            outer_dims = [j for b in outer for j in blocks[b]]
            cost = size(outer_dims) * (1 + sum(size(c) for c in joined.values()))
            if best is None or cost < best[0]:
                best = (cost, _Split(outer_dims, [sorted(c) for c in joined.values()]))
    return None if best is None else best[1]


def _split_groups(groups: list[_Group], interact: torch.Tensor, layout: Layout) -> list[_Group]:
    """Each group's coordinates regrouped by the split that suits each alone (:func:`_split`);
    those without one stay together, as before."""
    found: list[_Group] = []
    for group in groups:
        alone: dict[tuple, list[int]] = {}
        splits: dict[tuple, _Split | None] = {}
        for i in group.coordinates.tolist():
            split = _split(dataclasses.replace(group, coordinates=torch.tensor([i])), interact, layout)
            key = () if split is None else (tuple(split.outer), tuple(tuple(c) for c in split.components))
            alone.setdefault(key, []).append(i)
            splits[key] = split
        found.extend(dataclasses.replace(group, coordinates=torch.tensor(coords), split=splits[key])
                     for key, coords in alone.items())
    return found


def _groups(depends: torch.Tensor, varies: torch.Tensor, layout: Layout, draws: _Draws | None = None,
            steers: torch.Tensor | None = None) -> list[_Group]:
    """Coordinates grouped by the dimensions they depend on and vary with inside a piece (each
    widened to whole blocks), and by the discrete draws they enumerate (those they depend on, and
    every draw that cannot be held; a dimension that steers the probability of an enumerated draw
    varies for the coordinate too)."""
    blocks = torch.tensor(layout.blocks, dtype=torch.long)

    def widened(mask: torch.Tensor) -> tuple[int, ...]:
        return tuple(int(j) for j in torch.nonzero(torch.isin(blocks, blocks[mask].unique())).flatten())

    found: dict[tuple, list[int]] = {}
    for i in range(depends.shape[0]):
        enumerated = (None if draws is None else
                      tuple(int(k) for k in torch.nonzero(draws.depends[i] | ~draws.holdable).flatten()))
        steering = torch.zeros(depends.shape[1], dtype=torch.bool)
        if steers is not None and steers.shape[1]:
            steering = steers[:, list(enumerated) if enumerated is not None else slice(None)].any(1)
        dims, smooth = widened(depends[i] | steering), widened(varies[i] | steering)
        found.setdefault((smooth, tuple(j for j in dims if j not in smooth), enumerated), []).append(i)
    return [_Group(torch.tensor(coords), list(smooth), list(fixed), None,
                   None if enumerated is None else list(enumerated), None if draws is None else draws.held)
            for (smooth, fixed, enumerated), coords in found.items()]


@dataclasses.dataclass
class Rule:
    """A cubature rule over a group's dimensions: a signed sum of product rules, each with its own
    nodes per piece in every dimension (one term: a tensor-product rule; several: Smolyak's sparse
    grid)."""

    terms: list[tuple[float, tuple[int, ...]]]
    name: str

    def evaluations(self, layout: Layout, group: _Group) -> int:
        per_term = (math.prod(layout.pieces[j] * n for j, n in zip(group.dimensions, orders))
                    for _, orders in self.terms)
        return math.prod(group.arities(layout)) * math.prod(layout.pieces[j] for j in group.fixed) * sum(per_term)


@dataclasses.dataclass
class SplitRule:
    """The product rule of ``n`` nodes per piece over a split group: the outer dimensions (with the
    discrete draws and fixed pieces) once with the others at their anchor, then once per node of
    each component."""

    n: int

    @property
    def name(self) -> str:
        return f"a product Gauss rule of {self.n} nodes per piece"  # the same words as tensor_rule's

    def evaluations(self, layout: Layout, group: _Group) -> int:
        outer = (math.prod(group.arities(layout)) * math.prod(layout.pieces[j] for j in group.fixed)
                 * math.prod(layout.pieces[j] * self.n for j in group.split.outer))
        inner = sum(math.prod(layout.pieces[j] * self.n for j in c) for c in group.split.components)
        return outer * (1 + inner)


def tensor_rule(dimensions: int, n: int) -> Rule:
    return Rule([(1.0, (n,) * dimensions)], f"a product Gauss rule of {n} nodes per piece")


def smolyak_rule(dimensions: int, level: int) -> Rule:
    """Smolyak's sparse grid of ``level`` >= ``dimensions`` over the n-node composite rules, n = 1, 2, ...:
    sum over l (each l_j >= 1) with level - dimensions < |l| <= level of
    (-1)^(level - |l|) C(dimensions - 1, level - |l|) x the product rule of l_j nodes per piece."""
    terms = []

    def compositions(total: int, parts: int):
        if parts == 1:
            yield (total,)
            return
        for first in range(1, total - parts + 2):
            for rest in compositions(total - first, parts - 1):
                yield (first, *rest)

    for size in range(max(dimensions, level - dimensions + 1), level + 1):
        coefficient = (-1) ** (level - size) * math.comb(dimensions - 1, level - size)
        terms.extend((float(coefficient), l) for l in compositions(size, dimensions))
    return Rule(terms, f"a Smolyak sparse grid of level {level - dimensions + 1}")


TENSOR_NODES = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # the product rules tried, in order
TENSOR_FLOOR = 12  # when the budget stops the product rules below this, sparse grids take over


def rule_ladder(layout: Layout, group: _Group):
    """Rules of growing cost for a group: product Gauss rules of 2, 3, 4, 6, ... nodes per piece,
    then, where the next product rule below TENSOR_FLOOR nodes would cost more than the first
    sparse grid beyond it, Smolyak's sparse grids of growing level (more dimensions than a product
    rule can afford)."""
    dims = len(group.dimensions)
    if not dims:
        yield tensor_rule(0, 1)
        return
    if group.split is not None:
        yield from (SplitRule(n) for n in TENSOR_NODES)
        return
    last = 0
    for n in TENSOR_NODES:
        rule = tensor_rule(dims, n)
        if n >= TENSOR_FLOOR or dims == 1:
            yield rule
            continue
        sparse = smolyak_rule(dims, dims + n)
        if dims > 1 and sparse.evaluations(layout, group) < rule.evaluations(layout, group):
            last = n
            break
        yield rule
    else:
        return
    level = dims + last
    while level - dims < MAX_NODES:
        yield smolyak_rule(dims, level)
        level += 1


@dataclasses.dataclass(frozen=True)
class _Moments:
    """One rule's integrals for a group's coordinates: the mean, the variance about it and the total
    weight (1 for a converged rule); with averaged copies, ``variance`` is already the variance of
    their average (see :func:`_integrate`)."""

    mean: torch.Tensor
    variance: torch.Tensor
    total: float


def _integrate(integrand: _Integrand, layout: Layout, group: _Group, rule: Rule) -> _Moments:
    """Mean and variance of the group's coordinates: every discrete outcome times ``rule`` over the
    group's dimensions (the others held at their first node, not integrated).

    With K averaged copies (conditionally i.i.d. given the discrete draws before them, the key) the
    replay ties them, giving one copy's estimate phi; then Var(mean of K) = C / K + (1 - 1/K) B with
    C = Var(phi) and B = Var(E[phi | key]) (the copies' covariance), B summed over the keys."""
    integrated = group.dimensions + group.fixed
    free = torch.zeros(len(layout.pieces), dtype=torch.bool)
    free[integrated] = True
    dims = torch.tensor(integrated, dtype=torch.long)
    draws = len(group.arities(layout))
    held = group.held_mask(layout)
    block = max(1, ENUMERATION_ELEMENTS // max(1, integrand.problem.dim, draws + len(layout.pieces)))
    key_radix = torch.tensor(layout.arities[:layout.conditioning], dtype=torch.long)
    keys = math.prod(key_radix.tolist())
    places = torch.cumprod(torch.cat([key_radix.new_ones(1), key_radix[:-1]]), 0) if len(key_radix) else key_radix

    def rows():
        """(discrete digits, indices, orders, coefficient) in chunks of at most ``block`` rows."""
        for coefficient, orders in rule.terms:
            orders = tuple(orders) + (1,) * len(group.fixed)
            sizes = [layout.pieces[j] * n for j, n in zip(integrated, orders)]
            radix = torch.tensor(group.arities(layout) + sizes, dtype=torch.long)
            total = math.prod(radix.tolist())
            for start in range(0, total, block):
                digits = mixed_radix(torch.arange(start, min(start + block, total)), radix)
                indices = torch.zeros(digits.shape[0], len(layout.pieces), dtype=torch.long)
                order = torch.ones(len(layout.pieces), dtype=torch.long)
                if integrated:
                    indices[:, dims] = digits[:, draws:]
                    order[dims] = torch.tensor(orders, dtype=torch.long)
                yield group.configs(layout, digits[:, :draws]), indices, order.expand_as(indices), coefficient

    def blocks():
        pending: list = []
        count = 0

        def flush():
            configs = torch.cat([p[0] for p in pending])
            indices = torch.cat([p[1] for p in pending])
            orders = torch.cat([p[2] for p in pending])
            coefficients = torch.cat([torch.full((p[0].shape[0],), p[3], dtype=torch.float64) for p in pending])
            estimates, weights = integrand.replay(layout, configs, indices, orders, free, held)
            estimates = torch.where(weights.unsqueeze(1) != 0, estimates, 0.0)  # nodes of empty pieces
            key = (configs[:, :layout.conditioning] * places).sum(-1) if keys > 1 else torch.zeros(len(configs),
                                                                                               dtype=torch.long)
            return (estimates[:, group.coordinates.to(estimates.device)].cpu(),
                    (weights * coefficients.to(weights.device)).cpu(), key)

        for piece in rows():
            if count + piece[0].shape[0] > block and pending:
                yield flush()
                pending, count = [], 0
            pending.append(piece)
            count += piece[0].shape[0]
        if pending:
            yield flush()

    cached = list(blocks()) if rule.evaluations(layout, group) <= block else None
    source = (lambda: cached) if cached is not None else blocks
    size = len(group.coordinates)
    total, mean = 0.0, torch.zeros(size, dtype=torch.float64)
    key_weight, key_sum = torch.zeros(keys, dtype=torch.float64), torch.zeros(keys, size, dtype=torch.float64)
    for estimates, weights, key in source():  # the rule's weights need not sum to 1 exactly (a density in them)
        mean += (weights.unsqueeze(1) * estimates).sum(0)
        total += float(weights.sum())
        if layout.copies > 1:
            key_weight.index_add_(0, key, weights)
            key_sum.index_add_(0, key, weights.unsqueeze(1) * estimates)
    variance = torch.zeros_like(mean)
    for estimates, weights, _ in source():  # about the mean, as enumeration does
        variance += (weights.unsqueeze(1) * (estimates - mean) ** 2).sum(0)
    if layout.copies > 1:
        K = layout.copies
        seen = key_weight != 0
        conditional = key_sum[seen] / key_weight[seen].unsqueeze(1)
        between = (key_weight[seen].unsqueeze(1) * (conditional - mean) ** 2).sum(0)
        variance = variance / K + (1 - 1 / K) * between
    return _Moments(mean, variance, total)


def _integrate_split(integrand: _Integrand, layout: Layout, group: _Group, rule: SplitRule) -> _Moments:
    """Mean and variance of a split group's coordinates (see :class:`_Split`): per outer node o
    (discrete draws, fixed pieces, outer nodes; weight w_o), the anchored value f0_o and, per
    component, T = f(o, x_c) - f0_o over the component's nodes: E[f | o] = f0_o + sum_c E[T | o] and
    Var[f | o] = sum_c Var[T | o] (the components are independent given o); then the law of total
    variance over o."""
    split, n, P = group.split, rule.n, len(layout.pieces)
    draws = len(group.arities(layout))
    held = group.held_mask(layout)
    outer = split.outer + group.fixed
    orders = [n] * len(split.outer) + [1] * len(group.fixed)
    radix = torch.tensor(group.arities(layout) + [layout.pieces[j] * o for j, o in zip(outer, orders)],
                         dtype=torch.long)
    digits = mixed_radix(torch.arange(math.prod(radix.tolist())), radix)
    configs = group.configs(layout, digits[:, :draws])
    base = torch.zeros(digits.shape[0], P, dtype=torch.long)
    base_orders = torch.ones(digits.shape[0], P, dtype=torch.long)
    outer_t = torch.tensor(outer, dtype=torch.long)
    if outer:
        base[:, outer_t] = digits[:, draws:]
        base_orders[:, outer_t] = torch.tensor(orders, dtype=torch.long)
    free = torch.zeros(P, dtype=torch.bool)
    free[outer_t] = True
    block = max(1, ENUMERATION_ELEMENTS // max(1, integrand.problem.dim, draws + P))
    coords = group.coordinates
    parts = [integrand.replay(layout, c, i, o, free, held) for c, i, o in
             zip(configs.split(block), base.split(block), base_orders.split(block))]
    f0 = torch.cat([e for e, _ in parts])[:, coords.to(parts[0][0].device)].cpu()
    w0 = torch.cat([w for _, w in parts]).cpu()
    f0 = torch.where(w0.unsqueeze(1) != 0, f0, 0.0)
    conditional_mean, conditional_variance = f0.clone(), torch.zeros_like(f0)
    deviation = abs(float(w0.sum()) - 1)
    for component in split.components:
        inner_radix = torch.tensor([layout.pieces[j] * n for j in component], dtype=torch.long)
        M = math.prod(inner_radix.tolist())
        inner = mixed_radix(torch.arange(M), inner_radix)
        comp_t = torch.tensor(component, dtype=torch.long)
        comp_free = free.clone()
        comp_free[comp_t] = True
        chunk = max(1, block // M)
        inner_total = None
        for start in range(0, len(base), chunk):
            rows = slice(start, min(len(base), start + chunk))
            k = rows.stop - rows.start
            indices = base[rows].repeat_interleave(M, 0)
            indices[:, comp_t] = inner.repeat(k, 1)
            order = base_orders[rows].repeat_interleave(M, 0)
            order[:, comp_t] = n
            estimates, weights = integrand.replay(layout, configs[rows].repeat_interleave(M, 0), indices, order,
                                                  comp_free, held)
            estimates = estimates[:, coords.to(estimates.device)].cpu().reshape(k, M, -1)
            weights = weights.cpu().reshape(k, M)
            outer_w = w0[rows].unsqueeze(1)
            inner_w = torch.where(outer_w != 0, weights / torch.where(outer_w != 0, outer_w, 1.0), 0.0)
            T = torch.where(weights.unsqueeze(2) != 0, estimates - f0[rows].unsqueeze(1), 0.0)
            m = (inner_w.unsqueeze(2) * T).sum(1)
            conditional_mean[rows] += m
            conditional_variance[rows] += (inner_w.unsqueeze(2) * (T - m.unsqueeze(1)) ** 2).sum(1)
            heaviest = int(w0[rows].argmax())
            if inner_total is None and float(w0[rows][heaviest]) > 0:
                inner_total = float(inner_w[heaviest].sum())
        deviation = max(deviation, abs((inner_total if inner_total is not None else 0.0) - 1))
    mean = (w0.unsqueeze(1) * conditional_mean).sum(0)
    variance = (w0.unsqueeze(1) * ((conditional_mean - mean) ** 2 + conditional_variance)).sum(0)
    return _Moments(mean, variance, 1 + deviation)


@dataclasses.dataclass
class _Converged:
    """A group's moments from the last rule of its ladder, the gap to the rule before it, the rule's
    name and the evaluations the ladder spent."""

    moments: _Moments
    gap: float
    rule: str
    evaluations: int


def converge(integrand: _Integrand, layout: Layout, group: _Group, budget: int) -> _Converged | str:
    """Climb the group's rule ladder until two consecutive rules agree to QUADRATURE_TOLERANCE
    (max over its coordinates of |mean difference| / scale and |variance difference| / scale^2,
    scale = max(|mean| + sd), and |total weight - 1|); spend at most ``budget`` evaluations.
    The reason as text if not."""
    previous, spent, gap = None, 0, math.inf
    dims = len(group.dimensions)
    for rule in rule_ladder(layout, group):
        cost = rule.evaluations(layout, group)
        if spent + cost > budget:
            break
        spent += cost
        current = (_integrate_split if isinstance(rule, SplitRule) else _integrate)(integrand, layout, group, rule)
        if not dims:
            return _Converged(current, 0.0, "enumeration of the pieces", spent)
        if previous is not None:
            scale = float((current.mean.abs() + current.variance.clamp_min(0).sqrt()).max())
            gap = abs(current.total - 1) if scale == 0 else max(
                abs(current.total - 1), float((current.mean - previous.mean).abs().max()) / scale,
                float((current.variance - previous.variance).abs().max()) / scale**2)
            if gap <= QUADRATURE_TOLERANCE:
                return _Converged(current, gap, rule.name, spent)
        previous = current
    fixed = f" and {len(group.fixed)} constant on each piece" if group.fixed else ""
    jointly = " jointly (no sum over separate groups of them)" if dims > 1 and group.split is None else ""
    over = (f"{dims} varying continuous dimension(s){jointly}{fixed} x {outcome_count(group.arities(layout))} "
            "discrete outcomes")
    if not dims:
        return f"over {over}, more than {budget:,} evaluations are needed to enumerate them"
    if previous is None or math.isinf(gap):
        return f"over {over}, more than {budget:,} evaluations are needed for two rules to compare"
    return (f"quadrature did not converge within {budget:,} evaluations: over {over} the last two rules "
            f"differ by {gap:.1e} of the estimate's scale (tolerance {QUADRATURE_TOLERANCE:g})")


def integrate_exact(estimator: Estimator, problem, reference) -> tuple[ExactMoments | None, str]:
    """Exact mean and variance of an estimator with continuous noise by quadrature (module
    docstring), on float64 copies of the problem and the frozen estimator; None and why not when its
    laws are not declared, examples are coupled, or a group's rules do not agree within the budget."""
    if not reference.exact:
        return None, "not computed: the reference gradient is itself estimated"
    began = time.perf_counter()
    problem = copy.deepcopy(problem).to(torch.float64)
    estimator = copy.deepcopy(estimator).to(torch.float64)
    handle = estimator.register_forward_pre_hook(_declare_calls, with_kwargs=True)
    try:
        device = next(iter(problem.buffers()), torch.empty(0)).device
        integrand = _Integrand(estimator, problem, device)
        layout = integrand.count()
        depends, varies, coupled, steers = dependencies(integrand, layout)
        if coupled:
            return None, "not computed: examples coupled (estimate of one example changes with the others' draws)"
        groups = _groups(depends, varies, layout, discrete_dependencies(integrand, layout), steers)
        if any(len(g.dimensions) > 1 for g in groups) and layout.copies == 1 and not bool(steers.any()):
            groups = _split_groups(groups, interactions(integrand, layout), layout)
        share = MAX_QUADRATURE_EVALUATIONS // len(groups)
        found = []
        for group in groups:
            result = converge(integrand, layout, group, share)
            if isinstance(result, str):
                return None, f"not computed: {result}"
            found.append(result)
    except NotEnumerable as exc:
        return None, f"not computed: {exc}"
    finally:
        handle.remove()
    mean = torch.zeros(problem.dim, dtype=torch.float64)
    variance = torch.zeros(problem.dim, dtype=torch.float64)
    for group, result in zip(groups, found):
        mean[group.coordinates], variance[group.coordinates] = result.moments.mean, result.moments.variance
    kinds = ", ".join(sorted(set(layout.kinds))) or "none"
    widest = max(range(len(groups)), key=lambda k: (len(groups[k].dimensions), len(groups[k].fixed)))
    group = groups[widest]
    how = found[widest].rule + (f", {group.split.describe()}" if group.split is not None else "")
    fixed = f" and {len(group.fixed)} constant on each piece (one node per piece)" if group.fixed else ""
    evaluations = sum(c.evaluations for c in found)
    gap = max(c.gap for c in found)
    copies = f"; {layout.copies} averaged copies from one" if layout.copies > 1 else ""
    return ExactMoments(mean, variance), (
        f"{QUADRATURE_NOTE}: {len(layout.pieces)} continuous dimension(s) ({kinds}) integrated in "
        f"{len(groups)} group(s) of coordinates, the widest varying in {len(group.dimensions)} ({how}){fixed}, "
        f"x {outcome_count(group.arities(layout))} discrete outcomes enumerated{copies}; successive "
        f"rules agree to {gap:.1e} of the estimate's scale (tolerance {QUADRATURE_TOLERANCE:g}); {evaluations:,} "
        f"evaluations in {time.perf_counter() - began:.2f} s")
