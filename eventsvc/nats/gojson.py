"""
A JSON object read as nats-server reads it into one of its Go structs
(encoding/json's C{Unmarshal}): every CONNECT, a client's, a route's, a
gateway's or a leaf link's.

Go's decoder matches a key to a field in any case, with Unicode's simple
folding (C{ſ} is C{s}, the Kelvin sign C{k}), and the last key for a field
wins; a C{null} leaves a bool, string or number field as it was and sets a
slice or a pointer to nil; a value of the wrong type for its field is an
error (Go reads on, but C{Unmarshal} still fails, and nats-server closes
the connection).  Keys that name no field are ignored by Go; here they are
kept, under their own spelling, for whoever shows what the peer said.

L{go_quote} is Go's C{%q}, for the errors nats-server words with it.

Nothing here does I/O or holds state: a reader asks, with its struct.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from eventsvc import wirejson

__all__ = ["BOOL", "INT", "PERMISSION", "STRING", "STRINGS", "GoStruct", "fold", "go_quote"]

#: A field's Go type, as far as JSON goes.
BOOL = "bool"
STRING = "string"
#: Go's C{int} (64 bits): a JSON number without a fraction or an exponent.
INT = "int"
#: C{[]string}.
STRINGS = "[]string"
#: C{*SubjectPermission} (C{allow} and C{deny}, each a C{[]string}):
#: ClientOpts' C{import} and C{export}.
PERMISSION = "*SubjectPermission"
#: What C{null} sets to nil (the others it leaves as they were).
_NILLABLE = frozenset((STRINGS, PERMISSION))
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1
_CLASSES = {BOOL: bool, STRING: str, INT: int}
_UNKNOWN = object()


def _go_replace(error: UnicodeError) -> Tuple[str, int]:
    """
    Invalid UTF-8 as Go's decoder reads it in a string: one U+FFFD a byte
    (its C{utf8.DecodeRune} takes one byte of an invalid sequence at a
    time), where Python's C{"replace"} puts one for a sequence's longest
    valid start (C{"\\xe2\\x82"}: two for Go, one for Python).
    """
    assert isinstance(error, UnicodeDecodeError)
    return "\ufffd" * (error.end - error.start), error.end


#: The name of L{_go_replace}, as C{bytes.decode} takes it.
GO_REPLACE = "eventsvc.gojson.replace"
codecs.register_error(GO_REPLACE, _go_replace)

#: A surrogate alone, as Python's decoder leaves a C{\\ud800} escape
#: without its pair (a pair it joins, as Go does): Go reads U+FFFD.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
#: A backslash, as an int: C{in} looks for one byte with memchr, where a
#: bytes needle is first tried as an int (a TypeError formatted and
#: dropped: a two-byte needle cost CPython 3.11 some 3,300 instructions a
#: CONNECT, this one some 400 with the rest of the check).
_BACKSLASH = 0x5C


def _go_strings(value: Any) -> Any:
    """C{value} with every lone surrogate in its strings (keys too) as U+FFFD, as Go's decoder reads them."""
    cls = value.__class__
    if cls is str:
        return _LONE_SURROGATE.sub("\ufffd", value)
    if cls is list:
        return [_go_strings(item) for item in value]
    if cls is _Object:
        return _object([(_go_strings(k), _go_strings(v)) for k, v in value.pairs])
    if cls is dict:
        return {_go_strings(k): _go_strings(v) for k, v in value.items()}
    return value


def fold(key: str) -> str:
    """
    C{key} as Go's encoding/json compares it with a field's name (its
    C{EqualFold}): lower case, C{ſ} as C{s}, the Kelvin sign as C{k} (the
    only characters outside ASCII whose folding reaches an ASCII letter,
    and every field here is ASCII).
    """
    return key.lower().replace("\u017f", "s")


class _Object(dict):  # type: ignore[type-arg]
    """A decoded object that remembers its keys in their order, repeats included (C{pairs})."""

    __slots__ = ("pairs",)
    pairs: List[Tuple[str, Any]]


def _object(pairs: List[Tuple[str, Any]]) -> _Object:
    made = _Object(pairs)
    made.pairs = pairs
    return made


class GoStruct:
    """
    A Go struct's JSON fields, by name, each with its type (L{BOOL},
    L{STRING}, L{INT}, L{STRINGS}, L{PERMISSION}).

    @ivar fields: the fields by their names.
    """

    __slots__ = ("fields", "_folded", "_classes")

    def __init__(self, fields: Mapping[str, str]) -> None:
        self.fields: Dict[str, str] = dict(fields)
        self._folded = {fold(name): name for name in self.fields}
        #: The Python class each bool, string or int field's value has
        #: (None for a list or an object, read apart): L{decode}'s one
        #: comparison a key (a call a key was a tenth more for a CONNECT).
        self._classes: Dict[str, Optional[type]] = {name: _CLASSES.get(kind) for name, kind in self.fields.items()}

    def field(self, key: str) -> Optional[str]:
        """The field Go takes C{key} for (its own name, in any case), or None."""
        if key in self.fields:
            return key
        return self._folded.get(fold(key))

    def decode(self, arg: bytes) -> Dict[str, Any]:
        """
        The object in C{arg} with every key that names a field under the
        field's own name, as Go would fill the struct (a dict of its own
        each call; C{null} in a bool, string or number field leaves it
        absent or as an earlier key set it).

        @raise ValueError: not a JSON object (as Go reads JSON: no C{NaN}),
            or a value of the wrong type for its field.
        """
        options = wirejson.loads(arg, errors=GO_REPLACE, standard=True)
        if not isinstance(options, dict):
            raise ValueError("not a JSON object")
        if _BACKSLASH in arg:
            # (An escape may be a surrogate alone: Go reads U+FFFD.)
            options = _go_strings(options)
        # Most objects are read as they were decoded: each key a field's own
        # name or none, no null, and no key twice (a key has its colon: as
        # many colons as keys leaves no room for a second of one).
        if arg.count(b":") != len(options):
            return self._assign(_pairs(arg))
        classes = self._classes
        for key, value in options.items():
            cls = classes.get(key, _UNKNOWN)
            if cls is _UNKNOWN:
                if self._folded.get(fold(key)) is not None:
                    return self._assign(_pairs(arg))
            elif value.__class__ is not cls:
                if value is None or cls is None:
                    return self._assign(_pairs(arg))  # (null, or a list or an object to read)
                raise ValueError("field {} is not a Go {}".format(key, self.fields[key]))
            elif cls is int and not _INT_MIN <= value <= _INT_MAX:
                raise ValueError("field {} is not a Go {}".format(key, INT))
        return options

    def _assign(self, pairs: List[Tuple[str, Any]], slices: Optional[Dict[str, "_Slice"]] = None) -> Dict[str, Any]:
        """
        C{pairs} in their order, as Go's decoder sets the struct's fields
        key by key.  C{slices}: the Go slice behind each C{[]string} field
        (L{_Slice}), this struct's and, under C{"."}-joined names, those of
        the structs in its pointer fields: kept across keys, as Go decodes
        into the slice and the struct a field already has.
        """
        out: Dict[str, Any] = {}
        fields = self.fields
        if slices is None:
            slices = {}
        for key, value in pairs:
            name = self.field(key)
            if name is None:
                out[key] = value
                continue
            kind = fields[name]
            if value is None:
                if kind in _NILLABLE:
                    out[name] = None
                    for gone in [k for k in slices if k == name or k.startswith(name + ".")]:
                        del slices[gone]
                continue
            if kind is STRINGS:
                held = slices[name] = _strings(value, slices.get(name), name)
                value = held.value()
            elif kind is PERMISSION:
                if not isinstance(value, _Object):
                    raise ValueError("field {} is not a Go {}".format(name, kind))
                earlier = out.get(name)
                inner = {k[len(name) + 1:]: v for k, v in slices.items() if k.startswith(name + ".")}
                value = _SUBJECT_PERMISSION._assign(list(earlier.items()) + value.pairs if earlier else value.pairs, inner)
                slices.update((name + "." + k, v) for k, v in inner.items())
            elif not _fits(kind, value):
                raise ValueError("field {} is not a Go {}".format(name, kind))
            out[name] = value
        return out


def _fits(kind: str, value: Any) -> bool:
    """Whether C{value} (not None) is what Go reads into a field of C{kind}, a bool, string or int."""
    cls = value.__class__
    if kind is BOOL:
        return cls is bool
    if kind is STRING:
        return cls is str
    return cls is int and _INT_MIN <= value <= _INT_MAX


class _Slice:
    """
    A Go C{[]string} as its decoder leaves it: the backing array (its
    length the slice's capacity) and the slice's length.  A later key for
    the field decodes into it: a C{null} element keeps what the array has
    there, even past the slice's length but within its capacity (Go grows
    a full slice by half, at least to 4, copying its length's worth).
    """

    __slots__ = ("backing", "length")

    def __init__(self, backing: List[str], length: int) -> None:
        self.backing, self.length = backing, length

    def value(self) -> List[str]:
        return self.backing[: self.length]


def _strings(value: Any, held: Optional[_Slice], name: str) -> _Slice:
    """
    C{value} read into a C{[]string} (decode.go's C{array}) that holds
    C{held} (None: nil): strings; a C{null} element leaves what the
    array had there (an earlier key's element, else the empty string).
    """
    if not isinstance(value, list):
        raise ValueError("field {} is not a Go {}".format(name, STRINGS))
    backing, length = (held.backing, held.length) if held is not None else ([], 0)
    backing = list(backing)
    i = 0
    for item in value:
        if i >= len(backing):
            grown = max(len(backing) + len(backing) // 2, 4)
            backing = backing[:length] + [""] * (grown - length)
        if i >= length:
            length = i + 1
        if item is not None:
            if item.__class__ is not str:
                raise ValueError("field {} is not a Go {}".format(name, STRINGS))
            backing[i] = item
        i += 1
    if i < length:
        length = i
    if i == 0:
        backing, length = [], 0
    return _Slice(backing, length)


def _pairs(arg: bytes) -> List[Tuple[str, Any]]:
    """The outermost object's keys and values in their order (inner objects as L{_Object}s); C{arg} has decoded already."""
    top: List[Any] = []

    def hook(items: List[Tuple[str, Any]]) -> _Object:
        top[:] = [items]  # (the outermost object comes last)
        return _object(items)

    json.loads(arg.decode("utf-8", GO_REPLACE), object_pairs_hook=hook)
    pairs: List[Tuple[str, Any]] = top[0]
    return [(_go_strings(k), _go_strings(v)) for k, v in pairs] if _BACKSLASH in arg else pairs


#: nats-server's SubjectPermission (ClientOpts' import and export).
_SUBJECT_PERMISSION = GoStruct({"allow": STRINGS, "deny": STRINGS})


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
               "\\": "\\\\", '"': '\\"'}


def go_quote(text: str) -> str:
    """
    C{text} as Go's C{fmt} C{%q} (C{strconv.Quote}) writes it: in double
    quotes, printable characters as they are, the rest escaped.
    """
    out = ['"']
    for c in text:
        escaped = _GO_ESCAPES.get(c)
        if escaped is not None:
            out.append(escaped)
        elif c.isprintable():
            out.append(c)
        elif ord(c) < 0x80:
            out.append("\\x{:02x}".format(ord(c)))
        elif ord(c) < 0x10000:
            out.append("\\u{:04x}".format(ord(c)))
        else:
            out.append("\\U{:08x}".format(ord(c)))
    out.append('"')
    return "".join(out)
