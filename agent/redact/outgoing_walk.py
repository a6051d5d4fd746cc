"""``Outgoing``'s walk of a protobuf message: every string field of every message, generically,
from the descriptors, each scrubbed by what it is (``string_fields``: a name, a path, JSON,
text, or one of the identifiers that skip the scrubber). A mixin of ``Outgoing`` (its
``name``, ``path``, ``text``, ``json_as_is`` and ``json_text`` are the scrubbers it calls), kept apart for size:
``Outgoing`` stays the one choke point."""
from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from .string_fields import JSON, MAP, MSG, MSGS, NAME, PATH, SHAPE, SHAPED, SKIP, TEXT, field_plan, item_parts, repeated

_ITEMS = frozenset({"HistoryItem", "SummaryItem", "ConfigItem", "StatsItem"})
_PLANS: dict[Any, tuple[Any, bool, frozenset]] = {}


def _planned(d: Any) -> tuple[Any, bool, frozenset]:
    """What ``Outgoing.message`` asks of a message type, once: its fields' plan, whether it is
    an item (the fast path), and its single (not repeated) text fields."""
    plan = field_plan(d)
    return plan, d.name in _ITEMS, frozenset(fd for fd in d.fields if plan[fd] is TEXT and not repeated(fd))


class MessageWalk:
    """``message``: the walk. The scrubbers it calls are ``Outgoing``'s."""

    def _item(self, msg: Any, fields: list, place: str) -> bool:
        """The fast path for history/summary/config/stats items (most of a log): key names and
        the JSON value. False if the item holds anything else (then the generic walk does it)."""
        parts = item_parts(fields)
        if parts is None:
            return False
        key, nested, raw = parts
        if key:
            new = self.name(key)
            if new != key:
                msg.key = new
        if nested is not None:
            names = [self.name(k) for k in nested]
            if names != list(nested):
                del nested[:]
                nested.extend(names)
            key = nested[-1]
        if not self.json_as_is(raw, key):
            new = self.json_text(raw, place, key)
            if new != raw:
                msg.value_json = new
        return True

    def message(self, msg: Any, place: str, skip: Any = None) -> None:
        """Scrub every string of ``msg`` in place (see the module docstring). ``skip``: one
        field (descriptor) whose strings the caller has scrubbed already."""
        d = msg.DESCRIPTOR
        planned = _PLANS.get(d)
        if planned is None:
            planned = _PLANS[d] = _planned(d)
        plan, is_item, single_text = planned
        fields = msg.ListFields()
        if is_item and self._item(msg, fields, place):
            return
        item_key = None
        for fd, value in fields:
            how = plan[fd]
            if how is SKIP or fd is skip:
                continue
            if how is MSG:
                self.message(value, place, skip)
            elif how is MSGS:
                for m in value:
                    self.message(m, place, skip)
            elif how is MAP:
                self._map(msg, fd, value, place)
            elif fd in single_text:
                # (Most strings left: a record's stream id, a stat's name. No closure per field.)
                new = self.text(value, place)
                if new != value:
                    setattr(msg, fd.name, new)
            else:
                if how is NAME:
                    fn = self.name
                elif how is PATH:
                    fn = self.path
                elif how is SHAPE:
                    shape, instead = SHAPED[(d.name, fd.name)]
                    fn = lambda s: s if shape.fullmatch(s) else self.replaced(instead, place)  # noqa: E731
                elif how is JSON:
                    if item_key is None:
                        item_key = ""
                        if d.name.endswith("Item"):
                            path = list(getattr(msg, "nested_key", ())) or [getattr(msg, "key", "")]
                            item_key = path[-1] if path else ""
                    fn = lambda s, k=item_key: self.json_text(s, place, k)  # noqa: E731
                else:
                    fn = lambda s: self.text(s, place)  # noqa: E731
                if repeated(fd):
                    new = [fn(s) for s in value]
                    if new != list(value):
                        del value[:]
                        value.extend(new)
                else:
                    new = fn(value)
                    if new != value:
                        setattr(msg, fd.name, new)

    def _map(self, msg: Any, fd: Any, value: Any, place: str) -> None:
        vfield = fd.message_type.fields_by_name["value"]
        items = list(value.items())
        is_msg = vfield.type == FieldDescriptor.TYPE_MESSAGE
        if is_msg:
            copies = []
            for k, v in items:
                c = type(v)()
                c.CopyFrom(v)
                self.message(c, place)
                copies.append((self.text(k, place), c))
            msg.ClearField(fd.name)
            target = getattr(msg, fd.name)
            for k, c in copies:
                target[k].CopyFrom(c)
        else:
            new = [(self.text(k, place), self.text(v, place) if isinstance(v, str) else v) for k, v in items]
            msg.ClearField(fd.name)
            target = getattr(msg, fd.name)
            for k, v in new:
                target[k] = v
