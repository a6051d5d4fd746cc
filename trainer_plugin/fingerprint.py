"""Environment fingerprint: what a team needs to trust and redo a run, as structured fields.

Everything here is read locally (files, subprocesses with no network); any probe that fails
records why instead of raising, because a missing fact must never stop training.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# Instruction sets that change numerics or speed of TF kernels; the full flag list is noise.
_CPU_FLAGS = (
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw",
    "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
    "avx_vnni", "neon", "asimd", "sve",
)
_CONTAINER_ID = re.compile(r"([0-9a-f]{64})")
_IMAGE_ENV = ("TFWB_IMAGE", "CONTAINER_IMAGE", "IMAGE_DIGEST", "DOCKER_IMAGE", "SINGULARITY_CONTAINER", "APPTAINER_CONTAINER")


def _run(args: list[str], cwd: str | None = None, timeout: float = 10) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, cwd=cwd, capture_output=True, timeout=timeout, check=True)


def git_info(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Commit, dirty flag and a hash of the uncommitted diff of the tree holding ``path``."""
    where = Path(path) if path else Path.cwd()
    where = where if where.is_dir() else where.parent
    if shutil.which("git") is None:
        return {"available": False, "reason": "git not installed"}
    try:
        top = _run(["git", "rev-parse", "--show-toplevel"], cwd=str(where)).stdout.decode().strip()
        commit = _run(["git", "rev-parse", "HEAD"], cwd=top).stdout.decode().strip()
        status = _run(["git", "status", "--porcelain", "--untracked-files=normal"], cwd=top).stdout
        # Staged and unstaged changes against HEAD, binary-safe, so the hash changes with any edit.
        diff = _run(["git", "diff", "HEAD", "--binary", "--no-color", "--no-ext-diff"], cwd=top).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        return {"available": False, "reason": f"not a git work tree or git failed: {type(exc).__name__}"}
    return {
        "available": True,
        "commit": commit,
        "dirty": bool(status.strip()),
        "diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None,
        "untracked_files": sum(1 for line in status.splitlines() if line.startswith(b"??")),
    }


def _version(*dists: str) -> str | None:
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def packages() -> dict[str, str | None]:
    return {
        "tensorflow": _version("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly"),
        "keras": _version("keras", "tf-keras"),
        "wandb": _version("wandb"),
        "numpy": _version("numpy"),
    }


def cpu_info() -> dict[str, Any]:
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key in ("model name", "Hardware", "cpu model") and model is None:
                model = val.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(val.split())
    except OSError:
        pass
    return {
        "model": model or platform.processor() or None,
        "arch": platform.machine(),
        "count": os.cpu_count(),
        "flags": [f for f in _CPU_FLAGS if f in flags],
    }


def container_info() -> dict[str, Any]:
    info: dict[str, Any] = {"in_container": Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()}
    for var in _IMAGE_ENV:
        if os.environ.get(var):
            info.setdefault("image", os.environ[var])
            info["image_source"] = f"env:{var}"
            break
    # Docker/containerd put the container id in cgroup (v1) or mount paths (v2).
    for src in ("/proc/self/cgroup", "/proc/self/mountinfo"):
        try:
            text = Path(src).read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if any(k in line for k in ("docker", "containerd", "kubepods", "libpod", "crio")):
                m = _CONTAINER_ID.search(line)
                if m:
                    info["container_id"] = m.group(1)
                    info["container_id_source"] = src
                    info["in_container"] = True
                    break
        if "container_id" in info:
            break
    return info


def _nvidia_driver() -> str | None:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        m = re.search(r"Kernel Module\s+([0-9.]+)", text)
        if m:
            return m.group(1)
    except OSError:
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).stdout
            return out.decode().splitlines()[0].strip() or None
        except (subprocess.SubprocessError, OSError, IndexError):
            return None
    return None


def tf_info() -> dict[str, Any]:
    import tensorflow as tf

    build = dict(tf.sysconfig.get_build_info())
    gpus = []
    for dev in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(dev)
        except Exception:  # device details are best effort on some builds
            details = {}
        cc = details.get("compute_capability")
        gpus.append({"name": details.get("device_name", dev.name),
                     "compute_capability": ".".join(map(str, cc)) if cc else None})
    try:
        from tensorflow import keras

        policy = keras.mixed_precision.global_policy().name
    except Exception as exc:  # keras missing or broken must not stop the fingerprint
        policy = f"unknown ({type(exc).__name__})"
    return {
        "tf_build": {
            "is_cuda_build": bool(build.get("is_cuda_build", False)),
            "cuda": build.get("cuda_version"),
            "cudnn": build.get("cudnn_version"),
        },
        "gpus": gpus,
        "gpu_count": len(gpus),
        "gpu_driver": _nvidia_driver() if gpus else None,
        "xla": {
            "jit": tf.config.optimizer.get_jit() or None,
            "tf_xla_flags": os.environ.get("TF_XLA_FLAGS"),
            "model_jit_compile": None,  # filled in by the Keras callback once the model exists
        },
        "mixed_precision": policy,
    }


def collect(source: str | os.PathLike | None = None) -> dict[str, Any]:
    """The whole fingerprint; ``source`` is the training script (default: ``sys.argv[0]``)."""
    src = source or (sys.argv[0] if sys.argv and sys.argv[0] else None)
    fp: dict[str, Any] = {
        "git": git_info(Path(src).resolve() if src else None),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "packages": packages(),
        "cpu": cpu_info(),
        "container": container_info(),
        "host": socket.gethostname(),
        "os": platform.platform(),
    }
    if tensorflow_loaded():
        fp.update(tf_info())
    return fp


def tensorflow_loaded() -> bool:
    """Whether the process has imported TensorFlow. The fingerprint never imports it: a
    process that does not train with it (a sweep trial of another kind, a script that imports it
    after ``init``) would pay its whole import, several seconds of CPU, for four lines of config.
    Its part is added once it is there (``Session.note_tensorflow``)."""
    return "tensorflow" in sys.modules
