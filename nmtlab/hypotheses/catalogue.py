"""The catalogue hypotheses.yaml: its entries, checked against params.yaml, and each entry's
`dvc exp run -S` overrides in Hydra's grammar.

An entry is one params diff against the committed params.yaml (`set`), the metric its
hypothesis names, what it is tested against (`against`, the baseline unless named), the
smallest effect worth knowing (`min_effect`, the metric's default unless named) and its
claim (`better`, or `equivalent` for "changes nothing"). Entries are matched to runs by
their resolved params (params.yaml with `set` applied), never by name, so every non-baseline
entry must change at least one value, and no two entries may resolve to the same params.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nmt.errors import UserError
from nmt.params import from_dict
from nmt.params import load as load_params

from ..metrics import METRICS

CATALOGUE = Path("hypotheses.yaml")
PARAMS = Path("params.yaml")
REQUIRED = ("name", "hypothesis", "report", "metric", "set")
OPTIONAL = ("against", "min_effect", "claim")
CLAIMS = ("better", "equivalent")
BASELINE = "baseline"  # the entry without changes: the reference every other entry is tested on
SEED_KEY = "seed"  # the training seed (params.yaml); replicates set it with -S seed=K
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")  # a valid git ref name, so a valid experiment name
PLAIN_STRING_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-./]*")  # Hydra reads it back as this string
HYDRA_KEYWORDS = {"true", "false", "null", "inf", "nan"}  # would not read back as a string


@dataclass(frozen=True)
class Hypothesis:
    name: str  # the experiment's name in `dvc exp show`
    hypothesis: str  # what should improve, one sentence
    report: str  # what origin.md says happened
    metric: str  # what the hypothesis says improves: a key of nmtlab.metrics.METRICS
    set: dict[str, Any]  # dotted params key -> value: the diff against the baseline
    against: str = BASELINE  # the entry it is compared with, seed by seed
    min_effect: float = 0.0  # the smallest effect worth knowing, in the metric's unit
    claim: str = "better"  # better | equivalent

    def overrides(self) -> list[str]:
        """The `-S` arguments: key=value in Hydra's override grammar."""
        return [f"{key}={hydra_value(value)}" for key, value in self.set.items()]

    def command(self, queue: bool = False, force: bool = False, dvc: str = "dvc",
                seed: int | None = None) -> list[str]:
        """The `dvc exp run` line of this entry; with `seed`, the replicate ENTRY-sSEED."""
        name = self.name if seed is None else replicate_name(self.name, seed)
        cmd = [dvc, "exp", "run", *(["--queue"] if queue else []),
               *(["--force"] if force else []), "-n", name]
        for override in self.overrides() + ([f"{SEED_KEY}={seed}"] if seed is not None else []):
            cmd += ["-S", override]
        return cmd


def replicate_name(entry: str, seed: int) -> str:
    return f"{entry}-s{seed}"


def hydra_value(value: Any) -> str:
    """`value` written so that Hydra's override parser reads exactly it back.

    Floats use repr (shortest round trip: 0.0001, 1e-05), lists are written
    without spaces, and strings that Hydra would read as another type or could
    not parse bare ('true', '1.0', 'a b', '') are single-quoted.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        if PLAIN_STRING_RE.fullmatch(value) and value.lower() not in HYDRA_KEYWORDS:
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a Hydra override value")


def apply(raw_params: dict, changes: dict[str, Any]) -> dict:
    """A copy of a params mapping with dotted-key changes applied; every key must exist
    already, as `dvc exp run -S` requires. KeyError(key, hint) on the first that does not."""
    out = yaml.safe_load(yaml.safe_dump(raw_params))  # deep copy of plain data
    for dotted, value in changes.items():
        node = out
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                prefix = ".".join(parts[:i])
                close = difflib.get_close_matches(part, list(node), n=1) if isinstance(
                    node, dict) else []
                hint = f"did you mean '{'.'.join(filter(None, [prefix, close[0]]))}'?" if close \
                    else f"'{prefix or '(top level)'}' has no '{part}'"
                raise KeyError(dotted, hint)
            if i == len(parts) - 1:
                node[part] = value
            else:
                node = node[part]
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params -> {dotted key: value}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resolved(raw_params: dict, changes: dict[str, Any]) -> dict[str, Any]:
    """The configuration an entry runs: every params key, dotted, with `changes` applied and
    the defaults filled in, the training seed left out (replicates vary it)."""
    return {k: v for k, v in flatten(apply(raw_params, changes)).items() if k != SEED_KEY}


def load(path: str | Path = CATALOGUE, params_path: str | Path = PARAMS) -> list[Hypothesis]:
    """Read the catalogue and check every entry against the params file.

    Each entry's keys must exist in `params_path`, the params with the entry's changes
    applied must pass the schema's validation, and the entry must differ from the defaults
    and from every other entry, so a bad entry fails here with one line naming it, not as a
    failed or misattributed experiment in the queue.
    """
    path, params_path = Path(path), Path(params_path)
    raw_params = dataclasses.asdict(load_params(params_path))
    doc = _read_yaml(path)
    entries = doc.get("hypotheses") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: expected a non-empty list under 'hypotheses:'")
    out: list[Hypothesis] = []
    configurations: dict[str, str] = {}
    for i, entry in enumerate(entries):
        where = f"{path}: entry {i + 1}"
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            where = f"{path}: entry '{entry['name']}'"
        h = _entry(entry, where, out)
        config = _check_params(h, raw_params, where, params_path)
        if config in configurations:
            raise UserError(f"{where}: sets the same params as entry '{configurations[config]}' "
                            f"(entries are matched to runs by their params)")
        configurations[config] = h.name
        out.append(h)
    _check_references(out, path)
    return out


def _entry(entry: Any, where: str, before: list[Hypothesis]) -> Hypothesis:
    """One entry's fields, checked on their own."""
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected a mapping with {', '.join(REQUIRED)}")
    unknown = sorted(set(entry) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise UserError(f"{where}: unknown field '{unknown[0]}' "
                        f"(fields: {', '.join(REQUIRED + OPTIONAL)})")
    name, changes = entry.get("name"), entry.get("set")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UserError(f"{where}: name must be lower-case letters, digits, '.', '_' or '-', "
                        f"got {name!r}")
    if name in {h.name for h in before}:
        raise UserError(f"{where}: the name is used twice")
    for field in ("hypothesis", "report"):
        if not isinstance(entry.get(field), str) or not entry[field].strip():
            raise UserError(f"{where}: '{field}' must be a sentence")
    metric = entry.get("metric")
    if metric not in METRICS:
        raise UserError(f"{where}: 'metric' must name what the hypothesis improves, one of "
                        f"{', '.join(METRICS)}; got {metric!r}")
    changes = {} if changes is None else changes
    if not isinstance(changes, dict):
        raise UserError(f"{where}: 'set' must map dotted params keys to values")
    if SEED_KEY in changes:
        raise UserError(f"{where}: set: '{SEED_KEY}' is the training seed, which replicates "
                        f"vary (queue --seeds N); an entry changes the configuration")
    for key, value in changes.items():
        if not _is_override_value(value):
            raise UserError(f"{where}: {key}: values must be numbers, strings, booleans or "
                            f"lists of them (write nested keys dotted), got {value!r}")
    return Hypothesis(name, " ".join(entry["hypothesis"].split()),
                      " ".join(entry["report"].split()), metric, dict(changes),
                      **_options(entry, where, name, metric))


def _options(entry: dict, where: str, name: str, metric: str) -> dict[str, Any]:
    """against, min_effect and claim, with their defaults."""
    against = entry.get("against", "" if name == BASELINE else BASELINE)
    if not isinstance(against, str) or against == name or (against and name == BASELINE):
        raise UserError(f"{where}: 'against' must name another entry, got {against!r}")
    min_effect = entry.get("min_effect", METRICS[metric].min_effect)
    if isinstance(min_effect, bool) or not isinstance(min_effect, (int, float)) \
            or min_effect <= 0:
        raise UserError(f"{where}: 'min_effect' must be a positive number in the metric's "
                        f"unit, got {min_effect!r}")
    claim = entry.get("claim", "better")
    if claim not in CLAIMS:
        raise UserError(f"{where}: 'claim' must be one of {', '.join(CLAIMS)}, got {claim!r}")
    return {"against": against, "min_effect": float(min_effect),
            "claim": claim}


def _check_params(h: Hypothesis, raw_params: dict, where: str, params_path: Path) -> str:
    """The entry's resolved params as one string, after checking them against the schema."""
    try:
        applied = apply(raw_params, h.set)
    except KeyError as e:
        key, hint = e.args
        raise UserError(f"{where}: unknown params key '{key}' in {params_path} ({hint})") \
            from None
    try:
        from_dict(applied).validate()
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    if h.name == BASELINE and h.set:
        raise UserError(f"{where}: the baseline is the committed params; its 'set' must be "
                        f"empty")
    if h.name != BASELINE and applied == raw_params:
        raise UserError(f"{where}: every value in 'set' equals the default in {params_path}, "
                        f"so its runs would be the baseline's; change at least one")
    return repr(sorted(resolved(raw_params, h.set).items()))


def _check_references(catalogue: list[Hypothesis], path: Path) -> None:
    """Every `against` names an entry, and following them always ends at the baseline."""
    by_name = {h.name: h for h in catalogue}
    for h in catalogue:
        seen, current = [h.name], h
        while current.against:
            if current.against not in by_name:
                raise UserError(f"{path}: entry '{current.name}': 'against' names no entry: "
                                f"'{current.against}'")
            current = by_name[current.against]
            if current.name in seen:
                raise UserError(f"{path}: entry '{h.name}': 'against' goes round in a circle "
                                f"({' -> '.join(seen + [current.name])})")
            seen.append(current.name)


def select(catalogue: list[Hypothesis], names: list[str]) -> list[Hypothesis]:
    """The named entries in the order given, or all of them when none are named."""
    if not names:
        return catalogue
    by_name = {h.name: h for h in catalogue}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise UserError(f"{CATALOGUE}: no entry named '{missing[0]}' "
                        f"(entries: {', '.join(by_name)})")
    return [by_name[n] for n in names]


def references(catalogue: list[Hypothesis], chosen: list[Hypothesis]) -> list[Hypothesis]:
    """`chosen` and every entry they are compared with, directly or through another
    (seed-by-seed comparisons need the reference's runs too), in catalogue order."""
    by_name = {h.name: h for h in catalogue}
    needed = {h.name for h in chosen}
    for h in chosen:
        current = h
        while current.against:
            current = by_name[current.against]
            needed.add(current.name)
    return [h for h in catalogue if h.name in needed]


def table(catalogue: list[Hypothesis], markdown: bool = False) -> str:
    if markdown:
        rows = ["| name | hypothesis | against | command |", "| --- | --- | --- | --- |"]
        rows += [f"| {h.name} | {h.hypothesis} | {h.against or '—'} | "
                 f"`{shlex.join(h.command())}` |" for h in catalogue]
        return "\n".join(rows)
    width = max(len(h.name) for h in catalogue)
    return "\n".join(f"{h.name:<{width}}  {' '.join(h.overrides()) or '(no changes)'}"
                     f"{f'  (against {h.against})' if h.against not in ('', BASELINE) else ''}\n"
                     f"{'':<{width}}  {h.hypothesis}" for h in catalogue)


def _is_override_value(value: Any) -> bool:
    if isinstance(value, list):
        return all(_is_override_value(v) and not isinstance(v, list) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
