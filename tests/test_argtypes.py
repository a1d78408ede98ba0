"""
Arguments checked against a procedure's annotations (L{callnet.argtypes}),
through L{Procedure.check_arguments}: tables of annotations and values, the
messages that name what is wrong, bounded work on large values, and a
Hypothesis property against a reference predicate.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, NewType, Optional, TypedDict, Union

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from callnet.argtypes import _List, _Type, _Union, compile_annotation
from callnet.errors import InvalidArgumentError, Outcome
from callnet.registry import Procedure, Registry

UserId = NewType("UserId", int)


class Point(TypedDict):
    x: int
    y: int


class Opaque:
    """A class: not a JSON type, so not for the checker to judge."""


def with_annotations(
    annotations: dict[str, Any], defaults: dict[str, Any] | None = None
) -> Procedure:
    """A procedure taking one positional-or-keyword parameter per annotation."""
    defaults = defaults or {}

    def f(*args: Any, **kwargs: Any) -> None:
        pass

    f.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=defaults.get(name, inspect.Parameter.empty),
                annotation=annotation,
            )
            for name, annotation in annotations.items()
        ]
    )
    f.__annotations__ = dict(annotations)
    return Registry().add(f)


def refusal(entry: Procedure, *args: Any, **kwargs: Any) -> str | None:
    """The message of the refusal, or None if the arguments are taken."""
    try:
        entry.check_arguments(args, kwargs)
    except InvalidArgumentError as e:
        if e.outcome is not Outcome.NOT_RUN:
            raise AssertionError(f"refused with outcome {e.outcome}") from None
        return e.message.partition("; usage: ")[0]
    return None


# annotation -> (values it takes, values it refuses)
TABLE: list[tuple[Any, list[Any], list[Any]]] = [
    (int, [0, -5, 2**70], [1.0, True, "1", None, [1]]),
    (float, [0, 1.5, -2, 1e300], [True, False, "1.5", None, {}]),
    (str, ["", "x"], [1, None, ["x"], b"x"]),
    (bool, [True, False], [0, 1, "true", None]),
    (None, [None], [0, "", False, []]),
    (type(None), [None], [0, "None"]),
    (list, [[], [1, "a", None]], [{}, "[]", (1, 2)[0]]),
    (dict, [{}, {"a": [1]}], [[], "{}", None]),
    (list[int], [[], [1, 2]], [[1, "2"], [True], [1.5], {"a": 1}, None]),
    (typing.List[str], [["a"]], [[1]]),  # noqa: UP006
    (dict[str, int], [{}, {"a": 1}], [{"a": "1"}, {"a": True}, [("a", 1)], {1: 1}]),
    (typing.Dict[str, float], [{"a": 1}], [{"a": None}]),  # noqa: UP006
    (dict[str, list[int]], [{"a": [1]}], [{"a": [1, None]}]),
    (tuple[int, str], [[1, "a"], (1, "a")], [[1], [1, "a", 2], ["a", 1], "1a"]),
    (tuple[float, ...], [[], [1, 2.5]], [["x"], 1.0]),
    (tuple[()], [[]], [[1]]),
    (int | str, [1, "1"], [1.5, None, True, [1]]),
    (Union[int, None], [1, None], ["1"]),  # noqa: UP007
    (Optional[list[str]], [None, ["a"]], [["a", 1], "a"]),  # noqa: UP045
    (list[int | None], [[1, None]], [[1, "x"]]),
    (Literal["red", "green", 1], ["red", "green", 1], ["blue", 1.0, True, ["red"], None]),
    (Any, [None, 1, "x", [1], {"a": {}}], []),
    (object, [None, 1, "x", [1], {}], []),
    (Annotated[int, "meters"], [1], ["1"]),
    (UserId, [7], ["7"]),
    # Not understood, so not judged: a call is never refused for them.
    (Opaque, [None, 1, "x", {}], []),
    (Point, [{"x": 1, "y": 2}, {"x": "not checked"}, 3], []),
    (Sequence[int], [[1], "abc", 1], []),
    (dict[int, str], [{"1": "a"}], [{"1": 2}, []]),
    (list[Opaque] | None, [[1, "x"], None], ["x", {}]),
]


class TableTests(SynchronousTestCase):
    """Which values each annotation takes, passed by position and by name."""

    def test_table(self) -> None:
        """Every annotation in the table takes its values and refuses the others, either way they are passed."""
        for annotation, takes, refuses in TABLE:
            entry = with_annotations({"x": annotation})
            for value in takes:
                self.assertIsNone(refusal(entry, value), (annotation, value))
                self.assertIsNone(refusal(entry, x=value), (annotation, value))
            for value in refuses:
                self.assertIsNotNone(refusal(entry, value), (annotation, value))
                self.assertIsNotNone(refusal(entry, x=value), (annotation, value))

    def test_unannotated(self) -> None:
        """A parameter without an annotation takes anything."""
        entry = Registry().add(lambda x, y=2: None, name="f")
        for value in (None, 1, "x", [1], {"a": 1}, object()):
            self.assertIsNone(refusal(entry, value, value))

    def test_default_none_is_optional(self) -> None:
        """A parameter whose default is None also takes None, though its annotation does not say so."""
        entry = with_annotations({"x": int, "y": str}, defaults={"y": None})
        self.assertIsNone(refusal(entry, 1, None))
        self.assertIsNone(refusal(entry, 1, y=None))
        self.assertEqual(refusal(entry, 1, 2), "argument 'y' must be str | None, not int")
        self.assertEqual(refusal(entry, None), "argument 'x' must be int, not None")

    def test_subclasses_of_json_types(self) -> None:
        """A local caller's subclass of a JSON type fits as its base does, a bool still not as a number."""

        class Name(str):
            pass

        entry = with_annotations({"x": str, "y": list[int]})
        self.assertIsNone(refusal(entry, Name("a"), [1]))
        self.assertEqual(refusal(entry, "a", [False]), "argument 'y'[0] must be int, not bool")

    def test_star_args(self) -> None:
        """The annotation of C{*args} and C{**kwargs} applies to each of their items."""

        def f(first: str, *rest: int, **options: float) -> None:
            pass

        entry = Registry().add(f)
        self.assertIsNone(refusal(entry, "a", 1, 2, 3, size=1, ratio=0.5))
        self.assertEqual(refusal(entry, "a", 1, "2"), "argument 'rest'[1] must be int, not str")
        self.assertEqual(refusal(entry, "a", ratio="x"), "argument 'ratio' must be float, not str")
        self.assertEqual(refusal(entry, 1, 2), "argument 'first' must be str, not int")

    def test_keyword_only(self) -> None:
        """A keyword-only parameter is checked when given by name."""

        def f(a: int, *, b: bool = False) -> None:
            pass

        entry = Registry().add(f)
        self.assertIsNone(refusal(entry, 1, b=True))
        self.assertEqual(refusal(entry, 1, b=1), "argument 'b' must be bool, not int")

    def test_fast_path_agrees(self) -> None:
        """Arguments passed by position, which take the fast path, are judged as when passed by name."""
        entry = with_annotations({"a": float, "b": list[int], "c": str}, defaults={"c": "x"})
        for args in [(1, [2]), (1.5, [2], "y"), (True, [2]), (1, [2], 3), (1, ["2"]), ("1", [])]:
            named = dict(zip("abc", args, strict=False))
            self.assertEqual(refusal(entry, *args), refusal(entry, **named), args)

    def test_wrong_count_still_refused(self) -> None:
        """A call with too few or unknown arguments is refused as before, naming the signature."""
        entry = with_annotations({"a": float, "b": float})
        with self.assertRaises(InvalidArgumentError) as caught:
            entry.check_arguments((1,), {})
        self.assertIn("missing a required argument: 'b'", caught.exception.message)
        self.assertIn("usage: f(a: float, b: float)", caught.exception.message)
        self.assertIsNotNone(refusal(entry, 1, 2, c=3))


class MessageTests(SynchronousTestCase):
    """A refusal names the argument, where inside it, what it must be, and the signature."""

    def test_greet(self) -> None:
        """README's greeter refuses a list for its name with the whole message and usage."""

        def greet(name: str, greeting: str = "Hello") -> str:
            return f"{greeting}, {name}!"

        entry = Registry().add(greet)
        with self.assertRaises(InvalidArgumentError) as caught:
            entry.check_arguments(([1, 2],), {})
        self.assertEqual(
            caught.exception.message,
            "argument 'name' must be str, not list; "
            "usage: greet(name: str, greeting: str = 'Hello') -> str",
        )
        self.assertEqual(caught.exception.outcome, Outcome.NOT_RUN)

    def test_paths(self) -> None:
        """A value that does not fit deep inside an argument is named by its path."""
        entry = with_annotations(
            {
                "ids": list[int],
                "tags": dict[str, list[str]] | None,
                "pair": tuple[int, str],
            }
        )
        self.assertEqual(
            refusal(entry, [1, 2, 3, "4"], None, [1, "a"]),
            "argument 'ids'[3] must be int, not str",
        )
        self.assertEqual(
            refusal(entry, [], {"a": ["x"], "b": ["y", 2]}, [1, "a"]),
            "argument 'tags'['b'][1] must be str, not int",
        )
        self.assertEqual(
            refusal(entry, [], "x", [1, "a"]),
            "argument 'tags' must be dict[str, list[str]] | None, not str",
        )
        self.assertEqual(
            refusal(entry, [], None, [1, 2]), "argument 'pair'[1] must be str, not int"
        )
        self.assertEqual(
            refusal(entry, [], None, [1]),
            "argument 'pair' must be tuple[int, str], 2 items, not 1",
        )
        self.assertEqual(
            refusal(entry, [], {1: []}, [1, "a"]), "argument 'tags' key 1 must be str, not int"
        )

    def test_literal_and_union_text(self) -> None:
        """Literals and unions are shown as they are written."""
        entry = with_annotations({"mode": Literal["r", "w"], "n": int | str})
        self.assertEqual(
            refusal(entry, "x", 1), "argument 'mode' must be Literal['r', 'w'], not str"
        )
        self.assertEqual(refusal(entry, "r", 1.5), "argument 'n' must be int | str, not float")


class ResolutionTests(SynchronousTestCase):
    """Annotations written as strings are resolved once, at registration."""

    def test_string_annotations(self) -> None:
        """Annotations made strings by C{from __future__ import annotations} are checked as the types they name."""

        def f(a: list[UserId], b: Optional[float] = None) -> None:  # noqa: UP045
            pass

        self.assertEqual(f.__annotations__["a"], "list[UserId]")
        entry = Registry().add(f)
        self.assertIsNone(refusal(entry, [1], None))
        self.assertEqual(refusal(entry, ["1"]), "argument 'a'[0] must be int, not str")

    def test_unresolvable_names_take_anything(self) -> None:
        """A name that cannot be resolved takes anything, and the other parameters are still checked."""
        entry = with_annotations({"x": "Undefined", "y": "int", "z": "list[Nowhere]"})
        self.assertIsNone(refusal(entry, {"any": "thing"}, 1, [1]))
        self.assertEqual(refusal(entry, None, "1", []), "argument 'y' must be int, not str")

    def test_resolved_once(self) -> None:
        """The annotations are resolved when the procedure is registered, not again per call."""
        calls = []
        real = typing.get_type_hints

        def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            return real(*args, **kwargs)

        self.patch(typing, "get_type_hints", counting)
        entry = with_annotations({"x": "int"})
        registered = len(calls)
        self.assertGreater(registered, 0)
        for value in (1, "1", [1]):
            refusal(entry, value)
            refusal(entry, x=value)
        self.assertEqual(len(calls), registered)


class Counting(_Type):
    """A leaf check that counts how often it is asked, to bound the work done."""

    def __init__(self) -> None:
        super().__init__("counted")
        self.asked = 0

    def accepts(self, value: Any) -> bool:
        self.asked += 1
        return value != "bad"


class BoundedWorkTests(SynchronousTestCase):
    """Checking and explaining are linear in a value's size, and deep values need no recursion."""

    def test_linear_in_size(self) -> None:
        """A refused value's items are each looked at a bounded number of times, the explanation included."""
        leaf = Counting()
        check = _Union("nested", (_List("list", _List("list", leaf)), compile_annotation(None)))
        size = 300
        value = [["ok"] * size for _ in range(size)]
        value[-1][-1] = "bad"
        self.assertFalse(check.accepts(value))
        self.assertEqual(
            check.mismatch(value, "argument 'x'"),
            f"argument 'x'[{size - 1}][{size - 1}] must be counted, not str",
        )
        # One pass to refuse, one to find the path and one to explain the
        # leaf: quadratic work would ask size ** 3 times.
        self.assertLessEqual(leaf.asked, 4 * size * size)

    def test_huge_list(self) -> None:
        """A list of a million ints is taken, and one wrong item at its end is named."""
        entry = with_annotations({"ids": list[int]})
        ids = list(range(1_000_000))
        self.assertIsNone(refusal(entry, ids))
        ids[-1] = "x"
        self.assertEqual(refusal(entry, ids), "argument 'ids'[999999] must be int, not str")

    def test_deep_value(self) -> None:
        """A value nested far deeper than the recursion limit is checked only as deep as its annotation goes."""
        deep: list[Any] = []
        for _ in range(100_000):
            deep = [deep]
        for annotation in (list, list[Any], list[list[Any]], Any, list[list[list[list]]]):  # type: ignore[type-arg]
            self.assertIsNone(refusal(with_annotations({"x": annotation}), deep), annotation)
        self.assertEqual(
            refusal(with_annotations({"x": list[list[int]]}), deep),
            "argument 'x'[0][0] must be int, not list",
        )


# --- The property -----------------------------------------------------------

LEAVES: list[Any] = [int, float, str, bool, None, Any, object, list, dict, Literal["a", 1]]

annotations: st.SearchStrategy[Any] = st.recursive(
    st.sampled_from(LEAVES),
    lambda inner: st.one_of(
        inner.map(lambda t: list[t]),  # type: ignore[valid-type]
        inner.map(lambda t: dict[str, t]),  # type: ignore[valid-type]
        inner.map(lambda t: Optional[t]),  # noqa: UP045
        st.tuples(inner, inner).map(lambda ts: Union[ts]),  # noqa: UP007
        st.tuples(inner, inner).map(lambda ts: tuple[ts]),  # type: ignore[misc]
        inner.map(lambda t: tuple[t, ...]),  # type: ignore[valid-type]
    ),
    max_leaves=6,
)

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["a", "", 1, 1.0, True, 0, False])  # near the literals and each other
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)


def fits(annotation: Any, value: Any) -> bool:
    """The reference: whether a JSON value fits an annotation, written plainly."""
    if annotation is Any or annotation is object:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    if annotation in (int, str, bool):
        return type(value) is annotation
    if annotation is float:
        return type(value) in (int, float)
    if annotation in (list, dict):
        return type(value) is annotation
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union:
        return any(fits(a, value) for a in arguments)
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in arguments)
    if origin is list:
        return type(value) is list and all(fits(arguments[0], v) for v in value)
    if origin is dict:
        return type(value) is dict and all(fits(arguments[1], v) for v in value.values())
    if origin is tuple:
        if type(value) is not list:
            return False
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return all(fits(arguments[0], v) for v in value)
        return len(value) == len(arguments) and all(map(fits, arguments, value))
    raise AssertionError(f"no reference for {annotation}")


def values_of(annotation: Any) -> st.SearchStrategy[Any]:
    """Values that fit an annotation."""
    if annotation is Any or annotation is object:
        return json_values
    if annotation is None or annotation is type(None):
        return st.none()
    simple: dict[Any, st.SearchStrategy[Any]] = {
        int: st.integers(),
        float: st.integers() | st.floats(allow_nan=False, allow_infinity=False),
        str: st.text(max_size=5),
        bool: st.booleans(),
        list: st.lists(json_values, max_size=3),
        dict: st.dictionaries(st.text(max_size=3), json_values, max_size=3),
    }
    if annotation in simple:
        return simple[annotation]
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union:
        return st.one_of(*map(values_of, arguments))
    if origin is Literal:
        return st.sampled_from(arguments)
    if origin is list or (origin is tuple and arguments[-1:] == (Ellipsis,)):
        return st.lists(values_of(arguments[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(st.text(max_size=3), values_of(arguments[1]), max_size=3)
    if origin is tuple:
        return st.tuples(*map(values_of, arguments)).map(list)
    raise AssertionError(f"no values for {annotation}")


@st.composite
def annotations_and_fitting_values(draw: Callable[..., Any]) -> tuple[Any, Any]:
    annotation = draw(annotations)
    return annotation, draw(values_of(annotation))


class PropertyTests(SynchronousTestCase):
    """For any shape of annotation, the checker agrees with the plain reference."""

    def test_every_leaf_against_the_near_values(self) -> None:
        """Each simple annotation judges the values nearest its edges (1, 1.0, true, "1", ...) as the reference does."""
        near = [None, True, False, 0, 1, 1.0, 1.5, "a", "1", "", [], {}, [1], ["a"], {"a": 1}]
        shapes = [*LEAVES, *(list[t] for t in LEAVES), *(Optional[t] for t in LEAVES)]  # noqa: UP045
        for annotation in shapes:
            entry = with_annotations({"x": annotation})
            for value in near:
                for candidate in (value, [value]):
                    self.assertEqual(
                        refusal(entry, candidate) is None,
                        fits(annotation, candidate),
                        (annotation, candidate),
                    )

    @settings(max_examples=300, deadline=None)
    @given(annotations_and_fitting_values())
    def test_fitting_values_are_taken(self, case: tuple[Any, Any]) -> None:
        """Any JSON value that fits its annotation is taken, by position and by name."""
        annotation, value = case
        entry = with_annotations({"x": annotation})
        self.assertIsNone(refusal(entry, value))
        self.assertIsNone(refusal(entry, x=value))

    @settings(max_examples=500, deadline=None)
    @given(annotations, json_values)
    def test_any_value_judged_as_the_reference(self, annotation: Any, value: Any) -> None:
        """Any JSON value is taken exactly when the reference says it fits, and refused only with INVALID_ARGUMENT."""
        entry = with_annotations({"x": annotation})
        expected = fits(annotation, value)
        for reason in (refusal(entry, value), refusal(entry, x=value)):
            if expected:
                self.assertIsNone(reason)
            else:
                assert reason is not None
                self.assertTrue(reason.startswith("argument 'x'"), reason)
                self.assertIn(" must be ", reason)
