"""wandb's record types (``wandb.proto.wandb_internal_pb2``) without loading the wandb SDK.

``from wandb.proto import wandb_internal_pb2`` first runs ``wandb/__init__.py``, which loads the
whole SDK: about 1.2 s of CPU in every agent command that reads a run (scan, seal, sync, the
daemon), for generated protobuf modules that take 0.1 s on their own. ``preload`` (called when
the package is imported) loads them under their own names while a bare stand-in for the
``wandb`` package sits in ``sys.modules``, and takes the stand-in away again at once: every later
``from wandb.proto import ...`` finds the modules loaded, and a later ``import wandb`` in the same
process still runs the real package (which finds these modules already there and uses them; a
one-time finder gives it its ``proto`` attribute first, as a normal import would have). If
anything about that goes wrong, nothing of it stays, and the usual import happens later.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

MODULE = "wandb.proto.wandb_internal_pb2"


def preload() -> None:
    if MODULE in sys.modules or "wandb" in sys.modules:
        return  # already there, or the real package is: nothing to save
    try:
        spec = importlib.util.find_spec("wandb")
    except (ImportError, ValueError):
        return
    if spec is None or not spec.submodule_search_locations:
        return
    stand_in = types.ModuleType("wandb")
    stand_in.__path__ = list(spec.submodule_search_locations)
    before = set(sys.modules)
    sys.modules["wandb"] = stand_in
    try:
        importlib.import_module(MODULE)
    except Exception:  # noqa: BLE001 - an unexpected layout: leave nothing half-loaded
        for name in set(sys.modules) - before:
            if name == "wandb" or name.startswith("wandb."):
                del sys.modules[name]
    finally:
        if sys.modules.get("wandb") is stand_in:
            del sys.modules["wandb"]
    if MODULE in sys.modules:
        sys.meta_path.insert(0, _LinkProto())


class _LinkProto(importlib.abc.MetaPathFinder):
    """When the real ``wandb`` is imported later, it gets ``wandb.proto`` (already loaded) as its
    attribute before its own code runs; then this finder is gone."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 - MetaPathFinder's signature
        if name != "wandb":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("wandb")
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module") or "wandb.proto" not in sys.modules:
            return spec
        run = loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            module.proto = sys.modules["wandb.proto"]
            run(module)

        loader.exec_module = exec_module  # this spec's own loader object
        return spec
