"""
Procedures by name: how a Python function becomes something a node serves.

A module of procedures marks what it serves with L{procedure}; nothing else in
the module is reachable from the network::

    from callnet import procedure, NotFoundError

    @procedure
    def add(a: float, b: float) -> float:
        '''Return a + b.'''
        return a + b

    @procedure(errors={KeyError: NotFoundError})
    async def lookup(key: str) -> str:
        ...

A plain function runs in the node's thread pool, so it may block; an
C{async def} function, or one declared C{run="reactor"} (for example one that
returns a Deferred), runs in the reactor and must not block; one declared
C{run="process"} runs in a pool of worker processes, for CPU-bound work.

A function that yields is a stream (L{Procedure.stream}): a generator
(C{def ... yield}) is pulled in the thread pool, an async generator
(C{async def ... yield}) in the reactor, one item at a time as the caller
grants them (see L{callnet.streaming}).

The parameters' annotations say which JSON values each takes, and a call
whose arguments do not fit is refused before the procedure runs (see
L{callnet.argtypes}).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal, TypeVar, overload

from callnet.argtypes import ArgumentTypes
from callnet.errors import ERRORS_BY_CODE, CallError, InvalidArgumentError, NotFoundError
from callnet.wire import RESERVED_NAMES, is_procedure_name

Run = Literal["thread", "reactor", "process"]
ErrorMap = Mapping[type[BaseException], type[CallError] | str]

_F = TypeVar("_F", bound=Callable[..., Any])
_MARK = "__callnet_procedure__"


@dataclass(frozen=True)
class Procedure:
    """A function a node serves, with what the node needs to know to run it."""

    name: str
    function: Callable[..., Any]
    run: Run
    #: Exceptions the procedure declares, in the order they are matched, and
    #: the error class each becomes on the wire.
    errors: tuple[tuple[type[BaseException], type[CallError]], ...]
    #: Safe to run twice: the cluster may retry it after a lost connection.
    idempotent: bool
    signature: inspect.Signature
    #: The parameter that receives the call's L{CallContext}, if any; it is
    #: not part of the signature callers see.
    context_param: str | None = None
    #: The parameter naming a procedure this one calls for its caller (as
    #: C{multicall}'s C{procedure} does), so that access rules judge that
    #: procedure too, however the argument is passed.
    calls: str | None = None
    #: Whether it yields its result as a stream of items (a generator or an
    #: async generator function) rather than returning one value.
    stream: bool = False
    # How many positional arguments a call may pass with no keywords, when
    # that alone decides whether they fit (see check_arguments).
    _positional: range | None = field(init=False, repr=False, compare=False)
    # The checks of the arguments' types, compiled once from the annotations.
    _types: ArgumentTypes = field(init=False, repr=False, compare=False)
    # For each positional parameter, the value types that fit it at a glance.
    _exact: tuple[frozenset[type], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checks = ArgumentTypes(self.function, self.signature)
        object.__setattr__(self, "_types", checks)
        object.__setattr__(self, "_exact", checks.exact)
        required = optional = 0
        for parameter in self.signature.parameters.values():
            if parameter.kind not in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
                if (
                    parameter.kind is parameter.KEYWORD_ONLY
                    and parameter.default is parameter.empty
                ):
                    object.__setattr__(self, "_positional", None)
                    return
                continue
            if parameter.default is parameter.empty:
                required += 1
            else:
                optional += 1
        object.__setattr__(self, "_positional", range(required, required + optional + 1))

    @property
    def summary(self) -> str:
        """The first line of the docstring."""
        doc = inspect.getdoc(self.function) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    @property
    def doc(self) -> str:
        """The whole docstring, dedented."""
        return inspect.getdoc(self.function) or ""

    @property
    def usage(self) -> str:
        """The call's shape, as C{add(a: float, b: float) -> float}."""
        return f"{self.name}{_format_signature(self.signature)}"

    def check_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """
        Refuse arguments the function cannot take, before it runs: too many or
        too few, unknown names, or values whose types do not fit the
        parameters' annotations (see L{callnet.argtypes}).

        @raise InvalidArgumentError: naming the argument, what it must be,
            and the procedure's signature.
        """
        if not kwargs and self._positional is not None and len(args) in self._positional:
            # The common case, without binding: a value whose type fits its
            # parameter at a glance (an int for a float) needs no closer look.
            # Unrolled for one and two arguments: a loop costs more than the rest.
            exact = self._exact
            count = len(args)
            if count == 2:
                fits = type(args[0]) in exact[0] and type(args[1]) in exact[1]
            elif count == 1:
                fits = type(args[0]) in exact[0]
            else:
                fits = all(map(frozenset.__contains__, exact, map(type, args)))
            if not fits:
                reason = self._types.positional_mismatch(args)
                if reason is not None:
                    raise InvalidArgumentError(f"{reason}; usage: {self.usage}")
            return
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise InvalidArgumentError(f"{e}; usage: {self.usage}") from None
        if not self._types.anything:
            reason = self._types.mismatch(bound.arguments)
            if reason is not None:
                raise InvalidArgumentError(f"{reason}; usage: {self.usage}")

    def called_for_caller(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str | None:
        """The procedure a call of this one would call for its caller, if it names one."""
        if self.calls is None:
            return None
        try:
            bound = self.signature.bind_partial(*args, **kwargs)
        except TypeError:
            return None  # check_arguments refuses the call
        target = bound.arguments.get(self.calls)
        return target if isinstance(target, str) else None

    def describe(self) -> dict[str, Any]:
        """A JSON description, for C{HELP} asked by a program."""
        return {
            "name": self.name,
            "signature": _format_signature(self.signature),
            "doc": self.doc,
            "run": self.run,
            "idempotent": self.idempotent,
            **({"stream": True} if self.stream else {}),
        }


@dataclass(frozen=True)
class _Declaration:
    name: str | None
    run: Run | None
    errors: ErrorMap
    idempotent: bool
    calls: str | None = None


@overload
def procedure(function: _F, /) -> _F: ...
@overload
def procedure(
    *,
    name: str | None = None,
    run: Run | None = None,
    errors: ErrorMap | None = None,
    idempotent: bool = False,
    calls: str | None = None,
) -> Callable[[_F], _F]: ...
def procedure(
    function: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    run: Run | None = None,
    errors: ErrorMap | None = None,
    idempotent: bool = False,
    calls: str | None = None,
) -> Any:
    """
    Mark a function as a procedure a node may serve.

    The function itself is returned unchanged, so it can still be called
    locally and tested as plain Python.

    @param name: the name callers use; the function's own name by default.
    @param run: C{"thread"}, C{"reactor"} or C{"process"}; by default an
        C{async def} function runs in the reactor and any other in a thread.
    @param errors: exception class -> L{CallError} subclass (or wire code):
        what each declared exception becomes for the caller.  Exceptions not
        declared become C{INTERNAL}, and the node logs them.
    @param idempotent: running it twice is harmless, so a call lost in
        transit may be retried on another node.
    @param calls: the parameter that names a procedure this one calls for
        its caller; access rules then require the caller to be allowed that
        procedure too.
    """
    declaration = _Declaration(name, run, dict(errors or {}), idempotent, calls)

    def mark(function: _F) -> _F:
        setattr(function, _MARK, declaration)
        return function

    if function is not None:
        return mark(function)
    return mark


def _format_annotation(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__qualname__
    return str(annotation).replace("typing.", "")


class _Shown:
    """An annotation as people read it: C{repr} gives the text, unquoted."""

    __slots__ = ("text",)

    def __init__(self, annotation: Any) -> None:
        self.text = _format_annotation(annotation)

    def __repr__(self) -> str:
        return self.text


def _format_signature(signature: inspect.Signature) -> str:
    """
    Render a signature for people: C{(a: float, /, b: float = 1, *, c) -> float}.

    L{inspect.Signature} lays it out (with C{/} and C{*} where they belong);
    only the annotations are shown as written, not quoted.
    """
    empty = inspect.Parameter.empty
    shown = signature.replace(
        parameters=[
            parameter
            if parameter.annotation is empty
            else parameter.replace(annotation=_Shown(parameter.annotation))
            for parameter in signature.parameters.values()
        ],
        return_annotation=(
            empty if signature.return_annotation is empty else _Shown(signature.return_annotation)
        ),
    )
    return str(shown)


def _resolve_errors(
    name: str, errors: ErrorMap
) -> tuple[tuple[type[BaseException], type[CallError]], ...]:
    resolved = []
    for exception, target in errors.items():
        if isinstance(target, str):
            if target not in ERRORS_BY_CODE:
                raise ValueError(f"procedure {name}: unknown error code {target!r}")
            target = ERRORS_BY_CODE[target]
        if not (isinstance(target, type) and issubclass(target, CallError)):
            raise TypeError(f"procedure {name}: {target!r} is not a CallError subclass")
        resolved.append((exception, target))
    return tuple(resolved)


def _is_stream(function: Callable[..., Any]) -> bool:
    """Whether calling the function makes a generator or an async generator."""
    return inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function)


def _default_run(function: Callable[..., Any], signature: inspect.Signature) -> Run:
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        return "reactor"
    returns = signature.return_annotation
    if isinstance(returns, str) and returns.startswith("Deferred"):
        return "reactor"
    if getattr(returns, "__name__", None) == "Deferred" or (
        getattr(returns, "__origin__", None) is not None
        and getattr(returns.__origin__, "__name__", None) == "Deferred"
    ):
        return "reactor"
    return "thread"


class Registry:
    """The procedures one node serves, by name."""

    def __init__(self) -> None:
        self._procedures: dict[str, Procedure] = {}

    def add(
        self,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        run: Run | None = None,
        errors: ErrorMap | None = None,
        idempotent: bool | None = None,
    ) -> Procedure:
        """
        Serve a function.  Options given here win over its L{procedure} mark.

        @raise ValueError: the name is taken, reserved, or not a valid name.
        """
        declared: _Declaration = getattr(function, _MARK, _Declaration(None, None, {}, False))
        name = name or declared.name or function.__name__
        _check_name(name)
        if name in self._procedures:
            raise ValueError(f"procedure {name!r} is registered twice")
        signature = inspect.signature(function)
        run = run or declared.run or _default_run(function, signature)
        context_param = _context_parameter(signature)
        if context_param is not None:
            if run == "process":
                raise ValueError(f"procedure {name}: a process procedure cannot take a context")
            signature = signature.replace(
                parameters=[p for p in signature.parameters.values() if p.name != context_param]
            )
        if run not in ("thread", "reactor", "process"):
            raise ValueError(f"procedure {name}: run must be thread, reactor or process")
        if declared.calls is not None and declared.calls not in signature.parameters:
            raise ValueError(f"procedure {name}: calls={declared.calls!r} names no parameter")
        stream = _is_stream(function)
        if stream:
            # A generator runs where its kind says: pulled in a thread, or
            # resumed in the reactor; neither crosses to a process.
            kind: Run = "reactor" if inspect.isasyncgenfunction(function) else "thread"
            if run != kind:
                raise ValueError(
                    f"procedure {name}: a{'n async' if kind == 'reactor' else ''} generator"
                    f" runs in the {kind}, not run={run!r}"
                )
        entry = Procedure(
            name=name,
            function=function,
            run=run,
            errors=_resolve_errors(name, errors if errors is not None else declared.errors),
            idempotent=declared.idempotent if idempotent is None else idempotent,
            signature=signature,
            context_param=context_param,
            calls=declared.calls,
            stream=stream,
        )
        self._procedures[name] = entry
        return entry

    def add_module(self, module: ModuleType) -> list[Procedure]:
        """Serve every function in a module marked with L{procedure}."""
        added = []
        for value in vars(module).values():
            if callable(value) and hasattr(value, _MARK):
                if getattr(value, "__module__", None) != module.__name__:
                    continue  # imported from elsewhere: served by its own module
                added.append(self.add(value))
        return added

    def add_all(self, functions: Iterable[Callable[..., Any]]) -> None:
        """Serve each of several functions."""
        for function in functions:
            self.add(function)

    def find(self, name: str) -> Procedure | None:
        """The procedure by that name, or C{None}."""
        return self._procedures.get(name)

    def get(self, name: str) -> Procedure:
        """
        Find a procedure.

        @raise NotFoundError: there is none by that name.
        """
        try:
            return self._procedures[name]
        except KeyError:
            raise NotFoundError(f"no procedure named {name[:80]!r}; try HELP") from None

    def __contains__(self, name: object) -> bool:
        return name in self._procedures

    def __len__(self) -> int:
        return len(self._procedures)

    def names(self) -> list[str]:
        """Every procedure's name, sorted."""
        return sorted(self._procedures)

    def procedures(self) -> list[Procedure]:
        """Every procedure, sorted by name."""
        return [self._procedures[name] for name in self.names()]

    def help_text(self, name: str | None = None, others: Iterable[tuple[str, str]] = ()) -> str:
        """
        The text C{HELP} shows a person: a table, or one procedure in full.

        @param others: more rows for the table, as (usage, summary): the
            procedures only the node's peers serve.
        """
        if name is not None:
            entry = self.get(name)
            lines = [entry.usage]
            if entry.doc:
                lines += ["", *("    " + line if line else "" for line in entry.doc.splitlines())]
            notes = [f"runs in: {entry.run}"]
            if entry.stream:
                notes.insert(0, "a stream: answers with ITEM lines, then OK")
            if entry.idempotent:
                notes.append("idempotent")
            lines += ["", "; ".join(notes)]
            return "\n".join(lines)
        rows = sorted(
            [(e.usage + (" [stream]" if e.stream else ""), e.summary) for e in self.procedures()]
            + list(others)
        )
        width = min(max((len(usage) for usage, _ in rows), default=0), 48)
        lines = [f"{usage:<{width}}  {summary}".rstrip() for usage, summary in rows]
        lines += [
            "",
            "Commands: HELP [name], LIST, PING, STATS, CANCEL tag, MORE #tag n, QUIT",
            "Call with: name arg1 arg2 key=value   (arguments are JSON or bare words)",
        ]
        return "\n".join(lines)


def _context_parameter(signature: inspect.Signature) -> str | None:
    """The name of the parameter annotated C{CallContext}, if there is one."""
    for parameter in signature.parameters.values():
        annotation = parameter.annotation
        if isinstance(annotation, str):
            if annotation.rpartition(".")[2] == "CallContext":
                return parameter.name
        elif getattr(annotation, "__name__", None) == "CallContext" and getattr(
            annotation, "__module__", ""
        ).startswith("callnet"):
            return parameter.name
    return None


def _check_name(name: str) -> None:
    if name.lower() in RESERVED_NAMES:
        raise ValueError(f"{name!r} is reserved for a protocol command")
    if not is_procedure_name(name) or "@" in name:
        raise ValueError(f"{name!r} is not a valid procedure name")
