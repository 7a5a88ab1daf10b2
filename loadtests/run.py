"""`make loadtest`: each locust scenario headless against a gateway of its own that forwards to
the OpenAI-wire mock upstream, each held to its latency budget.

    .venv/bin/python loadtests/run.py [--scenarios chat,stream,policies] [--seconds 20] [--users 16]

Starts the mock upstream (`python -m tollway.testing.mock_openai`, on Granian), then for each
scenario a gateway (`python -m tollway.cli serve`) on that scenario's configuration (a
`kind = "openai"` provider at the mock, see `scenarios.py`), waits for `/readyz`, checks one
answer, runs locust headless for the duration and stops the gateway (SIGTERM, then waits).
The mock and the gateways are stopped on every way out. Exits 1 if a scenario broke its
budget or could not run; its logs then stay in the work directory printed at the start.

Environment (the flags win):
  LOADTEST_SECONDS     seconds per scenario (20)
  LOADTEST_USERS       locust users (16)
  LOADTEST_USER_RATE   requests a second per user, on average (25; 0: no pause between requests)
  LOADTEST_<SCENARIO>_P50_MS, _P95_MS, _P99_MS, _FAIL_RATIO   the budgets (scenarios.py)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from scenarios import BENCH_KEY, MODEL, POLICY_COUNT, POLICY_KEYS, SCENARIOS, budget, gateway_config

HERE = Path(__file__).resolve().parent
USER_CLASSES = {"chat": "ChatUser", "stream": "StreamUser", "policies": "PoliciesUser"}
READY_DEADLINE_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(argv: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        # A session of its own: a process that ignores SIGTERM can be killed with its workers.
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)


def stop(proc: subprocess.Popen[bytes], name: str) -> None:
    """SIGTERM, wait for a clean exit; SIGKILL its process group if it takes more than 15 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        print(f"{name} did not exit within 15 s of SIGTERM: killed", file=sys.stderr)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def get_json(url: str, timeout: float = 2) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_ready(url: str, proc: subprocess.Popen[bytes], name: str, log: Path) -> dict:
    """Poll `url` until it answers 200 with JSON, or fail at the deadline or if `proc` exits."""
    deadline = time.monotonic() + READY_DEADLINE_S
    last_error = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready; see {log}")
        try:
            return get_json(url, timeout=1)
        except (OSError, ValueError) as exc:
            last_error = repr(exc)
            time.sleep(0.1)
    raise RuntimeError(f"{name} not ready at {url} within {READY_DEADLINE_S:.0f} s ({last_error}); see {log}")


def check_one_answer(port: int, key: str) -> None:
    """One request before the run: the path works end to end (and the first request's one-off
    costs stay out of the measurement)."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hello"}]}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer = json.loads(resp.read())
    if not answer["choices"][0]["message"]["content"]:
        raise RuntimeError(f"empty answer from the gateway: {answer}")


def tail(log: Path, lines: int = 15) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def run_scenario(scenario: str, args: argparse.Namespace, up_port: int, workdir: Path) -> dict:
    """Run one scenario against a fresh gateway; its figures, or {"error": ...}."""
    config = workdir / f"{scenario}.toml"
    config.write_text(gateway_config(scenario, up_port))
    port = free_port()
    log = workdir / f"gateway-{scenario}.log"
    gateway = start(
        [sys.executable, "-m", "tollway.cli", "serve", "--config", str(config), "--port", str(port)], log, workdir
    )
    try:
        ready = wait_ready(f"http://127.0.0.1:{port}/readyz", gateway, f"gateway ({scenario})", log)
        if scenario == "policies" and ready.get("policies") != POLICY_COUNT:
            raise RuntimeError(f"gateway reports {ready.get('policies')} policies, expected {POLICY_COUNT}")
        check_one_answer(port, POLICY_KEYS[0] if scenario == "policies" else BENCH_KEY)
        result_file = workdir / f"{scenario}.json"
        argv = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(HERE / "locustfile.py"),
            "--headless",
            "--only-summary",
            "-u",
            str(args.users),
            "-r",
            str(args.users),
            "-t",
            f"{args.seconds}s",
            "--stop-timeout",
            "5",
            "--host",
            f"http://127.0.0.1:{port}",
            USER_CLASSES[scenario],
        ]
        env = {**os.environ, "LOADTEST_RESULT": str(result_file)}
        if args.user_rate is not None:
            env["LOADTEST_USER_RATE"] = str(args.user_rate)
        print(
            f"\n== {scenario}: {args.users} users for {args.seconds} s against {config.name} (port {port})", flush=True
        )
        try:
            code = subprocess.run(argv, env=env, timeout=args.seconds + 60).returncode
        except subprocess.TimeoutExpired:
            return {"error": f"locust did not finish within {args.seconds + 60} s"}
        if gateway.poll() is not None:
            return {"error": f"the gateway exited ({gateway.returncode}) during the run; see {log}"}
        if not result_file.exists():
            return {"error": f"locust exited {code} without results"}
        result = json.loads(result_file.read_text())[scenario]
        if code != 0 and not result["broken"]:
            result["broken"] = [f"locust exited {code} (an exception in the locustfile?)"]
        return result
    except (RuntimeError, OSError, ValueError, KeyError, IndexError) as exc:
        return {"error": f"{exc}\n  gateway log ({log}):\n{tail(log)}"}
    finally:
        stop(gateway, f"gateway ({scenario})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("LOADTEST_SECONDS") or 20))
    parser.add_argument("--users", type=int, default=int(os.environ.get("LOADTEST_USERS") or 16))
    parser.add_argument(
        "--user-rate", type=float, default=None, help="requests a second per user, on average (LOADTEST_USER_RATE, 25)"
    )
    args = parser.parse_args()
    scenarios = list(dict.fromkeys(s for s in args.scenarios.split(",") if s))
    if unknown := [s for s in scenarios if s not in SCENARIOS]:
        parser.error(f"unknown scenarios {unknown}; expected any of {', '.join(SCENARIOS)}")
    if args.seconds < 1 or args.users < 1:
        parser.error("--seconds and --users must be at least 1")
    for scenario in scenarios:
        budget(scenario)  # a malformed override fails now, not after the runs

    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the finally below stops the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="tollway-loadtest-"))
    print(f"tollway load test: {', '.join(scenarios)}; logs and configurations in {workdir}")
    up_port = free_port()
    mock_log = workdir / "mock-upstream.log"
    upstream = start([sys.executable, "-m", "tollway.testing.mock_openai", "--port", str(up_port)], mock_log, workdir)
    results: dict[str, dict] = {}
    try:
        try:
            wait_ready(f"http://127.0.0.1:{up_port}/v1/models", upstream, "mock upstream", mock_log)
        except RuntimeError as exc:
            print(f"{exc}\n{tail(mock_log)}", file=sys.stderr)
            return 1
        for scenario in scenarios:
            results[scenario] = run_scenario(scenario, args, up_port, workdir)
            if upstream.poll() is not None:
                results[scenario].setdefault("error", f"the mock upstream exited ({upstream.returncode})")
                break
    finally:
        stop(upstream, "mock upstream")
    for scenario in scenarios:
        results.setdefault(scenario, {"error": "not run (an earlier failure stopped the run)"})

    print(f"\n== summary ({args.seconds} s per scenario, {args.users} users)")
    failed = False
    for scenario, r in results.items():
        if "error" in r:
            failed = True
            print(f"  {scenario:<9} could not run: {r['error']}")
            continue
        failed |= bool(r["broken"])
        print(
            f"  {scenario:<9} {r['rps']:7.0f} req/s  p50 {r['p50_ms']:6.2f}  p95 {r['p95_ms']:6.2f}"
            f"  p99 {r['p99_ms']:6.2f} ms  {r['failures']}/{r['requests']} failed  "
            + ("BUDGET EXCEEDED: " + "; ".join(r["broken"]) if r["broken"] else "ok")
        )
    if failed:
        print(f"load test FAILED; logs in {workdir}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    print("load test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
