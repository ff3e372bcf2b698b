"""A presence-cluster client in Python with python-socketio: hello, join a
room, heartbeat at the interval the node names, and keep the room's view
current from the snapshot and the diffs (docs/client.md).

    pip install "python-socketio[client]"
    python example.py http://127.0.0.1:3000 ada lobby
"""
import sys
import threading

import socketio


def apply(view, diff):
    """Applies a presence:diff to a view ({"users": {}, "sessions": {}})."""
    for kind in ("users", "sessions"):
        for key, patch in (diff.get(kind) or {}).items():
            if patch is None:
                view[kind].pop(key, None)
                continue
            entry = view[kind].setdefault(key, {})
            for field, value in patch.items():
                if value is None:
                    entry.pop(field, None)
                else:
                    entry[field] = value
    view["seq"] = diff["seq"]


class Presence:
    """One session in one room."""

    def __init__(self, url, user_id, room_id, on_change=None):
        self.sio = socketio.Client(reconnection=True)
        self.room_id = room_id
        self.view = {"users": {}, "sessions": {}, "seq": 0}
        self.session_id = None
        self.epoch = None
        self.on_change = on_change or (lambda view: None)
        self._stop = threading.Event()
        self.sio.on("connect", lambda: self._hello(user_id))
        self.sio.on("presence:diff", self._diff)
        self.sio.on("presence:snapshot", self._snapshot)
        self.sio.connect(url, transports=["websocket"])

    def _hello(self, user_id):
        hello = {"userId": user_id}
        if self.session_id:  # a reconnect resumes the session
            hello["sessionId"] = self.session_id
        ack = self.sio.call("presence:hello", hello, timeout=10)
        if not ack.get("ok"):
            raise RuntimeError(ack["error"])
        self.session_id, self.epoch = ack["sessionId"], ack["epoch"]
        interval = ack["config"]["heartbeatIntervalMs"] / 1000
        threading.Thread(target=self._beat, args=(interval,), daemon=True).start()
        if self.room_id not in ack["rooms"]:
            join = self.sio.call("presence:join", {"roomId": self.room_id}, timeout=10)
            if not join.get("ok"):
                raise RuntimeError(join["error"])
            self._snapshot(join["snapshot"])

    def _beat(self, interval):
        while not self._stop.wait(interval):
            try:
                ack = self.sio.call("presence:heartbeat", {"epoch": self.epoch, "activity": "active"}, timeout=10)
                if ack.get("ok"):
                    self.epoch = ack["epoch"]
            except socketio.exceptions.SocketIOError:
                return

    def _snapshot(self, snap):
        if snap["roomId"] == self.room_id:
            self.view = {"users": dict(snap["users"]), "sessions": dict(snap["sessions"]), "seq": snap["seq"]}
            self.on_change(self.view)

    def _diff(self, diff):
        if diff["roomId"] == self.room_id and diff["seq"] >= self.view["seq"]:
            apply(self.view, diff)
            self.on_change(self.view)

    def set_state(self, patch):
        return self.sio.call("presence:state", {"roomId": self.room_id, "epoch": self.epoch, "patch": patch}, timeout=10)

    def close(self):
        self._stop.set()
        try:
            self.sio.call("presence:leave", {}, timeout=5)
        finally:
            self.sio.disconnect()


if __name__ == "__main__":
    url, user, room = sys.argv[1:4]
    p = Presence(url, user, room, on_change=lambda v: print(sorted(v["users"]), flush=True))
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        p.close()
