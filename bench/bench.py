#!/usr/bin/env python3
"""fastdl benchmark harness (DESIGN.md section 6, issue 7).

One command runs every case, interleaving the tools (A,B,C,B,C,A,C,A,B: rotated each round), with
the same preparation before every command (fresh output folder, `sync`):

  1. one big file (1 GiB) over 127.0.0.1: fastdl default, fastdl --plan (if
     the client has it), aria2c -x4 -s4 -k1M, lftp pget -n 4, curl; the
     anchors fetch from nginx (sendfile on) serving the same folder;
  2. 1000 files of 100 KiB from one input list: fastdl --once (--jobs 1 and
     16) against aria2c -j16 -i and curl -Z --parallel-max 16;
  3. WAN path (25 ms each way, 0.1 % loss, ../shared/tools/wan_setup.sh beside the repository):
     fastdl default against aria2c -x4 -s4 -k1M on a 100 MiB file;
  4. pick-up latency: a name appended to the watched input file until its
     10 KB file is in place;
  5. 20 clients at once on one server (200 MiB each): per-client throughput
     spread and server peak RSS, against nginx + 20 curl.

Usage (from the repository root):
    bench/run.sh                       # full run, 3 runs per case
    QUICK=1 bench/run.sh               # 1 run, small sizes (smoke test)
    RUNS=5 CASES=1,2 bench/run.sh      # more runs, only some cases
    bench/run.sh --help

Prints one markdown table to stdout and writes it, with per-run raw numbers
and any error text, to bench/out/results.md.  Progress goes to stderr.
"""

import argparse
import datetime
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
WAN_SCRIPT = os.environ.get("WAN_SCRIPT", os.path.normpath(os.path.join(REPO, "..", "shared", "tools", "wan_setup.sh")))
TIME_BIN = "/usr/bin/time"
KIB = 1024
MIB = 1024 * 1024

# --------------------------------------------------------------------------
# small helpers


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def env_int(name, default):
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else default


def median(xs):
    return statistics.median(xs) if xs else None


def fmt_num(x, digits=3):
    """Format with about `digits` significant digits, no exponent."""
    if x is None:
        return "?"
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 10 ** (digits - 1):
        return f"{x:.0f}"
    dec = digits - 1 - int(math.floor(math.log10(a)))
    return f"{x:.{max(dec, 0)}f}"


def tail_text(path, n=6, maxlen=600):
    try:
        with open(path, "rb") as f:
            data = f.read()[-20000:].decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [l for l in data.splitlines() if l.strip()]
    return " | ".join(lines[-n:])[-maxlen:]


def grep_problems(path, n=4):
    """Last WARN/ERROR lines of a fastdl log."""
    try:
        with open(path, "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [l for l in data.splitlines() if "[ERROR]" in l or "[WARN]" in l]
    return " | ".join(lines[-n:])[-600:]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def read_vmhwm_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def sh(cmd, **kw):
    return subprocess.run(cmd, **kw)


def do_sync():
    sh(["sync"])


def fresh_dir(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)


def rm(path):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.unlink(path)


def warm(paths):
    """Read files once so the source side is in the page cache."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(8 * MIB):
                pass


REPORTED = "/sys/module/page_reporting/parameters/reported_kib"
SETTLE_LIMIT = 20.0


def settle_memory():
    """Waits until the guest has stopped handing freed memory back to the
    VM host (free page reporting: the counter in REPORTED stops moving for
    a second), so every command starts from the same memory state whatever
    ran before it and however long ago. Without this, a command that starts
    right after a big output was deleted reuses still-backed pages, and one
    that starts later faults them back in from the host (measured: 0.55 s
    against 4.0 s for the same 1 GiB written with dd). Returns the seconds
    waited, or None where the kernel has no such counter."""
    try:
        with open(REPORTED) as f:
            last = f.read()
    except OSError:
        return None
    t0 = time.monotonic()
    quiet_since = t0
    while time.monotonic() - t0 < SETTLE_LIMIT:
        time.sleep(0.25)
        with open(REPORTED) as f:
            now = f.read()
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= 1.0:
            break
    return time.monotonic() - t0


def prepare(sources):
    """The preparation before every timed command: flush dirty data, let
    the memory state settle, then read the source files into the page
    cache, last, because this VM also pages out cache that went unread for
    a few seconds (DAMON): during the settling wait the sources lose pages,
    and a server that reads them from disk is a different benchmark."""
    do_sync()
    settle_memory()
    warm(sources)


# --------------------------------------------------------------------------
# process bookkeeping: every child runs in its own process group, so a
# timeout or Ctrl-C can stop it (and /usr/bin/time's child) without touching
# anything we did not start.

LIVE = set()
LIVE_LOCK = threading.Lock()


def popen(cmd, **kw):
    p = subprocess.Popen(cmd, start_new_session=True, **kw)
    with LIVE_LOCK:
        LIVE.add(p)
    return p


def forget(p):
    with LIVE_LOCK:
        LIVE.discard(p)


def stop_child(p, sig, what):
    """Asks a server we started to stop with `sig`, kills it after 5 s."""
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log(f"{what} did not exit within 5 s of {sig.name}; killing it")
            kill_group(p)
            p.wait()
    forget(p)


def kill_group(p, sig=signal.SIGKILL):
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_all_live():
    with LIVE_LOCK:
        procs = list(LIVE)
    for p in procs:
        if p.poll() is None:
            kill_group(p, signal.SIGKILL)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


class Result:
    def __init__(self, ok, secs, rss_kb, err=""):
        self.ok, self.secs, self.rss_kb, self.err = ok, secs, rss_kb, err

    def __repr__(self):
        return f"Result(ok={self.ok}, secs={self.secs}, rss_kb={self.rss_kb}, err={self.err!r})"


def timed(cmd, *, logbase, timeout, netns=None, sync_files=None, sync_fs=None,
          check=None, extra_err=None):
    """Run cmd under /usr/bin/time; wall time from launch until it exited
    and (for anchors) the sync of its output finished.  Returns Result."""
    rss_path = logbase + ".rss"
    out_path, err_path = logbase + ".out", logbase + ".err"
    full = list(cmd)
    if HAVE_TIME:
        full = [TIME_BIN, "-f", "%M", "-o", rss_path] + full
    if netns:
        full = ["ip", "netns", "exec", netns] + full
    with open(out_path, "wb") as fo, open(err_path, "wb") as fe:
        t0 = time.perf_counter()
        p = popen(full, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL)
        # Popen.wait(timeout=...) polls with sleeps of up to 50 ms, which
        # would round every time up by as much; block in waitpid instead
        # and let a timer kill the command at its deadline.
        expired = threading.Event()

        def expire():
            expired.set()
            kill_group(p)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            rc = p.wait()
        except BaseException:
            kill_group(p)
            p.wait()
            forget(p)
            raise
        finally:
            timer.cancel()
        forget(p)
        if expired.is_set():
            err = f"timeout after {timeout} s (killed)"
            more = extra_err() if extra_err else ""
            return Result(False, None, None, err + (f"; {more}" if more else ""))
        if rc == 0 and sync_files:
            sh(["sync", *sync_files])
        if rc == 0 and sync_fs:
            sh(["sync", "-f", sync_fs])
        t1 = time.perf_counter()
    rss = None
    try:
        with open(rss_path) as f:
            nums = [l.strip() for l in f if l.strip().isdigit()]
            rss = int(nums[-1]) if nums else None
    except OSError:
        pass
    if rc != 0:
        err = f"exit {rc}: " + tail_text(err_path)
        so = tail_text(out_path, n=3)
        if so:
            err += f" || stdout: {so}"
        if extra_err:
            more = extra_err()
            if more:
                err += f" || log: {more}"
        return Result(False, t1 - t0, rss, err)
    if check:
        problem = check()
        if problem:
            return Result(False, t1 - t0, rss, problem)
    return Result(True, t1 - t0, rss)


# --------------------------------------------------------------------------
# servers


class FastdlServer:
    """A fastdl-server in plain text (`--plaintext`, like for like with the
    http anchors), or with TLS (`tls=True`: the default of the product, its
    identity kept in the work folder and pinned by clients in a
    known-servers file there)."""

    def __init__(self, name, data_dir, workdir, bind="127.0.0.1", netns=None, extra=(), tls=False, http=False):
        self.name = name
        self.http_port = None
        os.makedirs(workdir, exist_ok=True)
        self.log = os.path.join(workdir, f"{name}-server.log")
        self.list = os.path.join(workdir, f"{name}-list.txt")
        self.stdout = os.path.join(workdir, f"{name}-server.stdout")
        self.tls = tls
        if tls:
            security = ["--identity", os.path.join(workdir, f"{name}-identity.pem")]
            self.client_args = ["--known-servers", os.path.join(workdir, f"{name}-known_servers")]
        else:
            security = ["--plaintext"]
            self.client_args = ["--plaintext"]
        cmd = [SERVER_BIN, "--bind", bind, "--port", "0", "--dir", data_dir,
               "--list", self.list, "--log", self.log, "-q", *security, *extra]
        if http:
            cmd += ["--http-port", "0"]
        if netns:
            cmd = ["ip", "netns", "exec", netns] + cmd
        self.f = open(self.stdout, "wb")
        t0 = time.perf_counter()
        self.p = popen(cmd, stdout=self.f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.port = None
        deadline = time.time() + 300  # it hashes every file before listening
        while time.time() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"fastdl-server exited {self.p.returncode}: "
                                   + tail_text(self.stdout) + " " + tail_text(self.log))
            try:
                with open(self.log) as f:
                    text = f.read()
                m = re.search(r"listening on [0-9.]+:(\d+)", text)
                h = re.search(r"HTTP face on [0-9.]+:(\d+)", text)
                if m and (h or not http):
                    self.port = int(m.group(1))
                    self.http_port = int(h.group(1)) if h else None
                    break
            except OSError:
                pass
            time.sleep(0.02)
        if not self.port:
            self.stop()
            raise RuntimeError("fastdl-server did not log 'listening on' within 300 s")
        self.addr = f"{bind}:{self.port}"
        self.http_url = f"http://{bind}:{self.http_port}" if self.http_port else None

        log(f"fastdl-server ({name}) listening on {self.addr} after {time.perf_counter() - t0:.2f} s")

    def vmhwm_kb(self):
        return read_vmhwm_kb(self.p.pid)

    def stop(self):
        stop_child(self.p, signal.SIGINT, f"fastdl-server ({self.name})")
        self.f.close()
        return self.p.returncode


def make_tls_files(d):
    """A private CA, and a certificate for 127.0.0.1 signed by it (ECDSA
    P-256, openssl): what an HTTPS anchor serves and its clients trust.
    Returns (ca.pem, server.pem, server.key)."""
    os.makedirs(d, exist_ok=True)
    ca, ca_key = os.path.join(d, "ca.pem"), os.path.join(d, "ca.key")
    crt, key, csr = os.path.join(d, "server.pem"), os.path.join(d, "server.key"), os.path.join(d, "server.csr")
    ext = os.path.join(d, "san.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for cmd in (["openssl", "req", "-x509", *ec, "-days", "3650", "-subj", "/CN=fastdl-bench-ca",
                 "-keyout", ca_key, "-out", ca],
                ["openssl", "req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", csr],
                ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                 "-days", "3650", "-extfile", ext, "-out", crt]):
        r = sh(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed: {r.stderr[-300:]}")
    return ca, crt, key


class Nginx:
    def __init__(self, name, root, workdir, bind="127.0.0.1", port=None, netns=None,
                 worker_connections=4096, tls_files=None):
        self.name = name
        self.prefix = os.path.join(workdir, f"nginx-{name}")
        fresh_dir(self.prefix)
        os.makedirs(os.path.join(self.prefix, "tmp"))
        self.port = port or free_port()
        https = ""
        self.https_url = None
        if tls_files:
            _, crt, key = tls_files
            self.https_port = free_port()
            self.https_url = f"https://{bind}:{self.https_port}"
            https = f"""    server {{
        listen {bind}:{self.https_port} ssl;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        root {root};
    }}
"""
        conf = os.path.join(self.prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""daemon off;
master_process on;
worker_processes auto;
worker_rlimit_nofile {2 * worker_connections + 1024};
pid {self.prefix}/nginx.pid;
error_log {self.prefix}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    client_body_temp_path {self.prefix}/tmp;
    server {{
        listen {bind}:{self.port};
        root {root};
    }}
{https}}}
""")
        cmd = ["nginx", "-p", self.prefix, "-c", conf, "-e", f"{self.prefix}/error.log"]
        if netns:
            cmd = ["ip", "netns", "exec", netns] + cmd
        self.out = open(os.path.join(self.prefix, "stdout"), "wb")
        self.p = popen(cmd, stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.url = f"http://{bind}:{self.port}"
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError("nginx exited: " + tail_text(os.path.join(self.prefix, "stdout"))
                                   + " " + tail_text(os.path.join(self.prefix, "error.log")))
            if self._ready(bind, netns):
                log(f"nginx ({name}) serving {root} on {self.url}")
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not start listening within 10 s")

    def _ready(self, bind, netns):
        if netns:
            r = sh(["ip", "netns", "exec", netns, "curl", "-s", "-o", "/dev/null", "-m", "1",
                    self.url + "/"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return r.returncode == 0 or r.returncode == 22
        try:
            with socket.create_connection((bind, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def vmhwm_kb(self):
        pids = [self.p.pid] + children_of(self.p.pid)
        vals = [read_vmhwm_kb(p) for p in pids]
        vals = [v for v in vals if v]
        return sum(vals) if vals else None

    def stop(self):
        stop_child(self.p, signal.SIGTERM, "nginx")
        self.out.close()


# --------------------------------------------------------------------------
# test data (reused across runs when present with the right size)


def ensure_file(path, size):
    if os.path.isfile(path) and os.path.getsize(path) == size:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".gen")
    if size >= MIB and size % MIB == 0:
        sh(["dd", "if=/dev/urandom", f"of={tmp}", "bs=1M", f"count={size // MIB}",
            "status=none"], check=True)
    else:
        with open(tmp, "wb") as f:
            f.write(os.urandom(size))
    os.rename(tmp, path)


def ensure_dataset(dirname, files):
    """files: list of (name, size). Removes anything else in the folder so
    the server and nginx publish exactly these files."""
    os.makedirs(dirname, exist_ok=True)
    want = {n for n, _ in files}
    for e in os.listdir(dirname):
        if e not in want:
            rm(os.path.join(dirname, e))
    todo = [(n, s) for n, s in files
            if not (os.path.isfile(os.path.join(dirname, n)) and os.path.getsize(os.path.join(dirname, n)) == s)]
    if todo:
        log(f"generating {len(todo)} file(s) in {dirname} ({sum(s for _, s in todo) / MIB:.0f} MiB)")
    for n, s in todo:
        ensure_file(os.path.join(dirname, n), s)
    return dirname


# --------------------------------------------------------------------------
# tools


def which(x):
    return shutil.which(x)


def ensure_tools(no_install):
    need = {"aria2c": "aria2", "nginx": "nginx-light", "lftp": "lftp", "curl": "curl",
            TIME_BIN: "time"}
    missing = {b: pkg for b, pkg in need.items()
               if not (os.path.exists(b) if b.startswith("/") else which(b))}
    if missing and not no_install:
        if os.geteuid() == 0 and which("apt-get"):
            log(f"installing {', '.join(sorted(set(missing.values())))} with apt-get")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            sh(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL,
               stderr=subprocess.DEVNULL)
            for b, pkg in missing.items():
                r = sh(["apt-get", "install", "-y", "-qq", pkg], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                if r.returncode != 0:
                    log(f"apt-get install {pkg} failed: {r.stderr.decode(errors='replace')[-300:]}")
        else:
            log("not root or no apt-get: cannot install missing anchors")
    have = {}
    for b, pkg in need.items():
        ok = os.path.exists(b) if b.startswith("/") else bool(which(b))
        have[b] = ok
        if not ok:
            NOTES.append(f"`{b}` (Debian package {pkg}) is not available: "
                         f"{'its rows are' if b != TIME_BIN else 'peak RSS is'} skipped.")
            log(f"SKIP: {b} not available")
    return have


# --------------------------------------------------------------------------
# results

NOTES = []      # footnotes (skips, unfairness remarks)
ERRORS = []     # (case, tool, run, text)
RAW = []        # lines of per-run raw data
ROWS = []       # final table rows (dicts)


def summarize(results):
    ok = [r for r in results if r.ok]
    secs = [r.secs for r in ok]
    rss = [r.rss_kb for r in results if r.rss_kb]
    return {
        "n": len(results), "ok": len(ok), "secs": secs,
        "med": median(secs), "min": min(secs) if secs else None, "max": max(secs) if secs else None,
        "rss_kb": max(rss) if rss else None,
    }


def rate_cell(s, amount, unit):
    """Cell for a 'bigger is better' rate computed from times."""
    if s is None:
        return "–"
    if not s["ok"]:
        return f"FAILED {s['n']}/{s['n']}"
    med = amount / s["med"]
    lo, hi = amount / s["max"], amount / s["min"]
    cell = f"{fmt_num(med)} {unit} ({fmt_num(lo)}–{fmt_num(hi)}), {fmt_num(s['med'])} s"
    if s["ok"] < s["n"]:
        cell += f"; FAILED {s['n'] - s['ok']}/{s['n']}"
    return cell


def rss_str(kb):
    return f"{kb / 1024:.0f} MiB" if kb else "?"


def record_raw(case, tool, results):
    parts = []
    for r in results:
        if r.ok:
            parts.append(f"{r.secs:.3f}s" + (f"/{r.rss_kb // 1024}MiB" if r.rss_kb else ""))
        else:
            parts.append("FAIL")
    RAW.append(f"- {case} · {tool}: " + ", ".join(parts))


def record_errors(case, tool, results):
    for i, r in enumerate(results, 1):
        if not r.ok:
            ERRORS.append((case, tool, i, r.err))
            log(f"FAILED {case} · {tool} run {i}: {r.err}")


# --------------------------------------------------------------------------
# the interleaved runner


def run_interleaved(case, tools, runs, outdir, logdir, sources, prep=None, keep_outputs=False):
    """tools: list of (label, make_cmd(out) -> dict(cmd=..., sync_files=..., ...)).
    Runs A,B,C,B,C,A,C,A,B,... (rotated each round) with a fresh output
    folder and `prepare(sources)` (sync, sources cached, memory settled)
    before each.

    keep_outputs: delete the outputs only after the last run, not after
    each. For many small files: the disk here is ext4 without a journal,
    which will not reuse an inode within about 30 s of its deletion and
    scans past every such inode to create a file, so a run that follows
    the deletion of 1000 files creates its own files ever more slowly
    (measured by hand: 0.43, 0.61, 0.78, 0.99, 1.03 s for the same 1000
    files, run after run, and in perf: recently_deleted, find_inode_bit)."""
    res = {label: [] for label, _ in tools}
    for r in range(1, runs + 1):
        # Rotate the order every round, so that whatever one tool leaves
        # behind (page cache, memory, warm connections) is not always met by
        # the same next tool. The memory state itself is reset by
        # settle_memory() in prepare().
        shift = (r - 1) % len(tools)
        for label, make in tools[shift:] + tools[:shift]:
            out = os.path.join(outdir, re.sub(r"[^A-Za-z0-9]+", "_", label))
            if keep_outputs:
                out += f"-r{r}"
            fresh_dir(out)
            if prep:
                prep(out)
            prepare(sources)
            spec = make(out)
            logbase = os.path.join(logdir, f"{case}-{re.sub(r'[^A-Za-z0-9]+', '_', label)}-r{r}")
            res_ = timed(spec["cmd"], logbase=logbase, timeout=spec.get("timeout", 300),
                         netns=spec.get("netns"), sync_files=spec.get("sync_files"),
                         sync_fs=spec.get("sync_fs"), check=spec.get("check"),
                         extra_err=spec.get("extra_err"))
            res[label].append(res_)
            status = f"{res_.secs:.3f} s" if res_.ok else "FAILED"
            log(f"  {case} run {r}/{runs} {label}: {status}"
                + (f", peak RSS {rss_str(res_.rss_kb)}" if res_.rss_kb else ""))
            if not keep_outputs:
                rm(out)
    if keep_outputs:
        rm(outdir)
    for label, _ in tools:
        record_raw(case, label, res[label])
        record_errors(case, label, res[label])
    return res


def size_check(path, size):
    def check():
        if not os.path.isfile(path):
            return f"output {path} missing"
        got = os.path.getsize(path)
        if got != size:
            return f"output {path} has {got} bytes, expected {size}"
        return None
    return check


def count_check(out, names, size):
    def check():
        bad = [n for n in names
               if not (os.path.isfile(os.path.join(out, n)) and os.path.getsize(os.path.join(out, n)) == size)]
        if bad:
            return f"{len(bad)} of {len(names)} outputs missing or wrong size (first: {bad[0]})"
        return None
    return check


def fastdl_url_spec(inp, out, logbase, timeout, extra=()):
    """fastdl-client fetching the URLs of `inp` (no fastdl server)."""
    clog = logbase + ".fastdl.log"
    return {
        "cmd": [CLIENT_BIN, "--server", "127.0.0.1:9", "--input", inp, "--out", out, "--once",
                "--log", clog, "-q", "--known-servers", logbase + ".known", *extra],
        "timeout": timeout,
        "extra_err": lambda: grep_problems(clog),
    }


def fastdl_spec(srv, inp, out, logbase, timeout, extra=(), netns=None):
    clog = logbase + ".fastdl.log"
    return {
        "cmd": [CLIENT_BIN, "--server", srv.addr, "--input", inp, "--out", out, "--once",
                "--log", clog, "-q", *srv.client_args, *extra],
        "timeout": timeout, "netns": netns,
        "extra_err": lambda: grep_problems(clog),
    }


# --------------------------------------------------------------------------
# cases


def case_big(cfg, have):
    case = "big"
    size = cfg.big_mib * MIB
    label_size = f"{cfg.big_mib // 1024} GiB" if cfg.big_mib % 1024 == 0 else f"{cfg.big_mib} MiB"
    data = ensure_dataset(os.path.join(cfg.work, "data", f"big-{cfg.big_mib}M"), [("big.bin", size)])
    wd = os.path.join(cfg.run, case)
    os.makedirs(wd, exist_ok=True)
    inp = os.path.join(wd, "input.txt")
    with open(inp, "w") as f:
        f.write("big.bin\n")
    plain = FastdlServer(case + "-plain", data, wd, http=True)
    CLEANUP.append(plain.stop)
    tls = FastdlServer(case + "-tls", data, wd, tls=True)
    CLEANUP.append(tls.stop)
    ng = None
    ca = None
    if have["nginx"]:
        tls_files = make_tls_files(os.path.join(wd, "pki"))
        ca = tls_files[0]
        ng = Nginx(case, data, wd, tls_files=tls_files)
        CLEANUP.append(ng.stop)
    sources = [os.path.join(data, "big.bin")]
    warm(sources)
    url = f"{ng.url}/big.bin" if ng else None
    face_url = f"{plain.http_url}/big.bin"
    url_inputs = {}
    for tag, u in (("http", url), ("https", f"{ng.https_url}/big.bin" if ng else None)):
        if u:
            url_inputs[tag] = os.path.join(wd, f"input-{tag}.txt")
            with open(url_inputs[tag], "w") as f:
                f.write(u + "\n")
    seq = [0]
    target = lambda out: os.path.join(out, "big.bin")

    def lb(tag):
        seq[0] += 1
        return os.path.join(wd, f"{tag}-{seq[0]}")

    def fastdl(srv, tag, extra=()):
        return lambda out: dict(fastdl_spec(srv, inp, out, lb(tag), cfg.timeout_big, extra=extra),
                                check=size_check(target(out), size))

    def anchor(cmd_for):
        return lambda out: {"cmd": cmd_for(out), "timeout": cfg.timeout_big,
                            "sync_files": [target(out)], "check": size_check(target(out), size)}

    def fastdl_url(tag, extra=()):
        return lambda out: dict(fastdl_url_spec(url_inputs[tag], out, lb("url-" + tag), cfg.timeout_big, extra),
                                check=size_check(target(out), size))

    tools = [("fastdl --plaintext", fastdl(plain, "plain")),
             ("fastdl (TLS)", fastdl(tls, "tls"))]
    if ng:
        tools.append(("fastdl http URL", fastdl_url("http")))
        tools.append(("fastdl https URL", fastdl_url("https", ["--cacert", ca])))
    if cfg.has_plan:
        tools.append(("fastdl --plaintext --plan", fastdl(plain, "plan", ["--plan"])))
    aria = ["aria2c", "-q", "--allow-overwrite=true", "-x4", "-s4", "-k1M"]
    if ng and have["aria2c"]:
        tools.append(("aria2c", anchor(lambda out: [*aria, "-d", out, "-o", "big.bin", url])))
        tools.append(("aria2c https", anchor(lambda out: [
            *aria, f"--ca-certificate={ca}", "-d", out, "-o", "big.bin", f"{ng.https_url}/big.bin"])))
    if ng and have["lftp"]:
        tools.append(("lftp", anchor(lambda out: ["lftp", "-e", f"pget -n 4 {url} -o {out}/big.bin; quit"])))
    if ng and have["curl"]:
        tools.append(("curl", anchor(lambda out: ["curl", "-s", "-S", "-f", "-o", target(out), url])))
        tools.append(("curl from the fastdl face", anchor(
            lambda out: ["curl", "-s", "-S", "-f", "-o", target(out), face_url])))
    if have["aria2c"]:
        tools.append(("aria2c from the fastdl face", anchor(
            lambda out: [*aria, "-d", out, "-o", "big.bin", face_url])))
    log(f"case 1: one {label_size} file over 127.0.0.1, {cfg.runs} run(s), tools: "
        + ", ".join(t for t, _ in tools))
    res = run_interleaved(case, tools, cfg.runs, os.path.join(wd, "out"), wd, sources)
    plain.stop()
    tls.stop()
    if ng:
        ng.stop()
    S = {k: summarize(v) for k, v in res.items()}
    mb = size / 1e6

    def row_for(fl, label, anchors):
        row = {"case": f"1. one {label_size} file, 127.0.0.1 ({label})",
               "fastdl": rate_cell(S[fl], mb, "MB/s")}
        ratios, rsss = [], [f"{fl}: {rss_str(S[fl]['rss_kb'])}"]
        for a in anchors:
            col = {"aria2c https": "aria2c", "fastdl --plaintext": "curl"}.get(a, a)
            cell = rate_cell(S.get(a), mb, "MB/s") if a in S else "skipped"
            row[col] = (f"{a}: {cell}" if col != a else cell)
            if a in S and S[a]["med"] and S[fl]["med"]:
                ratios.append(f"vs {a} {S[a]['med'] / S[fl]['med']:.2f}x")
            if a in S:
                rsss.append(f"{a}: {rss_str(S[a]['rss_kb'])}")
        row["ratio"] = "; ".join(ratios) or "–"
        row["rss"] = "; ".join(rsss)
        ROWS.append(row)

    row_for("fastdl --plaintext", "fastdl --plaintext, 4 connections; anchors over http",
            ["aria2c", "lftp", "curl"])
    if "fastdl --plaintext --plan" in S:
        row_for("fastdl --plaintext --plan", "fastdl --plaintext --plan; anchors over http",
                ["aria2c", "lftp", "curl"])
    row_for("fastdl (TLS)", "fastdl over TLS 1.3, the default; aria2c over https, TLS 1.3",
            ["aria2c https", "fastdl --plaintext"])
    if "fastdl http URL" in S:
        row_for("fastdl http URL", "fastdl-client fetching the URL from nginx; anchors from the same nginx",
                ["aria2c", "lftp", "curl"])
    if "fastdl https URL" in S:
        row_for("fastdl https URL", "fastdl-client fetching the https URL from nginx (private CA)",
                ["aria2c https"])
    face_rows(f"1. one {label_size} file", S, mb, "MB/s",
              (("curl from the fastdl face", "curl", "curl"), ("aria2c from the fastdl face", "aria2c", "aria2c")))



def face_rows(what, S, amount, unit, pairs):
    """Rows comparing a tool fetching from fastdl-server's HTTP face with
    the same tool fetching from nginx: (face tool, nginx tool, column)."""
    for face, anchor_name, col in pairs:
        if face not in S or anchor_name not in S:
            continue
        row = {"case": f"{what}: {face} (fastdl-server --http-port, plain) vs from nginx",
               "fastdl": rate_cell(S[face], amount, unit), "aria2c": "–", "lftp": "–", "curl": "–"}
        row[col] = f"{anchor_name} from nginx: " + rate_cell(S[anchor_name], amount, unit)
        ok = S[face]["med"] and S[anchor_name]["med"]
        row["ratio"] = f"vs nginx {S[anchor_name]['med'] / S[face]['med']:.2f}x" if ok else "–"
        row["rss"] = "–"
        ROWS.append(row)


def latency_cell(samples, k, err):
    """The table cell of a latency case: median, range and how many of the
    k samples came, or why none did."""
    if not samples:
        return "FAILED: " + (err or "no sample")[:200]
    return (f"median {fmt_num(median(samples))} ms (min {fmt_num(min(samples))} – max "
            f"{fmt_num(max(samples))}), {len(samples)}/{k} samples")


def case_small(cfg, have):
    case = "small"
    n, fsize = cfg.small_n, 100 * KIB
    names = [f"s{i:04d}.bin" for i in range(n)]
    data = ensure_dataset(os.path.join(cfg.work, "data", f"small-{n}x100K"), [(x, fsize) for x in names])
    wd = os.path.join(cfg.run, case)
    os.makedirs(wd, exist_ok=True)
    inp = os.path.join(wd, "input.txt")
    with open(inp, "w") as f:
        f.write("".join(x + "\n" for x in names))
    srv = FastdlServer(case + "-plain", data, wd, http=True)
    CLEANUP.append(srv.stop)
    tls = FastdlServer(case + "-tls", data, wd, tls=True)
    CLEANUP.append(tls.stop)
    ng = None
    ca = None
    if have["nginx"]:
        tls_files = make_tls_files(os.path.join(wd, "pki"))
        ca = tls_files[0]
        ng = Nginx(case, data, wd, tls_files=tls_files)
        CLEANUP.append(ng.stop)
    sources = [os.path.join(data, x) for x in names]
    warm(sources)
    urls = os.path.join(wd, "urls.txt")
    if ng:
        with open(urls, "w") as f:
            f.write("".join(f"{ng.url}/{x}\n" for x in names))
    seq = [0]

    def lb(tag):
        seq[0] += 1
        return os.path.join(wd, f"{tag}-{seq[0]}")

    def curl_cfg(out, base):
        p = os.path.join(wd, "curl.cfg")
        with open(p, "w") as f:
            for x in names:
                f.write(f'url = "{base}/{x}"\noutput = "{out}/{x}"\n')
        return p

    tools = [
        ("fastdl --once --plaintext", lambda out: dict(
            fastdl_spec(srv, inp, out, lb("fastdl"), cfg.timeout_small),
            check=count_check(out, names, fsize))),
        ("fastdl --once --plaintext --jobs 1", lambda out: dict(
            fastdl_spec(srv, inp, out, lb("fastdl1"), cfg.timeout_small, extra=["--jobs", "1"]),
            check=count_check(out, names, fsize))),
        ("fastdl --once (TLS)", lambda out: dict(
            fastdl_spec(tls, inp, out, lb("fastdl-tls"), cfg.timeout_small),
            check=count_check(out, names, fsize))),
    ]
    if ng and have["aria2c"]:
        tools.append(("aria2c -j16", lambda out: {
            "cmd": ["aria2c", "-q", "--allow-overwrite=true", "-j16", "-i", urls, "-d", out],
            "timeout": cfg.timeout_small, "sync_fs": out, "check": count_check(out, names, fsize)}))
    if ng:
        tools.append(("fastdl http URLs", lambda out: dict(
            fastdl_url_spec(urls, out, lb("fastdl-url"), cfg.timeout_small),
            check=count_check(out, names, fsize))))
    if have["curl"]:
        tools.append(("curl -Z from the fastdl face", lambda out: {
            "cmd": ["curl", "-s", "-S", "-f", "-Z", "--parallel-max", "16", "-K", curl_cfg(out, srv.http_url)],
            "timeout": cfg.timeout_small, "sync_fs": out, "check": count_check(out, names, fsize)}))
    if ng and have["curl"]:
        tools.append(("curl -Z", lambda out: {
            "cmd": ["curl", "-s", "-S", "-f", "-Z", "--parallel-max", "16", "-K", curl_cfg(out, ng.url)],
            "timeout": cfg.timeout_small, "sync_fs": out, "check": count_check(out, names, fsize)}))
        tools.append(("curl -Z https", lambda out: {
            "cmd": ["curl", "-s", "-S", "-f", "-Z", "--parallel-max", "16", "--cacert", ca,
                    "-K", curl_cfg(out, ng.https_url)],
            "timeout": cfg.timeout_small, "sync_fs": out, "check": count_check(out, names, fsize)}))
    log(f"case 2: {n} files of 100 KiB, {cfg.runs} run(s), tools: " + ", ".join(t for t, _ in tools))
    res = run_interleaved(case, tools, cfg.runs, os.path.join(wd, "out"), wd, sources, keep_outputs=True)
    srv.stop()
    tls.stop()
    if ng:
        ng.stop()
    S = {k: summarize(v) for k, v in res.items()}
    http = (("aria2c -j16", "aria2c"), ("curl -Z", "curl"))
    for fl, anchors in (("fastdl --once --plaintext", http),
                        ("fastdl --once --plaintext --jobs 1", http),
                        ("fastdl --once (TLS)", (("curl -Z https", "curl"),)),
                        ("fastdl http URLs", http)):
        if fl not in S:
            continue
        row = {"case": f"2. {n} files of 100 KiB ({fl})", "fastdl": rate_cell(S[fl], n, "files/s"),
               "lftp": "–", "aria2c": "–"}
        ratios, rsss = [], [f"{fl}: {rss_str(S[fl]['rss_kb'])}"]
        for a, col in anchors:
            if a in S:
                row[col] = f"{a}: " + rate_cell(S[a], n, "files/s")
                if S[a]["med"] and S[fl]["med"]:
                    ratios.append(f"vs {a} {S[a]['med'] / S[fl]['med']:.2f}x")
                rsss.append(f"{a}: {rss_str(S[a]['rss_kb'])}")
            else:
                row[col] = "skipped"
        row["ratio"] = "; ".join(ratios) or "–"
        row["rss"] = "; ".join(rsss)
        ROWS.append(row)
    face_rows(f"2. {n} files of 100 KiB", S, n, "files/s",
              (("curl -Z from the fastdl face", "curl -Z", "curl"),))


def case_wan(cfg, have):
    case = "wan"
    title = f"3. WAN 25 ms each way, 0.1% loss, {cfg.wan_mib} MiB"

    def skip(msg):
        log(f"SKIP case 3 (WAN): {msg}")
        ROWS.append({"case": title, "fastdl": f"skipped: {msg}", "aria2c": "", "lftp": "", "curl": "",
                     "ratio": "", "rss": ""})

    if os.geteuid() != 0:
        return skip("needs root")
    if not os.path.isfile(WAN_SCRIPT):
        return skip(f"{WAN_SCRIPT} not found")
    existing = sh(["ip", "netns", "list"], capture_output=True, text=True).stdout
    if re.search(r"^(dl-srv|dl-cli)\b", existing, re.M):
        return skip("network namespaces dl-srv/dl-cli already exist (someone else is using "
                    "wan_setup.sh); not touching them")
    size = cfg.wan_mib * MIB
    data = ensure_dataset(os.path.join(cfg.work, "data", f"wan-{cfg.wan_mib}M"), [("wan.bin", size)])
    wd = os.path.join(cfg.run, case)
    os.makedirs(wd, exist_ok=True)
    env = dict(os.environ, WAN_STATE=os.path.join(cfg.work, "wan-state"))

    def wan(action, *args):
        # Output to a file, not a pipe: `up` leaves the emulator running in
        # the background with the script's stdout, so a pipe never closes.
        path = os.path.join(wd, f"wan_setup-{action}.txt")
        with open(path, "w") as f:
            rc = sh(["bash", WAN_SCRIPT, action, *args], env=env, stdout=f, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, timeout=120).returncode
        with open(path) as f:
            text = f.read().strip()
        log(f"wan_setup.sh {action} {' '.join(args)}: exit {rc}: " + text.replace("\n", " | "))
        return rc, text

    def down():
        wan("down")
    CLEANUP.append(down)
    rc, up_text = wan("up", "25", "0.1")
    if rc != 0:
        down()
        CLEANUP.remove(down)
        return skip("wan_setup.sh up failed: " + up_text[-300:])
    backend = "?"
    m = re.search(r"backend=(\w+)", up_text)
    if m:
        backend = m.group(1)
    rtt = None
    srv = ng = None
    try:
        inp = os.path.join(wd, "input.txt")
        with open(inp, "w") as f:
            f.write("wan.bin\n")
        srv = FastdlServer(case, data, wd, bind="10.200.0.1", netns="dl-srv")
        if have["nginx"]:
            ng = Nginx(case, data, wd, bind="10.200.0.1", port=8080, netns="dl-srv")
        sources = [os.path.join(data, "wan.bin")]
        warm(sources)
        if ng and have["curl"]:
            # TCP connect time (SYN -> SYN-ACK) = one round trip of the emulated path
            rtts = []
            for _ in range(3):
                r = sh(["ip", "netns", "exec", "dl-cli", "curl", "-s", "-o", "/dev/null", "-w",
                        "%{time_connect}", "-m", "5", f"{ng.url}/"], capture_output=True, text=True)
                try:
                    rtts.append(float(r.stdout.strip()) * 1000)
                except ValueError:
                    pass
            if rtts:
                rtt = statistics.median(rtts)
                log(f"WAN path: TCP connect RTT {rtt:.1f} ms (median of {len(rtts)})")
        seq = [0]

        def lb(tag):
            seq[0] += 1
            return os.path.join(wd, f"{tag}-{seq[0]}")
        tools = [("fastdl", lambda out: dict(
            fastdl_spec(srv, inp, out, lb("fastdl"), cfg.timeout_wan, netns="dl-cli"),
            check=size_check(os.path.join(out, "wan.bin"), size)))]
        if cfg.has_plan:
            tools.append(("fastdl --plan", lambda out: dict(
                fastdl_spec(srv, inp, out, lb("plan"), cfg.timeout_wan, extra=["--plan"], netns="dl-cli"),
                check=size_check(os.path.join(out, "wan.bin"), size))))
        if ng and have["aria2c"]:
            tools.append(("aria2c", lambda out: {
                "cmd": ["aria2c", "-q", "--allow-overwrite=true", "-x4", "-s4", "-k1M",
                        "-d", out, "-o", "wan.bin", f"{ng.url}/wan.bin"],
                "netns": "dl-cli", "timeout": cfg.timeout_wan,
                "sync_files": [os.path.join(out, "wan.bin")],
                "check": size_check(os.path.join(out, "wan.bin"), size)}))
        log(f"case 3: WAN ({backend}) {cfg.wan_mib} MiB, {cfg.wan_runs} run(s), tools: "
            + ", ".join(t for t, _ in tools))
        res = run_interleaved(case, tools, cfg.wan_runs, os.path.join(wd, "out"), wd, sources)
    finally:
        if srv:
            srv.stop()
        if ng:
            ng.stop()
        down()
        CLEANUP.remove(down)
    S = {k: summarize(v) for k, v in res.items()}
    mb = size / 1e6
    where = f" (emulator: {backend}" + (f", measured RTT {rtt:.0f} ms" if rtt else "") + ")"
    for fl in [t for t in ("fastdl", "fastdl --plan") if t in S]:
        row = {"case": title + where + (" (fastdl --plan)" if fl != "fastdl" else ""),
               "fastdl": rate_cell(S[fl], mb, "MB/s"), "lftp": "–", "curl": "–"}
        rsss = [f"{fl}: {rss_str(S[fl]['rss_kb'])}"]
        if "aria2c" in S:
            row["aria2c"] = rate_cell(S["aria2c"], mb, "MB/s")
            row["ratio"] = (f"vs aria2c {S['aria2c']['med'] / S[fl]['med']:.2f}x"
                            if S["aria2c"]["med"] and S[fl]["med"] else "–")
            rsss.append(f"aria2c: {rss_str(S['aria2c']['rss_kb'])}")
        else:
            row["aria2c"], row["ratio"] = "skipped", "–"
        row["rss"] = "; ".join(rsss)
        ROWS.append(row)
    if backend == "wanemu":
        NOTES.append("Case 3 ran on the `wanemu` backend of wan_setup.sh (this kernel has no "
                     "sch_netem): a userspace packet forwarder, so throughput is also bounded by its CPU cost.")


def stop_watch_client(cp, cout, srv):
    """Ctrl-C to a watch-mode client (killed if it does not stop within
    5 s), then its output file and its server."""
    if cp.poll() is None:
        cp.send_signal(signal.SIGINT)
        try:
            cp.wait(timeout=5)
        except subprocess.TimeoutExpired:
            kill_group(cp)
            cp.wait()
    forget(cp)
    cout.close()
    srv.stop()


def case_pickup(cfg, have):
    case = "pickup"
    k = cfg.pick_samples
    names = [f"p{i:03d}.bin" for i in range(k + 1)]
    fsize = 10 * KIB
    data = ensure_dataset(os.path.join(cfg.work, "data", f"pick-{k + 1}x10K"), [(x, fsize) for x in names])
    wd = os.path.join(cfg.run, case)
    indir, out = os.path.join(wd, "in"), os.path.join(wd, "out")
    fresh_dir(indir)
    fresh_dir(out)
    inp = os.path.join(indir, "input.txt")
    open(inp, "w").close()
    srv = FastdlServer(case, data, wd, tls=True)
    CLEANUP.append(srv.stop)
    do_sync()
    clog = os.path.join(wd, "client.log")
    cout = open(os.path.join(wd, "client.out"), "wb")
    cp = popen([CLIENT_BIN, "--server", srv.addr, "--input", inp, "--out", out, "--log", clog, "-q",
                *srv.client_args],
               stdout=cout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    samples, err = [], None
    log(f"case 4: pick-up latency, watch mode, {k} samples of a 10 KiB file (+1 warm-up)")

    def append_and_wait(name, limit):
        t0 = time.perf_counter()
        with open(inp, "a") as f:
            f.write(name + "\n")
        target = os.path.join(out, name)
        while time.perf_counter() - t0 < limit:
            if os.path.exists(target):
                return (time.perf_counter() - t0) * 1000
            if cp.poll() is not None:
                raise RuntimeError(f"fastdl-client (watch mode) exited {cp.returncode}: "
                                   + tail_text(os.path.join(wd, "client.out")) + " " + grep_problems(clog))
            time.sleep(0.005)
        return None

    rss = None
    try:
        time.sleep(0.5)
        warmup = append_and_wait(names[0], 30)
        if warmup is None:
            err = "warm-up file did not arrive within 30 s: " + grep_problems(clog)
        else:
            log(f"  pickup warm-up (client just started): {warmup:.1f} ms")
            for i, name in enumerate(names[1:], 1):
                time.sleep(0.3)
                ms = append_and_wait(name, 15)
                if ms is None:
                    ERRORS.append((case, "fastdl watch", i, f"{name} not in place within 15 s: "
                                   + grep_problems(clog)))
                    log(f"  pickup sample {i}: not in place within 15 s")
                    continue
                samples.append(ms)
                log(f"  pickup sample {i}/{k}: {ms:.1f} ms")
    except RuntimeError as e:
        err = str(e)
    finally:
        rss = read_vmhwm_kb(cp.pid)
        stop_watch_client(cp, cout, srv)
    if err:
        ERRORS.append((case, "fastdl watch", 0, err))
        log(f"FAILED case 4: {err}")
    RAW.append(f"- pickup · fastdl watch: " + ", ".join(f"{x:.1f}ms" for x in samples))
    cell = latency_cell(samples, k, err)
    ROWS.append({"case": "4. pick-up latency: name appended to the watched input until its 10 KiB file is in place",
                 "fastdl": cell, "aria2c": "–", "lftp": "–", "curl": "–", "ratio": "–",
                 "rss": f"fastdl watch client: {rss_str(rss)}"})
    case_published_later(cfg, wd, max(3, k // 4))


def case_published_later(cfg, wd, k):
    """Case 4, second half: the name is in the input before its file is
    published; the time from the file's rename into the server's folder to
    the file in place. The client polls the list every 5 s (its default);
    a server that announces list changes (WATCH) makes it land sooner."""
    case = "later"
    folder, indir, out = (os.path.join(wd, x) for x in ("later-res", "later-in", "later-out"))
    for d in (folder, indir, out):
        fresh_dir(d)
    inp = os.path.join(indir, "input.txt")
    names = [f"late{i:02d}.bin" for i in range(k)]
    with open(inp, "w") as f:
        f.write("".join(x + "\n" for x in names))
    srv = FastdlServer(case, folder, wd, tls=True)
    CLEANUP.append(srv.stop)
    clog = os.path.join(wd, "later-client.log")
    cout = open(os.path.join(wd, "later-client.out"), "wb")
    cp = popen([CLIENT_BIN, "--server", srv.addr, "--input", inp, "--out", out, "--log", clog, "-q",
                *srv.client_args], stdout=cout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    samples, err = [], None
    log(f"case 4b: a name waiting for its file, {k} samples (the client polls every 5 s)")
    try:
        time.sleep(1.0)
        for i, name in enumerate(names):
            hidden = os.path.join(folder, "." + name + ".tmp")
            with open(hidden, "wb") as f:
                f.write(os.urandom(10 * KIB))
            time.sleep(0.5)
            t0 = time.perf_counter()
            os.rename(hidden, os.path.join(folder, name))
            target = os.path.join(out, name)
            while time.perf_counter() - t0 < 15:
                if os.path.exists(target):
                    samples.append((time.perf_counter() - t0) * 1000)
                    log(f"  published-later sample {i + 1}/{k}: {samples[-1]:.0f} ms")
                    break
                if cp.poll() is not None:
                    raise RuntimeError(f"fastdl-client exited {cp.returncode}: " + grep_problems(clog))
                time.sleep(0.005)
            else:
                ERRORS.append((case, "fastdl watch", i, f"{name} not in place within 15 s"))
    except RuntimeError as e:
        err = str(e)
    finally:
        stop_watch_client(cp, cout, srv)
    RAW.append("- later · fastdl watch: " + ", ".join(f"{x:.0f}ms" for x in samples))
    cell = latency_cell(samples, k, err)
    ROWS.append({"case": "4b. a name waiting for its file: the file renamed into the server's folder until it is in place (client polls every 5 s)",
                 "fastdl": cell, "aria2c": "–", "lftp": "–", "curl": "–",
                 "ratio": "–", "rss": "–"})


def many_round(case, tool, nc, size, wd, data, r, spec_for, label="many"):
    """One round of `nc` clients started at once with `tool`; their Results."""
    base = os.path.join(wd, "out", tool.replace("+", "_"))
    outs = [os.path.join(base, f"c{i:02d}") for i in range(nc)]
    fresh_dir(base)
    for o in outs:
        os.makedirs(o)
    prepare([os.path.join(data, "many.bin")])
    results = [None] * nc
    barrier = threading.Barrier(nc)

    def worker(i):
        s, lbase = spec_for(tool, outs[i], i, r)
        barrier.wait()
        results[i] = timed(s["cmd"], logbase=lbase, timeout=s["timeout"],
                           sync_files=s.get("sync_files"), check=s.get("check"),
                           extra_err=s.get("extra_err"))
    t0 = time.perf_counter()
    ths = [threading.Thread(target=worker, args=(i,)) for i in range(nc)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    wall = time.perf_counter() - t0
    ok = [x for x in results if x.ok]
    rates = sorted(size / 1e6 / x.secs for x in ok)
    log(f"  {label} run {r} {tool}: {len(ok)}/{nc} ok, wall {wall:.2f} s, per-client "
        + (f"{rates[0]:.0f}/{statistics.median(rates):.0f}/{rates[-1]:.0f} MB/s (min/med/max)"
           if rates else "n/a"))
    RAW.append(f"- {label} · {tool} run {r}: wall {wall:.3f}s, per-client s: "
               + ", ".join(f"{x.secs:.2f}" if x.ok else "FAIL" for x in results))
    for i, x in enumerate(results):
        if not x.ok:
            ERRORS.append((case, f"{tool} client {i}", r, x.err))
    if len(ok) < nc:
        log(f"FAILED {label} {tool} run {r}: {nc - len(ok)} clients failed; first: "
            + next(x.err for x in results if not x.ok))
    shutil.rmtree(base, ignore_errors=True)
    return results


def case_many(cfg, have):
    case = "many"
    nc = cfg.many_clients
    size = cfg.many_mib * MIB
    data = ensure_dataset(os.path.join(cfg.work, "data", f"many-{cfg.many_mib}M"), [("many.bin", size)])
    wd = os.path.join(cfg.run, case)
    os.makedirs(wd, exist_ok=True)
    inp = os.path.join(wd, "input.txt")
    with open(inp, "w") as f:
        f.write("many.bin\n")
    # All 20 clients come from 127.0.0.1, which the server's default
    # --max-per-client 64 would count as one client (20 x 4 connections).
    srv = FastdlServer(case, data, wd, extra=["--max-per-client", "1000"])
    CLEANUP.append(srv.stop)
    ng = None
    if have["nginx"] and have["curl"]:
        ng = Nginx(case, data, wd)
        CLEANUP.append(ng.stop)
    warm([os.path.join(data, "many.bin")])

    def spec_for(tool, out, i, r):
        f = os.path.join(out, "many.bin")
        lbase = os.path.join(wd, f"{tool}-r{r}-c{i:02d}")
        if tool == "fastdl":
            s = fastdl_spec(srv, inp, out, lbase, cfg.timeout_many)
        else:
            s = {"cmd": ["curl", "-s", "-S", "-f", "-o", f, f"{ng.url}/many.bin"],
                 "timeout": cfg.timeout_many, "sync_files": [f]}
        s["check"] = size_check(f, size)
        return s, lbase

    tools = ["fastdl"] + (["nginx+curl"] if ng else [])
    log(f"case 5: {nc} clients at once, {cfg.many_mib} MiB each, {cfg.runs} run(s), tools: {', '.join(tools)}")
    per = {t: [] for t in tools}      # list of per-run lists of Result
    for r in range(1, cfg.runs + 1):
        for tool in tools:
            per[tool].append(many_round(case, tool, nc, size, wd, data, r, spec_for))
    srv_rss = srv.vmhwm_kb()
    ng_rss = ng.vmhwm_kb() if ng else None
    srv.stop()
    if ng:
        ng.stop()

    def cell(tool):
        runs = per[tool]
        all_res = [x for run in runs for x in run]
        ok = [x for x in all_res if x.ok]
        if not ok:
            return "FAILED", None, None
        rates = [size / 1e6 / x.secs for x in ok]
        run_meds = [statistics.median([size / 1e6 / x.secs for x in run if x.ok])
                    for run in runs if any(x.ok for x in run)]
        med = statistics.median(run_meds)
        spread = max(rates) / min(rates)
        agg = [len([x for x in run if x.ok]) * size / 1e6 / max(x.secs for x in run if x.ok)
               for run in runs if any(x.ok for x in run)]
        c = (f"per client {fmt_num(med)} MB/s (min {fmt_num(min(rates))} – max {fmt_num(max(rates))}, "
             f"max/min {spread:.1f}); total {fmt_num(statistics.median(agg))} MB/s")
        if len(ok) < len(all_res):
            c += f"; FAILED {len(all_res) - len(ok)}/{len(all_res)} clients"
        crss = max([x.rss_kb for x in all_res if x.rss_kb] or [0]) or None
        return c, med, crss

    fc, fmed, frss = cell("fastdl")
    row = {"case": f"5. {nc} clients at once, {cfg.many_mib} MiB each (anchor: nginx + {nc} curl)",
           "fastdl": fc, "aria2c": "–", "lftp": "–"}
    rss = [f"fastdl-server: {rss_str(srv_rss)} (VmHWM); fastdl client max: {rss_str(frss)}"]
    if ng:
        cc, cmed, crss = cell("nginx+curl")
        row["curl"] = cc
        row["ratio"] = f"vs nginx+curl {fmed / cmed:.2f}x (per-client median)" if fmed and cmed else "–"
        rss.append(f"nginx (master+workers): {rss_str(ng_rss)}; curl client max: {rss_str(crss)}")
    else:
        row["curl"], row["ratio"] = "skipped", "–"
    row["rss"] = "; ".join(rss)
    ROWS.append(row)


def hold_idle(host, port, count, per_addr=20):
    """Opens `count` idle TCP connections to host:port, `per_addr` from each
    of the loopback addresses 127.1.x.y, and returns them (held open)."""
    socks = []
    for i in range(count):
        h = i // per_addr
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((f"127.1.{h // 250}.{h % 250 + 1}", 0))
        s.connect((host, port))
        socks.append(s)
    return socks


def case_idle(cfg, have):
    """Case 6: the 20-client case with and without `cfg.idle_n` idle
    connections held to the server, for fastdl-server and nginx."""
    case = "idle"
    nc = cfg.many_clients
    size = cfg.many_mib * MIB
    data = ensure_dataset(os.path.join(cfg.work, "data", f"many-{cfg.many_mib}M"), [("many.bin", size)])
    wd = os.path.join(cfg.run, case)
    os.makedirs(wd, exist_ok=True)
    inp = os.path.join(wd, "input.txt")
    with open(inp, "w") as f:
        f.write("many.bin\n")
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, cfg.idle_n + 4096) if hard != resource.RLIM_INFINITY else cfg.idle_n + 4096
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    srv = FastdlServer(case, data, wd, extra=["--max-per-client", "1000"])
    CLEANUP.append(srv.stop)
    ng = None
    if have["nginx"] and have["curl"]:
        ng = Nginx(case, data, wd, worker_connections=cfg.idle_n + 4096)
        CLEANUP.append(ng.stop)
    warm([os.path.join(data, "many.bin")])

    def spec_for(tool, out, i, r):
        f = os.path.join(out, "many.bin")
        lbase = os.path.join(wd, f"{tool}-r{r}-c{i:02d}")
        if tool == "fastdl":
            s = fastdl_spec(srv, inp, out, lbase, cfg.timeout_many)
        else:
            s = {"cmd": ["curl", "-s", "-S", "-f", "-o", f, f"{ng.url}/many.bin"],
                 "timeout": cfg.timeout_many, "sync_files": [f]}
        s["check"] = size_check(f, size)
        return s, lbase

    tools = ["fastdl"] + (["nginx+curl"] if ng else [])
    target = {"fastdl": ("127.0.0.1", srv.port)}
    if ng:
        target["nginx+curl"] = ("127.0.0.1", ng.port)
    log(f"case 6: {nc} clients, {cfg.many_mib} MiB each, without and with {cfg.idle_n} idle "
        f"connections held, {cfg.runs} run(s), tools: {', '.join(tools)}")
    per = {t: {"plain": [], "flooded": []} for t in tools}
    rss = {}
    for r in range(1, cfg.runs + 1):
        for tool in tools:
            per[tool]["plain"].append(many_round(case, tool, nc, size, wd, data, r, spec_for,
                                                 label="idle/none held"))
            t0 = time.perf_counter()
            socks = hold_idle(*target[tool], cfg.idle_n)
            log(f"  {len(socks)} idle connections to {tool} opened in {time.perf_counter() - t0:.2f} s")
            time.sleep(1)   # let the server take them all in
            per[tool]["flooded"].append(many_round(case, tool, nc, size, wd, data, r, spec_for,
                                                   label=f"idle/{cfg.idle_n} held"))
            server = srv if tool == "fastdl" else ng
            rss[tool] = max(rss.get(tool) or 0, server.vmhwm_kb() or 0)
            for sock in socks:
                sock.close()
    srv.stop()
    if ng:
        ng.stop()

    def median_rate(runs):
        meds = [statistics.median([size / 1e6 / x.secs for x in run if x.ok])
                for run in runs if any(x.ok for x in run)]
        return statistics.median(meds) if meds else None

    def failed(runs):
        return sum(1 for run in runs for x in run if not x.ok)

    def cell(tool):
        plain, flooded = median_rate(per[tool]["plain"]), median_rate(per[tool]["flooded"])
        if not plain or not flooded:
            return "FAILED", flooded
        c = (f"per client {fmt_num(flooded)} MB/s with {cfg.idle_n} idle held vs {fmt_num(plain)} "
             f"without ({flooded / plain:.2f}x); server RSS {rss_str(rss.get(tool))}")
        lost = failed(per[tool]["plain"]) + failed(per[tool]["flooded"])
        if lost:
            c += f"; FAILED {lost} clients"
        return c, flooded

    fc, fflood = cell("fastdl")
    row = {"case": f"6. {cfg.idle_n} idle connections held + {nc} clients, {cfg.many_mib} MiB each "
                   f"(anchor: nginx + {nc} curl)",
           "fastdl": fc, "aria2c": "–", "lftp": "–"}
    if ng:
        cc, cflood = cell("nginx+curl")
        row["curl"] = cc
        row["ratio"] = (f"vs nginx+curl {fflood / cflood:.2f}x (per-client median, flooded)"
                        if fflood and cflood else "–")
    else:
        row["curl"], row["ratio"] = "skipped", "–"
    row["rss"] = (f"fastdl-server {rss_str(rss.get('fastdl'))}"
                  + (f"; nginx (master+workers) {rss_str(rss.get('nginx+curl'))}" if ng else "")
                  + " (VmHWM, with the idle connections held)")
    ROWS.append(row)


# --------------------------------------------------------------------------

CLEANUP = []
LOADS = []      # (case, CPU busy % just before it, busiest other processes)


def _proc_times():
    t = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read()
        except OSError:
            continue
        comm = st[st.index("(") + 1:st.rindex(")")]
        fields = st[st.rindex(")") + 2:].split()
        t[pid] = (comm, int(fields[11]) + int(fields[12]))
    return t


def cpu_busy(window=1.0):
    """CPU busy % (of all CPUs) over `window` seconds while the benchmark is
    idle, and the busiest processes then: other work competing with us."""
    def stat():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]
    p0, (tot0, idle0) = _proc_times(), stat()
    time.sleep(window)
    p1, (tot1, idle1) = _proc_times(), stat()
    busy = 100.0 * (1 - (idle1 - idle0) / max(tot1 - tot0, 1))
    hz = os.sysconf("SC_CLK_TCK")
    per = {}
    for pid, (comm, t) in p1.items():
        if pid in p0:
            per[comm] = per.get(comm, 0) + (t - p0[pid][1]) * 100.0 / hz / window
    top = sorted(((v, k) for k, v in per.items() if v >= 10), reverse=True)[:3]
    return busy, ", ".join(f"{k} {v:.0f}% of a CPU" for v, k in top)
SERVER_BIN = CLIENT_BIN = None
HAVE_TIME = False


def render_table():
    cols = [("case", "case"), ("fastdl", "fastdl"), ("aria2c", "aria2c"), ("lftp", "lftp"),
            ("curl", "curl"), ("ratio", "ratio (anchor time / fastdl time)"), ("rss", "peak RSS")]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in ROWS:
        lines.append("| " + " | ".join(str(r.get(k, "–")).replace("|", "\\|") for k, _ in cols) + " |")
    return "\n".join(lines)


def machine_info():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            cpu = m.group(1) if m else "?"
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), {mem} RAM, Linux {os.uname().release}"


def git_rev():
    r = sh(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    d = sh(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return r.stdout.strip() + (" (+ uncommitted changes)" if d.stdout.strip() else "")


def main():
    ap = argparse.ArgumentParser(description="fastdl benchmark harness (see bench/README.md)",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Environment: QUICK=1, RUNS=N, CASES=1,2,3,4,5,6, IDLE_CONNECTIONS=N, BENCH_DIR=/tmp/fastdl-bench, "
                                        "NO_BUILD=1, NO_INSTALL=1, PICKUP_SAMPLES=N, WAN_RUNS=N")
    ap.add_argument("--quick", action="store_true", default=os.environ.get("QUICK", "") not in ("", "0"),
                    help="1 run, small sizes (also QUICK=1)")
    ap.add_argument("--runs", type=int, default=None, help="runs per tool (RUNS=N; default 3, quick 1)")
    ap.add_argument("--cases", default=os.environ.get("CASES", "1,2,3,4,5,6"),
                    help="comma-separated cases to run (CASES=...; default all)")
    ap.add_argument("--work", default=os.environ.get("BENCH_DIR", "/tmp/fastdl-bench"),
                    help="scratch folder for data and outputs (BENCH_DIR)")
    ap.add_argument("--no-build", action="store_true", default=bool(os.environ.get("NO_BUILD")),
                    help="use the existing target/release binaries (NO_BUILD=1)")
    ap.add_argument("--no-install", action="store_true", default=bool(os.environ.get("NO_INSTALL")),
                    help="never apt-get install missing anchors (NO_INSTALL=1)")
    cfg = ap.parse_args()
    cfg.runs = cfg.runs or env_int("RUNS", 1 if cfg.quick else 3)
    # Case 3 takes a few seconds per round and aria2c's time on it is bimodal
    # (1.3 s or 1.8 s, run to run), so it gets three times the rounds by default.
    cfg.wan_runs = env_int("WAN_RUNS", 3 * cfg.runs)
    cases = {int(x) for x in cfg.cases.split(",") if x.strip()}
    q = cfg.quick
    cfg.big_mib = 128 if q else 1024
    cfg.small_n = 200 if q else 1000
    cfg.wan_mib = 10 if q else 100
    cfg.many_mib = 20 if q else 200
    cfg.many_clients = 20
    cfg.idle_n = env_int("IDLE_CONNECTIONS", 2000 if q else 10000)
    cfg.pick_samples = env_int("PICKUP_SAMPLES", 5 if q else 20)
    cfg.timeout_big, cfg.timeout_small, cfg.timeout_wan, cfg.timeout_many = 180, 180, 300, 300
    cfg.run = os.path.join(cfg.work, "run")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)   # also when started with SIGINT ignored (background job)
    signal.signal(signal.SIGHUP, on_term)

    started = time.time()
    global SERVER_BIN, CLIENT_BIN, HAVE_TIME
    if not cfg.no_build:
        log("cargo build --release --bins")
        r = sh(["cargo", "build", "--release", "--bins"], cwd=REPO)
        if r.returncode != 0:
            log("cargo build failed")
            return 1
    # Copy the binaries so a concurrent rebuild cannot swap them mid-run.
    bindir = os.path.join(cfg.work, "bin")
    os.makedirs(bindir, exist_ok=True)
    for b in ("fastdl-server", "fastdl-client"):
        src = os.path.join(REPO, "target", "release", b)
        if not os.path.isfile(src):
            log(f"{src} missing (build first)")
            return 1
        shutil.copy2(src, os.path.join(bindir, b + ".tmp"))
        os.replace(os.path.join(bindir, b + ".tmp"), os.path.join(bindir, b))
    SERVER_BIN, CLIENT_BIN = os.path.join(bindir, "fastdl-server"), os.path.join(bindir, "fastdl-client")
    help_text = sh([CLIENT_BIN, "--help"], capture_output=True, text=True).stdout
    cfg.has_plan = "--plan" in help_text
    if not cfg.has_plan:
        log("SKIP: fastdl-client --help has no --plan: the 'fastdl --plan' row is skipped")
        NOTES.append("`fastdl --plan` skipped: `fastdl-client --help` does not list `--plan`.")

    have = ensure_tools(cfg.no_install)
    HAVE_TIME = have[TIME_BIN]
    shutil.rmtree(cfg.run, ignore_errors=True)
    os.makedirs(cfg.run)
    load0 = open("/proc/loadavg").read().split()[:3]
    log(f"runs per tool: {cfg.runs}; quick: {q}; cases: {sorted(cases)}; scratch: {cfg.work}")

    fns = {1: case_big, 2: case_small, 3: case_wan, 4: case_pickup, 5: case_many, 6: case_idle}
    interrupted = False
    try:
        for c in sorted(cases):
            if c not in fns:
                continue
            t = time.time()
            busy, others = cpu_busy()
            LOADS.append((c, busy, others))
            log(f"case {c}: CPU busy {busy:.0f}% of {os.cpu_count()} CPUs in the second before it"
                + (f" ({others})" if others else ""))
            try:
                fns[c](cfg, have)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # a broken case must not hide the others
                log(f"case {c} aborted: {type(e).__name__}: {e}")
                ERRORS.append((f"case {c}", "harness", 0, f"{type(e).__name__}: {e}"))
                ROWS.append({"case": f"{c}. (aborted)", "fastdl": f"ERROR: {str(e)[:300]}"})
            finally:
                kill_all_live_servers()
            log(f"case {c} took {time.time() - t:.0f} s")
    except KeyboardInterrupt as e:
        interrupted = True
        log(f"interrupted ({e}); cleaning up")
    finally:
        kill_all_live_servers()
        kill_all_live()

    elapsed = time.time() - started
    load1 = open("/proc/loadavg").read().split()[:3]
    table = render_table()
    foot = [
        "Cells: median (min–max) over the runs, then the median time. MB/s = 10^6 bytes/s. "
        "Ratio = anchor median time / fastdl median time (= fastdl rate / anchor rate); > 1 means fastdl is faster.",
        "Every command ran with a fresh output folder and a `sync` before it; tools were interleaved "
        "(A,B,C then B,C,A ...: the order rotates each round); source files were read into the page cache just before (this VM pages out cache left unread for a few seconds); output and source on the same ext4 disk. "
        "Before every command the harness also waited until the guest had stopped handing freed memory back to the VM host "
        f"(`{REPORTED}` unchanged for 1 s), so every command met the same memory state: this VM's idle state, in which memory "
        "a program newly fills (page cache of a file it writes) is faulted in from the host, about 3.5 s per GiB here. "
        "fastdl writes whole pieces of large files with O_DIRECT and so does not fill the page cache; the anchors write through it. "
        "In case 2 the outputs were deleted only after the last run: this disk is ext4 without a journal, which will not reuse an inode "
        "for about 30 s after its deletion and scans past all such inodes to create a file, so each run after a deletion of 1000 files was slower than the last, whichever tool.",
        "fastdl fsyncs each file before renaming it into place, so each anchor's time includes a sync of "
        "its output: `sync FILE` (fsync) for single files, `sync -f OUT` (syncfs) after the 100 KiB files.",
        "Anchors fetch from nginx (sendfile on, worker_processes auto) serving the same folder; peak RSS "
        "is /usr/bin/time %M of the client (max over runs); servers' RSS is VmHWM from /proc.",
        "Case 4 polls for the file every 5 ms, so a latency is known to about 5 ms (a sample of ~5.4 ms "
        "means the file was there at the first poll after the append).",
        "Case 5: the fastdl server ran with --max-per-client 1000 because all 20 clients share 127.0.0.1 "
        "(default 64 would cap 20 x 4 connections); per-client rate = file size / that client's time "
        "(curl's includes its fsync); max/min is the spread across all clients of all runs.",
    ] + NOTES
    if LOADS:
        foot.append("Other work on the machine, CPU busy in the second before each case (all CPUs = 100%): "
                    + "; ".join(f"case {c}: {b:.0f}%" + (f" ({o})" if o else "") for c, b, o in LOADS)
                    + (". Above ~10% other work competed with the benchmark: trust the ratios of "
                       "interleaved runs more than the absolute numbers."
                       if any(b > 10 for _, b, _ in LOADS) else "."))
    head = (f"fastdl benchmark, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, "
            f"{machine_info()}; fastdl {git_rev()}; runs per tool: {cfg.runs} (case 3: {cfg.wan_runs})"
            f"{' (QUICK: small sizes)' if q else ''}; load average {' '.join(load0)} at start, "
            f"{' '.join(load1)} at end; took {elapsed / 60:.1f} min"
            + ("; INTERRUPTED" if interrupted else ""))
    text = head + "\n\n" + table + "\n\n" + "\n".join(f"{i}. {n}" for i, n in enumerate(foot, 1)) + "\n"
    if ERRORS:
        text += "\nErrors (exact text):\n" + "\n".join(
            f"- {c} · {t}" + (f" run {r}" if r else "") + f": {e}" for c, t, r, e in ERRORS) + "\n"
    print(text, flush=True)
    outdir = os.path.join(BENCH_DIR, "out")
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "results.md"), "w") as f:
        f.write(text)
        f.write("\nRaw runs (seconds/peak RSS per run, in run order):\n" + "\n".join(RAW) + "\n")
        f.write(f"\nCommand: `{' '.join(sys.argv)}`; environment QUICK={os.environ.get('QUICK', '')} "
                f"RUNS={os.environ.get('RUNS', '')} CASES={os.environ.get('CASES', '')}\n")
    log(f"wrote {os.path.join(outdir, 'results.md')}; total {elapsed:.0f} s")
    return 130 if interrupted else 0


def kill_all_live_servers():
    while CLEANUP:
        fn = CLEANUP.pop()
        try:
            fn()
        except Exception as e:
            log(f"cleanup: {type(e).__name__}: {e}")


if __name__ == "__main__":
    sys.exit(main())
