"""Peer comparison: ``python -m fastnn.bench [--cases ...] [--threads N] ...``

Trains each case in fastnn, plain NumPy and (where installed) PyTorch CPU and
scikit-learn, each library in its own child process (GNU OpenMP, numba's
threading layer here, is not fork-safe, so children are started fresh with
subprocess), and prints samples/s, fastnn's ratio to each peer and to the
best peer, fastnn's training GFLOP/s, and the machine's float32 sgemm GFLOP/s
measured in the same run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from .cases import CASES, thread_env
from .peers import LIBS, available


def run_child(args, threads, timeout=900, native_blas=False):
    """Run ``python -m fastnn.bench.run_peer ARGS`` with pinned threads; its JSON."""
    cmd = [sys.executable, "-m", "fastnn.bench.run_peer", *args]
    proc = subprocess.run(cmd, env=thread_env(threads, native_blas=native_blas),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(cases, peers, threads, repeat, samples=None, log=print, native_blas=False):
    """Measure every (case, library); returns the results as a dict."""
    sg = run_child(["--lib", "sgemm", "--repeat", str(repeat)], threads, native_blas=native_blas)
    sgemm_gflops = sg["flops"] / statistics.median(sg["times"]) / 1e9
    results = {"threads": threads, "repeat": repeat, "sgemm_gflops": sgemm_gflops, "cases": {}}
    for name in cases:
        row = {}
        for lib in peers:
            extra = ["--samples", str(samples)] if samples else []
            r = run_child(["--lib", lib, "--case", name, "--repeat", str(repeat), *extra], threads,
                          native_blas=native_blas)
            med = statistics.median(r["times"])
            row[lib] = {"median_s": med, "samples_per_s": r["n_samples"] / med,
                        "times": r["times"]}
            log(f"  {name:<11} {lib:<8} {r['n_samples'] / med:12.0f} samples/s", file=sys.stderr)
        results["cases"][name] = row
    return results


def format_table(results):
    """The comparison as a plain-text table: samples/s of every library, then
    fastnn (Trainer) / each peer, and the best peer against the Trainer and
    against the scikit-learn-compatible estimator (``fastnn_estimator``)."""
    peers = [p for p in LIBS if any(p in row for row in results["cases"].values())]
    others = [p for p in peers if not p.startswith("fastnn")]
    head = ["case"] + [f"{p} s/s" for p in peers] + [f"x{p}" for p in others] + \
        ["x best", "est x best", "GFLOP/s", "% sgemm"]
    lines = [head]
    for name, row in results["cases"].items():
        case = CASES[name]
        sps = {p: row[p]["samples_per_s"] for p in peers if p in row}
        cells = [name] + [f"{sps[p]:.0f}" if p in sps else "-" for p in peers]
        fn = sps.get("fastnn")
        est = sps.get("fastnn_estimator")
        cells += [f"{fn / sps[p]:.2f}" if fn and p in sps else "-" for p in others]
        best = max((sps[p] for p in others if p in sps), default=None)
        cells.append(f"{fn / best:.2f}" if fn and best else "-")
        cells.append(f"{est / best:.2f}" if est and best else "-")
        gf = case.step_flops(fn) / 1e9 if fn else None
        cells.append(f"{gf:.1f}" if gf else "-")
        cells.append(f"{100 * gf / results['sgemm_gflops']:.0f}%" if gf else "-")
        lines.append(cells)
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    out = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
           for r in lines]
    out.insert(1, "-" * len(out[0]))
    out.append(f"threads={results['threads']}  repeat={results['repeat']} (median epoch)  "
               f"sgemm (np.dot float32 1024^3) = {results['sgemm_gflops']:.1f} GFLOP/s; "
               "training GFLOP/s = 6 x weights x samples/s")
    return "\n".join(out)


def main(argv=None):
    """Command line of ``python -m fastnn.bench``."""
    ap = argparse.ArgumentParser(prog="python -m fastnn.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES),
                    help=f"comma-separated, from {','.join(CASES)} (default all)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads for every library (default: all cores)")
    ap.add_argument("--repeat", type=int, default=5, help="timed epochs per library (median)")
    ap.add_argument("--peers", default=",".join(LIBS),
                    help="comma-separated libraries; missing optional ones are skipped")
    ap.add_argument("--samples", type=int, default=None,
                    help="override samples per epoch (for quick checks)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--native-blas", action="store_true",
                    help="unset OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for the peers, so they "
                         "use the BLAS kernel made for this CPU")
    args = ap.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    bad = [c for c in cases if c not in CASES]
    if bad:
        ap.error(f"unknown case(s) {bad}; choose from {list(CASES)}")
    peers = []
    for p in args.peers.split(","):
        if p not in LIBS:
            ap.error(f"unknown peer {p!r}; choose from {list(LIBS)}")
        if available(p):
            peers.append(p)
        else:
            print(f"note: {p} is not installed; skipped", file=sys.stderr)
    results = compare(cases, peers, args.threads, args.repeat, args.samples,
                      log=lambda *a, **k: print(*a, **k), native_blas=args.native_blas)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
