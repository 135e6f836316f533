"""One training step of the linear Bernoulli VAE (batch 50, 784-200-784) through the suite, per
estimator, against hand-written plain-torch steps of the same model with REINFORCE-LOO (K=2) and
DisARM: the suite's overhead per step.

The suite's step is the real one: ``bernoulli-vae``'s ``fit`` on seeded fake images (the cost does
not depend on the pixel values), its ``seconds_per_step`` record (device-synchronised, evaluations
excluded). The hand-written steps do the same work as the suite's step: dynamic binarisation of the
mini-batch, encoder, the estimator's loss evaluations, backward, Adam (encoder, decoder) and SGD
(prior), DisARM's EMA of the encoder gradient's moments, the mini-batch ELBO kept on the device.

    python benchmarks/vae_step.py [--threads 1] [--steps 400] [--repeats 3] [--estimators a,b]

Prints ms/step (median over repeats) per estimator, and the overhead of the suite's
reinforce-loo(K=2) and disarm over the hand-written ones.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

BATCH, PIXELS, LATENTS = 50, 784, 200
DEFAULT_ESTIMATORS = ("reinforce-loo(K=2),disarm,arm,rebar,relax,nvil,muprop,gumbel-softmax,"
                      "straight-through-sigmoid,reinmax")


def fake_mnist(examples: int = 2_000):
    g = torch.Generator().manual_seed(0)
    image = lambda n: (torch.rand(n, PIXELS, generator=g) ** 3, torch.zeros(n, dtype=torch.long))  # noqa: E731
    return {"train": image(examples), "valid": image(100), "test": image(100)}


def suite_seconds(spec: str, steps: int) -> float:
    """Mean seconds per step of ``bernoulli-vae`` trained with ``spec`` (the fit's own record)."""
    import estimators
    import problems
    from bench.harness import seeded_noise
    from bench.specs import parse_spec

    problem = problems.build_problem("bernoulli-vae", {"steps": steps, "log_every": steps, "eval_every": steps,
                                                       "eval_subset": 50, "test_samples": 1, "probe_batch": 1,
                                                       "probe_samples": 2, "probe_reference_samples": 64})
    name, params = parse_spec(spec)
    estimator = estimators.build_estimator(name, params)
    with estimator.drawing_from(seeded_noise(0, 0, torch.device("cpu"))):
        records = [r for r in problem.fit(estimator, 0) if isinstance(r, problems.Record)]
    return next(r.value for r in records if r.name == "seconds_per_step")


class HandWritten:
    """The linear VAE and its training step in plain torch (no suite code)."""

    def __init__(self, images: torch.Tensor, estimator: str):
        g = torch.Generator().manual_seed(0)
        bound_in, bound_z = PIXELS ** -0.5, LATENTS ** -0.5
        mean = images.mean(0)
        self.mean = mean
        self.enc_w = ((torch.rand(LATENTS, PIXELS, generator=g) * 2 - 1) * bound_in).requires_grad_()
        self.enc_b = torch.zeros(LATENTS, requires_grad=True)
        self.dec_w = ((torch.rand(PIXELS, LATENTS, generator=g) * 2 - 1) * bound_z).requires_grad_()
        self.dec_b = torch.logit(mean.clamp(1e-3, 1 - 1e-3)).requires_grad_()
        self.prior = torch.zeros(LATENTS, requires_grad=True)
        self.adam = torch.optim.Adam([self.enc_w, self.enc_b, self.dec_w, self.dec_b], lr=1e-4)
        self.sgd = torch.optim.SGD([self.prior], lr=1e-2)
        self.first = [torch.zeros_like(p, dtype=torch.float64) for p in (self.enc_w, self.enc_b)]
        self.second = [torch.zeros_like(p, dtype=torch.float64) for p in (self.enc_w, self.enc_b)]
        self.elbo = torch.zeros((), dtype=torch.float64)
        self.images, self.g = images, torch.Generator().manual_seed(1)
        self.step = self.rloo_step if estimator == "reinforce-loo" else self.disarm_step

    def negative_elbo(self, x, z, logits):
        decoded = z @ self.dec_w.T + self.dec_b
        log_px = (x * decoded - F.softplus(decoded)).sum(-1)
        log_pz = (z * self.prior - F.softplus(self.prior)).sum(-1)
        log_q = (z * logits - F.softplus(logits)).sum(-1)
        return log_q - log_px - log_pz

    def batch(self):
        index = torch.randint(0, self.images.shape[0], (BATCH,), generator=self.g)
        return torch.bernoulli(self.images[index], generator=self.g)

    def finish(self, loss_per_example, encoder_surrogate):
        (loss_per_example + encoder_surrogate).mean().backward()
        self.adam.step()
        self.sgd.step()
        with torch.no_grad():
            grads = [self.enc_w.grad.double(), self.enc_b.grad.double()]
            torch._foreach_lerp_(self.first, grads, 1e-3)
            torch._foreach_lerp_(self.second, torch._foreach_mul(grads, grads), 1e-3)
            self.elbo.sub_(loss_per_example.detach().sum())

    def rloo_step(self):
        self.adam.zero_grad(set_to_none=True)
        self.sgd.zero_grad(set_to_none=True)
        x = self.batch()
        logits = (x - self.mean) @ self.enc_w.T + self.enc_b
        p = torch.sigmoid(logits).detach()
        z = (torch.rand(2, *logits.shape, generator=self.g) < p).float()
        losses = self.negative_elbo(x, z, logits)  # (2, batch); log q keeps its direct dependence
        signal = (losses - losses.flip(0)).detach() / 1.0  # K = 2: L_k - L_other, divided by K - 1
        score = ((z - p) * logits).sum(-1)  # d/dlogits = z - p
        self.finish(losses.mean(0), (signal * score).mean(0))

    def disarm_step(self):
        self.adam.zero_grad(set_to_none=True)
        self.sgd.zero_grad(set_to_none=True)
        x = self.batch()
        logits = (x - self.mean) @ self.enc_w.T + self.enc_b
        u = torch.rand(logits.shape, generator=self.g)
        a = logits.detach()
        b1, b2 = (u < torch.sigmoid(a)).float(), (u > torch.sigmoid(-a)).float()
        losses = self.negative_elbo(x, torch.stack([b1, b2]), logits)
        weight = (-1.0) ** b2 * (b1 != b2).float() * torch.sigmoid(a.abs())
        grad = 0.5 * (losses[0] - losses[1]).detach().unsqueeze(-1) * weight
        self.finish(losses.mean(0), (grad * logits).sum(-1))


def hand_seconds(estimator: str, steps: int, images: torch.Tensor) -> float:
    model = HandWritten(images, estimator)
    for _ in range(10):
        model.step()
    began = time.perf_counter()
    for _ in range(steps):
        model.step()
    float(model.elbo)
    return (time.perf_counter() - began) / steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--estimators", default=DEFAULT_ESTIMATORS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from problems import training

    data = fake_mnist()
    training.load_splits = lambda dataset: data
    print(f"linear Bernoulli VAE, batch {BATCH}, {PIXELS}-{LATENTS}-{PIXELS}; {args.threads} torch thread(s); "
          f"median of {args.repeats} x {args.steps} steps")
    compared = {"reinforce-loo(K=2)": "reinforce-loo", "disarm": "disarm"}
    suite: dict[str, list[float]] = {spec: [] for spec in args.estimators.split(",")}
    hand: dict[str, list[float]] = {spec: [] for spec in compared if spec in suite}
    for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit both alike
        for spec in suite:
            suite[spec].append(suite_seconds(spec, args.steps))
            if spec in compared:
                hand[spec].append(hand_seconds(compared[spec], args.steps, data["train"][0]))
    for spec, times in suite.items():
        seconds = statistics.median(times)
        print(f"  suite {spec:28s} {seconds * 1e3:8.2f} ms/step  ({seconds:.4f} s/step)")
    for spec, times in hand.items():
        seconds = statistics.median(times)
        line = f"  hand  {spec:28s} {seconds * 1e3:8.2f} ms/step"
        if spec in suite:
            line += f"  suite overhead {100 * (statistics.median(suite[spec]) / seconds - 1):+.1f} %"
        print(line)

if __name__ == "__main__":
    main()
