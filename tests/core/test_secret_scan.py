"""The batch scan names exactly the lines the per-line pre-scan would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from contextuate_trio.core.redact import MARKERS, Redactor
from contextuate_trio.core.secret_scan import suspects

PIECES = [m if isinstance(m, str) else "".join(m) for m in MARKERS] + [
    "://",
    "@",
    "\0",  # a NUL inside a line (the batch's separator)
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
    lines = [t.encode("utf-8", "surrogatepass") for t in texts]
    lines = [line for line in lines if _utf8(line)]
    expected = [i for i, line in enumerate(lines) if r.may_hold_secret(line.decode())]
    assert suspects(r, lines) == expected


ASCII_TEXTS = st.lists(
    st.sampled_from([p for p in PIECES if p.isascii()])
    | st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=8),
    max_size=6,
).map("".join)


@given(st.lists(ASCII_TEXTS, max_size=12))
def test_ascii_batches_quick_pass_names_the_same_lines(texts: list[str]) -> None:
    r = Redactor()
    lines = [t.encode() for t in texts]
    assert suspects(r, lines) == [i for i, t in enumerate(texts) if r.may_hold_secret(t)]


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


def test_text_near_a_marker_names_no_line() -> None:
    # "s9k-" is not "sk-", "to\",\"ken" is not "token": only the third line holds one.
    assert suspects(Redactor(), [b'{"a":"s9k-x"}', b'{"to","ken"}', b'{"b":"sk-abc"}']) == [2]


def test_overlapping_markers_and_a_group_missing_a_part() -> None:
    # The search reports no overlapping matches: a line is still named by the first
    # of its markers; a group's first part alone ("://" without "@") names nothing.
    lines = [b"asiakia", b"oken://x", b"see https://example.org", b"git://u@h", b"x" * 100 + b"ghp_"]
    assert suspects(Redactor(), lines) == [0, 1, 3, 4]


def test_a_batch_with_a_separator_or_non_ascii_inside_a_line_is_scanned_exactly() -> None:
    assert suspects(Redactor(), [b"ok\0", b"password=x", b"fine"]) == [1]
    assert suspects(Redactor(), ["é".encode(), b"api_key=x", "\u212a".encode()]) == [1]
    assert suspects(Redactor(), [b"plain", "s\u212a-x".encode()]) == [1]  # KELVIN SIGN: "sk-"
