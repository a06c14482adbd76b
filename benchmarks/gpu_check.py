"""GPU readiness: the CUDA branches of resnets, run on a CUDA machine in a few minutes.

There is no GPU where resnets is developed, so its CUDA path cannot run in the tests. This
script runs each device-specific branch once and prints a table; it exits 1 if a check fails.

1. training: resnet20 on the bundled digits for `--steps` steps in bf16 with channels_last,
   eager and `--compile`, through the real `resnets train` command; images/s of each;
2. loader: the on-device loader's batches on CUDA equal those on the CPU (the same order,
   crops and flips, drawn from CPU generators);
3. DDP: with two or more GPUs, `torchrun --nproc-per-node 2` trains a few steps with NCCL,
   once plainly and once with `--sync-bn` (SyncBatchNorm), and each process took the GPU of its
   local rank (resnets.train.distributed: rank_device, backend_for, convert_sync_bn).

    python3 benchmarks/gpu_check.py                          # on a CUDA machine, < 10 minutes
    python3 benchmarks/gpu_check.py --device cpu --steps 4   # smoke test of the script itself
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from harness import hardware, time_command, versions  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def train(out: Path, name: str, device: str, steps: int, *extra: str,
          processes: int = 1) -> tuple[bool, str, dict | None]:
    args = ["train", "--model", "resnet20", "--data", "bundled", "--batch-size", "128",
            "--iters", str(steps), "--eval-every", str(steps), "--device", device,
            "--precision", "bf16" if device != "cpu" else "fp32", "--channels-last",
            "--progress", "none", "--out", str(out), "--name", name, *extra]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(processes), "-m", "resnets", *args]
    else:
        command = [sys.executable, "-m", "resnets", *args]
    seconds, result = time_command(command, env=ENV, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:]
        return False, f"exit {result.returncode}: {' '.join(tail)}", None
    summary = json.loads((out / name / "summary.json").read_text())
    config = json.loads((out / name / "config.json").read_text())
    return True, f"{summary['img_s']:,.0f} img/s ({seconds.median:.0f} s with start-up)", {
        "summary": summary, "environment": config["environment"]}


def loader_check(device: str) -> tuple[bool, str]:
    from resnets.data import Loader, Normalizer, load

    data = load("bundled", "train")
    normalizer = Normalizer.fit("channel", data)
    options = dict(shuffle=True, pad=4, flip=True, normalizer=normalizer, seed=7,
                   channels_last=True)
    here = Loader(data, 128, device=device, **options)
    cpu = Loader(data, 128, device="cpu", **options)
    worst = 0.0
    for (a, y), (b, z) in zip(here.batches(2), cpu.batches(2)):
        if not torch.equal(y.cpu(), z):
            return False, "labels differ"
        worst = max(worst, (a.cpu() - b).abs().max().item())
    return worst < 1e-5, f"largest difference {worst:.2e} over {len(cpu)} batches"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run this on a GPU machine (or --device cpu to try the "
              "script)")
        return 2
    print(f"{hardware()}\n{versions(args.device)}", flush=True)
    rows: list[tuple[str, bool, str]] = []
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        for name, extra in (("eager", ("--no-compile",)), ("compiled", ("--compile",))):
            ok, text, _ = train(out, name, args.device, args.steps, *extra)
            rows.append((f"train resnet20 {name}", ok, text))
            print(rows[-1], flush=True)
        rows.append(("loader batches equal the CPU's", *loader_check(args.device)))
        print(rows[-1], flush=True)
        gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
        if gpus >= 2:
            for name, extra in (("ddp", ()), ("ddp-sync-bn", ("--sync-bn",))):
                ok, text, record = train(out, name, "cuda", min(args.steps, 50), *extra,
                                         processes=2)
                if ok:
                    ok = record["environment"]["processes"] == 2
                    text += f", {record['environment']['processes']} processes"
                rows.append((f"torchrun 2 GPUs {name}", ok, text))
                print(rows[-1], flush=True)
        else:
            rows.append(("torchrun 2 GPUs", True, f"skipped: {gpus} GPU(s)"))
    print("\n| check | result | detail |\n|---|---|---|")
    for name, ok, text in rows:
        print(f"| {name} | {'ok' if ok else 'FAILED'} | {text} |")
    return 0 if all(ok for _, ok, _ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
