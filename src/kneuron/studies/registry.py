"""The study registry: every study kneuron knows, in the order the report shows them.

The built-in studies register when :mod:`kneuron.studies.catalog` is imported (in report order); a user's or a
test's study registers with :func:`register_study` and is then everywhere a built-in one is: ``kneuron study
list``, ``kneuron study NAME``, the atlas, ``kneuron report`` and ``kneuron serve``.

Examples:
    >>> [s.name for s in studies_in("paper")]
    ['suppress_amplify', 'generic', 'layers', 'discrimination']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kneuron.errors import StudyError
from kneuron.studies.base import GROUPS, Option, Study

_STUDIES: dict[str, Study] = {}
_ALIASES: dict[str, str] = {}
#: command names that select several studies
GROUP_COMMANDS = ("all", "beyond")


def register_study(cls: type[Study]) -> type[Study]:
    """Register a study class (use as a decorator); refuses a name or alias taken by another study."""
    study = cls()
    name = getattr(cls, "name", "")
    if not name or not name.replace("_", "").isalnum():
        raise StudyError(f"{cls.__name__}: a study needs a name of letters, digits and underscores.")
    if study.group not in GROUPS:
        raise StudyError(f"{cls.__name__}: group {study.group!r} is not one of {', '.join(GROUPS)}.")
    current = _STUDIES.get(name)
    if current is not None and (type(current).__module__, type(current).__qualname__) != (
            cls.__module__, cls.__qualname__):
        raise StudyError(f"{cls.__name__}: the name {name!r} is taken by {type(current).__qualname__}; choose "
                         "another (or unregister_study it first).")
    spellings = {name, name.replace("_", "-"), *cls.aliases}
    for spelling in spellings:
        owner = _ALIASES.get(spelling)
        if spelling in GROUP_COMMANDS or spelling == "list" or owner not in (None, name):
            raise StudyError(f"{cls.__name__}: the name {spelling!r} is taken"
                             f"{f' by the study {owner!r}' if owner else ''}.")
    flags = [option.cli_flag for option in cls.options]
    if len(set(flags)) != len(flags):
        raise StudyError(f"{cls.__name__}: two options share a flag ({', '.join(flags)}).")
    _STUDIES[name] = study
    _ALIASES.update(dict.fromkeys(spellings, name))
    return cls


def unregister_study(name: str) -> None:
    """Remove a study (tests that register a toy study undo it)."""
    _STUDIES.pop(name, None)
    for spelling in [s for s, owner in _ALIASES.items() if owner == name]:
        del _ALIASES[spelling]


def _load_builtin() -> None:
    import kneuron.studies.catalog  # noqa: F401  (registers the built-in studies, in report order)


def registered_studies() -> list[Study]:
    """Every registered study, in report order (the built-in ones first)."""
    _load_builtin()
    return list(_STUDIES.values())


def study_named(name: str) -> Study:
    """The study a stored or CLI name (or alias) names; an unknown one is refused in one line listing them."""
    _load_builtin()
    if name in _ALIASES:
        return _STUDIES[_ALIASES[name]]
    raise StudyError(f"Unknown study {name!r}: choose {', '.join(s.name.replace('_', '-') for s in _STUDIES.values())}"
                     f", all or beyond (`kneuron study list` describes them).")


def studies_in(group: str) -> list[Study]:
    """The studies of a group, in report order."""
    return [s for s in registered_studies() if s.group == group]


def in_all() -> list[Study]:
    """The studies ``kneuron study all`` runs."""
    return [s for s in registered_studies() if s.runs_in_all]


def running_order(studies: Iterable[Study]) -> list[Study]:
    """``studies`` in an order where each runs after the studies it reads (report order otherwise)."""
    chosen = list(dict.fromkeys(studies, None))
    names = {s.name for s in chosen}
    done: list[Study] = []
    left = [s for s in registered_studies() if s in chosen] + [s for s in chosen if s.name not in _STUDIES]
    while left:
        ready = next((s for s in left if all(r not in names or r in {d.name for d in done} for r in s.reads)), None)
        if ready is None:
            raise StudyError(f"The studies {', '.join(s.name for s in left)} read each other's rows in a cycle.")
        done.append(ready)
        left.remove(ready)
    return done


def names_of(value: str | None, members: Sequence[Study], what: str) -> list[Study]:
    """The studies a comma-separated list names among ``members`` (all of them when None), refusing others."""
    if value is None:
        return list(members)
    asked = [part.strip() for part in value.split(",") if part.strip()]
    chosen = []
    for part in asked:
        study = _STUDIES.get(_ALIASES.get(part, _ALIASES.get(part.replace("-", "_"), "")))
        if study is None or study not in members:
            chosen = []
            break
        chosen.append(study)
    if not chosen:
        raise StudyError(f"{what} {value!r}: choose among {', '.join(s.name for s in members)} (comma-separated).")
    return chosen


def merged_options(studies: Iterable[Study]) -> list[Option]:
    """The options of several studies, each name once (studies that share an option share its definition)."""
    merged: dict[str, Option] = {}
    for study in studies:
        for option in study.options:
            other = merged.setdefault(option.name, option)
            if (other.type, other.default, other.cli_flag) != (option.type, option.default, option.cli_flag):
                raise StudyError(f"Two studies define the option {option.name!r} differently; give them one "
                                 "definition (e.g. kneuron.studies.base.SEED).")
    return list(merged.values())
