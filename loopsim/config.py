"""Settings: read once at start-up from ``LOOPSIM_*`` variables and passed explicitly.

Nothing in loopsim reads the environment at import time or from deep inside a module;
the CLI builds one :class:`Settings` and hands it down.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "llamacpp:gemma3-270m"


class Settings(BaseSettings):
    """Process-wide configuration. Every field maps to ``LOOPSIM_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="LOOPSIM_", extra="ignore")

    database_url: str = Field(
        "sqlite:///loopsim.db",
        description="SQLAlchemy URL or a plain file path for SQLite.",
    )
    model: str = Field(
        DEFAULT_MODEL,
        description="Model for runs whose spec names none, e.g. 'openai:gpt-4o-mini'.",
    )
    model_base_url: str | None = Field(
        None, description="Base URL of an OpenAI-compatible server (vLLM, llama.cpp, Ollama)."
    )
    response_format: Literal["json_schema", "json_object", "none"] = Field(
        "json_schema",
        description="How OpenAI-compatible servers are asked for JSON: json_schema (OpenAI, "
        "vLLM), json_object (llama-cpp-python's server), or none.",
    )
    system_messages: Literal["keep", "fold"] = Field(
        "keep",
        description="How OpenAI-compatible and other langchain models get system text: "
        "keep (as system messages) or fold (at the head of the first user turn, for "
        "servers whose chat template drops system messages, such as llama-cpp-python's "
        "with --chat_format gemma).",
    )
    openai_client: Literal["light", "langchain"] = Field(
        "light",
        description="Client for 'openai:' models on an OpenAI-compatible server (a base URL "
        "set): light (loopsim's own, one pooled httpx request per call, several times less "
        "CPU per call) or langchain (langchain-openai and the openai SDK). OpenAI's own "
        "API, with no base URL, always goes through langchain-openai.",
    )
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto",
        description="The event loop of `loopsim serve`: auto (uvloop when the uvloop extra "
        "is installed, else asyncio's), asyncio or uvloop. uvloop leaves one worker more "
        "of its core for days at high concurrency (benchmarks/README.md).",
    )
    api_key: SecretStr | None = Field(
        None, description="API key for the model endpoint; never logged or stored."
    )
    chain_key: SecretStr | None = Field(
        None,
        description="Keys the record's hash chains: entry hashes become HMAC-SHA256 under "
        "this secret, so only its holder can extend a run's record or recompute it after an "
        "edit. Runs started with it set need it to be stepped and verified; never logged, "
        "stored or exported.",
    )
    embeddings: str | None = Field(
        None,
        description="Embeddings for probe similarity, e.g. 'openai:text-embedding-3-small' "
        "(with the api_key and model_base_url settings); 'local' for the offline "
        "all-MiniLM-L6-v2 of the 'embed' extra, 'lexical' for a word-count cosine. Unset: "
        "the offline model if its extra is installed, else the word-count cosine.",
    )
    view_token_budget: int = Field(3000, ge=200, description="Tokens the view may fill.")
    max_output_chars: int = Field(
        20_000, ge=100, description="A reply longer than this fails the day."
    )
    max_retries: int = Field(2, ge=0, le=5, description="Retries of an invalid reply.")
    model_timeout: float = Field(
        300.0, gt=0, description="Seconds a server may stay silent: to connect, between bytes."
    )
    model_retries: int = Field(
        4, ge=0, le=20, description="Retries of a model call on 429, 5xx, timeouts and resets."
    )
    retry_initial_seconds: float = Field(
        1.0, ge=0, description="First backoff between retries; doubles, with jitter."
    )
    retry_max_seconds: float = Field(
        60.0, ge=0, description="Longest wait between retries, Retry-After included."
    )
    max_failed_days: int = Field(
        3, ge=1, description="Failed days in a row after which the run is marked failed."
    )
    webhook_url: str | None = Field(
        None, description="POSTed a JSON payload when `loopsim serve` opens a check-in."
    )
    busy_timeout_ms: int = Field(
        30_000,
        ge=0,
        description="How long a write waits for another's lock before it gives up: SQLite's "
        "busy timeout, PostgreSQL's lock_timeout (where 0 waits without end).",
    )
    llama_threads: int | None = Field(None, description="Threads for the embedded model.")
    llama_ctx: int = Field(4096, ge=512, description="Context window of the embedded model.")
