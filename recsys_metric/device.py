"""Which accelerator and kernels this process can use; decided once, at import."""

from __future__ import annotations

import importlib.util

import torch

HAS_CUDA: bool = torch.cuda.is_available()
# Triton's kernels need a CUDA device; on CPU the fast path is the numba kernel.
HAS_TRITON: bool = HAS_CUDA and importlib.util.find_spec("triton") is not None
HAS_NUMBA: bool = importlib.util.find_spec("numba") is not None


def check_device_name(device: str) -> None:
    """``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``, whether or not this machine has one."""
    if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda") or (
            device.startswith("cuda:") and device[5:].isdigit())):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; ``"cuda"`` without a GPU is a clear error."""
    if isinstance(device, torch.device):
        return device
    check_device_name(device)
    if device == "auto":
        return torch.device("cuda" if HAS_CUDA else "cpu")
    if device.startswith("cuda") and not HAS_CUDA:
        raise ValueError(f"device={device!r} asked for, but no CUDA GPU is available")
    return torch.device(device)
