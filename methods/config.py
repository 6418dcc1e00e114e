"""
One config dataclass per method: the single source of its parameters.

A method's config class (a :class:`MethodConfig` dataclass) declares each
parameter once with :func:`param`: its default, its type, the values it
accepts and a help text. From that one declaration come

- the defaults (a dataclass field default),
- validation (:meth:`MethodConfig.from_kwargs` raises a
  :class:`~fiftyone_hardness.methods.base.HardnessError` naming the
  parameter and the allowed values; unknown names are refused with the list
  of valid ones, before any data is read),
- the App form (``operators/forms.py`` builds one input per parameter, with
  its choices, range and help, and marks the invalid ones with the same
  messages), and
- the stored run config (:meth:`MethodConfig.to_dict`).

So Python and the App accept and refuse exactly the same values.
"""

import dataclasses
import math
import numbers
import typing
from dataclasses import dataclass

from fiftyone_hardness.methods.base import HardnessError

#: ``param(kind=...)`` values, and what each accepts
KINDS = ("int", "float", "bool", "str", "choice", "strings", "any")


def param(
    default,
    help,
    kind=None,
    label=None,
    choices=None,
    minimum=None,
    maximum=None,
    exclusive_minimum=False,
    exclusive_maximum=False,
    optional=False,
    form=True,
    check=None,
    form_choices=None,
):
    """Declares one parameter of a :class:`MethodConfig`.

    Args:
        default: the default value (lists are copied per instance)
        help: one or two sentences for the docstring and the App form
        kind (None): one of :data:`KINDS`; inferred from ``choices`` /
            ``default`` when None (a choice, a bool, an int, a float, a str)
        label (None): the form label; by default the name in words
        choices (None): the allowed values, as a list of values or of
            ``(value, description)`` pairs
        minimum (None), maximum (None): the allowed numeric range
        exclusive_minimum (False), exclusive_maximum (False): whether the
            range ends are excluded
        optional (False): whether None is allowed (means "automatic")
        form (True): whether the App form shows this parameter
        check (None): a callable ``value -> message or None`` for rules the
            declaration cannot express
        form_choices (None): ``(value, description)`` pairs the App offers
            for a parameter that accepts more values than a list can say
            (e.g. "an int or a fraction"); a dropdown shows them

    Returns:
        a :func:`dataclasses.field`
    """
    if choices is not None:
        choices = [c if isinstance(c, tuple) else (c, str(c)) for c in choices]
    if kind is None:
        kind = _infer_kind(default, choices)
    if kind not in KINDS:
        raise ValueError("unknown parameter kind %r" % kind)
    metadata = dict(
        help=help,
        kind=kind,
        label=label,
        choices=choices,
        minimum=minimum,
        maximum=maximum,
        exclusive_minimum=exclusive_minimum,
        exclusive_maximum=exclusive_maximum,
        optional=optional or default is None,
        form=form,
        check=check,
        form_choices=form_choices,
    )
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata=metadata
        )
    return dataclasses.field(default=default, metadata=metadata)


def _infer_kind(default, choices):
    if choices is not None:
        return "choice"
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, numbers.Integral):
        return "int"
    if isinstance(default, numbers.Real):
        return "float"
    if isinstance(default, str):
        return "str"
    if isinstance(default, (list, tuple)):
        return "strings"
    return "any"


@dataclass(frozen=True)
class Parameter:
    """One declared parameter, as forms and error messages see it."""

    name: str
    default: typing.Any
    help: str
    kind: str
    label: str
    choices: typing.Optional[list]
    minimum: typing.Optional[float]
    maximum: typing.Optional[float]
    exclusive_minimum: bool
    exclusive_maximum: bool
    optional: bool
    form: bool
    check: typing.Optional[typing.Callable]
    form_choices: typing.Optional[list] = None

    @property
    def choice_values(self):
        return [value for value, _ in self.choices or []]

    def allowed(self):
        """Describes the allowed values in words."""
        if self.kind == "choice":
            text = "one of %s" % ", ".join(repr(v) for v in self.choice_values)
        elif self.kind in ("int", "float"):
            text = "an integer" if self.kind == "int" else "a number"
            bounds = []
            if self.minimum is not None:
                op = ">" if self.exclusive_minimum else ">="
                bounds.append("%s %s" % (op, _fmt(self.minimum)))
            if self.maximum is not None:
                op = "<" if self.exclusive_maximum else "<="
                bounds.append("%s %s" % (op, _fmt(self.maximum)))
            if bounds:
                text += " " + " and ".join(bounds)
        elif self.kind == "bool":
            text = "True or False"
        elif self.kind == "str":
            text = "a string"
        elif self.kind == "strings":
            text = "a list of strings"
        else:
            text = "a value"
        if self.optional:
            text += " (or None)"
        return text

    def error(self, value):
        """Returns why ``value`` is not allowed, or None when it is."""
        message = self._type_error(value)
        if message is None and value is not None and self.check is not None:
            message = self.check(value)
        if message is None:
            return None
        return "Invalid %s=%r: %s" % (self.name, value, message)

    def _type_error(self, value):
        if value is None:
            return None if self.optional else "expected " + self.allowed()
        if self.kind == "bool":
            ok = isinstance(value, bool)
        elif self.kind == "int":
            ok = _is_integer(value)
        elif self.kind == "float":
            ok = _is_number(value) and math.isfinite(float(value))
        elif self.kind == "str":
            ok = isinstance(value, str)
        elif self.kind == "strings":
            ok = isinstance(value, (list, tuple)) and all(
                isinstance(v, str) for v in value
            )
        elif self.kind == "choice":
            ok = _in_choices(value, self.choice_values)
        else:
            ok = True
        if not ok:
            return "expected " + self.allowed()
        if self.kind in ("int", "float") and not self._in_range(value):
            return "expected " + self.allowed()
        return None

    def _in_range(self, value):
        value = float(value)
        if self.minimum is not None:
            if value < self.minimum or (
                self.exclusive_minimum and value == self.minimum
            ):
                return False
        if self.maximum is not None:
            if value > self.maximum or (
                self.exclusive_maximum and value == self.maximum
            ):
                return False
        return True

    def coerce(self, value):
        """Returns a valid ``value`` in its canonical type (an integral
        float becomes an int, an int a float where a float is expected)."""
        if value is None:
            return None
        if self.kind == "int":
            return int(value)
        if self.kind == "float":
            return float(value)
        if self.kind == "strings":
            return list(value)
        if self.kind == "choice":
            for choice in self.choice_values:
                if _same_choice(value, choice):
                    return choice
        return value


def _fmt(number):
    return ("%g" % number) if isinstance(number, float) else str(number)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value):
    return _is_number(value) and float(value).is_integer()


def _same_choice(value, choice):
    if _is_number(value) and _is_number(choice):
        return float(value) == float(choice)
    return type(value) is type(choice) and value == choice


def _in_choices(value, choices):
    return any(_same_choice(value, c) for c in choices)


@dataclass
class MethodConfig:
    """Base of every method's config dataclass.

    Subclasses are ``@dataclass`` classes whose fields are declared with
    :func:`param`, and may override :meth:`check` for rules between
    parameters. Constructing one validates it.
    """

    def __post_init__(self):
        for p in self.parameters():
            value = getattr(self, p.name)
            message = p.error(value)
            if message is not None:
                raise HardnessError(message)
            setattr(self, p.name, p.coerce(value))
        problem = self.check()
        if problem:
            raise HardnessError(
                problem[1] if isinstance(problem, tuple) else problem
            )

    def check(self):
        """Returns why the combination of values is invalid: None, a
        message, or ``(parameter name, message)`` to point at the parameter
        a form should mark.

        Override for rules that involve several parameters.
        """
        return None

    @classmethod
    def parameters(cls):
        """Returns the declared :class:`Parameter` of each field, in
        declaration order."""
        params = []
        for f in dataclasses.fields(cls):
            if "kind" not in f.metadata:
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            meta = dict(f.metadata)
            meta["label"] = (
                meta["label"] or f.name.replace("_", " ").capitalize()
            )
            params.append(Parameter(name=f.name, default=default, **meta))
        return params

    @classmethod
    def parameter(cls, name):
        """Returns the :class:`Parameter` called ``name``."""
        for p in cls.parameters():
            if p.name == name:
                return p
        raise KeyError(name)

    @classmethod
    def from_kwargs(cls, method=None, **kwargs):
        """Builds a validated config from keyword arguments.

        Raises:
            HardnessError: an unknown parameter (listing the valid ones) or
                an invalid value (naming the parameter and what it accepts)
        """
        names = [p.name for p in cls.parameters()]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise HardnessError(
                "Unknown parameter%s %s for method '%s'; valid parameters: %s"
                % (
                    "s" if len(unknown) > 1 else "",
                    ", ".join(unknown),
                    method or cls.__name__,
                    ", ".join(names),
                )
            )
        return cls(**kwargs)

    @classmethod
    def errors(cls, values):
        """Returns ``{name: message}`` for each value of ``values`` (a dict of
        parameter values, e.g. a form's) that is invalid on its own, and,
        when they all are valid, ``{None: message}`` if their combination is
        not. Unknown names are ignored (forms hold other inputs too)."""
        known = {p.name: p for p in cls.parameters()}
        errors = {}
        for name, value in values.items():
            if name in known:
                message = known[name].error(value)
                if message is not None:
                    errors[name] = message
        if not errors:
            config = cls.__new__(cls)
            for p in known.values():
                value = values.get(p.name, p.default)
                setattr(config, p.name, p.coerce(value))
            problem = config.check()
            if isinstance(problem, tuple):
                errors[problem[0]] = problem[1]
            elif problem:
                errors[None] = problem
        return errors

    def to_dict(self):
        """Returns the parameters as a JSON-friendly dict (what a run stores
        in its config)."""
        return {
            p.name: _jsonable(getattr(self, p.name)) for p in self.parameters()
        }


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    return value
