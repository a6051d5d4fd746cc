"""Console records (``output_raw``, ``output``), per stream, re-joined into whole lines before
scrubbing (``console.TextStream`` decides what may be released); what is still held when the
log ends leaves in one record per stream."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wandb.proto import wandb_internal_pb2 as pb

from .console import TextStream

if TYPE_CHECKING:
    from .redaction import Redaction


class Console:
    """Console records, per stream, re-joined into whole lines before scrubbing."""

    def __init__(self, r: "Redaction") -> None:
        self.r = r
        self.streams: dict[tuple[str, int], tuple[TextStream, Any]] = {}

    def take(self, t: str, rec: Any) -> list[Any]:
        r = self.r
        if r.policy.console == "drop":
            r.report.console["dropped"] += 1
            return []
        out = getattr(rec, t)
        if r.policy.console == "keep":
            r.report.console["kept"] += 1
            return [rec]
        stream, _ = self.streams.get((t, out.output_type)) or (TextStream(lambda s: r.out.text(s, "console")), None)
        self.streams[(t, out.output_type)] = (stream, rec)
        held = stream.pieces_held
        text = stream.feed(out.line)
        if not text:
            return []
        out.line = text
        self._count(text, held)
        return [rec]

    def _count(self, text: str, joined: int) -> None:
        self.r.report.console_joined += joined
        self.r.report.console["lines"] += text.count("\n")

    def close(self, finished: bool) -> list[Any]:
        """The text still held when the log ends, in one record per stream. ``finished``: the
        log has its exit record (``console.TextStream.close``)."""
        recs = []
        for (t, _), (stream, last) in self.streams.items():
            held = stream.pieces_held
            if stream.mid_line and not finished:
                self.r.console_cut = True
            text = stream.close(finished)
            if text:
                self._count(text, held)
                rec = pb.Record()
                rec.CopyFrom(last)
                getattr(rec, t).line = text
                recs.append(rec)
        return recs
