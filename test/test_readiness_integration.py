"""Answers an operator can trust from the first second: the verifier and drafter start first and are
asked at once and repeatedly, the retriever joins later (the window a slow index load leaves), and
every reply is either a grounded answer with its source or an explicit not-ready / documents-
unavailable one; the graph reports ready only once the retriever answers. Then the retriever is
killed mid-run: the next document question says the documents are unavailable, and after its
respawn the answers are grounded again."""
import os
import shutil
import signal
import threading
import time

import pytest
from conftest import graph_params

from hola_ros.core.retrieval.ingest import default_index_dir
from hola_ros.local_graph import LocalGraph, wait_future

pytestmark = pytest.mark.slow

READY_WAIT_S = 3.0
PARAMS = graph_params(common={"telemetry_rate_hz": 4.0},
                      verifier={"ready_wait_s": READY_WAIT_S, "retrieve_timeout_s": 5.0, "max_new_tokens_default": 24},
                      retriever={"gate_model": ""})
QUESTIONS = ["What does error E-214 mean?", "What is the speed limit in the Zone C aisles?",
             "Where is charging dock CD-5?"]


def kind_of(reply) -> str:
    """grounded | not_ready | documents_unavailable | not_active; anything else is what must never happen."""
    stats = reply.stats
    if not reply.success:
        if reply.error.startswith("not ready: the verifier is not active"):
            return "not_active"
        return "not_ready" if reply.error.startswith("not ready:") and "not_ready" in stats.flags else "bad"
    if stats.stop_reason == "documents_unavailable":
        ok = "documents_unavailable" in stats.flags and "could not be consulted" in reply.text and stats.degraded
        return "documents_unavailable" if ok else "bad"
    grounded = stats.retrieval_level >= 1 and len(stats.sources) > 0 and not stats.degraded
    named = any(f"[{p.source}]" in reply.text for p in stats.sources)
    return "grounded" if grounded and named else "bad"


class Asker:
    """Asks the document questions back to back from a thread, from the moment the service exists."""

    def __init__(self, graph):
        from hola_ros.srv import Ask

        self.client = graph.node.create_client(Ask, "/hola/ask")
        self.request = Ask.Request
        self.replies: list[tuple[str, object]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        n = 0
        while not self.stop.is_set():
            if not self.client.wait_for_service(timeout_sec=0.2):
                continue
            question = QUESTIONS[n % len(QUESTIONS)]
            n += 1
            reply = wait_future(self.client.call_async(self.request(prompt=question)), 120)
            self.replies.append((question, reply))
            time.sleep(0.1)

    def kinds(self) -> list[str]:
        return [kind_of(reply) for _, reply in list(self.replies)]

    def wait_for(self, kind: str, count: int, timeout: float):
        deadline = time.monotonic() + timeout
        while self.kinds().count(kind) < count:
            assert time.monotonic() < deadline, f"no {count} {kind} replies in {timeout} s: {self.kinds()}"
            time.sleep(0.1)

    def finish(self):
        self.stop.set()
        self.thread.join(150)


def test_asked_from_the_first_second_every_reply_is_grounded_or_explicitly_not_ready(tmp_path):
    from hola_ros.client import HolaClient

    front = LocalGraph(tmp_path / "front", PARAMS, only="hola_verifier,hola_drafter")
    back = None
    asker = None
    try:
        asker = Asker(front)
        hola = HolaClient(front.node, liveness_s=5.0)
        asker.wait_for("not_ready", 2, timeout=300)  # the verifier serves, the documents are not there yet
        assert wait_future(hola.wait_ready(2.0), 10) is False
        assert "graph ready" not in front.log_text()

        index = tmp_path / "index"  # a copy of the demo index: documents are added to it and removed
        shutil.copytree(default_index_dir(), index)
        back = LocalGraph(tmp_path / "back", graph_params(common={"telemetry_rate_hz": 4.0},
                                                          retriever={"gate_model": "", "index_dir": str(index)}),
                          only="hola_retriever")
        asker.wait_for("grounded", 3, timeout=300)
        assert wait_future(hola.wait_ready(30.0), 40) is True
        deadline = time.monotonic() + 30
        while "[hola-ros up] graph ready" not in front.log_text():  # `hola-ros up` says so once the retriever answers
            assert time.monotonic() < deadline, front.log_text()[-2000:]
            time.sleep(0.2)
        asker.finish()
        kinds = asker.kinds()
        assert "bad" not in kinds, [(q, r.success, r.error, r.text, r.stats.flags)
                                    for (q, r), k in zip(asker.replies, kinds) if k == "bad"]
        assert set(kinds) <= {"not_active", "not_ready", "grounded"}

        documents_added_and_removed_at_run_time(hola, asker.client, tmp_path)

        # killed mid-run: the next document question says so; after the respawn, grounded again
        retriever_pid = back.node_pids()["hola_retriever"]
        os.kill(retriever_pid, signal.SIGKILL)
        from hola_ros.srv import Ask

        reply = wait_future(asker.client.call_async(Ask.Request(prompt=QUESTIONS[1])), 120)
        assert kind_of(reply) == "documents_unavailable", (reply.success, reply.error, reply.text)
        assert reply.text.startswith("The documents could not be consulted (")
        deadline = time.monotonic() + 120  # respawned, index loaded, answering: grounded again
        while (kind := kind_of(wait_future(asker.client.call_async(Ask.Request(prompt=QUESTIONS[0])), 120))) != "grounded":
            assert kind == "documents_unavailable" and time.monotonic() < deadline, kind
            time.sleep(0.5)
        assert wait_future(hola.wait_ready(10.0), 20) is True
    finally:
        if asker is not None:
            asker.finish()
        for graph in (back, front):
            if graph is not None:
                graph.stop()


def documents_added_and_removed_at_run_time(hola, ask_client, tmp_path):
    """hola/documents: a new manual page is answered from at once, and no longer once removed."""
    from hola_ros.srv import Ask

    page = tmp_path / "new-manual" / "cold-store.md"
    page.parent.mkdir()
    page.write_text("# Cold store\n\nThe speed limit in the Zone Q cold store aisles is 0.4 m/s.\n")

    def call(op, paths=()):
        deadline = time.monotonic() + 60
        while not (response := wait_future(hola.documents(op, paths), 300)).success and "not available" in response.error:
            assert time.monotonic() < deadline, response.error
            time.sleep(0.5)
        return response

    def sources(question):
        reply = wait_future(ask_client.call_async(Ask.Request(prompt=question, retrieval_mode="single")), 120)
        return [p.source for p in reply.stats.sources]

    question = "What is the speed limit in the Zone Q cold store aisles?"
    assert "cold-store.md" not in sources(question)
    added = call("add", [page.parent])
    assert added.success and added.added == [str(page.resolve())] and added.total_passages > 40, added.error
    assert sources(question)[0] == "cold-store.md"
    listed = call("list")
    assert str(page.resolve()) in listed.sources and listed.total_passages == added.total_passages
    assert not call("add", [tmp_path / "missing.md"]).success  # a clear error, nothing changed
    removed = call("remove", [page])
    assert removed.success and removed.removed == [str(page.resolve())], removed.error
    assert "cold-store.md" not in sources(question)
