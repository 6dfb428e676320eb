"""PyTorch weights for the ResNet-34 U-Net: read a state dict, convert it, load it.

Two layouts are recognised by their keys:

- ``smp``: the full state dict of ``segmentation_models_pytorch.Unet('resnet34')``
  (``encoder.conv1.weight``, ``encoder.layer1.0.bn1.running_mean``, ...,
  ``decoder.blocks.N.conv1.0.weight``, ``decoder.blocks.N.conv1.1.*``, ``segmentation_head.0.*``);
  every parameter and batch statistic of the model is replaced.
- ``torchvision``: a torchvision ``resnet34`` state dict (``conv1.weight``, ``bn1.*``,
  ``layer1.0.conv1.weight``, ..., ``fc.*`` ignored); it fills the encoder, the decoder and head
  keep their fresh initialisation.

Convolution kernels go from torch's ``(out, in, kh, kw)`` to Flax's ``(kh, kw, in, out)``; batch
norm ``weight, bias, running_mean, running_var`` become ``scale, bias, mean, var``;
``num_batches_tracked`` is ignored (batch norm here always uses momentum 0.1 in torch's terms).

Files: ``.safetensors`` is read with the ``safetensors`` library (no torch needed); anything else
with ``torch.load(weights_only=True)`` when torch is installed. Both give numpy arrays, bfloat16
widened to float32.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
from flax import nnx

from jaxseg.errors import JaxsegError

_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file as numpy arrays in their stored dtypes, except
    bfloat16 (PyTorch's common training dtype), widened to float32 as :func:`read_torch` does."""
    from safetensors import SafetensorError, safe_open
    path = Path(path)
    try:
        with safe_open(str(path), framework="np") as file:
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as e:  # TypeError: a dtype numpy lacks
        raise JaxsegError(f"{path}: not a readable safetensors file ({e})") from None
    return {name: value.astype(np.float32) if value.dtype.name == "bfloat16" else value
            for name, value in tensors.items()}


def read_torch(path: str | Path) -> dict[str, np.ndarray]:
    """A ``.pth``/``.pt`` state dict via ``torch.load(weights_only=True)``.

    Unwraps a checkpoint dict holding the weights under ``state_dict`` or ``model``, and the
    ``module.`` prefix of ``DataParallel``."""
    path = Path(path)
    try:
        import torch
    except ImportError:
        raise JaxsegError(f"{path}: reading PyTorch files needs torch (pip install torch), or convert the "
                          "file to .safetensors") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise JaxsegError(f"{path}: no such file") from None
    except Exception as e:  # torch raises many kinds (pickle, zip, unsupported global)
        raise JaxsegError(f"{path}: cannot read as a PyTorch state dict ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise JaxsegError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    out = {}
    for key, value in obj.items():
        key = key[len("module."):] if key.startswith("module.") else key
        value = value.detach().cpu()
        out[key] = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return out


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors by name from a ``.safetensors`` or PyTorch file."""
    path = Path(path)
    if not path.is_file():
        raise JaxsegError(f"{path}: no such file")
    return read_safetensors(path) if path.suffix == ".safetensors" else read_torch(path)


def _conv(prefix: str, module: nnx.Conv) -> Iterator[tuple[str, Any, str]]:
    yield f"{prefix}.weight", module.kernel, "conv"
    if module.bias is not None:
        yield f"{prefix}.bias", module.bias, "copy"


def _norm(prefix: str, module: nnx.BatchNorm) -> Iterator[tuple[str, Any, str]]:
    for torch_name, ours in _BN_NAMES.items():
        yield f"{prefix}.{torch_name}", getattr(module, ours), "copy"


def smp_names(model: nnx.Module) -> dict[str, tuple[Any, str]]:
    """``torch key -> (our nnx.Variable, conversion)`` for a :class:`ResUNet`, in smp's names.
    Conversion is ``conv`` (OIHW -> HWIO) or ``copy``."""
    pairs = [*_conv("encoder.conv1", model.stem_conv), *_norm("encoder.bn1", model.stem_norm)]
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            p = f"encoder.layer{s + 1}.{b}"
            pairs += [*_conv(f"{p}.conv1", block.conv1), *_norm(f"{p}.bn1", block.norm1),
                      *_conv(f"{p}.conv2", block.conv2), *_norm(f"{p}.bn2", block.norm2)]
            if block.has_downsample:
                pairs += [*_conv(f"{p}.downsample.0", block.downsample_conv),
                          *_norm(f"{p}.downsample.1", block.downsample_norm)]
    for i, block in enumerate(model.decoder):
        p = f"decoder.blocks.{i}"
        pairs += [*_conv(f"{p}.conv1.0", block.conv1), *_norm(f"{p}.conv1.1", block.norm1),
                  *_conv(f"{p}.conv2.0", block.conv2), *_norm(f"{p}.conv2.1", block.norm2)]
    pairs += list(_conv("segmentation_head.0", model.head))
    return {key: (variable, how) for key, variable, how in pairs}


def detect_layout(tensors: dict[str, np.ndarray], source: str) -> str:
    """``smp`` or ``torchvision``, from the keys."""
    if "encoder.conv1.weight" in tensors:
        return "smp"
    if "conv1.weight" in tensors and "layer1.0.conv1.weight" in tensors:
        return "torchvision"
    sample = ", ".join(sorted(tensors)[:4]) or "none"
    raise JaxsegError(f"{source}: not a ResNet-34 U-Net (smp, keys encoder.*) nor a torchvision ResNet "
                      f"(keys conv1.weight, layer1.*) state dict; its first keys: {sample}")


def load_into(model: nnx.Module, tensors: dict[str, np.ndarray], source: str) -> str:
    """Overwrite ``model``'s (a :class:`ResUNet`) parameters and batch statistics with ``tensors``
    (torch names, torch layouts); returns the layout (``smp`` or ``torchvision``).

    Raises :class:`JaxsegError` naming ``source`` on missing or unexpected keys and wrong shapes,
    before anything is changed.
    """
    layout = detect_layout(tensors, source)
    if layout == "torchvision":
        tensors = {f"encoder.{k}": v for k, v in tensors.items() if not k.startswith("fc.")}
    names = smp_names(model)
    if layout == "torchvision":
        names = {k: v for k, v in names.items() if k.startswith("encoder.")}
    given = {k: v for k, v in tensors.items() if not k.endswith(".num_batches_tracked")}
    strip = (lambda k: k[len("encoder."):]) if layout == "torchvision" else (lambda k: k)
    missing = [strip(k) for k in names if k not in given]
    unexpected = [strip(k) for k in given if k not in names]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:3])}"
                         f"{', ...' if len(unexpected) > 3 else ''})")
        raise JaxsegError(f"{source}: does not match the configured model ({layout} layout): {'; '.join(parts)}; "
                          "check model.features, model.encoder_depths and model.decoder_features")
    converted = {}
    for key, (variable, how) in names.items():
        array = np.asarray(given[key], np.float32)
        if how == "conv" and array.ndim == 4:
            array = array.transpose(2, 3, 1, 0)
        expected = tuple(variable.get_value().shape)
        if array.shape != expected:
            raise JaxsegError(_shape_problem(source, strip(key), given[key].shape, expected, how, model))
        converted[key] = array
    for key, (variable, _) in names.items():
        variable.set_value(np.asarray(converted[key], variable.get_value().dtype))
    return layout


def _shape_problem(source: str, key: str, shape: tuple, expected: tuple, how: str, model: nnx.Module) -> str:
    torch_expected = (expected[3], expected[2], expected[0], expected[1]) if how == "conv" else expected
    message = f"{source}: {key} has shape {tuple(shape)}, the configured model needs {torch_expected}"
    if key in ("encoder.conv1.weight", "conv1.weight") and len(shape) == 4 and shape[1] != torch_expected[1]:
        message += (f" (the file's stem reads {shape[1]} input channels, the config gives {model.in_channels}: "
                    "set data.modalities to match, or model.input_mode = \"pseudo_rgb\" with one modality "
                    "for RGB weights)")
    elif key.startswith("segmentation_head") and len(shape) >= 1 and shape[0] != torch_expected[0]:
        message += f" (the file predicts {shape[0]} channels, data.target gives {model.out_channels})"
    return message
