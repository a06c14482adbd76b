"""Images/s per worker process: JPEG decoding plus training augmentation at 224, resnets' views
against a conventional per-image PIL pipeline of the same operations.

One process, one torch thread (what a DataLoader worker has), over generated JPEGs of
ImageNet's typical size (400x350 to 500x375 by default; see jpeg_tree.py). Each pipeline goes
over all files --repeats times after one untimed pass (which also fills the page cache); the
table gives the median pass.

  resnets paper / random-resized (worker)   what the Loader's workers do per image:
      `View.read`: header, the crop drawn, the JPEG decoded at 1/2..1/8 when the crop allows
      (Pillow's draft), only the kept region resampled to 224x224, uint8 out.
  resnets batched part (per image)          what the Loader then does on the device, here
      timed on this CPU in batches of 64: float, normalise, flip, PCA lighting.
  conventional paper                        PIL, per image, no reduced-size decoding: decode,
      convert to RGB, resize the whole image so its shorter side is S in [256, 480], random
      224 crop, flip, to float, normalise, PCA lighting (as fb.resnet.torch's transforms).
  conventional random-resized               decode, convert, crop the random region, resize
      it to 224 (as torchvision's RandomResizedCrop on PIL), flip, to float, normalise.

The speed-up compares the worker's part with the conventional pipeline: the batched part runs
on the GPU in training. --smallest/--largest 1000x750/1600x1200 shows the reduced-size decode.

    python3 benchmarks/bench_decode.py                               # 300 images, 5 passes
    python3 benchmarks/bench_decode.py --count 20 --repeats 1 --no-record   # smoke test

Prints a table and appends it, with hardware, torch version, command, date and load average,
to benchmarks/RESULTS.md (unless --no-record).
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from harness import Load, Spread, add_record_options, record, results_path, time_it  # noqa: E402
from jpeg_tree import parse_size, write_tree  # noqa: E402
from resnets.data.augment import IMAGENET_EIGENVALUES, IMAGENET_EIGENVECTORS, flip, lighting  # noqa: E402
from resnets.data.views import View, paper_sides  # noqa: E402

CROP = 224
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)  # torchvision's, on the [0, 1] scale
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _to_float(image) -> torch.Tensor:
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(image.size[1], image.size[0], 3).permute(2, 0, 1).float().div_(255)


def _lighting_one(tensor: torch.Tensor, rng: random.Random) -> torch.Tensor:
    alpha = torch.tensor([rng.gauss(0, 0.1) for _ in range(3)])
    offset = torch.tensor(IMAGENET_EIGENVECTORS) @ (alpha * torch.tensor(IMAGENET_EIGENVALUES))
    return tensor + offset.view(3, 1, 1)


def conventional_paper(path: Path, rng: random.Random) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
    side = rng.randint(*paper_sides(CROP))
    width, height = image.size
    scale = side / min(width, height)
    image = image.resize((max(side, round(width * scale)), max(side, round(height * scale))),
                         Image.Resampling.BILINEAR)
    left, top = rng.randint(0, image.width - CROP), rng.randint(0, image.height - CROP)
    image = image.crop((left, top, left + CROP, top + CROP))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    tensor = _lighting_one(_to_float(image), rng)
    return (tensor - MEAN) / STD


def conventional_random_resized(path: Path, rng: random.Random) -> torch.Tensor:
    from PIL import Image

    from resnets.data.views import random_resized_box

    with Image.open(path) as image:
        image = image.convert("RGB")
    box = random_resized_box(image.width, image.height, rng)
    image = image.crop((box.left, box.top, box.right, box.bottom)).resize((CROP, CROP), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return (_to_float(image) - MEAN) / STD


def images_per_second(function, paths: list[Path], repeats: int) -> Spread:
    """Images/s of passes over all `paths`, after one untimed pass (the page cache, Pillow's
    first-use costs)."""
    def one_pass():
        for i, path in enumerate(paths):
            function(path, random.Random(i))

    return time_it(one_pass, warmup=1, runs=repeats).per_second(len(paths))


def batched_part_per_second(repeats: int, batch: int = 64) -> Spread:
    """Images/s of the Loader's device part (normalise, flip, lighting) on this CPU."""
    images = torch.randint(0, 256, (batch, 3, CROP, CROP), dtype=torch.uint8)
    mean, std = MEAN.view(3, 1, 1) * 255, STD.view(3, 1, 1) * 255
    runs = itertools.count()

    def four_batches():
        run = next(runs)
        for index in range(4):
            generator = torch.Generator().manual_seed(run * 100 + index)
            x = images.to(torch.float32).sub_(mean).div_(std)
            x = flip(x, generator)
            x = lighting(x, generator, 0.1, scale=255 / std.flatten())

    return time_it(four_batches, warmup=1, runs=repeats).per_second(4 * batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="JPEGs generated (default: 300)")
    parser.add_argument("--smallest", default="400x350", help="smallest WxH drawn (default: 400x350)")
    parser.add_argument("--largest", default="500x375", help="largest WxH drawn (default: 500x375)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes (median reported)")
    parser.add_argument("--dir", help="where to write the JPEGs (default: a temporary folder)")
    add_record_options(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in a DataLoader worker
    load_average = Load.start()

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.dir or scratch)
        paths = write_tree(root, args.count, parse_size(args.smallest), parse_size(args.largest))
        pipelines = {
            "resnets paper view (worker)": View("paper", CROP, 256).read,
            "conventional paper (PIL, per image)": conventional_paper,
            "resnets random-resized view (worker)": View("random-resized", CROP, 256).read,
            "conventional random-resized (PIL, per image)": conventional_random_resized,
        }
        header = "| pipeline | images/s per process | ms per image | vs conventional |\n|---|---:|---:|---:|"
        print(header, flush=True)
        medians, rows = {}, []
        for name, function in pipelines.items():
            rates = images_per_second(function, paths, args.repeats)
            medians[name] = rates.median
            versus = ""
            if name.startswith("conventional"):
                ours = medians[name.replace("conventional", "resnets").replace(" (PIL, per image)", " view (worker)")]
                versus = f"ours {ours / medians[name]:.2f}x"
            rows.append(f"| {name} | {rates.cell('.0f')} | "
                        f"{1000 / medians[name]:.2f} | {versus} |")
            print(rows[-1], flush=True)
        batched = batched_part_per_second(args.repeats)
        rows.append(f"| resnets batched part (normalise, flip, lighting; on this CPU) | "
                    f"{batched.median:.0f} | {1000 / batched.median:.2f} | |")
        print(rows[-1], flush=True)
        mean_kb = sum(path.stat().st_size for path in paths) / len(paths) / 1000

    record(results_path(args), "bench_decode: decode + training augmentation at 224, images/s "
           "per worker", load=load_average.stop(), table=[header, *rows],
           hardware_note=" (timed with 1 torch thread, one process)", facts=[
               f"- data: {len(paths)} generated JPEGs (quality 90, mean {mean_kb:.0f} KB), sizes "
               f"{args.smallest} to {args.largest}, a quarter portrait; median of {args.repeats} "
               f"passes (min-max) after one untimed pass"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
