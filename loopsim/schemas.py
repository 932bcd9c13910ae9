"""Pydantic models at loopsim's boundaries: the run spec (TOML in) and the DayReport
(model reply in). Statuses and kinds live here too, as ``StrEnum``, so the ORM and the
CLI share one spelling.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
)

from loopsim.errors import SpecError
from loopsim.spec_errors import describe_errors, field_at
from loopsim.text import NON_PROSE_CONTROL


class RunStatus(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    AWAITING_CHECKIN = "awaiting_checkin"
    PAUSED = "paused"
    HALTED = "halted"
    FAILED = "failed"
    COMPLETED = "completed"


class DayStatus(StrEnum):
    COMMITTED = "committed"
    FAILED = "failed"
    REVERTED = "reverted"


class Author(StrEnum):
    RESEARCHER = "researcher"
    HUMAN = "human"
    SYSTEM = "system"


class EntryKind(StrEnum):
    NOTE = "note"
    HYPOTHESIS = "hypothesis"
    QUESTION = "question"
    ANSWER = "answer"
    PLAN = "plan"
    CRITIQUE = "critique"
    DIGEST = "digest"
    CORRECTION = "correction"
    SUBQUESTION = "subquestion"
    IDEA = "idea"


# Kinds a researcher may write as a DayReport entry. Sub-questions, ideas, their answers
# and critiques, and digests come from their own fields and calls; corrections only from
# a human.
ResearcherKind = Literal["note", "hypothesis", "question", "answer", "plan", "critique"]


class CallRole(StrEnum):
    """Who a recorded model call was made for (see ``loopsim.researcher.day``). A probe
    call is attached to the last day its check-in covers."""

    DAY = "day"
    SUBQUESTION = "subquestion"
    CRITIC = "critic"
    DIGEST = "digest"
    PROBE = "probe"  # a probe's prediction, made when a check-in opens (loopsim.loop)


# A spec's numbers: `every_days = true` or `rate = "2"` is refused, not read as 1 or 2.0
# (pydantic's lax mode); an integer still gives a float field its value.
Whole = Annotated[int, Strict()]
Number = Annotated[float, Strict()]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


# ---------------------------------------------------------------------------- run spec


class Persona(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    background: Annotated[str, Field(min_length=1, max_length=4000)]
    style: str = Field("", max_length=2000)
    writing_sample: str | None = Field(None, max_length=8000)


class Charter(_Strict):
    agenda: Annotated[str, Field(min_length=1, max_length=8000)]
    open_questions: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(
        default_factory=list, max_length=50
    )


class FixedTime(_Strict):
    """The external date never moves."""

    policy: Literal["fixed"]
    anchor: dt.date


class WallClockTime(_Strict):
    """The external date advances ``rate`` external days per real day since the run began."""

    policy: Literal["wall_clock"]
    anchor: dt.date
    rate: Number = Field(gt=0, le=100)


class PerCheckinTime(_Strict):
    """The external date advances ``step_days`` after every approved check-in."""

    policy: Literal["per_checkin"]
    anchor: dt.date
    step_days: Whole = Field(1, ge=1, le=3650)


TimePolicy = Annotated[FixedTime | WallClockTime | PerCheckinTime, Field(discriminator="policy")]


class ModelSpec(_Strict):
    name: str | None = Field(
        None, description="'llamacpp:gemma3-270m', 'openai:gpt-4o-mini', 'ollama:llama3'..."
    )
    base_url: str | None = None
    temperature: Number = Field(0.7, ge=0, le=2)
    repeat_penalty: Number = Field(1.15, ge=1, le=2)
    # How an OpenAI-compatible server is asked for JSON: OpenAI's "json_schema"; the
    # "json_object" form with a "schema" key that llama-cpp-python's server and some others
    # take instead; or "none" (the reply is validated either way). None: the setting.
    response_format: Literal["json_schema", "json_object", "none"] | None = None
    # "fold": send system text at the head of the first user turn, for servers whose chat
    # template has no system role and drop it (llama-cpp-python's with --chat_format
    # gemma). "keep": send system messages as they are. None: the setting.
    system_messages: Literal["keep", "fold"] | None = None
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _provider_prefix(cls, value: str | None) -> str | None:
        if value is not None and ":" not in value:
            raise ValueError("must look like 'provider:model', e.g. 'openai:gpt-4o-mini'")
        return value


DEFAULT_FRAMING = (
    "You work in a calm, stable, well-resourced research environment: no deadlines, no "
    "distractions, and all the time you need to think. Each morning you wake with no memory "
    "of earlier days. Your only memory is the research log that your earlier selves wrote. "
    "Whatever you write today is added to it, for the you of tomorrow."
)


class Conditional(_Strict):
    """The world the researcher is told it works in; the default is the old framing."""

    framing: str = Field(DEFAULT_FRAMING, max_length=8000)


class Budget(_Strict):
    days: Whole = Field(default=30, ge=1, le=1_000_000)
    output_tokens_per_day: Whole = Field(default=600, ge=32, le=100_000)


class CheckinPolicy(_Strict):
    """When the loop stops for a human. Never shown to the model."""

    every_days: Whole = Field(default=5, ge=1, le=100_000)
    spot_check_probability: Number = Field(default=0.1, ge=0, le=1)
    probes_per_checkin: Whole = Field(default=3, ge=0, le=20)
    retest_probability: Number = Field(
        default=0.25,
        ge=0,
        le=1,
        description="Chance a check-in re-asks one probe the human already answered, to "
        "measure their own consistency: the ceiling for agreement.",
    )
    drift_warn: Number = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Warn when drift (one minus the mean calibrated agreement) or its trend "
        "reaches this.",
    )
    drift_alarm: Number = Field(default=0.7, ge=0, le=1)
    judge: str | None = Field(
        default=None,
        description="Rate each prediction the human did not rate against their answer with "
        "a fresh model call: 'run' for the run's own model, or a model id such as "
        "'openai:gpt-4o-mini'. Unset: no judge; the calibrated similarity stands in.",
    )
    adaptive: bool = Field(
        default=True,
        description="Halve the interval after an alarming drift score; lengthen it by half "
        "after two low scores in a row, up to max_interval_days.",
    )
    max_interval_days: Whole = Field(default=20, ge=1, le=100_000)
    future_leak: bool = Field(
        default=True, description="Open a check-in when a day mentions a later date."
    )
    charter_drift_window: Whole = Field(default=3, ge=1, le=1000)
    charter_drift_drop: Number | None = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Open a check-in when the last window of days is this much less similar "
        "to the charter than the window before the last approval (or the first days).",
    )
    prediction_drift_every: Whole | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Every K days, re-predict the last approved probes and compare.",
    )
    prediction_drift_threshold: Number = Field(default=0.5, gt=0, le=1)
    max_unsupervised_days: Whole | None = Field(default=None, ge=1, le=100_000)
    final: bool = Field(
        default=True,
        description="Open a last check-in when the day budget is spent, over the days since "
        "the one before: unreviewed, they would never enter the dataset.",
    )
    max_external_drift_days: Whole | None = Field(default=None, ge=1, le=1_000_000)

    @field_validator("judge")
    @classmethod
    def _judge_model(cls, value: str | None) -> str | None:
        if value is not None and value != "run" and ":" not in value:
            raise ValueError("must be 'run' or look like 'provider:model'")
        return value


class Subquestions(_Strict):
    """Sub-questions a day may hand to fresh sub-researchers (HCH-style amplification)."""

    depth: Whole = Field(
        default=0,
        ge=0,
        le=4,
        description="How deep sub-researchers may recurse; 0 turns sub-questions off.",
    )
    breadth: Whole = Field(
        default=2, ge=1, le=3, description="Most sub-questions one researcher may pose."
    )
    token_budget: Whole = Field(
        default=6000,
        ge=100,
        le=1_000_000,
        description="Tokens (in and out) all of one day's sub-researchers may spend; "
        "questions left when it is spent stay unanswered.",
    )
    view_token_budget: Whole = Field(
        default=1200,
        ge=200,
        le=100_000,
        description="Tokens a sub-researcher's focused view may fill.",
    )


class Digests(_Strict):
    """Hierarchical digests: every ``every_days`` days, compress the oldest days."""

    every_days: Whole = Field(
        default=5,
        ge=0,
        le=10_000,
        description="Days per digest; 0 turns digests off. The newest every_days to "
        "2*every_days days always stay in the view as written.",
    )


class Babble(_Strict):
    """Babble and prune: a day proposes ideas, a fresh critic scores each one."""

    ideas: Whole = Field(default=0, ge=0, le=5, description="Ideas a day may babble; 0 is off.")
    flag_top: Whole = Field(default=1, ge=0, le=5, description="Best ideas flagged per day.")
    min_score: Whole = Field(
        default=6, ge=0, le=10, description="An idea needs this critic score to be flagged."
    )


class RunSpec(_Strict):
    """A run spec, as written in TOML."""

    persona: Persona
    charter: Charter
    time: TimePolicy
    conditional: Conditional = Field(default_factory=lambda: Conditional())
    model: ModelSpec = Field(default_factory=lambda: ModelSpec())
    budget: Budget = Field(default_factory=lambda: Budget())
    checkins: CheckinPolicy = Field(default_factory=lambda: CheckinPolicy())
    probes: list[Annotated[str, Field(min_length=3, max_length=500)]] = Field(
        default_factory=list, max_length=100
    )
    subquestions: Subquestions = Field(default_factory=lambda: Subquestions())
    digests: Digests = Field(default_factory=lambda: Digests())
    babble: Babble = Field(default_factory=lambda: Babble())


class CheckinReason(StrEnum):
    SCHEDULED = "scheduled"
    SPOT_CHECK = "spot_check"
    FUTURE_LEAK = "future_leak"
    PREDICTION_DRIFT = "prediction_drift"
    CHARTER_DRIFT = "charter_drift"
    BUDGET = "budget"
    MANUAL = "manual"


class Decision(StrEnum):
    APPROVE = "approve"
    AMEND = "amend"
    REJECT = "reject"
    HALT = "halt"


def load_spec(path: Path) -> RunSpec:
    """Read and validate a TOML run spec, or raise :class:`SpecError` with one line."""
    return parse_spec(read_toml(path), source=str(path))


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file (a spec, or a fork's overrides), or raise :class:`SpecError`."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        field = field_at(raw.decode("utf-8"), str(exc))
        raise SpecError(f"{path}: {field}invalid TOML: {exc}") from None
    except RecursionError:
        raise SpecError(f"{path}: invalid TOML: nested too deeply") from None
    return data


# A parameter named like a credential ("api_key", "openai_api_key", "access-token",
# "Authorization"); "max_tokens" is not one.
_CREDENTIAL = re.compile(
    r"(?:^|[^a-z])(?:api_?key|key|secret|password|passwd|token|auth|authorization|"
    r"credentials?)(?:$|[^a-z])",
    re.IGNORECASE,
)


def parse_spec(data: dict[str, Any], source: str = "spec") -> RunSpec:
    try:
        spec = RunSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source}: {describe_errors(exc.errors(), RunSpec)}") from None
    # Checked here, where a spec comes in, rather than in the model: a run's stored spec
    # is validated again every day and must keep validating.
    for name in spec.model.params:
        if _CREDENTIAL.search(name):
            raise SpecError(
                f"{source}: model.params.{name}: looks like a credential; a spec is stored "
                "with the run and exported, so give the key in LOOPSIM_API_KEY instead"
            )
    return spec


# --------------------------------------------------------------------------- day report

_DIGIT_RUN = re.compile(r"\d[\d\s.,]{11,}")
_CHAR_RUN = re.compile(r"(.)\1{11,}", re.DOTALL)


def degeneracy(text: str) -> str | None:
    """Why ``text`` looks like a degenerate small-model reply, or None if it looks like prose."""
    if NON_PROSE_CONTROL.search(text):
        return "contains control characters"
    if _DIGIT_RUN.search(text):
        return "contains a long run of digits"
    if _CHAR_RUN.search(text):
        return "repeats one character many times"
    words = text.split()
    if len(words) >= 8 and len(set(words)) / len(words) < 0.3:
        return "repeats the same few words"
    letters = sum(ch.isalpha() for ch in text)
    if letters < len(text) * 0.5:
        return "is mostly not letters"
    return None


class IdeaDraft(_Strict):
    """One babbled idea."""

    title: Annotated[str, Field(min_length=3, max_length=120)]
    body: Annotated[str, Field(min_length=20, max_length=800)]

    @field_validator("title", "body")
    @classmethod
    def _not_degenerate(cls, value: str) -> str:
        return _prose(value)


class EntryDraft(_Strict):
    """One entry as the researcher writes it."""

    kind: ResearcherKind
    title: Annotated[str, Field(min_length=3, max_length=120)]
    body: Annotated[str, Field(min_length=20, max_length=1500)]

    @field_validator("title", "body")
    @classmethod
    def _not_degenerate(cls, value: str) -> str:
        why = degeneracy(value)
        if why:
            raise ValueError(f"text {why}")
        return value


def _prose(value: str) -> str:
    why = degeneracy(value)
    if why:
        raise ValueError(f"text {why}")
    return value


Prose = Annotated[str, AfterValidator(_prose)]


class DayReport(_Strict):
    """What one day's researcher returns."""

    entries: list[EntryDraft] = Field(min_length=1, max_length=6)
    subquestions: list[Annotated[Prose, Field(min_length=10, max_length=300)]] = Field(
        default_factory=list,
        max_length=3,
        description="Questions to hand to fresh copies of yourself, answered today.",
    )
    ideas: list[IdeaDraft] = Field(
        default_factory=list,
        max_length=5,
        description="Candidate ideas; a fresh critic scores each one.",
    )


class SubAnswer(_Strict):
    """What a sub-researcher returns: its answer, and maybe sub-questions of its own."""

    answer: Annotated[Prose, Field(min_length=20, max_length=1500)]
    subquestions: list[Annotated[Prose, Field(min_length=10, max_length=300)]] = Field(
        default_factory=list, max_length=3
    )


class Critique(_Strict):
    """What the critic returns for one idea."""

    score: int = Field(ge=0, le=10, description="0 worthless .. 10 most promising")
    critique: Annotated[Prose, Field(min_length=20, max_length=1000)]


class DigestReply(_Strict):
    """What a digest researcher returns."""

    digest: Annotated[Prose, Field(min_length=40, max_length=2000)]
