"""Time every step of the README's tour, as a user runs it: one fresh ``taskreg`` process per command.

    .venv/bin/python benchmarks/tour_bench.py [--write]

A fresh registry in a temporary directory; the two user files of the tour (``resnet34.pth`` and
``my_net.pt``, random weights of the right architecture, and ``my_data.npz``, 300 real digits) are made
first. Prints one row per command with its wall time and the load average before it (the README's
times are for 2 idle cores: rerun on a busy machine and the numbers say so). ``--write`` replaces the
"README tour" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKREG = str(Path(sys.executable).with_name("taskreg"))
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- tour_bench:begin -->", "<!-- tour_bench:end -->"

# The README's tour, in its order (keep the two in step).
TOUR: list[str] = [
    "init",
    "data inspect builtin:mnist5k?classes=3,8&n=600&transform=invert",
    "probe train",
    "probe add my-r34 --arch resnet34 --weights {d}/resnet34.pth",
    "task add mnist-38 --data builtin:mnist5k?classes=3,8&split=train",
    "task add photos --data builtin:patches?classes=coffee,rocket,brick&split=train",
    "task distance mnist-38 photos --asym --json",
    "task neighbors mnist-38 -k 5",
    "task plot {d}/tasks.png",
    "expert train digits-expert --data builtin:digits?split=train",
    "expert add my-net --arch cifar_resnet20 --weights {d}/my_net.pt --trained-on photos",
    "expert eval",
    "model2vec fit",
    "select --data builtin:mnist5k?classes=1,7&split=test --top 3 --verify 2",
    "select --data {d}/my_data.npz --method logme --json",
    "policy --affinity taskonomy --budget 8 --max-order 2 --plot {d}/policy.png",
    "affinity show taskonomy-16k --plot {d}/affinities.png",
    "tree taskonomy --plot {d}/tree.png",
    "winrate --target rgb2depth --vs self",
    "taskonomy build --dictionary builtin-tiny",
    "policy --affinity builtin-tiny --budget 4 --json",
]


def make_user_files(d: Path) -> None:
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    from taskreg.embedders.probes import create_model

    torch.manual_seed(0)
    torch.save(create_model("resnet34", num_classes=1000).state_dict(), d / "resnet34.pth")
    torch.save(create_model("cifar_resnet20", num_classes=10).state_dict(), d / "my_net.pt")
    digits = load_digits()
    np.savez(d / "my_data.npz", x=digits.images[:300].astype(np.float32) / 16.0, y=digits.target[:300])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="replace the README tour section of RESULTS.md")
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="taskreg-tour-"))
    try:
        make_user_files(d)
        env = {**os.environ, "TASKREG_HOME": str(d / "my-registry")}
        rows = []
        t_all = time.perf_counter()
        for step in TOUR:
            argv = [a.replace("{d}", str(d)) for a in step.split(" ")]
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            res = subprocess.run([TASKREG, *argv], env=env, cwd=d, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            if res.returncode != 0:
                sys.exit(f"tour step failed: taskreg {step}\n{res.stdout}{res.stderr}")
            rows.append((step.replace("{d}/", ""), seconds, load))
            print(f"{seconds:7.1f} s  (load {load:4.1f})  taskreg {rows[-1][0]}", flush=True)
        total = time.perf_counter() - t_all
    finally:
        shutil.rmtree(d, ignore_errors=True)
    lines = [BEGIN, "## README tour", "",
             "Command: `.venv/bin/python benchmarks/tour_bench.py --write` (one fresh `taskreg` process per step, a "
             f"fresh registry; {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores). Load is the 1-minute load "
             "average just before the step.", "",
             "| step | seconds | load |", "|---|---:|---:|"]
    lines += [f"| `taskreg {s}` | {sec:.1f} | {ld:.1f} |" for s, sec, ld in rows]
    lines += [f"| **whole tour** | **{total:.0f}** | |", END]
    text = "\n".join(lines)
    print(text)
    if args.write:
        old = RESULTS.read_text()
        if BEGIN in old:
            old = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END):]
        else:
            old = old.rstrip("\n") + "\n\n" + text + "\n"
        RESULTS.write_text(old)


if __name__ == "__main__":
    main()
