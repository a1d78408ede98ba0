"""
How a setting is declared: the schema's own vocabulary, below the settings.

L{setting} makes a dataclass field whose metadata says all the rest of a
setting (its check, reason, TOML section and option); L{Setting} is a
setting as the schema lists it.  The settings themselves, each declared once
with L{setting}, are the dataclasses of L{callnet.config}, which re-exports
these names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import callnet.config_checks as checks

#: How a setting is given on the command line: C{value} (C{--key VALUE}),
#: C{flag} (C{--key} sets true), C{no-flag} (C{--no-key} sets false), or
#: C{many} (C{--key VALUE}, repeated, each adding one).
OptionKind = Literal["value", "flag", "no-flag", "many"]


@dataclass(frozen=True)
class Setting:
    """One setting of a node, as the schema declares it."""

    #: Its key: the field's name, and its name in the TOML file.
    key: str
    #: The TOML table it is set in (C{node}, C{limits}, ...).
    section: str
    #: Its default, as a L{NodeConfig} built with no arguments has it.
    default: object
    #: Checks a value (from TOML or the command line), returning it as the
    #: config holds it; raises with what it must be instead.
    check: checks.Check
    #: Why it exists and why its default: the documentation's text.
    reason: str
    #: The command-line option that sets it, if any (C{--threads}).
    option: str | None
    #: How the option takes its value (see L{OptionKind}).
    option_kind: OptionKind
    #: How the documentation and --help show the default, where it is not
    #: simply the value (the host name, say).
    shown: str | None

    @property
    def option_name(self) -> str:
        """The option's name as twistd's Options knows it (C{threads}); C{""} if none."""
        return (self.option or "").removeprefix("--")

    @property
    def summary(self) -> str:
        """The reason's first sentence, for --help and the table of settings."""
        first = re.split(r"(?<=[.;])\s", self.reason, maxsplit=1)[0]
        return first.rstrip(";.") + "."

    def show_default(self) -> str:
        """The default as the TOML file would write it."""
        if self.shown is not None:
            return self.shown
        return show_value(self.default)


def setting(
    default: Any,
    check: checks.Check,
    reason: str,
    *,
    option: str | None = None,
    option_kind: OptionKind = "value",
    section: str | None = None,
    factory: Callable[[], Any] | None = None,
    shown: str | None = None,
) -> Any:
    """
    Declare a setting: a dataclass field whose metadata says all the rest.

    @param section: its TOML table, if not that of its dataclass (C{[peers]}
        and C{[acl]} are tables of their own).
    @param factory: makes the default, where it is computed (the host name).
    """
    metadata = {
        "setting": (check, " ".join(reason.split()), option, option_kind, section, shown),
    }
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def declared(groups: dict[str, type], defaults: Any) -> dict[str, Setting]:
    """
    Every setting that the dataclasses of C{groups} (by TOML section)
    declare, by key, in the order declared.

    @param defaults: the config built with no arguments; the settings of
        section C{node} are its own, the others' those of its attribute of
        the section's name.
    @raise TypeError: a key is declared twice.
    """
    table: dict[str, Setting] = {}
    for group, cls in groups.items():
        holder = defaults if group == "node" else getattr(defaults, group)
        for f in fields(cls):
            if "setting" not in f.metadata:
                continue
            check, reason, option, kind, section, shown = f.metadata["setting"]
            if f.name in table:
                raise TypeError(f"setting {f.name} declared twice")
            table[f.name] = Setting(
                f.name,
                section or group,
                getattr(holder, f.name),
                check,
                reason,
                option,
                kind,
                shown,
            )
    return table


def show_value(value: object) -> str:
    """Render a value as it would be written in TOML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "a table"
    return str(value)
