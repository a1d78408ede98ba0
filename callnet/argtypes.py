"""
Arguments checked against a procedure's annotations, before it runs.

A call's arguments are JSON values, so the annotations checked are the JSON
types and the containers made of them: C{int}, C{float} (an int is a float
too, as in JSON; a bool is neither), C{str}, C{bool}, C{None}, C{list[T]},
C{tuple[...]}, C{dict[str, T]}, unions, C{Optional}, C{Literal[...]},
C{Any} and C{object}.  An annotation this module does not understand (a
class, a C{TypedDict}, a name it cannot resolve) accepts anything: the
checker refuses only calls it is sure the procedure cannot take.

Each annotation is compiled once, when the procedure is registered, into a
small tree of L{_Type} nodes.  A call's check walks each argument once, so
its cost is linear in the argument's size, and it goes only as deep into a
value as the annotation does; the explanation of a refusal goes no further
than the first value that does not fit.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# The types the JSON decoder produces, so a value of one of them needs no
# further look when its parameter accepts anything.
_JSON_TYPES: frozenset[type] = frozenset({type(None), bool, int, float, str, list, dict})
_NONE = type(None)


class _Type:
    """A compiled annotation: whether a value fits it, and if not, why."""

    #: Exact value types that fit with no further look (the fast path); a
    #: value of any other type is given to L{accepts}.
    exact: frozenset[type] = frozenset()
    #: Whether every value fits.
    anything = False

    def __init__(self, text: str) -> None:
        self.text = text

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def mismatch(self, value: Any, path: str) -> str | None:
        """Why the value does not fit, naming where in it: C{'ids'[3] must be int, not str}."""
        if self.accepts(value):
            return None
        return f"{path} must be {self.text}, not {_kind(value)}"


class _Anything(_Type):
    """Any value fits: C{Any}, C{object}, no annotation, or one not understood."""

    exact = _JSON_TYPES
    anything = True

    def accepts(self, value: Any) -> bool:
        return True


class _Scalar(_Type):
    """C{int}, C{float}, C{str}, C{bool} or C{None}: a bool is never a number."""

    def __init__(self, text: str, exact: frozenset[type], instances: tuple[type, ...]) -> None:
        super().__init__(text)
        self.exact = exact
        self._instances = instances

    def accepts(self, value: Any) -> bool:
        kind = type(value)
        return kind in self.exact or (kind is not bool and isinstance(value, self._instances))


class _Literal(_Type):
    """C{Literal[...]}: one of the values it names."""

    def __init__(self, text: str, values: tuple[Any, ...]) -> None:
        super().__init__(text)
        # By type as well as value: Literal[1] takes neither True nor 1.0.
        self._values = frozenset((type(v), v) for v in values)

    def accepts(self, value: Any) -> bool:
        try:
            return (type(value), value) in self._values
        except TypeError:  # unhashable: a list or a dict is no literal
            return False


class _List(_Type):
    """C{list[T]}, or C{tuple[T, ...]}: a JSON array of items that fit T."""

    def __init__(self, text: str, item: _Type) -> None:
        super().__init__(text)
        self._item = item
        self._check_items = not item.anything
        if not self._check_items:
            self.exact = frozenset({list})

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, list | tuple):
            return False
        if not self._check_items:
            return True
        return _all_fit(self._item, value)

    def mismatch(self, value: Any, path: str) -> str | None:
        if not isinstance(value, list | tuple):
            return super().mismatch(value, path)
        if self._check_items:
            exact, accepts = self._item.exact, self._item.accepts
            for index, item in enumerate(value):
                if type(item) not in exact and not accepts(item):
                    return self._item.mismatch(item, f"{path}[{index}]")
        return None


class _Tuple(_Type):
    """C{tuple[A, B]}: a JSON array of exactly that many items, each fitting its own."""

    def __init__(self, text: str, items: tuple[_Type, ...]) -> None:
        super().__init__(text)
        self._items = items

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, list | tuple) or len(value) != len(self._items):
            return False
        return all(t.accepts(item) for t, item in zip(self._items, value, strict=True))

    def mismatch(self, value: Any, path: str) -> str | None:
        if not isinstance(value, list | tuple):
            return super().mismatch(value, path)
        if len(value) != len(self._items):
            return f"{path} must be {self.text}, {len(self._items)} items, not {len(value)}"
        for index, (t, item) in enumerate(zip(self._items, value, strict=True)):
            reason = t.mismatch(item, f"{path}[{index}]")
            if reason is not None:
                return reason
        return None


class _Dict(_Type):
    """C{dict[str, T]}: a JSON object whose values fit T."""

    def __init__(self, text: str, keys: _Type, values: _Type) -> None:
        super().__init__(text)
        self._keys = keys
        self._values = values
        if keys.anything and values.anything:
            self.exact = frozenset({dict})

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, dict):
            return False
        if not self._keys.anything and not _all_fit(self._keys, value):
            return False
        return self._values.anything or _all_fit(self._values, value.values())

    def mismatch(self, value: Any, path: str) -> str | None:
        if not isinstance(value, dict):
            return super().mismatch(value, path)
        for key, item in value.items():
            if not self._keys.accepts(key):
                return f"{path} key {key!r} must be {self._keys.text}, not {_kind(key)}"
            reason = self._values.mismatch(item, f"{path}[{key!r}]")
            if reason is not None:
                return reason
        return None


class _Union(_Type):
    """C{A | B}, C{Union[A, B]}, C{Optional[A]}: a value that fits any member."""

    def __init__(self, text: str, members: tuple[_Type, ...]) -> None:
        super().__init__(text)
        self._members = members
        self.exact = frozenset().union(*(m.exact for m in members))

    def accepts(self, value: Any) -> bool:
        return any(member.accepts(value) for member in self._members)

    def mismatch(self, value: Any, path: str) -> str | None:
        if self.accepts(value):
            return None
        # If one member is of the value's own kind (the list of list[int] |
        # None), say where inside the value that member fails.
        shaped = [m for m in self._members if _same_shape(m, value)]
        if len(shaped) == 1:
            return shaped[0].mismatch(value, path)
        return f"{path} must be {self.text}, not {_kind(value)}"


def _all_fit(check: _Type, items: Iterable[Any]) -> bool:
    """
    Whether every item fits: first by their exact types alone, in one pass in
    C.  The items are iterated twice: a list, a tuple or a dict view.
    """
    if check.exact.issuperset(map(type, items)):
        return True
    exact, accepts = check.exact, check.accepts
    return all(type(item) in exact or accepts(item) for item in items)


def _same_shape(member: _Type, value: Any) -> bool:
    if isinstance(member, _List | _Tuple):
        return isinstance(value, list | tuple)
    if isinstance(member, _Dict):
        return isinstance(value, dict)
    return False


def _describe(annotation: Any) -> str:
    """An annotation as a message shows it: C{MyClass}, C{Sequence[int]}."""
    if isinstance(annotation, type):
        return annotation.__qualname__
    return str(annotation).replace("typing.", "")


def _kind(value: Any) -> str:
    """The name of a value's type, as a message shows it."""
    if value is None:
        return "None"
    return type(value).__qualname__


_ANYTHING = _Anything("Any")
_SCALARS: dict[Any, _Type] = {
    int: _Scalar("int", frozenset({int}), (int,)),
    float: _Scalar("float", frozenset({int, float}), (int, float)),
    str: _Scalar("str", frozenset({str}), (str,)),
    bool: _Scalar("bool", frozenset({bool}), (bool,)),
    _NONE: _Scalar("None", frozenset({_NONE}), (_NONE,)),
    None: _Scalar("None", frozenset({_NONE}), (_NONE,)),
}


def compile_annotation(annotation: Any) -> _Type:
    """The check of one resolved annotation; one it does not understand fits anything."""
    if annotation is Any or annotation is object or annotation is inspect.Parameter.empty:
        return _ANYTHING
    try:
        scalar = _SCALARS.get(annotation)
    except TypeError:  # unhashable: not an annotation of ours
        return _Anything(_describe(annotation))
    if scalar is not None:
        return scalar
    if annotation is list or annotation is tuple:
        return _List(annotation.__name__, _ANYTHING)
    if annotation is dict:
        return _Dict("dict", _ANYTHING, _ANYTHING)
    supertype = getattr(annotation, "__supertype__", None)
    if supertype is not None:  # a NewType
        return compile_annotation(supertype)
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is typing.Annotated:
        return compile_annotation(arguments[0])
    if origin is typing.Union or origin is types.UnionType:
        members = tuple(compile_annotation(a) for a in arguments)
        text = " | ".join(m.text for m in members)
        if any(m.anything for m in members):
            return _Anything(text)
        return _Union(text, members)
    if origin is typing.Literal:
        return _Literal(f"Literal[{', '.join(map(repr, arguments))}]", arguments)
    if origin is list and len(arguments) == 1:
        item = compile_annotation(arguments[0])
        return _List(f"list[{item.text}]", item)
    if origin is tuple:
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            item = compile_annotation(arguments[0])
            return _List(f"tuple[{item.text}, ...]", item)
        if arguments == ((),):  # tuple[()], the empty one, as typing spells it
            arguments = ()
        items = tuple(compile_annotation(a) for a in arguments)
        return _Tuple(f"tuple[{', '.join(t.text for t in items) or '()'}]", items)
    if origin is dict and len(arguments) == 2:
        keys = compile_annotation(arguments[0])
        values = compile_annotation(arguments[1])
        text = f"dict[{keys.text}, {values.text}]"
        if keys is not _SCALARS[str]:
            # JSON keys are strings: other key types are not for this to judge.
            keys = _Anything(keys.text)
        return _Dict(text, keys, values)
    return _Anything(_describe(annotation))


def resolve_annotations(
    function: Callable[..., Any], signature: inspect.Signature
) -> dict[str, Any]:
    """
    The parameters' annotations as objects: strings (as C{from __future__
    import annotations} makes them) resolved as C{typing.get_type_hints}
    does, one by one where that fails for the whole function.  One that
    cannot be resolved becomes no annotation, so it fits anything.
    """
    try:
        hints = typing.get_type_hints(function)
    except Exception:
        hints = {}
    namespace = getattr(inspect.unwrap(function), "__globals__", None)
    resolved = {}
    for parameter in signature.parameters.values():
        annotation = hints.get(parameter.name, parameter.annotation)
        if isinstance(annotation, str):
            annotation = _resolve(annotation, namespace)
        resolved[parameter.name] = annotation
    return resolved


def _resolve(annotation: str, namespace: dict[str, Any] | None) -> Any:
    """One annotation written as a string, or none (it fits anything) if it names the unknown."""
    holder = types.SimpleNamespace(__annotations__={"annotation": annotation})
    try:
        return typing.get_type_hints(holder, globalns=namespace)["annotation"]
    except Exception:
        return inspect.Parameter.empty


class ArgumentTypes:
    """
    A procedure's parameters' checks, compiled once.

    @ivar exact: for each positional parameter, in order, the value types
        that fit it with no further look: the fast path of a call with only
        positional arguments.
    """

    def __init__(self, function: Callable[..., Any], signature: inspect.Signature) -> None:
        hints = resolve_annotations(function, signature)
        self._by_name: dict[str, _Type] = {}
        self._star: str | None = None
        self._star_star: str | None = None
        positional: list[_Type] = []
        self._positional_names: list[str] = []
        for parameter in signature.parameters.values():
            check = compile_annotation(hints.get(parameter.name, inspect.Parameter.empty))
            if parameter.default is None and not check.anything and not check.accepts(None):
                check = _Union(f"{check.text} | None", (check, _SCALARS[None]))
            if parameter.kind is parameter.VAR_POSITIONAL:
                self._star = parameter.name
            elif parameter.kind is parameter.VAR_KEYWORD:
                self._star_star = parameter.name
            elif parameter.kind is not parameter.KEYWORD_ONLY:
                positional.append(check)
                self._positional_names.append(parameter.name)
            self._by_name[parameter.name] = check
        self._positional = tuple(positional)
        self.exact: tuple[frozenset[type], ...] = tuple(t.exact for t in positional)
        #: Whether every parameter takes anything: nothing to check.
        self.anything = all(t.anything for t in self._by_name.values())

    def positional_mismatch(self, args: tuple[Any, ...]) -> str | None:
        """Why positional arguments, no more than there are parameters for, do not fit."""
        names, checks = self._positional_names, self._positional
        for name, check, value in zip(names, checks, args, strict=False):
            if type(value) not in check.exact and not check.accepts(value):
                return check.mismatch(value, f"argument {name!r}")
        return None

    def mismatch(self, arguments: Mapping[str, Any]) -> str | None:
        """Why bound arguments (parameter name -> value, as C{BoundArguments}) do not fit."""
        for name, value in arguments.items():
            check = self._by_name[name]
            if check.anything:
                continue
            if name == self._star:
                if not _all_fit(check, value):
                    for index, item in enumerate(value):
                        reason = check.mismatch(item, f"argument {name!r}[{index}]")
                        if reason is not None:
                            return reason
            elif name == self._star_star:
                if not _all_fit(check, value.values()):
                    for key, item in value.items():
                        reason = check.mismatch(item, f"argument {key!r}")
                        if reason is not None:
                            return reason
            elif type(value) not in check.exact and not check.accepts(value):
                return check.mismatch(value, f"argument {name!r}")
        return None
