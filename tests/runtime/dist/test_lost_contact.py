"""What a rank says when a collective fails (strata.runtime.dist.process_group): each peer probed
on its probe socket is reachable (its kernel completes the handshake), gone (its host refuses:
the process ended) or unreachable (no answer: tests/testing/test_multinode.py cuts a real link),
and the message names the peers by rank, host and address. Real sockets on loopback."""

from __future__ import annotations

import socket

from strata.runtime.dist.process_group import Peer, lost_contact_message, probe


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def test_a_peer_whose_process_ended_is_gone_and_a_live_one_is_reachable() -> None:
    live, ended = _listening(), _listening()
    ended_port = ended.getsockname()[1]
    ended.close()  # nothing listens there any more: the host refuses
    try:
        me = Peer(0, "host0", "127.0.0.1", 1)
        alive = Peer(1, "host1", "127.0.0.1", live.getsockname()[1])
        dead = Peer(2, "host2", "127.0.0.1", ended_port)
        assert probe(alive) == "reachable" and probe(dead) == "gone"
        error = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:5")
        said = lost_contact_message(me, [me, alive, dead], error, 30)
    finally:
        live.close()
    assert said.startswith("rank 0 on host0 (127.0.0.1) lost contact with the job: a collective failed "
                           "(Connection closed by peer [127.0.0.1]:5; distributed.timeout_seconds=30).")
    assert "Gone: rank 2 on host2 (127.0.0.1): the host answers but the process has ended" in said
    assert "rank 1" not in said and "Unreachable" not in said


def test_when_every_peer_answers_the_message_says_the_network_is_up() -> None:
    live = _listening()
    try:
        peers = [Peer(0, "a", "127.0.0.1", 1), Peer(1, "b", "127.0.0.1", live.getsockname()[1])]
        said = lost_contact_message(peers[0], peers, RuntimeError("Timed out waiting 5000ms for recv operation to complete"), 5)
    finally:
        live.close()
    assert "Every peer's host still answers, so the network is up: see the other ranks' errors." in said
