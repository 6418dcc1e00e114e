"""
App forms built from a method's config dataclass
(:mod:`fiftyone_hardness.methods.config`): one input per declared parameter,
with its label, help, choices and range, and the same validation as Python.

- :func:`config_inputs` adds the inputs and marks each invalid value at its
  field (``invalid=True`` with the message Python would raise), and returns
  whether the form is valid;
- :func:`config_values` turns the form's values back into the keyword
  arguments of the Python API.

Dropdown values travel as strings: choices that are not strings (None,
numbers, booleans) are encoded as JSON and decoded here.
"""

import json

import fiftyone.operators.types as types


def _encode(value):
    return value if isinstance(value, str) else json.dumps(value)


def _choices(parameter):
    return parameter.form_choices or parameter.choices or []


def _decode(parameter, value):
    if isinstance(value, list):
        return [_decode(parameter, v) for v in value]
    for choice, _ in _choices(parameter):
        if _encode(choice) == value:
            return choice
    return value


def _dropdown(choices, multiple=False):
    view = types.DropdownView(multiple=multiple)
    for value, text in choices:
        view.add_choice(_encode(value), label=text)
    return view


def config_values(params, config_class, skip=()):
    """Returns the keyword arguments for the Python API from a form's
    ``params``: every declared parameter the form holds a value for (empty
    values mean "the default"). Parameters the form does not show (e.g.
    ``device``) are passed on too when a Python caller of the operator
    gives them, so the App accepts exactly what Python accepts."""
    values = {}
    for p in config_class.parameters():
        if p.name in skip or p.name not in params:
            continue
        value = params[p.name]
        if value is None or value == "":
            continue
        values[p.name] = _decode(p, value)
    return values


def config_inputs(inputs, params, config_class, skip=(), hide=()):
    """Adds one input per form parameter of ``config_class`` to ``inputs``.

    Args:
        inputs: a ``types.Object``
        params: the form's current values (``ctx.params``)
        config_class: a
            :class:`fiftyone_hardness.methods.config.MethodConfig` subclass
        skip (()): parameters the operator renders itself (e.g. a dropdown
            of the dataset's embeddings fields); their values are still
            validated
        hide (()): parameters that do not apply to the current choices

    Returns:
        True when every value is valid; otherwise each invalid input shows
        its error and the form cannot be executed
    """
    # hidden parameters are validated too: the App refuses exactly what
    # Python refuses (e.g. n_clusters without unsupervised)
    values = config_values(params, config_class)
    for name in skip:
        if params.get(name) not in (None, ""):
            values[name] = params[name]
    errors = config_class.errors(values)
    placed = set()
    for p in config_class.parameters():
        if not p.form or p.name in skip or p.name in hide:
            continue
        _add_input(inputs, p, errors.get(p.name))
        placed.add(p.name)
    # errors of parameters without an input of their own (rendered by the
    # operator, hidden, or not in the form) still block execution
    unplaced = [
        message for name, message in errors.items() if name not in placed
    ]
    for i, message in enumerate(unplaced):
        blocking_error(inputs, "config_error_%d" % i, message)
    return not errors


def refuse_unknown_params(inputs, params, config_class, operator_params=()):
    """Adds a :func:`blocking_error` when ``params`` (e.g. from a Python
    caller of the operator) hold a name that is neither a parameter of
    ``config_class``, one of ``operator_params``, nor an input of
    ``inputs``: such a value would otherwise be silently dropped.

    Returns:
        True when every name is known
    """
    valid = list(operator_params) + [p.name for p in config_class.parameters()]
    known = set(valid) | set(inputs.properties)
    unknown = sorted(
        name
        for name, value in params.items()
        if name not in known and value is not None
    )
    if unknown:
        blocking_error(
            inputs,
            "unknown_params",
            "Unknown parameter%s %s; valid parameters: %s"
            % (
                "s" if len(unknown) > 1 else "",
                ", ".join(unknown),
                ", ".join(valid),
            ),
        )
    return not unknown


def blocking_error(inputs, name, message):
    """Shows ``message`` as an error that also keeps the form from
    executing (an error *view* alone would not: FiftyOne only refuses
    properties marked invalid)."""
    inputs.define_property(
        name,
        types.String(),
        invalid=True,
        error_message=message,
        view=types.Error(label=message),
    )


def _add_input(inputs, p, error):
    common = dict(
        label=p.label,
        description=p.help,
        invalid=error is not None,
        error_message=error,
    )
    choices = _choices(p)
    if p.kind == "bool":
        inputs.bool(p.name, default=p.default, **common)
    elif p.kind == "strings" and choices:
        inputs.list(
            p.name,
            types.String(),
            default=[_encode(v) for v in (p.default or [])],
            view=_dropdown(choices, multiple=True),
            **common,
        )
    elif p.kind == "str" and choices:
        # suggestions: any other string is accepted too
        view = types.AutocompleteView()
        for value, text in choices:
            view.add_choice(value, label=text)
        inputs.str(p.name, default=p.default, view=view, **common)
    elif choices:
        view = _dropdown(choices)
        inputs.enum(
            p.name,
            view.values(),
            default=_encode(p.default),
            view=view,
            **common,
        )
    elif p.kind == "int":
        inputs.int(p.name, default=p.default, **_range(p), **common)
    elif p.kind == "float":
        inputs.float(p.name, default=p.default, **_range(p), **common)
    elif p.kind in ("str", "any"):
        inputs.str(p.name, default=p.default, **common)


def _range(p):
    bounds = {}
    if p.minimum is not None:
        bounds["min"] = p.minimum
    if p.maximum is not None:
        bounds["max"] = p.maximum
    return bounds
