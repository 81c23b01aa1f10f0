#!/usr/bin/env python3
"""The QEMU side of tern's comparison with virtual machines.

Two QEMU processes on loopback, a small Linux guest whose init is
`dirty.c` (64 MiB written at RATE % of its pages per 10 ms, as the Wasm app
of `node/benches/migrate.rs` does), moved by QEMU's pre-copy (with
auto-converge, as tern's hot mode throttles a fast writer) and by its
post-copy (`postcopy-ram`, asked for as the move starts, with a 1 ms
downtime limit so that pre-copy cannot finish the move first).
For each move it prints QEMU's own figures from `query-migrate` (downtime,
total time, bytes) and the largest pause the guest program saw around the
move. Median and range over --runs runs, as a table and as JSON lines.

TCG (software emulation), not KVM: /dev/kvm exists on the machines this
was measured on, but guests fail under it. Run through `run.sh`, which
fetches the kernel and builds the guest.
"""
import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

PORT_BASE = 47000


class Qmp:
    """A QMP client on a unix socket: one command at a time, events skipped."""

    def __init__(self, path, timeout=30):
        deadline = time.time() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.time() > deadline:
                    raise RuntimeError(f"no QMP socket at {path}")
                time.sleep(0.05)
        self.file = self.sock.makefile("rwb")
        self._read()  # the greeting
        self.cmd("qmp_capabilities")

    def _read(self):
        line = self.file.readline()
        if not line:
            raise RuntimeError("QMP connection closed")
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"{name}: {reply['error']}")


def qemu(kernel, initrd, mib, rate, serial, qmp, incoming=None):
    argv = [
        "qemu-system-x86_64", "-accel", "tcg,thread=single", "-machine", "pc", "-smp", "1",
        "-m", f"{mib + 192}M", "-kernel", kernel, "-initrd", initrd,
        "-append", f"console=ttyS0 quiet panic=-1 MIB={mib} RATE={rate}",
        "-display", "none", "-serial", f"file:{serial}", "-no-reboot",
        "-qmp", f"unix:{qmp},server=on,wait=off",
    ]
    if incoming:
        argv += ["-incoming", incoming]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for(path, pattern, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(path, errors="replace") as f:
                if re.search(pattern, f.read()):
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    try:
        with open(path, errors="replace") as f:
            tail = f.read()[-1500:]
    except FileNotFoundError:
        tail = "(no output)"
    raise RuntimeError(f"`{pattern}` not seen in {path} in {timeout} s; it ends:\n{tail}")


def gaps(path):
    with open(path, errors="replace") as f:
        return [int(m) / 1000 for m in re.findall(r"max-gap-us (\d+)", f.read())]


def move(args, mode, rate, run, work):
    port = PORT_BASE + run
    src_log, dst_log = f"{work}/src.log", f"{work}/dst.log"
    for p in (src_log, dst_log):
        if os.path.exists(p):
            os.remove(p)
    src = qemu(args.kernel, args.initrd, args.mib, rate, src_log, f"{work}/src.qmp")
    dst = qemu(args.kernel, args.initrd, args.mib, rate, dst_log, f"{work}/dst.qmp",
               incoming=f"tcp:127.0.0.1:{port}")
    try:
        s, d = Qmp(f"{work}/src.qmp"), Qmp(f"{work}/dst.qmp")
        wait_for(src_log, r"dirty: ready", 120)
        # A few seconds of steady writing, so the guest's own jitter shows.
        wait_for(src_log, r"(max-gap-us \d+[\s\S]*?){3}", 30)
        before = gaps(src_log)
        caps = [{"capability": "auto-converge", "state": True}]
        if mode == "postcopy":
            caps.append({"capability": "postcopy-ram", "state": True})
            d.cmd("migrate-set-capabilities",
                  capabilities=[{"capability": "postcopy-ram", "state": True}])
        s.cmd("migrate-set-capabilities", capabilities=caps)
        # Loopback is the link; no bandwidth cap (QEMU's default is 128 MiB/s).
        s.cmd("migrate-set-parameters", **{"max-bandwidth": 100 << 30})
        if mode == "postcopy":
            # Post-copy from the start: no pre-copy pass may finish the move
            # on its own (a pause of at most 1 ms would be needed), and the
            # switch is asked for at once; QEMU makes it after its first pass.
            s.cmd("migrate-set-parameters", **{"downtime-limit": 1})
        s.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
        if mode == "postcopy":
            s.cmd("migrate-start-postcopy")
        deadline = time.time() + args.timeout
        while True:
            info = s.cmd("query-migrate")
            status = info.get("status")
            if status in ("completed", "failed", "cancelled"):
                break
            if time.time() > deadline:
                s.cmd("migrate_cancel")
                status = "did not converge"
                break
            time.sleep(0.01)
        result = {"mode": mode, "rate": rate, "run": run, "status": status}
        if status == "completed":
            ram = info.get("ram", {})
            result.update({
                "downtime_ms": info.get("downtime"),
                "total_ms": info.get("total-time"),
                "transferred_mib": round(ram.get("transferred", 0) / (1 << 20), 1),
                "postcopy_requests": ram.get("postcopy-requests", 0),
                "throttle_pct": info.get("cpu-throttle-percentage", 0),
            })
            # Three more seconds of the guest on the target: its largest
            # pause; or its kernel's panic, which QEMU does not see.
            try:
                wait_for(dst_log, r"(max-gap-us \d+[\s\S]*?){3}|Kernel panic", 60)
            except RuntimeError:
                result["status"] = "guest silent on the target"
            with open(dst_log, errors="replace") as f:
                if "Kernel panic" in f.read():
                    result["status"] = "guest crashed on the target"
            after = gaps(dst_log)
            result["guest_gap_ms"] = max(after[:3]) if after else None
            result["guest_gap_before_ms"] = max(before) if before else None
        return result
    finally:
        for p in (src, dst):
            p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--rates", default="1,10")
    ap.add_argument("--modes", default="precopy,postcopy")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as work:
        run = 0
        for rate in [int(r) for r in args.rates.split(",")]:
            for mode in args.modes.split(","):
                for _ in range(args.runs):
                    r = move(args, mode, rate, run, work)
                    run += 1
                    print(json.dumps(r), flush=True)
                    results.append(r)
    print(f"\nQEMU {subprocess.run(['qemu-system-x86_64', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}, TCG, {args.mib} MiB guest workload")
    print("ok: the guest ran on after the move; downtime, total and MiB are QEMU's")
    print("own figures for every move it completed, whether or not the guest survived")
    print(f"{'mode':9} {'rate':>5} {'ok':>5} {'downtime ms':>22} {'total ms':>22} {'MiB sent':>10} {'guest pause ms':>22}")

    def fmt(xs):
        xs = [x for x in xs if x is not None]
        if not xs:
            return "-"
        return f"{statistics.median(xs):.1f} [{min(xs):.1f}-{max(xs):.1f}]"

    for rate in [int(r) for r in args.rates.split(",")]:
        for mode in args.modes.split(","):
            rs = [r for r in results if r["mode"] == mode and r["rate"] == rate]
            ok = [r for r in rs if r["status"] == "completed"]
            moved = [r for r in rs if r.get("downtime_ms") is not None]
            print(f"{mode:9} {rate:>4}% {len(ok)}/{len(rs):<3} "
                  f"{fmt([r['downtime_ms'] for r in moved]):>22} "
                  f"{fmt([r['total_ms'] for r in moved]):>22} "
                  f"{fmt([r['transferred_mib'] for r in moved]):>10} "
                  f"{fmt([r['guest_gap_ms'] for r in ok]):>22}")
    if any(r["status"] == "failed" for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
