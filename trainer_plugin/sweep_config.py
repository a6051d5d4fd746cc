"""What a sweep config is: W&B's sweep format, loaded from a dict or a YAML/JSON file and checked
the way W&B checks it (its JSON schema, through the ``sweeps`` package) plus what an offline sweep
needs on top; ``SweepConfigError`` when it is not one. Also the one import of that package
(``engine``), whose absence is a config error too, and the config's metric name.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

METHODS = ("grid", "random", "bayes")


class SweepConfigError(ValueError):
    """The sweep config is not one W&B would accept, or not one that can run offline."""


def load_config(source: Any) -> Dict[str, Any]:
    """A sweep config from a dict or a YAML/JSON file, validated; SweepConfigError if bad."""
    if isinstance(source, dict):
        cfg = source
    else:
        path = Path(source)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SweepConfigError(f"cannot read sweep config {str(path)!r}: {exc.strerror or exc}") from None
        try:
            import yaml

            cfg = yaml.safe_load(text)
        except Exception as exc:  # yaml's errors carry the line and column
            raise SweepConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(cfg, dict):
            raise SweepConfigError(f"{path}: a sweep config is a mapping (method, metric, parameters…)")
    return validate(cfg)


def json_clean(value: Any) -> Any:
    """``value`` as plain JSON data (numpy scalars become numbers)."""
    return json.loads(json.dumps(value, default=_plain))


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON")


def validate(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Check ``cfg`` the way W&B does (its JSON schema, through the ``sweeps`` package) and what
    an offline sweep needs on top; return it as plain JSON data."""
    sweeps = engine()
    if not isinstance(cfg, dict):
        raise SweepConfigError("a sweep config is a mapping (method, metric, parameters…)")
    method = cfg.get("method")
    if method not in METHODS:
        raise SweepConfigError(f"method: {method!r} is not one of {', '.join(METHODS)}"
                               + (" (a custom method needs W&B's server)" if method == "custom" else ""))
    params = cfg.get("parameters")
    if not isinstance(params, dict) or not params:
        raise SweepConfigError("parameters: give at least one parameter, e.g. "
                               "parameters: {lr: {min: 0.0001, max: 0.1}}")
    metric = cfg.get("metric")
    if (method == "bayes" or cfg.get("early_terminate")) and not (isinstance(metric, dict) and metric.get("name")):
        raise SweepConfigError(f"metric: {'bayes' if method == 'bayes' else 'early_terminate'} needs "
                               "metric: {name: …, goal: minimize|maximize}")
    et = cfg.get("early_terminate")
    if et is not None and (not isinstance(et, dict) or et.get("type") != "hyperband"):
        raise SweepConfigError("early_terminate: only {type: hyperband, min_iter: …} (or max_iter) is supported")
    cap = cfg.get("run_cap")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise SweepConfigError(f"run_cap: {cap!r} is not a positive whole number")
    if method != "grid" and cap is None:
        pass  # random/bayes without run_cap: bounded by each command's --count
    # run_cap is W&B's (sweeps 0.3's schema has it; 0.2's, the one for Python 3.8, does not):
    # checked here, not by the engine's schema.
    engine_view = {k: v for k, v in cfg.items() if k != "run_cap"}
    try:
        sweeps.SweepConfig(engine_view)
    except Exception as exc:  # jsonschema.ValidationError: say where
        if not hasattr(exc, "absolute_path"):  # the engine's own checks compare before typing
            raise SweepConfigError(f"parameters: bad min/max or distribution ({exc})") from None
        path = "/".join(str(p) for p in getattr(exc, "absolute_path", ()) or ())
        msg = getattr(exc, "message", None) or str(exc).splitlines()[0]
        raise SweepConfigError(f"{path + ': ' if path else ''}{msg}") from None
    try:
        problems = sweeps.schema_violations_from_proposed_config(engine_view)
    except Exception as exc:  # it compares min and max before checking their types
        problems = [f"bad min/max or distribution ({exc})"]
    if problems:
        raise SweepConfigError("; ".join(str(p) for p in problems))
    try:  # a dry draw finds what the schema allows but the engine cannot do (e.g. grid over a range)
        sweeps.next_run(cfg, [])
    except Exception as exc:
        raise SweepConfigError(f"method {method}: {exc}") from None
    return json_clean(cfg)


def engine() -> Any:
    """The ``sweeps`` package (W&B's search engine), imported quietly."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sweeps 0.2 uses pydantic's v1-style config
            import sweeps
    except ImportError:
        raise SweepConfigError("the sweeps package is missing: pip install 'sweeps>=0.2.0' "
                               "(or the trainer's `sweeps` extra)") from None
    return sweeps


def metric_name(cfg: Dict[str, Any]) -> Optional[str]:
    """The name of the metric the sweep optimizes, if it has one."""
    m = cfg.get("metric")
    return m.get("name") if isinstance(m, dict) else None
