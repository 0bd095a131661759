"""Step-time overhead of the per-block diagnostics hook (a benchmark, not a test).

    python experiments/2026-11-27_diagnostics/overhead.py [--config=configs/fashion_mnist_resnet.py]
        [--every=100] [--rounds=4] [--repeats=20]

Two measurements on the same compiled functions, both after warm-up (compile times are printed
apart):
1. cost ratio: median time of one diagnostics call / median time of one train step
   (`repeats` each, interleaved), so the overhead at frequency N is about ratio / N;
2. end to end: `rounds` pairs of N-step windows, alternately without and with the hook called
   once per window (on the window's last batch, fetched to the host as MetricWriter would),
   with the same batches; overhead = total time with / total time without - 1.
Real Fashion-MNIST batches from the config's pipeline; the state is the config's model as
`resjax.training.create_train_state` builds it, stepped and diagnosed by the parallelism the
config chooses (`resjax.training.for_config`), as the training loop does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax

from resjax import data, optim
from resjax.sweeps.points import load_config
from resjax.training import create_train_state, for_config


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/fashion_mnist_resnet.py")
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args()

    config = load_config(args.config)
    splits = data.load_splits(config.data)
    trainer = for_config(config)
    model = trainer.build_model(config, splits.num_classes)
    tx = optim.make_optimizer(config.optim, optim.learning_rate_schedule(config.optim, 10**6, ()))
    state = create_train_state(config, model, tx, splits.image_shape, trainer.replicated)
    it = data.TrainIterator(
        splits,
        global_batch_size=config.batch_size,
        seed=0,
        data_config=config.data,
        mesh=trainer.data_mesh,
    )
    batches = [next(it) for _ in range(args.every)]
    it.close()

    def diag(state, batch):  # the loop's call: compiled once, values fetched to the host
        return trainer.diagnostics(model, state, batch)

    metrics = trainer.empty_metrics()
    t0 = time.perf_counter()
    state, metrics = trainer.step(state, batches[0], metrics)
    jax.block_until_ready(state)
    compile_step = time.perf_counter() - t0
    t0 = time.perf_counter()
    diag(state, batches[0])
    compile_diag = time.perf_counter() - t0

    # 1. cost of one call vs one step, interleaved.
    step_times, diag_times = [], []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        state, metrics = trainer.step(state, batches[r % len(batches)], metrics)
        jax.block_until_ready(state)
        step_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        diag(state, batches[r % len(batches)])
        diag_times.append(time.perf_counter() - t0)
    ratio = statistics.median(diag_times) / statistics.median(step_times)

    # 2. end to end, alternating windows without / with the hook.
    totals = {"without": 0.0, "with": 0.0}
    for r in range(args.rounds):
        for variant in ("without", "with") if r % 2 == 0 else ("with", "without"):
            t0 = time.perf_counter()
            for batch in batches:
                state, metrics = trainer.step(state, batch, metrics)
            if variant == "with":
                diag(state, batches[-1])
            jax.block_until_ready(state)
            totals[variant] += time.perf_counter() - t0
    steps = args.rounds * args.every
    result = {
        "config": args.config,
        "model": config.model.name,
        "batch_size": config.batch_size,
        "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
        "every_steps": args.every,
        "compile_step_s": compile_step,
        "compile_diagnostics_s": compile_diag,
        "median_step_s": statistics.median(step_times),
        "median_diagnostics_s": statistics.median(diag_times),
        "cost_ratio": ratio,
        "overhead_from_ratio": ratio / args.every,
        "steps_per_variant": steps,
        "time_without_s": totals["without"],
        "time_with_s": totals["with"],
        "overhead_end_to_end": totals["with"] / totals["without"] - 1.0,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
