"""Data-parallel scaling on a local Dask cluster (README, "Training on a cluster").

    python -m fastnn.bench.distributed [--workers 2] [--rows 16384] [--batch 1024]
                                       [--sizes 784,512,256,10] [--epochs 3]

Times one local ``MLPClassifier.fit`` at 1 numba thread against the same fit
on a ``LocalCluster`` of ``--workers`` processes x 1 thread, on random data
generated on the workers (one row chunk per worker).  Per epoch: the median
epoch time after a warm-up fit (compilation excluded).  Per step: the wall
time, the slowest worker's gradient time, their difference (the overhead:
waiting for the other workers' gradients -- serialisation, transfer, the
slower worker -- and the sum and update each worker applies), the array bytes
the workers sent each other and those to and from the driver, an exchange of
the parameters' size between the workers alone, and the bytes the loopback
interface carried.
Prints the load average: the machine may be shared.
"""
import argparse
import os
import statistics
import time


class _Exchange:
    """Actors that send each other an array and wait for the others' (as the
    fit's actors exchange a step's gradients), without the step."""

    def __init__(self, rank):
        import threading
        self.rank, self.box, self.cond = rank, {}, threading.Condition()

    def connect(self, peers):
        from ..distributed import peer_handles
        self.peers = peer_handles(peers, self.rank)

    async def receive(self, step, x):
        with self.cond:
            self.box[step] = self.box.get(step, 0) + 1
            self.cond.notify_all()

    def run(self, x, reps):
        t = time.perf_counter()
        sends = []
        for step in range(reps):
            for f in sends:
                f.result()
            sends = [p.receive(step, x) for p in self.peers if p is not None]
            with self.cond:
                while self.box.get(step, 0) < len(sends):
                    self.cond.wait(1.0)
        for f in sends:
            f.result()
        return (time.perf_counter() - t) / reps * 1e3


def _exchange_ms(client, workers, payload, reps=20):
    """Median over 3 runs of the slowest worker's time per exchange of
    ``payload`` with every other worker, in ms."""
    actors = [client.submit(_Exchange, r, actor=True, workers=[w]).result()
              for r, w in enumerate(workers)]
    [f.result() for f in [a.connect(actors) for a in actors]]
    [f.result() for f in [a.run(payload, 2) for a in actors]]
    return statistics.median(max(f.result() for f in [a.run(payload, reps) for a in actors])
                             for _ in range(3))


def _epoch_times(est_cls, kw, X, y):
    stamps = []
    est = est_cls(callbacks=[lambda logs: stamps.append(time.perf_counter())], **kw)
    t0 = time.perf_counter()
    est.fit(X, y)
    times = [b - a for a, b in zip([t0] + stamps[:-1], stamps)]
    return est, statistics.median(times[1:] if len(times) > 1 else times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--sizes", default="784,512,256,10")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--in-process", action="store_true",
                    help="workers as threads of this process (LocalCluster(processes=False)): "
                         "no serialisation or sockets, the compute's own scaling")
    args = ap.parse_args(argv)
    import numpy as np
    import psutil
    import dask.array as da
    from distributed import Client, LocalCluster
    from fastnn import MLPClassifier

    sizes = [int(s) for s in args.sizes.split(",")]
    d, hidden, n_out = sizes[0], tuple(sizes[1:-1]), sizes[-1]
    n = args.rows
    kw = dict(hidden_layer_sizes=hidden, batch_size=args.batch, max_iter=args.epochs,
              random_state=0, shuffle=True, tol=0.0, n_iter_no_change=10**6)
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1,
                           processes=not args.in_process,
                           dashboard_address=None)
    client = Client(cluster)
    try:
        rng = da.random.default_rng(0)
        per = -(-n // args.workers)
        dX = rng.standard_normal((n, d), chunks=(per, d), dtype=np.float32).persist()
        dy = rng.integers(0, n_out, n, chunks=per).persist()
        X, y = dX.compute(), dy.compute()
        import warnings
        warnings.simplefilter("ignore")
        # warm-up (compiles on the driver and in every worker)
        MLPClassifier(**dict(kw, max_iter=1), n_threads=1).fit(X[:2 * args.batch],
                                                               y[:2 * args.batch])
        MLPClassifier(**dict(kw, max_iter=1)).fit(dX, dy)
        local, t_local = _epoch_times(MLPClassifier, dict(kw, n_threads=1), X, y)
        # what the machine gives one process at as many threads as workers
        t_threads = None
        if args.workers > 1:
            _, t_threads = _epoch_times(MLPClassifier, dict(kw, n_threads=args.workers), X, y)
        lo0 = psutil.net_io_counters(pernic=True).get("lo")
        dist, t_dist = _epoch_times(MLPClassifier, kw, dX, dy)
        lo1 = psutil.net_io_counters(pernic=True).get("lo")
        # the exchange alone, worker to worker as the fit's actors do it
        workers = sorted(client.nthreads())
        params = dist._network.params
        exchange_big = _exchange_ms(client, workers, params) if len(workers) > 1 else None
        exchange_tiny = _exchange_ms(client, workers, params[:1]) if len(workers) > 1 else None
    finally:
        client.close()
        cluster.close()
    st = dist.cluster_stats_
    steps = st["steps"]
    n_params = dist._network.params.size
    per_step = st["step_seconds"] / steps
    worker = st["slowest_seconds"] / steps
    print(f"network {'-'.join(map(str, sizes))} ({n_params} parameters), {n} rows, "
          f"global batch {args.batch}, {args.epochs} epochs, {args.workers} workers x 1 thread"
          f"{' (threads of one process)' if args.in_process else ' (processes)'}")
    print(f"local  1 thread : {n / t_local:10.0f} samples/s  ({t_local * 1e3:.1f} ms/epoch)")
    if t_threads is not None:
        print(f"local  {args.workers} threads: {n / t_threads:10.0f} samples/s  "
              f"({t_threads * 1e3:.1f} ms/epoch)  speed-up {t_local / t_threads:.2f}x "
              f"(the machine's own scaling, for reference)")
    print(f"dask   {args.workers} workers: {n / t_dist:10.0f} samples/s  "
          f"({t_dist * 1e3:.1f} ms/epoch)  speed-up {t_local / t_dist:.2f}x")
    print(f"per step: {per_step * 1e3:.2f} ms wall, the step's slowest worker's gradient "
          f"{worker * 1e3:.2f} ms, overhead {(per_step - worker) * 1e3:.2f} ms (of which "
          f"waiting for the peers' gradients {st['peer_wait_seconds'] / steps * 1e3:.2f} ms "
          f"and their sum + the update {st['update_seconds'] / steps * 1e3:.2f} ms, each the "
          f"slowest worker's); driver round trips {st['round_trips'] / st['epochs']:.0f} "
          f"an epoch, none per step")
    print(f"bytes per step: {st['peer_bytes'] / steps / 1e6:.2f} MB of gradients between "
          f"the workers; per epoch: {st['bytes_out'] / st['epochs'] / 1e6:.2f} MB of parameters "
          f"and optimizer state out, {st['bytes_in'] / st['epochs'] / 1e6:.2f} MB back, "
          f"positions {st['epoch_bytes_out'] / args.epochs / 1e3:.0f} kB")
    if exchange_big is not None:
        print(f"exchange alone (each worker sends an array to every other and waits for "
              f"theirs): {exchange_big:.2f} ms for the parameters' size "
              f"({params.nbytes / 1e6:.2f} MB), {exchange_tiny:.2f} ms for 4 bytes")
    if lo0 is not None and lo1 is not None:
        moved = (lo1.bytes_sent - lo0.bytes_sent) / steps
        print(f"loopback interface: {moved / 1e6:.2f} MB per step (whole fit, all processes "
              f"on the machine)")
    print(f"final loss local {local.loss_:.6f}, dask {dist.loss_:.6f}")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
