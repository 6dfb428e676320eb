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

Files: ``.safetensors`` is parsed with numpy (an 8-byte little-endian header length, a JSON
header of ``name -> {dtype, shape, data_offsets}``, then the raw buffers); anything else is read
with ``torch.load(weights_only=True)`` when torch is installed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from flax import nnx

from jaxseg.errors import JaxsegError

# safetensors dtype -> numpy dtype (BF16 is widened by hand: numpy has no bfloat16).
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
                       "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file as numpy arrays (no extra dependency)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise JaxsegError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(raw) < 8:
        raise JaxsegError(f"{path}: not a safetensors file (only {len(raw)} bytes)")
    header_size = int(np.frombuffer(raw[:8], "<u8")[0])
    if header_size > len(raw) - 8:
        raise JaxsegError(f"{path}: not a safetensors file or truncated (header of {header_size} bytes "
                          f"in a file of {len(raw)})")
    try:
        header = json.loads(raw[8:8 + header_size])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JaxsegError(f"{path}: not a safetensors file (header is not JSON: {e})") from None
    buffer = memoryview(raw)[8 + header_size:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        kind, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        if end > len(buffer) or start > end:
            raise JaxsegError(f"{path}: truncated ({name} needs bytes {start}..{end} of {len(buffer)})")
        data = buffer[start:end]
        if kind == "BF16":
            bits = np.frombuffer(data, "<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif kind in _SAFETENSORS_DTYPES:
            array = np.frombuffer(data, np.dtype(_SAFETENSORS_DTYPES[kind]).newbyteorder("<"))
        else:
            raise JaxsegError(f"{path}: {name} has dtype {kind}, which jaxseg cannot read")
        if array.size != int(np.prod(shape)):
            raise JaxsegError(f"{path}: {name} holds {array.size} values for shape {shape}")
        tensors[name] = array.reshape(shape)
    return tensors


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
