"""One data-parallel training step on a local Dask cluster (fastnn.distributed).

Two workers as threads of the benchmark's process (LocalCluster(processes=False),
1 thread each), a 1024 x 784 batch in two chunks, 784-128-10: the time of
ClusterData.run_epoch for an epoch of exactly one step (parameters to both
actors, two gradients back, summed in chunk order, one Adam update).  Skipped
(NotImplementedError) when dask[distributed] is not installed.
"""
import numpy as np


class DistributedStep:
    timeout = 180

    def setup(self):
        try:
            import dask.array as da
            import distributed
        except ImportError:
            raise NotImplementedError("needs dask[distributed] (fastnn[dask])") from None
        import warnings

        from fastnn import MLPClassifier
        from fastnn import distributed as fd
        self.cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                                processes=False, dashboard_address=None)
        self.client = distributed.Client(self.cluster, set_as_default=False)
        rng = np.random.default_rng(0)
        X = rng.normal(size=(1024, 784)).astype(np.float32)
        y = rng.integers(0, 10, 1024)
        dX, dy = da.from_array(X, chunks=(512, 784)), da.from_array(y, chunks=512)
        est = MLPClassifier(hidden_layer_sizes=(128,), batch_size=1024, max_iter=1,
                            random_state=0)
        with warnings.catch_warnings(), fd.use_client(self.client):
            warnings.simplefilter("ignore")
            est.fit(dX, dy)                      # compiles, here and in the workers
            self.data, _ = fd.prepare(est, dX, dy, None, np.dtype(np.float32), False, False,
                                      None)
        self.trainer = est._trainer
        self.order = np.arange(1024, dtype=np.int64)
        self.data.run_epoch(self.trainer, None, None, None, self.order)   # starts the actors

    def time_distributed_step(self):
        self.data.run_epoch(self.trainer, None, None, None, self.order)

    def teardown(self):
        self.data.close()
        self.client.close()
        self.cluster.close()
