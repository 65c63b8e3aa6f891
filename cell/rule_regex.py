"""The `up` / `down` regexes of SF-TAP rules, compiled and matched exactly as SF-TAP does: with RE2.

Theory of operation. SF-TAP's flow abstractor (fabs_appif.cpp, fabs_appif::read_conf) compiles each
rule's `up` and `down` with RE2, options `set_dot_nl(true)` and `set_utf8(false)` (latin-1: a pattern
byte is a text byte) unless the rule says `utf8: yes`; classification (appif_consumer::send_tcp_data for
TCP, appif_consumer::in_datagram for UDP) calls `RE2::PartialMatch` on the first bytes of a direction:
an unanchored search, so a rule anchors itself with `^`. We use the same engine (PyPI `google-re2`),
the same options and the same search, so a rule classifies here as it does in SF-TAP, in time linear
in the input: no rule and no payload can stall the cell the way a backtracking engine can
(`^GET .*(announce|scrape).*\\?.*info_hash=.+&.+ HTTP/1...` of the SF-TAP paper's Figure 3 took 2.5 s
on 2 KB with Python's `re`). What RE2 cannot compile (backreferences, lookaround) is a configuration
error naming the rule and key: SF-TAP's RE2 could not run it either (RE2 logs the error and such a
rule never matches there).

Only "does it match" is asked, so each pattern is also compiled ungreedy, `(?U)`: the same regular
language, so the same verdict, but RE2 stops at the first possible match end instead of following a
greedy `.+` (which `dot_nl` lets cross lines) to the end of the first bytes.

The prefilter: a search for a pattern anchored at the start of the text (`^`, `\\A`, in every top-level
alternative, and no multi-line mode) can only succeed on data whose first byte lies in the range RE2's
own `PossibleMatchRange` gives for the pattern, so the classifier checks one byte before calling into
RE2. The range comes from RE2, so it follows RE2's reading of the pattern (case folding with `(?i)`
included); whether the pattern is anchored is read with Python's parser, and anything it cannot read
(RE2-only syntax) simply gets no prefilter.
"""

from __future__ import annotations

import re
import re._constants as sc
import re._parser as sp
import warnings

import re2

_UNANCHORED = re2._Anchor.UNANCHORED
_AT_START = (sc.AT_BEGINNING, sc.AT_BEGINNING_STRING)


class RegexError(ValueError):
    """RE2 cannot compile a pattern; the message is RE2's reason."""


def _options(utf8: bool) -> re2.Options:
    opts = re2.Options()
    opts.encoding = re2.Options.Encoding.UTF8 if utf8 else re2.Options.Encoding.LATIN1
    opts.dot_nl = True  # SF-TAP: opt.set_dot_nl(true)
    opts.never_capture = True  # only "does it match" is asked: no submatch bookkeeping
    opts.log_errors = False  # RE2 would print its own error line on stderr; ours names the key
    return opts


def _starts_anchored(items: list) -> bool:
    """True when every way through the parsed pattern begins with a start-of-text anchor."""
    if not items:
        return False
    op, av = items[0]
    if op is sc.AT:
        return av in _AT_START
    if op is sc.SUBPATTERN:
        _group, add_flags, _del_flags, sub = av
        return not add_flags & re.MULTILINE and _starts_anchored(list(sub))
    if op is sc.BRANCH:
        return all(_starts_anchored(list(alt)) for alt in av[1])
    return False


def _anchored(pattern: bytes) -> bool:
    """Conservative: a pattern Python's parser does not read cleanly counts as unanchored."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. POSIX classes `[[:alpha:]]`, read otherwise by Python
            parsed = sp.parse(pattern, 0)
    except Exception:
        return False
    if parsed.state.flags & re.MULTILINE:
        return False
    return _starts_anchored(list(parsed))


def _first_bytes(compiled: re2._Regexp) -> frozenset[int] | None:
    """Bytes a match of an anchored pattern can begin with, from RE2's PossibleMatchRange; None = any."""
    try:
        lo_s, hi_s = compiled.possiblematchrange(2)
    except re2.error:
        return None
    if not lo_s:
        return None  # may match the empty string: every input qualifies
    lo = lo_s[0]
    hi = hi_s[0] if hi_s else 255  # an empty upper bound means "no bound" (prefix successor of 0xff)
    if lo == 0 and hi == 255:
        return None
    return frozenset(range(lo, hi + 1))


class RulePattern:
    """One compiled `up` or `down` regex: `search(data)` is SF-TAP's RE2::PartialMatch(data, re)."""

    __slots__ = ("_match", "anchored", "first", "raw", "text", "utf8")

    def __init__(self, text: str, utf8: bool = False) -> None:
        self.text = text
        self.utf8 = utf8
        try:
            raw = self.raw = text.encode("utf-8" if utf8 else "latin-1")
        except UnicodeEncodeError:
            raise RegexError("characters beyond latin-1 in the pattern (set utf8: yes)") from None
        try:
            compiled = re2.compile(raw, _options(utf8))
            # What is asked is only "does it match". The binding always asks RE2 where the match
            # ends, and with `dot_nl` a greedy `.+` ends at the last newline: RE2 would read all of
            # the first bytes. Ungreedy (?U) finds a match of the same regular language (greediness
            # decides which match is reported, never whether there is one) that ends at the first
            # chance, so RE2 stops there, as SF-TAP's RE2::PartialMatch without arguments does.
            self._match = re2.compile(b"(?U)" + raw, _options(utf8))._regexp.Match
        except re2.error as exc:
            msg = exc.args[0] if exc.args else exc
            raise RegexError(msg.decode("latin-1") if isinstance(msg, bytes) else str(msg)) from None
        self.anchored = _anchored(raw)
        self.first = _first_bytes(compiled) if self.anchored else None

    def search(self, data: bytes) -> bool:
        """True when the pattern matches anywhere in `data` (anchor with ^ to match at the start)."""
        return self._match(_UNANCHORED, data, 0, len(data))[0][0] >= 0

    def __repr__(self) -> str:
        return f"RulePattern({self.text!r})"
