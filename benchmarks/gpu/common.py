"""What the GPU scripts share: the device a measurement ran on, in words, and the synchronisation point that
timing on an asynchronous device needs. torch is imported on use: the queue's command line starts without it."""
from __future__ import annotations

import os
import platform


def device_line(device) -> str:
    """'<GPU name>, <memory> GiB, CUDA <version>, torch <version>, <host CPU>' for a CUDA device (str or
    torch.device); on a CPU its threads and logical CPUs instead of the GPU."""
    import torch

    device = torch.device(device)
    host = platform.processor() or platform.machine()
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, torch " \
               f"{torch.__version__}, {host}"
    return f"cpu ({torch.get_num_threads()} threads, {os.cpu_count()} logical CPUs), torch {torch.__version__}, {host}"


def synchronize(device) -> None:
    """Wait for the work queued on `device` (a no-op on a CPU, where every call returns when it is done)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
