"""The search space: hydra.sweeper.params and the command line's sweeps (interval, choice, range,
tag(log, ...)) as Optuna distributions, the overrides every trial gets, and sampled values written back
as Hydra override text. Every bad one is a one-line UserError."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from gptlit.core.errors import UserError, one_line


@dataclass
class Space:
    """What each trial varies (Optuna distributions by config key) and the overrides every trial gets."""

    params: dict = field(default_factory=dict)  # key -> optuna distribution
    fixed: list = field(default_factory=list)  # overrides that are not searched (model=nano, ...)
    written: dict = field(default_factory=dict)  # key -> the sweep as written (for messages)

    def overrides(self, values: dict) -> list[str]:
        return [*self.fixed, *(f"{k}={override_value(values[k])}" for k in self.params)]

    def describe(self) -> dict:
        from optuna.distributions import distribution_to_json

        return {k: json.loads(distribution_to_json(d)) for k, d in self.params.items()}


def parse_space(params: dict | None, arguments: list[str]) -> Space:
    """The search space from hydra.sweeper.params and the command line (a sweep there, `optim.lr=1e-3,3e-4`
    or `optim.lr=interval(...)`, searches that key too; a plain value fixes it). A bad one: UserError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    space = Space()
    for key, value in (params or {}).items():
        where = f"hydra.sweeper.params.{key}={value}"
        o = _parse(parser, f"{key}={_as_override_text(value)}", where)
        if o.is_sweep_override():
            space.params[key] = distribution(o, where)
            space.written[key] = where
        else:
            space.fixed.append(o.input_line)
    for arg in arguments:
        o = _parse(parser, arg, arg)
        key = o.key_or_group
        space.fixed = [f for f in space.fixed if _key(parser, f) != key]  # the command line wins
        space.params.pop(key, None)
        if o.is_sweep_override():
            space.params[key] = distribution(o, arg)
            space.written[key] = arg
        else:
            space.fixed.append(arg)
    if not space.params:
        raise UserError("hparams_search=optuna has nothing to search: give hydra.sweeper.params "
                        "(e.g. 'hydra.sweeper.params.optim.lr=tag(log, interval(1e-4, 1e-2))')")
    return space


def check_command_line(args: list[str]):
    """A search's command line, before Hydra reads it, so that a bad search space is one line: an override
    Hydra cannot parse (`x=choice()`), bad bounds (`x=interval(1, 0)`), or a sweep of
    hydra.sweeper.params.* (which Hydra refuses: it does not sweep its own config). Raises UserError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for a in args:
        if a.startswith("-") or "=" not in a:  # Hydra's flags (-m, --cfg job, ...)
            continue
        o = _parse(parser, a, a)
        if not o.is_sweep_override():
            continue
        key = o.key_or_group
        if key.startswith("hydra.sweeper.params."):
            text = a.split("=", 1)[1]
            raise UserError(f"{a}: Hydra does not sweep its own config; give the search as "
                            f"'{key[len('hydra.sweeper.params.'):]}={text}' or quote the value: '{key}=\"{text}\"'")
        if not o.is_hydra_override():
            distribution(o, a)


def _as_override_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _key(parser, line: str) -> str:
    return parser.parse_override(line).key_or_group


def _parse(parser, line: str, where: str):
    from hydra.errors import HydraException

    try:
        return parser.parse_override(line)
    except HydraException as e:
        msg = one_line(str(e).replace("\n", " "))
        hint = ("list at least one value, e.g. choice(0.0, 0.1)" if "empty choice" in msg else
                "write interval(low, high), choice(a, b, ...), range(start, stop[, step]) or tag(log, interval(...))")
        raise UserError(f"{where}: {msg}; {hint}") from None


def distribution(o, where: str):
    """An Optuna distribution for Hydra's interval / choice / range sweep (tag(log, ...): log scale)."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    v = o.value()
    log = "log" in (getattr(v, "tags", None) or ())
    if isinstance(v, ChoiceSweep):
        if log:
            raise UserError(f"{where}: log applies to interval(...) or range(...), not to choice(...); drop tag(log, ...)")
        bad = [c for c in v.list if not (c is None or isinstance(c, (bool, int, float, str)))]
        if bad:
            raise UserError(f"{where}: choice values must be numbers, strings, booleans or null, not {bad[0]!r}")
        if len(set(map(repr, v.list))) != len(v.list):
            raise UserError(f"{where}: a value is listed twice; list each value once")
        return CategoricalDistribution(list(v.list))
    if isinstance(v, IntervalSweep):  # Hydra reads interval bounds as floats: integers are range(...)'s
        low, high = float(v.start), float(v.end)
        if not low < high:
            raise UserError(f"{where}: low {low:g} >= high {high:g}; write interval(low, high) with low < high")
        if log and low <= 0:
            raise UserError(f"{where}: a log scale needs low > 0 (got {low:g}); raise low or drop tag(log, ...)")
        return FloatDistribution(low, high, log=log)
    if isinstance(v, RangeSweep):
        start, stop, step = v.start, v.stop, v.step
        if step is None or step <= 0:
            raise UserError(f"{where}: step must be > 0; write range(start, stop, step) with start < stop")
        n = math.ceil((stop - start) / step)
        if n < 1:
            raise UserError(f"{where}: the range is empty (start {start} >= stop {stop}; stop is excluded); "
                            f"write range(start, stop) with start < stop")
        if all(isinstance(x, int) for x in (start, stop, step)):
            if log and (step != 1 or start < 1):
                raise UserError(f"{where}: tag(log, range(...)) needs start >= 1 and step 1; drop tag(log, ...) "
                                f"or use tag(log, interval(...))")
            return IntDistribution(start, start + (n - 1) * step, step=step, log=log)
        if log:
            raise UserError(f"{where}: tag(log, range(...)) needs integers; use tag(log, interval(low, high))")
        return CategoricalDistribution([round(start + i * step, 12) for i in range(n)])
    raise UserError(f"{where}: {type(v).__name__.lower()} cannot be searched; use interval(...), choice(...) "
                    f"or range(...)")


def override_value(v) -> str:
    """A sampled value as Hydra override text that reads back as the same value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v)
    try:
        if OverridesParser.create().parse_override(f"k={s}").value() == s:
            return s
    except Exception:
        pass
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def first_value(d):
    from optuna.distributions import CategoricalDistribution

    return d.choices[0] if isinstance(d, CategoricalDistribution) else d.low


def space_text(described: dict) -> str:
    return ", ".join(f"{k}: {v.get('name', '')}{json.dumps(v.get('attributes', {}), sort_keys=True)}"
                     for k, v in described.items())
