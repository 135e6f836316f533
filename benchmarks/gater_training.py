"""Speed of the MNIST gater's training (problems/gater.py): seconds per epoch, and the framework's
overhead over a plain hand-written torch training step of the same model.

    python benchmarks/gater_training.py [--threads 2] [--batches 100] [--repeats 11] [--device cpu]
    python benchmarks/gater_training.py --full-epoch      # also time one real epoch through fit()

The framework step is ``Trainer.step`` (the estimator contract with a loss closure, the KL
criterion, statistics kept on the device, SGD with momentum, max-norm); the plain step computes
the same straight-through model and update inline. Both run on the same random mini-batches
(MNIST-shaped, so no data is needed), alternating blocks of ``--batches`` steps; the medians over
``--repeats`` blocks are compared. Seconds per epoch = median step time x 1,563 mini-batches of 32.
Numbers from a shared machine are noisy: compare medians of several repeats.
"""
from __future__ import annotations

if __name__ == "__main__":
    import argparse
    import statistics
    import time

    import torch
    import torch.nn.functional as F

    import estimators
    import problems
    from estimators.base import Noise
    from problems.training import INPUTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, default=100, help="mini-batches per timed block")
    parser.add_argument("--repeats", type=int, default=11, help="timed blocks per variant")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full-epoch", action="store_true", help="also time one real epoch of fit() on MNIST")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    problem = problems.build_problem("mnist-gater").to(device)
    estimator = estimators.build_estimator("straight-through").to(device)
    noise = Noise(torch.Generator(device).manual_seed(0))  # the gates' draws, in every estimator call below
    trainer = problem.trainer(estimator, seed=0)
    batches_per_epoch = problem.batches_per_epoch()

    # The plain step: the same network, straight-through gates, KL criterion, SGD, max-norm.
    plain_model = problem.build_model(estimator, seed=0)
    layers = (plain_model.gater_hidden, plain_model.gater_out, plain_model.expert, plain_model.output)
    settings = problem.settings(estimator)
    plain_sgd = torch.optim.SGD(  # the same optimiser as the framework's (see problems.training.sgd)
        [{"params": [*layers[0].parameters(), *layers[1].parameters()], "lr": settings["gater_lr"]},
         {"params": [*layers[2].parameters(), *layers[3].parameters()], "lr": problem.lr}],
        lr=problem.lr, momentum=settings["momentum"], fused=bool(trainer.optimizer.defaults.get("fused")))
    generator = torch.Generator(device).manual_seed(1)

    def plain_step(x, y):
        plain_sgd.zero_grad()
        logits = layers[1](torch.tanh(layers[0](x)))
        probs = torch.sigmoid(logits)
        bits = (torch.rand(probs.shape, generator=generator, device=device) < probs.detach()).to(probs.dtype)
        gates = bits + (logits - logits.detach())
        loss = F.cross_entropy(layers[3](gates * layers[2](x)), y)
        mean, s = probs.mean(0), problem.sparsity_target
        loss = loss - problem.kl_lambda * (s * mean.log() + (1 - s) * (1 - mean).log()).sum()  # eq. 14
        loss.backward()
        plain_sgd.step()
        with torch.no_grad():
            for layer in layers:
                layer.weight.renorm_(2, 0, problem.max_norm)

    data_rng = torch.Generator().manual_seed(2)
    xs = torch.rand(args.batches, problem.batch_size, INPUTS, generator=data_rng).to(device)
    ys = torch.randint(0, 10, (args.batches, problem.batch_size), generator=data_rng).to(device)

    def block(step) -> tuple[float, float]:
        """(wall, process CPU) seconds per step over one block."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began, cpu = time.perf_counter(), time.process_time()
        for i in range(args.batches):
            step(xs[i], ys[i])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - began) / args.batches, (time.process_time() - cpu) / args.batches

    variants = {"framework (Trainer.step)": trainer.step, "plain torch step": plain_step}
    times = {name: [] for name in variants}
    cpu_times = {name: [] for name in variants}
    with estimator.drawing_from(noise):
        for step in variants.values():  # warm up (first-call imports, allocator)
            for i in range(min(10, args.batches)):
                step(xs[i], ys[i])
        for _ in range(args.repeats):
            for name, step in variants.items():
                wall, cpu = block(step)
                times[name].append(wall)
                cpu_times[name].append(cpu)
    print(f"gater training step, 784-400-2000 gates x 2000 experts, batch {problem.batch_size}, device {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"  {name:<26} median {medians[name] * 1e3:7.2f} ms/step wall, "
              f"{statistics.median(cpu_times[name]) * 1e3:7.2f} ms/step process CPU  (wall per block: "
              f"{', '.join(f'{v * 1e3:.2f}' for v in values)})  -> {medians[name] * batches_per_epoch:6.1f} s/epoch")
    framework, plain = medians["framework (Trainer.step)"], medians["plain torch step"]
    print(f"  framework overhead over the plain step: {100 * (framework / plain - 1):+.1f}% wall, "
          f"{100 * (statistics.median(cpu_times['framework (Trainer.step)']) / statistics.median(cpu_times['plain torch step']) - 1):+.1f}% CPU")

    if args.full_epoch:
        import os

        full = problems.build_problem("mnist-gater", {"epochs": 1}).to(device)
        with estimator.drawing_from(noise):
            records = {r.name: r.value for r in full.fit(estimator, 0) if r.epoch == 1}
        print(f"  one real epoch through fit(): {records['epoch_time_s']:.1f} s training "
              f"+ {records['eval_time_s']:.1f} s tuning and evaluation "
              f"(data from {os.environ.get('STOCHGRAD_BENCH_DATA', 'the default search path')})")
        print(f"  valid error after it: {records['valid_error']:.2f}%")
