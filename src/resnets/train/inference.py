"""Using a trained checkpoint: rebuild its model, evaluate it on a dataset, classify images.

`load_trained(path)` gives the model (eval mode, fp32), the saved normalizer, the class names
and the input size; `load_weights_for_inference(model, weights)` gives the same for pretrained
weights (torchvision's ImageNet releases: their classes, normalisation and evaluation resize);
`predict_images` reads image files of any size and mode, converts them to the model's channels,
resizes the shorter side and centre-crops to the training size, applies the saved normalizer
and returns the top classes with their probabilities.

The fast path. `evaluate_checkpoint` and `predict_images` (so `resnets eval` and `resnets
predict`) run `Trained.inference_model(precision, engine)`, an `InferenceModel`
(resnets.train.engine: BatchNorm folded, fused, channels_last, in the precision and on the
engine, PyTorch or onnxruntime, measured faster on this machine). `Trained.model` itself is
left as it was (the lesion and landscape studies change it).

A run's checkpoint is evaluated by default in the precision the run evaluated in, so `resnets
eval RUN` reproduces the run's own figure; another precision, forced, is said in the result.

Agreement with the model itself, relative to max(1, largest |logit|). fp32: within
`FP32_TOLERANCE` (1e-4) where fp32 rounding alone moves the model's logits by under a tenth of
that (the CIFAR residual networks: ~1e-6); in general within that plus five times what fp32
rounding alone does to the model's logits, since folding and fusing change the arithmetic only
by rounding and summation order (in fp64 the two agree to 1e-8), and a network amplifies
rounding (resnet50 at random weights ~100x, to 6e-5; plain110's fp32 logits differ from its
fp64 ones by ~20%): tests/fp32_rounding.py derives the bound, tests/models/test_fold.py checks
it for every registered CIFAR model and resnet18/50, and each fused call against fp32's
worst-case rounding. bf16: within `BF16_TOLERANCE` (5e-2; bf16 keeps 8 bits of mantissa)
plus twice what bf16 rounding does to the model itself cast to bf16 (resnet18 at random
weights: 4-5e-2 either way), which moves a top-1 prediction
only where two classes are about that close: tests/train/test_inference_path.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from resnets.data.normalize import Normalizer
from resnets.errors import UserError
from resnets.train.checkpoint import load_checkpoint, resolve_checkpoint_path
from resnets.train.config import Config
from resnets.train.device import resolve_device
from resnets.train.engine import (BF16_TOLERANCE, FP32_TOLERANCE, InferenceModel,  # noqa: F401
                                   check_engine, choose_engine, inference_precision)
from resnets.train.steps import evaluate, image_shape
from resnets.train import parts as parts_module
from resnets.train.parts import Parts
from resnets.train.state import TrainState


@dataclass
class Trained:
    """A model rebuilt from a checkpoint, with what is needed to feed it."""

    model: nn.Module          # eval mode, fp32, on `device`
    normalizer: Any           # resnets.data.Normalizer fitted on the training images
    classes: list[str]
    input_size: list[int]     # [C, H, W] of the training images
    config: Config
    checkpoint: dict
    path: Path
    device: torch.device
    class_names: list[str] | None = None  # display names (an image folder's classes.txt)
    # False for weights whose classes are names, not folders (torchvision's ImageNet classes):
    # a dataset then needs as many classes, in the same (sorted folder) order.
    classes_are_folders: bool = True
    _inference: dict = field(default_factory=dict, repr=False, compare=False)

    def inference_model(self, precision: str = "auto", engine: str = "auto"
                        ) -> "InferenceModel":
        """The model prepared for fast inference (`InferenceModel`), made once per precision
        and engine and kept while `self.model` stays the same (its tensors unchanged in place
        and not replaced: a lesion or a load_state_dict makes a new copy); `self.model` is
        not changed. A forced bf16 runs in PyTorch (onnxruntime computes in fp32)."""
        resolved = inference_precision(precision, self.device)
        if precision == "bf16" and engine == "auto":
            engine = "torch"
        engine = check_engine(engine, resolved, self.device)
        tensors = [*self.model.parameters(), *self.model.buffers()]
        key = (resolved, engine, id(self.model), tuple((id(t), t._version) for t in tensors))
        if key not in self._inference:
            self._inference = {key: InferenceModel(self.model, self.device, resolved,
                                                   engine=engine)}
        return self._inference[key]

    def label(self, index: int) -> str:
        """Class `index` as a person reads it: its display name with the folder name, when the
        two differ ("tench, Tinca tinca (n01440764)"), else its name."""
        name = self.classes[index]
        shown = self.class_names[index] if self.class_names else name
        return name if shown == name else f"{shown} ({name})"

    def class_fields(self, index: int) -> dict[str, Any]:
        """Class `index` for a program: {"index", "class" (the label the data used: a folder
        name, e.g. a WordNet id), "name" (its readable name; the label where there is none)}."""
        name = self.classes[index]
        return {"index": index, "class": name,
                "name": self.class_names[index] if self.class_names else name}


class Prediction(tuple):
    """(label, probability), as `predict_images` gives each class, with the class's position
    in the model's outputs as `class_index` (labels can repeat: ImageNet has two "crane")."""

    class_index: int

    def __new__(cls, label: str, probability: float, class_index: int) -> "Prediction":
        prediction = super().__new__(cls, (label, probability))
        prediction.class_index = class_index
        return prediction


def load_trained(path: str | Path, device: str = "cpu", parts: Parts | None = None) -> Trained:
    """Rebuild the model of a checkpoint file (or of a run directory's last checkpoint)."""
    path = resolve_checkpoint_path(path)
    device_ = resolve_device(device)
    return _trained(load_checkpoint(path, map_location=device_), path, device_, parts)


def _trained(checkpoint: dict, path: Path, device_: torch.device, parts: Parts | None) -> Trained:
    state = TrainState.from_checkpoint(checkpoint, parts or parts_module.default_parts(), path)
    state.model.to(device_).eval()
    return Trained(model=state.model, normalizer=state.normalizer, classes=state.classes,
                   input_size=state.input_size, config=state.config, checkpoint=checkpoint,
                   path=path, device=device_, class_names=state.class_names)


def load_weights_for_inference(model: str | None, weights: str, device: str = "cpu",
                               parts: Parts | None = None) -> Trained:
    """A `Trained` from `--model NAME --weights WEIGHTS`: torchvision's ImageNet weights (or a
    state-dict file in torchvision's layout) built as `model`, with the ImageNet classes,
    normalisation and evaluation resize of the release; a resnets checkpoint or run directory
    as `load_trained` gives it (`model`, if given, must be the checkpoint's)."""
    from resnets.models.weights import (architecture, load_body, load_pretrained,
                                        torchvision_version)
    from resnets.train.config import resolve_config

    device_ = resolve_device(device)
    if model is None and torchvision_version(weights) is not None:
        raise UserError(f"--weights {weights} needs --model (resnet18, resnet34, resnet50, "
                        f"resnet101, resnet152)")
    pretrained = load_pretrained(weights, model)
    if pretrained.checkpoint is not None:
        if model is not None and model != pretrained.model:
            raise UserError(f"{pretrained.source} holds a {pretrained.model}, not {model}: leave "
                            f"out --model (a checkpoint knows its model)")
        return _trained(pretrained.checkpoint, pretrained.path, device_, parts)
    if model is None and pretrained.model is not None:  # the layout shows which
        raise UserError(f"--weights {pretrained.source} holds a {pretrained.model}'s weights: "
                        f"add --model {pretrained.model}")
    if model is None:
        raise UserError(f"--weights {weights} (a state dict) needs --model, the model it is for")
    kwargs = {**architecture(model, pretrained, {}), "num_classes": pretrained.num_classes,
              "in_channels": pretrained.in_channels}
    network = (parts or parts_module.default_parts()).create_model(model, **kwargs)
    load_body(network, pretrained, model, keep_head=True)
    crop = pretrained.input_size[1]
    config = resolve_config("torchvision-imagenet", overrides={
        "model": model, "weights": weights, "crop_size": crop,
        "resize_size": max(crop, pretrained.resize_size or crop),
        "model_args": {k: v for k, v in kwargs.items() if k not in ("num_classes", "in_channels")}})
    normalizer = Normalizer.from_state_dict(pretrained.normalizer)
    return Trained(model=network.to(device_).eval(), normalizer=normalizer,
                   classes=list(pretrained.classes), input_size=list(pretrained.input_size),
                   config=config, checkpoint={"model": model, "model_kwargs": kwargs,
                                              "weights": weights},
                   path=pretrained.path or Path(weights), device=device_,
                   class_names=pretrained.class_names, classes_are_folders=False)


def evaluate_checkpoint(trained: Trained, *, data: str | None = None,
                        data_dir: str | None = None, split: str = "test",
                        batch_size: int = 500, precision: str = "auto",
                        parts: Parts | None = None, crops: int = 1,
                        resize_size: int | None = None,
                        workers: int | None = None, fast: bool = True,
                        engine: str = "auto") -> dict[str, Any]:
    """Top-1/top-5/per-class error of a trained model on a dataset split (by default the
    dataset and split options it was trained with).

    crops: 1, or 10 for the paper's 10-crop testing (four corners and centre and their flips,
    softmax averaged); resize_size: the shorter side before cropping (default: the run's).
    Both apply to models trained with augment paper | random-resized (images of any size).
    batch_size counts images (10 crops each with crops=10); workers: decoding processes.
    fast: run `trained.inference_model(precision, engine)` (BatchNorm folded, channels_last,
    bf16 and onnxruntime where faster: see the module docstring; the engine chosen once for
    `batch_size`); False: the model itself under autocast (precision "auto" is then fp32).
    precision "auto" on a run's checkpoint: the precision the run evaluated in. The result's
    "precision" says how it was computed, and when the run's own figures used another.
    """
    parts = parts or parts_module.default_parts()
    run_precision = trained.checkpoint.get("precision")  # a training run's checkpoint says it
    if precision == "auto" and run_precision in ("bf16", "fp32"):
        precision = run_precision
    config, dataset = _eval_data(trained, parts, data, data_dir, split, crops, resize_size)
    options = {} if crops == 1 else {"crops": crops}
    workers_ = workers if workers is not None else config.workers
    side = eval_resize_size(config) or 0  # a resized image, 3 bytes a pixel, per worker
    check_inference_memory(trained, min(batch_size, len(dataset)) * crops, "use a smaller "
                           "--resize-size or "
                           "--batch-size", decoded_bytes=3 * side * side * max(1, workers_ or 0))
    model, autocast = _eval_model(trained, fast, precision, engine, batch_size * crops)
    loader = parts.make_loader(dataset, batch_size, shuffle=False, pad=0, flip=False,
                               normalizer=trained.normalizer, device=trained.device,
                               seed=0, drop_last=False, channels_last=fast,
                               workers=workers if workers is not None else config.workers,
                               **options)
    result = evaluate(model, loader, precision=autocast, num_classes=len(trained.classes))
    how, used = (model.describe(), model.used_precision) if fast else (autocast, autocast)
    if run_precision in ("bf16", "fp32") and used != run_precision:
        how += f"; the run's own figures were computed in {run_precision}"
    skipped = list(getattr(loader, "skipped", ()))
    return {**result, "data": config.data, "split": split, "crops": crops,
            "skipped_images": skipped, "precision": how}


def _eval_data(trained: Trained, parts: Parts, data, data_dir, split: str, crops: int,
               resize_size: int | None):
    """(config, dataset) evaluate_checkpoint measures on: the run's data, or `data`, refused
    where its images or classes do not fit the model."""
    config = trained.config
    changes: dict[str, Any] = {}
    if data is not None or data_dir is not None:
        changes = {k: v for k, v in {"data": data, "data_dir": data_dir}.items() if v is not None}
        if data is not None and data.startswith("folder:") and config.image_size is None \
                and config.augment == "pad-crop":
            # another tree is resized to what the model was trained on (its H; square crops),
            # or for a run trained on centre crops, to the side they were cut from
            from resnets.data.datasets import side_before_crop

            changes["image_size"] = (side_before_crop(config.data, None) if config.image_crop
                                     else trained.input_size[1])
    if config.augment == "pad-crop" and (crops != 1 or resize_size is not None):
        flag = f"--crops {crops}" if crops != 1 else f"--resize-size {resize_size}"
        raise UserError(f"{flag} cuts views from images of any size: it applies to models "
                        f"trained with --augment paper or random-resized on folder:PATH; "
                        f"this one was trained with augment pad-crop on {config.data}")
    if resize_size is not None:
        changes["resize_size"] = resize_size
    if changes:
        config = config.replace(**changes)
    dataset = parts.load_dataset(config, split)
    if len(dataset) == 0:
        raise UserError(f"split {split!r} of {config.data!r} is empty")
    shape = image_shape(dataset)
    if shape != trained.input_size:
        raise UserError(f"{config.data} {split} images are {shape} (C, H, W) but the "
                        f"model was trained on {trained.input_size}")
    if not trained.classes_are_folders:
        if len(dataset.classes) != len(trained.classes):
            raise UserError(f"the weights predict {len(trained.classes):,} classes "
                            f"({_short(trained.classes)}); {config.data} has "
                            f"{len(dataset.classes):,} class folders: expected the same classes, "
                            f"whose sorted folder names are the weights' order (for ImageNet: "
                            f"its 1,000 WordNet ids, n01440764 first)")
    elif list(dataset.classes) != trained.classes:
        raise UserError(f"{config.data} has classes {_short(dataset.classes)}, the "
                        f"checkpoint {_short(trained.classes)}")
    return config, dataset


def _eval_model(trained: Trained, fast: bool, precision: str, engine: str, images: int):
    """(model, autocast precision) evaluate_checkpoint runs: the fast InferenceModel on the
    engine measured faster for batches of `images` (one for every batch), or the model itself."""
    if fast:
        resolved = inference_precision(precision, trained.device)
        if precision != "bf16" and check_engine(engine, resolved, trained.device) == "auto":
            engine = choose_engine(resolved, images)  # one for every batch
        model = trained.inference_model(precision, engine)
        autocast = "fp32"  # the model casts its input itself
    else:
        autocast = "fp32" if precision == "auto" else inference_precision(precision,
                                                                          trained.device)
        model = trained.model
    return model, autocast


def check_inference_memory(trained: Trained, images: int, remedy: str,
                           decoded_bytes: int = 0) -> None:
    """Refuse, before an image is read, inference on `images` inputs at a time that cannot fit
    (`resnets.models.summary.inference_bytes` against `train.device.check_memory`, the check
    training makes), and image decoding of `decoded_bytes` at a time (resized images, on the
    CPU) that cannot either: an input_size or resize size from a file or a flag is not
    trusted to fit. `remedy` names what to change."""
    from resnets.models.summary import inference_bytes
    from resnets.train.device import check_memory

    name, kwargs = trained.checkpoint["model"], trained.checkpoint["model_kwargs"]
    with torch.device("meta"):
        probe = parts_module.default_parts().create_model(name, **kwargs)
    size = list(trained.input_size)
    check_memory(inference_bytes(probe, size, images), trained.device,
                 f"{name} on {images:,} input{'s' if images > 1 else ''} of {size} (C, H, W)",
                 remedy)
    check_memory(decoded_bytes, torch.device("cpu"), "decoding the images", remedy)


def _short(names: Sequence[str]) -> str:
    names = list(names)
    return str(names) if len(names) <= 5 else f"[{', '.join(names[:5])}, ...] ({len(names)})"


def image_paths(items: Sequence[str | Path]) -> list[Path]:
    """Files named by `items`: a file as it is; a folder as the images in it (files Pillow reads,
    sorted, hidden ones left out); a glob pattern (`photos/*.jpg`, `**/*.png`) as its sorted
    matches. A name that matches nothing stays, so reading it reports it; so does a folder
    without images."""
    import glob

    from resnets.data.images import image_extensions

    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                            and p.suffix.lower() in image_extensions())
            paths += images or [path]
        elif not path.exists() and any(char in str(item) for char in "*?["):  # a glob pattern
            paths += [Path(p) for p in sorted(glob.glob(str(item), recursive=True))
                      if Path(p).is_file()] or [path]
        else:
            paths.append(path)
    return paths


def load_image(path: str | Path, input_size: Sequence[int], max_pixels: int | None = None,
               resize_size: int | None = None) -> torch.Tensor:
    """An image file as a uint8 (C, H, W) tensor in the model's input format.

    Any mode is converted to L (1 channel) or RGB (3 channels), 16-bit images scaled to 8 bits;
    the shorter side is resized to the training size (or to `resize_size`, as a model trained
    on crops of larger images is evaluated: 256 for 224) and the centre cropped, so any size
    and aspect ratio works. An image of more than `max_pixels` pixels (default: Pillow's limit
    against decompression bombs, `PIL.Image.MAX_IMAGE_PIXELS`) is refused before it is decoded.
    """
    from PIL import Image, ImageOps

    from resnets.data.images import pillow_reason, to_8bit

    channels, height, width = input_size
    if channels not in (1, 3):
        raise UserError(f"predict supports 1- or 3-channel models, this one has {channels}")
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: a folder without images (files Pillow reads: .png, .jpg, ...)")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # checked here, in one line
    try:
        with Image.open(path) as image:
            if limit is not None and image.width * image.height > limit:
                raise UserError(f"{path}: {image.width}x{image.height} is {image.width * image.height:,} "
                                f"pixels, more than the limit of {limit:,} against decompression bombs; "
                                f"if you trust the file, allow it with --max-pixels "
                                f"{image.width * image.height}")
            image = to_8bit(ImageOps.exif_transpose(image))
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P"
                                                       and "transparency" in image.info):
                # Composite transparency onto black, the background of the training digits
                # and the usual padding colour.
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                image = Image.alpha_composite(background, rgba)
            image = image.convert("L" if channels == 1 else "RGB")
            scale = max(height / image.height, width / image.width)
            if resize_size is not None:
                scale = max(scale, resize_size / min(image.height, image.width))
            size = (max(width, round(image.width * scale)), max(height, round(image.height
                                                                               * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR)
            left, top = (size[0] - width) // 2, (size[1] - height) // 2
            image = image.crop((left, top, left + width, top + height))
            data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    except UserError:
        raise
    except Exception as error:  # Pillow raises many types for a truncated or foreign file
        raise UserError(f"{path}: not an image this program can read "
                        f"({pillow_reason(error, path)})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    return data.view(height, width, channels).permute(2, 0, 1).contiguous()  # (C, H, W)


def eval_resize_size(config: Config) -> int | None:
    """The shorter side a model's evaluation images are resized to before the centre crop:
    for pad-crop training None (the crop's own size), or with image_crop the side the images
    had before it (the bundled digits: 28, so a digit keeps its size); else the run's
    resize_size."""
    if config.augment == "pad-crop":
        if config.image_crop is None:
            return None
        from resnets.data.datasets import side_before_crop

        return side_before_crop(config.data, config.image_size)
    from resnets.data.views import check_sizes

    return check_sizes(config.crop_size, config.resize_size)


@torch.no_grad()
def predict_images(trained: Trained, paths: Sequence[str | Path], top: int = 5, *,
                   return_errors: bool = False, max_pixels: int | None = None,
                   batch_size: int = 64, precision: str = "auto", fast: bool = True,
                   engine: str = "auto") -> list[list[tuple[str, float]] | UserError]:
    """For each image, the `top` classes as (name, probability), most likely first (each a
    `Prediction`: its `class_index` too).

    An unreadable image raises its `UserError`, or with `return_errors` takes its place in the
    list, so the others are still classified. `max_pixels`: see `load_image`. `precision` and
    `fast`: as `evaluate_checkpoint`'s (fast=False runs the fp32 model itself); `engine`:
    "auto" (per batch, the faster measured here), "torch" or "onnxruntime";
    `trained.inference_model(precision, engine).describe()` says afterwards what ran.
    """
    k = min(top, len(trained.classes))
    resize = eval_resize_size(trained.config)
    channels, height, width = trained.input_size  # a checkpoint's sizes are not trusted to fit
    check_inference_memory(trained, min(batch_size, max(1, len(paths))),
                           f"the checkpoint's input_size {list(trained.input_size)} or resize "
                           f"size {resize} is too large for this machine (was it edited?)",
                           decoded_bytes=channels * max(height, width, resize or 0) ** 2)
    model = trained.inference_model(precision, engine) if fast else trained.model
    results: list[list[tuple[str, float]] | UserError] = []
    for start in range(0, len(paths), batch_size):
        loaded: list[torch.Tensor | UserError] = []
        for path in paths[start:start + batch_size]:
            try:
                loaded.append(load_image(path, trained.input_size, max_pixels, resize))
            except UserError as error:
                if not return_errors:
                    raise
                loaded.append(error)
        images = [x for x in loaded if isinstance(x, torch.Tensor)]
        rows = iter([])
        if images:
            inputs = trained.normalizer(torch.stack(images).float()).to(trained.device)  # (N, C, H, W)
            probabilities = torch.softmax(model(inputs).float(), dim=1)
            values, indices = probabilities.topk(k, dim=1)
            rows = iter([[Prediction(trained.label(i), float(p), i) for p, i in zip(row_p, row_i)]
                         for row_p, row_i in zip(values.tolist(), indices.tolist())])
        results += [next(rows) if isinstance(x, torch.Tensor) else x for x in loaded]
    return results
