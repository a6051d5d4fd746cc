"""End of training: confusion matrix and a table of sample predictions with their images."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from . import session as _session


def _to_uint8_image(x: Any) -> Any:
    import numpy as np

    a = np.asarray(x, dtype="float32")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return (a * 255).astype("uint8")


def log_evaluation(predict: Any, x: Any, y: Any, class_names: Sequence[str] | None = None, *,
                   key_prefix: str = "eval", n_samples: int = 16, sensitive: bool = True,
                   images: bool = True) -> dict[str, float]:
    """Log wandb's confusion matrix and a predictions table for validation data ``(x, y)``.

    ``predict`` is a Keras model or a callable returning class scores. The table holds the
    input images, so it is declared sensitive (the agent hashes it whatever its policy) unless
    ``sensitive=False``.
    """
    import numpy as np
    import wandb

    s = _session.current()
    fn: Callable[[Any], Any] = (lambda a: predict.predict(a, verbose=0)) if hasattr(predict, "predict") else predict
    scores = np.asarray(fn(x))
    preds = scores.argmax(axis=-1)
    y_true = np.asarray(y).reshape(-1).astype(int)
    n_classes = scores.shape[-1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    acc = float((preds == y_true).mean())
    table_key = f"{key_prefix}/predictions"
    if sensitive:
        s.declare_sensitive(table_key)
    row: dict[str, Any] = {
        f"{key_prefix}/confusion_matrix": wandb.plot.confusion_matrix(
            y_true=y_true.tolist(), preds=preds.tolist(), class_names=names),
    }
    cols = ["index", "label", "pred", "confidence"] + (["image"] if images else [])
    table = wandb.Table(columns=cols)
    probs = scores if np.allclose(scores.sum(axis=-1), 1, atol=1e-3) else _softmax(scores)
    for i in range(min(n_samples, len(y_true))):
        cells = [i, names[y_true[i]], names[preds[i]], float(probs[i, preds[i]])]
        if images:
            cells.append(wandb.Image(_to_uint8_image(x[i]), caption=f"{names[y_true[i]]}→{names[preds[i]]}"))
        table.add_data(*cells)
    row[table_key] = table
    s.log_media(row)
    s.run.summary[f"{key_prefix}/accuracy"] = acc
    return {"accuracy": acc}


def _softmax(z: Any) -> Any:
    import numpy as np

    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
