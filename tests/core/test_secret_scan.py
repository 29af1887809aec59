"""The batch scan names exactly the lines the per-line pre-scan would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from contextuate_trio.core.redact import MARKERS, Redactor
from contextuate_trio.core.secret_scan import suspects

PIECES = [m if isinstance(m, str) else "".join(m) for m in MARKERS] + [
    "://",
    "@",
    "K",  # KELVIN SIGN: lower-cases to an ASCII "k"
    "İ",  # lower-cases to two characters: offsets must not drift
    "SK-",
    "OKEN=",
    "plain text ",
    '{"a":"b"}',
]
TEXTS = st.lists(st.sampled_from(PIECES) | st.text(max_size=8), max_size=6).map("".join)


@given(st.lists(TEXTS, max_size=12))
def test_names_the_lines_may_hold_secret_names(texts: list[str]) -> None:
    r = Redactor()
    lines = [t.encode("utf-8", "surrogatepass") for t in texts if "\0" not in t]
    lines = [line for line in lines if _utf8(line)]
    expected = [i for i, line in enumerate(lines) if r.may_hold_secret(line.decode())]
    assert suspects(r, lines) == expected


def _utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_a_marker_split_across_two_lines_names_neither() -> None:
    assert suspects(Redactor(), [b"my pass", b"word=hunter22"]) == []
    assert suspects(Redactor(), [b"ok", b"my password=hunter22", b"ok"]) == [1]


def test_custom_patterns_or_masking_off() -> None:
    assert suspects(Redactor(extra=["x+"]), [b"a", b"b"]) == [0, 1]
    assert suspects(Redactor(enabled=False), [b"password=hunter22"]) == []
    assert suspects(Redactor(), []) == []
