#!/usr/bin/env bash
# Opt-in benchmark of `redraft view` (not part of the test command):
#  - an eval of ITEMS [10000] items (a scripted draft-and-revise workflow):
#    the server's time to render its page, and Chromium's time to first
#    contentful paint and to the load event (median of RUNS [5] loads);
#  - the viewer's peak memory (VmHWM) after those loads;
#  - latency from an item finishing (its `finished_at` in the store) to the
#    list page showing it, over a live eval of 20 items (one every ~400 ms).
# Needs Chromium (/usr/bin/chromium or REDRAFT_CHROMIUM). Prints one JSON
# object; docs/eval.md keeps the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
items=${ITEMS:-10000}
runs=${RUNS:-5}
bin=${REDRAFT_BIN:-target/debug/redraft}
[ -x "$bin" ] || cargo build --quiet
chromium=${REDRAFT_CHROMIUM:-/usr/bin/chromium}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cat > "$work/bench.yaml" <<'EOF'
version: 1
name: view-bench
models:
  m: { spec: scripted:bench.replies.yaml }
inputs:
  task: string
nodes:
  - { id: draft, kind: generate, template: "Q: {{ task }}" }
  - { id: revise, kind: revise, template: "Improve: {{ artifact.text }}" }
edges:
  - { from: draft, to: revise }
output: { from: [draft, revise], select: latest }
EOF
cat > "$work/bench.replies.yaml" <<EOF
replies:
  - { node: draft, prompt: 'odd', text: "The answer is 3.", latency_ms: ${LATENCY_MS:-0} }
  - { node: draft, text: "The answer is 4.", latency_ms: ${LATENCY_MS:-0} }
  - { node: revise, prompt: 'answer is 3', text: "So the answer is 4.", latency_ms: ${LATENCY_MS:-0} }
  - { node: revise, text: "So the answer is 4!", latency_ms: ${LATENCY_MS:-0} }
EOF
python3 - "$work/items.jsonl" "$items" <<'EOF'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        kind = "odd" if i % 7 == 0 else "even"
        f.write(json.dumps({"id": f"item-{i:05d}", "task": f"{kind}: what is two plus two? ({i})", "answer": "4"}) + "\n")
EOF
store="$work/bench.db"
start=$(date +%s.%N)
eval_id=$("$bin" eval "$work/bench.yaml" --data "$work/items.jsonl" --answer answer --scorer numeric \
  --store "$store" --concurrency 32 --json -q | python3 -c 'import json,sys; print(json.load(sys.stdin)["eval"])')
echo "eval of $items items stored in $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s" >&2

"$bin" view --store "$store" --poll 200ms > "$work/view.out" 2>&1 &
view_pid=$!
for _ in $(seq 100); do grep -q "http://" "$work/view.out" 2>/dev/null && break; sleep 0.1; done
base=$(grep -o "http://[0-9.:]*" "$work/view.out" | head -1)

python3 - "$chromium" "$base" "$eval_id" "$runs" "$view_pid" "$bin" "$work" <<'EOF'
import fcntl, json, os, statistics, subprocess, sys, tempfile, time, urllib.request

chromium, base, eval_id, runs, view_pid, binary, work = sys.argv[1:8]
runs = int(runs)

class Browser:
    """Chromium over the DevTools protocol on a pipe (fds 3 and 4)."""
    def __init__(self):
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()
        def fds():
            # Out of the way first (a pipe end may be fd 3 or 4), then onto
            # 3 and 4, inheritable (Python makes pipes close-on-exec).
            r, w = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)
        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--remote-debugging-pipe",
             "--user-data-dir=" + tempfile.mkdtemp(dir=work), "about:blank"],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r); os.close(out_w)
        self.w = os.fdopen(cmd_w, "wb", buffering=0)
        self.r = os.fdopen(out_r, "rb")
        self.buf = b""
        self.next = 0
        self.session = None
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", {})
        self.call("Runtime.enable", {})

    def read(self):
        while b"\0" not in self.buf:
            chunk = os.read(self.r.fileno(), 1 << 16)
            if not chunk:
                raise RuntimeError("the browser closed its pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params):
        self.next += 1
        msg = {"id": self.next, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        self.w.write(json.dumps(msg).encode() + b"\0")
        while True:
            m = self.read()
            if m.get("id") == self.next:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]

    def eval(self, expr):
        return self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True,
                                              "awaitPromise": True})["result"].get("value")

    def load(self, url):
        self.call("Page.navigate", {"url": url})
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.eval("document.readyState") == "complete":
                return
            time.sleep(0.02)
        raise RuntimeError("the page did not load")

b = Browser()
page = f"{base}/e/{eval_id}"
server, paint, loaded = [], [], []
for _ in range(runs):
    t = time.time()
    with urllib.request.urlopen(page) as r:
        size = len(r.read())
    server.append((time.time() - t) * 1000)
    b.load(page)
    fcp = b.eval("(performance.getEntriesByType('paint').find(e => e.name === 'first-contentful-paint') || {}).startTime")
    nav = b.eval("performance.getEntriesByType('navigation')[0].loadEventEnd")
    paint.append(fcp)
    loaded.append(nav)
rows = b.eval("document.querySelectorAll('#items tbody tr').length")
with open(f"/proc/{view_pid}/status") as f:
    status = dict(l.split(":", 1) for l in f if ":" in l)
hwm_mib = int(status["VmHWM"].split()[0]) / 1024

# Latency: a live eval of 20 items, one call every ~200 ms, watched on the list.
replies = os.path.join(work, "bench.replies.yaml")
text = open(replies).read().replace("latency_ms: 0", "latency_ms: 200")
open(replies, "w").write(text)
with open(os.path.join(work, "live.jsonl"), "w") as f:
    for i in range(20):
        f.write(json.dumps({"id": f"live-{i:02d}", "task": f"even: live ({i})", "answer": "4"}) + "\n")
b.load(base + "/")
b.eval("new Promise(r => { const t = setInterval(() => { if (document.body.getAttribute('data-app-ready') === '1') { clearInterval(t); r(true); } }, 20); })")
proc = subprocess.Popen([binary, "eval", os.path.join(work, "bench.yaml"), "--data", os.path.join(work, "live.jsonl"),
                         "--answer", "answer", "--scorer", "numeric", "--store", os.path.join(work, "bench.db"),
                         "--name", "live", "--concurrency", "1", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
shown = {}  # done count -> first time (unix ms) the page showed it
while proc.poll() is None or len(shown) < 21:
    done = b.eval("(function(){var r=Array.from(document.querySelectorAll('#evals tbody tr')).find(r=>r.cells[1].textContent==='live');return r?Number(r.getAttribute('data-done')):-1;})()")
    now = time.time() * 1000
    for k in range(0, (done or 0) + 1):
        shown.setdefault(k, now)
    if done == 20:
        break
    time.sleep(0.02)
import sqlite3
db = sqlite3.connect(os.path.join(work, "bench.db"))
finished = sorted(r[0] for r in db.execute(
    "SELECT u.finished_at FROM units u JOIN evals e ON e.id = u.eval_id WHERE e.name = 'live' AND u.status = 'done'"))
latency = [shown[k + 1] - t for k, t in enumerate(finished) if k + 1 in shown]
b.proc.kill()
print(json.dumps({
    "items": rows,
    "page_bytes": size,
    "server_render_ms_median": round(statistics.median(server), 1),
    "first_contentful_paint_ms_median": round(statistics.median(paint), 1),
    "load_event_ms_median": round(statistics.median(loaded), 1),
    "viewer_peak_rss_mib": round(hwm_mib, 1),
    "item_to_page_latency_ms": {"median": round(statistics.median(latency)), "max": round(max(latency)), "n": len(latency)},
}, indent=1))
EOF
