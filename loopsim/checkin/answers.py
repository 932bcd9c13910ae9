"""A human's answers to a check-in's probes: typed in a review or read from a file.

- :func:`record_answer` stores a blind answer before anything reveals the prediction;
  :func:`reveal` then shows it, and :func:`rate` stores the agreement rating. Nothing
  stored is ever overwritten, and nothing changes once the check-in is decided.
- :func:`resolve_answers` maps an answers file's keys onto the check-in's probes, and
  refuses, never guesses, a key that is ambiguous or names no probe.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loopsim.checkin import drift
from loopsim.checkin.opening import usable
from loopsim.errors import InvalidState, SpecError
from loopsim.record.db import Database
from loopsim.record.store import Store
from loopsim.record.tables import CheckIn, Probe, ProbePair, utcnow


def record_answer(db: Database, pair_id: int, answer: str) -> None:
    """Store the human's blind answer. Refused once the prediction has been revealed."""
    answer = answer.strip()
    if not answer:
        raise SpecError("an answer cannot be empty")
    with db.write() as session:
        store = Store(session)
        pair = store.get_pair(pair_id)
        if pair is None:
            raise SpecError(f"no probe pair {pair_id}")
        require_open(store.get_checkin(pair.checkin_id))
        if pair.revealed_at is not None:
            raise InvalidState("the prediction was already shown; the blind answer is closed")
        if pair.answered_at is not None:
            raise InvalidState("this probe already has a stored answer; it is never overwritten")
        store.answer_pair(pair, answer, utcnow())


def reveal(
    db: Database, pair_id: int, similarity: drift.Similarity = drift.lexical_similarity
) -> str:
    """The prediction, only after the blind answer is stored; marks it revealed."""
    with db.write() as session:
        store = Store(session)
        pair = store.get_pair(pair_id)
        if pair is None:
            raise SpecError(f"no probe pair {pair_id}")
        if pair.answered_at is None:
            raise InvalidState("answer the probe before its prediction is shown")
        if pair.revealed_at is None:
            # No similarity to a placeholder: there is no prediction to be similar to.
            score = (
                similarity(pair.prediction or "", pair.human_answer or "")
                if usable(pair.prediction)
                else None
            )
            store.reveal_pair(pair, score, utcnow())
        return pair.prediction or ""


def rate(db: Database, pair_id: int, rating: int) -> None:
    if not 1 <= rating <= 5:
        raise SpecError("a rating is a whole number from 1 to 5")
    with db.write() as session:
        store = Store(session)
        pair = store.get_pair(pair_id)
        if pair is None or pair.revealed_at is None:
            raise InvalidState("rate a prediction only after it is revealed")
        require_open(store.get_checkin(pair.checkin_id))
        if pair.rating is not None:
            raise InvalidState(
                "this prediction already has a stored rating; it is never overwritten"
            )
        store.rate_pair(pair, rating)


def require_open(checkin: CheckIn) -> None:
    if checkin.decision is not None:
        when = checkin.decided_at.isoformat() if checkin.decided_at else "earlier"
        raise InvalidState(
            f"check-in {checkin.id} was already decided ({checkin.decision}, {when}); "
            "nothing changed"
        )


_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")
_KEY = re.compile(r"#?[0-9]{1,9}")

Answers = dict[int | str, dict[str, Any]]
"""Answers to a check-in's probes. An ``int`` key is a probe id (the Python API); a ``str``
key is an answers-file key, read by :func:`resolve_answers`."""


def load_answers(path: Path) -> dict[int | str, dict[str, Any]]:
    """``{"<key>": {"answer": "...", "rating": 4}}`` from a JSON file. A key is a probe's
    position in the check-in (``"1"``) or its id (``"#7"``); :func:`resolve_answers` maps
    them onto the check-in's probes."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: not valid JSON ({exc})") from None
    except _DuplicateKey as exc:  # the first answer would be dropped without a word
        raise SpecError(f"{path}: {exc.args[0]!r} is given twice") from None
    except RecursionError:
        raise SpecError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected an object of probe keys to answers")
    out: dict[int | str, dict[str, Any]] = {}
    for key, value in raw.items():
        if not _KEY.fullmatch(str(key)) or not isinstance(value, dict):
            raise SpecError(
                f'{path}: {key!r}: expected a probe position ("1") or id ("#7") '
                "and {answer, rating}"
            )
        out[str(key)] = checked_answer(value, f"{path}: {key}")
    return out


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (``json`` keeps the last of equal ones)."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKey(key)
        found[key] = value
    return found


ANSWER_FIELDS = {"answer", "rating"}


def checked_answer(given: Any, where: str) -> dict[str, Any]:
    """One given answer as stored, ``{"answer": text, "rating": 1 to 5 or None}``, or a
    SpecError that starts with ``where``: from a file or from the Python API alike."""
    if not isinstance(given, dict):
        raise SpecError(f"{where}: expected {{answer, rating}}")
    if unknown := sorted(set(given) - ANSWER_FIELDS, key=str):
        raise SpecError(f"{where}: unknown field {unknown[0]!r} (expected answer and rating)")
    answer, rating = given.get("answer"), given.get("rating")
    if not isinstance(answer, str) or not answer.strip():
        raise SpecError(f"{where}: answer must be non-empty text")
    if _NOT_TEXT.search(answer):  # JSON can spell both; no database stores them
        raise SpecError(f"{where}: answer holds a NUL or half a surrogate pair")
    if rating is not None and (
        isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5
    ):
        raise SpecError(f"{where}: rating must be a whole number from 1 to 5")
    return {"answer": answer.strip(), "rating": rating}


def expected_keys(pairs: Sequence[tuple[ProbePair, Probe]]) -> str:
    """The keys an answers file may use for these pairs, for an error message."""
    if not pairs:
        return "none (this check-in has no probes)"
    ids = ", ".join(f'"#{probe.id}"' for _, probe in pairs)
    last = len(pairs)
    positions = '"1"' if last == 1 else f'"1" to "{last}"'
    return f"{positions} (positions, as the review numbers them) or {ids} (probe ids)"


def resolve_answers(
    pairs: Sequence[tuple[ProbePair, Probe]], answers: Answers, source: str = "answers"
) -> dict[int, dict[str, Any]]:
    """Map answer keys onto the check-in's pairs: ``{pair id: given}``, or refuse.

    The rule: ``"#7"`` is probe id 7; a bare ``"2"`` is the second probe of the check-in
    (``probe 2 of 3`` on the review screen) or probe id 2; a bare number that means two
    different probes is refused, never guessed. An ``int`` key is a probe id. A key that
    names no probe of the check-in, two keys for one probe, or an answer to a probe that
    already has a stored one is refused too: nothing is ever dropped silently."""
    by_id = {probe.id: pair for pair, probe in pairs}
    numbered = {str(n): pair for n, (pair, _probe) in enumerate(pairs, 1)}
    position = {pair.id: n for n, (pair, _probe) in enumerate(pairs, 1)}
    expected = f"expected {expected_keys(pairs)}; nothing changed"
    out: dict[int, dict[str, Any]] = {}
    for key, given in answers.items():
        if isinstance(key, int):
            pair = by_id.get(key)
            shown = f"#{key}"
        else:
            shown = key
            if key.startswith("#"):
                pair = by_id.get(int(key[1:]))
            else:
                as_position, as_id = numbered.get(key), by_id.get(int(key))
                if as_position and as_id and as_position.id != as_id.id:
                    raise SpecError(
                        f'{source}: key "{key}" could be probe {key} of {len(pairs)} '
                        f"(#{as_position.probe_id}) or probe id #{key} (probe "
                        f'{position[as_id.id]} of {len(pairs)}); write "#{as_position.probe_id}" '
                        f'or "#{key}"; nothing changed'
                    )
                pair = as_position or as_id
        if pair is None:
            raise SpecError(f'{source}: key "{shown}" names no probe of this check-in; {expected}')
        if pair.id in out:
            raise SpecError(
                f'{source}: key "{shown}" names probe {position[pair.id]} of {len(pairs)} '
                f"(#{pair.probe_id}) again; nothing changed"
            )
        if pair.answered_at is not None:
            raise SpecError(
                f'{source}: key "{shown}": probe {position[pair.id]} of {len(pairs)} '
                f"(#{pair.probe_id}) already has a stored answer, which is never overwritten; "
                "leave it out of the file; nothing changed"
            )
        out[pair.id] = checked_answer(given, f'{source}: key "{shown}"')
    return out


def unanswered(pairs: Sequence[tuple[ProbePair, Probe]]) -> list[int]:
    """Positions (1-based, as the review numbers them) of pairs with no stored answer."""
    return [n for n, (pair, _probe) in enumerate(pairs, 1) if pair.human_answer is None]
