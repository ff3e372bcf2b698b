"""A python-socketio client joins a room next to the JavaScript client's
sessions and receives their diffs (run by clients/js/test/python.test.mjs,
which starts the node and passes its URL)."""
import sys
import threading

from example import Presence

url = sys.argv[1]
seen = threading.Event()
states = []


def changed(view):
    users = sorted(view["users"])
    states.append(users)
    js = [s for s in view["sessions"].values() if s["userId"] == "js-user"]
    if js and js[0].get("state", {}).get("from") == "js":
        seen.set()


p = Presence(url, "py-user", "interop", on_change=changed)
print("JOINED", p.session_id, flush=True)
p.set_state({"lang": "python"})
if not seen.wait(15):
    print("TIMEOUT", states, flush=True)
    sys.exit(1)
print("SAW", states[-1], flush=True)
p.close()
