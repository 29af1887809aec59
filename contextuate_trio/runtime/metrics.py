"""Prometheus text for ``/metrics``: every component lists its metrics as ``Metric``
records, and this module writes them (one place knows the exposition format)."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

Labels = dict[str, str]
Value = int | float | str  # a str is written as it is (e.g. dollars to 6 places)


def label(value: str) -> str:
    """A label value escaped as the text format wants it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@attrs.frozen
class Metric:
    name: str
    help: str
    kind: str  # "counter" | "gauge"
    # One value, or (labels, value) samples.
    value: Value | list[tuple[Labels, Value]]


def _sample(name: str, labels: Labels, value: Value) -> str:
    if not labels:
        return f"{name} {value}"
    inner = ",".join(f'{k}="{label(v)}"' for k, v in labels.items())
    return f"{name}{{{inner}}} {value}"


def render(metrics: Iterable[Metric]) -> str:
    lines: list[str] = []
    for m in metrics:
        lines += [f"# HELP {m.name} {m.help}", f"# TYPE {m.name} {m.kind}"]
        samples = m.value if isinstance(m.value, list) else [({}, m.value)]
        lines += [_sample(m.name, labels, value) for labels, value in samples]
    return "\n".join(lines) + "\n"
