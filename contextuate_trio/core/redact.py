"""Masking secrets in event text before it reaches disk, Redis or a browser.

Works on JSON text (a stored line, the hook's payload) and keeps it valid JSON: no
pattern can match a quote or a backslash-escaped quote, so a replacement never
crosses a string's boundary. Standard library only, because the hook uses it in Redis
mode (secrets are masked before they leave the machine).

Cost: ``re`` takes ~6.5 ms to import under ``python3 -I -S``, more than half the hook's
budget. So a cheap pre-scan (plain substring search for the markers every pattern
needs) runs first; ``re`` is imported and the patterns compiled only for text that
may hold a secret, which most events do not.
"""

from __future__ import annotations

# Not ``typing.TYPE_CHECKING``: ``typing`` imports ``re`` (and more) under 3.11, which
# the hook must not pay for. Type checkers treat this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:  # ``re`` itself is imported lazily (see above)
    import re
    from collections.abc import Callable
    from typing import Any

    Marker = str | tuple[str, ...]  # a substring, or substrings that must all be there

MASK = "[REDACTED:%s]"

# (kind, markers, pattern, group to mask). A pattern can only match text holding one
# of its markers (plain substrings), so a cheap scan decides which patterns to run.
# Secret characters never include " or \\ (see above).
_PATTERNS: tuple[tuple[str, tuple[Marker, ...], str, int], ...] = (
    # Within one JSON string (escapes kept whole): to its END line, or to the string's
    # end when the END line is not there (a cut or truncated key).
    (
        "private-key",
        ("PRIVATE KEY",),
        r'-----BEGIN ([A-Z ]{0,20})PRIVATE KEY-----(?:[^"\\]|\\.)*?(?:-----END \1PRIVATE KEY-----|(?="|$))',
        0,
    ),
    ("anthropic-key", ("sk-ant-",), r"\bsk-ant-[A-Za-z0-9_-]{20,}", 0),
    ("openai-key", ("sk-",), r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,}", 0),
    (
        "github-token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})",
        0,
    ),
    ("gitlab-token", ("glpat-",), r"\bglpat-[A-Za-z0-9_-]{20,}", 0),
    ("slack-token", ("xox",), r"\bxox[abprs]-[A-Za-z0-9-]{10,}", 0),
    ("aws-access-key", ("AKIA", "ASIA"), r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b", 0),
    ("google-api-key", ("AIza",), r"\bAIza[A-Za-z0-9_-]{35}", 0),
    ("huggingface-token", ("hf_",), r"\bhf_[A-Za-z0-9]{30,}", 0),
    ("npm-token", ("npm_",), r"\bnpm_[A-Za-z0-9]{36}", 0),
    ("pypi-token", ("pypi-",), r"\bpypi-[A-Za-z0-9_-]{50,}", 0),
    ("bearer", ("earer ", "EARER ", "oken ", "OKEN "), r"(?i)\b(?:bearer|token)\s+([A-Za-z0-9._~+/=-]{16,})", 1),
    ("basic-auth", ("uthorization", "UTHORIZATION"), r"(?i)\bauthorization:\s*basic\s+([A-Za-z0-9+/=]{8,})", 1),
    ("url-password", (("://", "@"),), r"\b[a-z][a-z0-9+.-]*://[^\s:/@\"\\]{1,64}:([^\s@/\"\\]{1,256})@", 1),
    (
        "assignment",
        (
            "assword",
            "ASSWORD",
            "asswd",
            "ASSWD",
            "ecret",
            "ECRET",
            'oken"',
            "oken'",
            "oken=",
            "oken:",
            "oken\\",
            'OKEN"',
            "OKEN'",
            "OKEN=",
            "OKEN:",
            "OKEN\\",
            "pi_key",
            "PI_KEY",
            "pi-key",
            "API-KEY",
            "piKey",
            "PIKEY",
            "pikey",
            "ccess_key",
            "CCESS_KEY",
            "ccess-key",
            "ccessKey",
        ),
        r"(?i)(?:password|passwd|secret|api[_-]?key|apikey|access[_-]?key|auth[_-]?token|"
        r"access[_-]?token|client[_-]?secret|private[_-]?token|token)"
        r"(?:\\?[\"'])?\s*[:=]\s*(?:\\?[\"'])?([^\s\"'\\,;&}{)(\]\[]{4,})",
        1,
    ),
)
# A marker is a substring, or a tuple of substrings that must all be there.
MARKERS = tuple(sorted({m for _, markers, _, _ in _PATTERNS for m in markers}, key=str))


# The pre-scan runs on the lower-cased text: fewer markers to look for (the precise,
# case-sensitive ones then pick the patterns).
MARKERS_LOWER = tuple(
    sorted({(tuple(x.lower() for x in m) if isinstance(m, tuple) else m.lower()) for m in MARKERS}, key=str)
)


_PLAIN_LOWER = tuple(m for m in MARKERS_LOWER if isinstance(m, str))
_ALL_OF_LOWER = tuple(m for m in MARKERS_LOWER if isinstance(m, tuple))


def _holds(text: str, marker: Marker) -> bool:
    if isinstance(marker, tuple):
        return all(m in text for m in marker)
    return marker in text


class Redactor:
    """Masks built-in patterns plus ``extra`` (regexes from the config)."""

    def __init__(self, extra: tuple[str, ...] | list[str] = (), enabled: bool = True) -> None:
        self.enabled = enabled
        self.extra = tuple(extra)
        self._compiled: dict[int, re.Pattern[str]] = {}  # pattern index -> compiled regex, made when first needed
        self._custom: list[re.Pattern[str]] | None = None

    def _regex(self, i: int) -> re.Pattern[str]:
        rx = self._compiled.get(i)
        if rx is None:
            import re

            rx = self._compiled[i] = re.compile(_PATTERNS[i][2], re.DOTALL)
        return rx

    def _wanted(self, text: str) -> list[int]:
        """Indexes of the built-in patterns whose markers the text holds."""
        return [i for i, (_, markers, _, _) in enumerate(_PATTERNS) if any(_holds(text, m) for m in markers)]

    def may_hold_secret(self, text: str) -> bool:
        if self.extra:
            return True  # custom patterns have no markers we could know
        low = text.lower()
        for m in _PLAIN_LOWER:  # a plain loop: this runs on every event the daemon stores
            if m in low:
                return True
        for group in _ALL_OF_LOWER:
            if all(m in low for m in group):
                return True
        return False

    def text(self, text: str) -> str:
        """``text`` with secrets masked (the same object when there is nothing to mask)."""
        if not self.enabled or not self.may_hold_secret(text):
            return text
        out = text
        for i in self._wanted(text):
            kind, _, _, group = _PATTERNS[i]
            rx = self._regex(i)
            out = rx.sub(_masker(kind, group), out)
        if self.extra:
            if self._custom is None:
                import re

                self._custom = [re.compile(p) for p in self.extra]
            for rx in self._custom:
                out = rx.sub(MASK % "custom", out)
        return out


def mask_values(redactor: Redactor, value: Any) -> Any:
    """Mask string by string (for text where masking the JSON as a whole went wrong:
    a custom pattern that crossed a string's end)."""
    if isinstance(value, str):
        return redactor.text(value)
    if isinstance(value, list):
        return [mask_values(redactor, v) for v in value]
    if isinstance(value, dict):
        return {k: mask_values(redactor, v) for k, v in value.items()}
    return value


def _masker(kind: str, group: int) -> Callable[[re.Match[str]], str]:
    """The replacement for a built-in pattern's matches: all, or only ``group``, masked."""
    if group == 0:
        return lambda m: MASK % kind
    return lambda m: _mask_group(m, group, kind)


def _mask_group(m: re.Match[str], group: int, kind: str) -> str:
    whole = m.group(0)
    value = m.group(group)
    if value.startswith("[REDACTED"):
        return whole
    start = m.start(group) - m.start(0)
    return whole[:start] + MASK % kind + whole[start + len(value) :]
