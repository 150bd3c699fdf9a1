"""The one training loop through the Trainer API: stopping rules, schedules,
callbacks, checkpoints of all of it, transactions."""
import numpy as np
import pytest

import fastnn
from fastnn.optimizers import make_optimizer
from fastnn.schedules import Adaptive, InvScaling, Plateau


def problem(rng, n=129, d=7, classes=3):
    X = rng.standard_normal((n, d))
    return X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int) % classes


def test_plateau_on_the_loss_stops_and_says_why(rng):
    X, y = problem(rng)
    trainer = fastnn.Trainer(fastnn.Network([7, 9, 3], seed=0), fastnn.SGD(lr=0.05),
                             batch_size=33, seed=0, stopping=Plateau(tol=1e9, patience=2))
    history = trainer.fit(X, y, epochs=50)
    # epoch 1 beats inf; epochs 2, 3, 4 do not improve by tol: 3 > patience
    assert len(history) == 4 and trainer.stop_reason == "plateau" and trainer.epochs_run == 4


def test_adaptive_schedule_lowers_the_rate_instead_of_stopping(rng):
    X, y = problem(rng)
    seen = []
    trainer = fastnn.Trainer(fastnn.Network([7, 9, 3], seed=0), fastnn.SGD(lr=0.1),
                             batch_size=33, seed=0, schedule=Adaptive(factor=5.0, min_lr=0.01),
                             stopping=Plateau(tol=1e9, patience=1))
    trainer.fit(X, y, epochs=50, callbacks=[lambda logs: seen.append(logs["learning_rate"])])
    # count 2 > 1 after epochs 3 and 5 (lowering to 0.02, 0.004); at 0.004 <= min_lr: stop
    np.testing.assert_allclose(seen, [0.1] * 3 + [0.02] * 2 + [0.004] * 2, rtol=1e-12)
    assert trainer.stop_reason == "plateau"


def test_invscaling_follows_the_samples_seen(rng):
    X, y = problem(rng)
    seen = []
    trainer = fastnn.Trainer(fastnn.Network([7, 9, 3], seed=0), fastnn.SGD(lr=0.3),
                             batch_size=50, seed=0, schedule=InvScaling(0.3, 0.5))
    trainer.fit(X, y, epochs=3, callbacks=[lambda logs: seen.append(logs["learning_rate"])])
    np.testing.assert_allclose(seen, [0.3, 0.3 / (129 + 1) ** 0.5, 0.3 / (258 + 1) ** 0.5])
    assert trainer.samples_seen == 3 * 129


def test_early_stopping_on_validation_restores_the_best_weights(rng):
    X, y = problem(rng, n=300)
    y[rng.random(300) < 0.3] = 0      # label noise: the validation score wanders
    snapshots = []
    trainer = fastnn.Trainer(fastnn.Network([7, 33, 3], seed=0), fastnn.Adam(lr=0.05),
                             batch_size=32, seed=0,
                             stopping=Plateau("val_score", tol=0.0, patience=3,
                                              restore_best=True))
    trainer.fit(X[:200], y[:200], epochs=300, validation_data=(X[200:], y[200:]),
                callbacks=[lambda logs: snapshots.append(logs["network"].params.copy())])
    scores = trainer.history.val_score
    best = int(np.argmax(scores))      # the first epoch with the best score
    # scikit-learn's count: +1 when a score is below best + tol, else back to 0
    count, top, stop = 0, -np.inf, None
    for e, score in enumerate(scores):
        count = count + 1 if score < top + 0.0 else 0
        top = max(top, score)
        if count > 3:
            stop = e + 1
            break
    assert trainer.stop_reason == "plateau" and len(scores) == stop
    assert np.array_equal(trainer.network.params, snapshots[best])
    with pytest.raises(ValueError, match="needs validation_data"):
        trainer.fit(X, y, epochs=1)


def test_callbacks_take_one_argument(rng):
    X, y = problem(rng)
    trainer = fastnn.Trainer(fastnn.Network([7, 4, 3], seed=0))
    with pytest.raises(TypeError, match="one argument"):
        trainer.fit(X, y, epochs=1, callbacks=[lambda trainer, epoch, logs: False])
    assert len(trainer.history) == 0


def test_checkpoint_with_schedule_and_stopping_resumes_bit_for_bit(tmp_path, rng):
    X, y = problem(rng)

    def fresh():
        return fastnn.Trainer(fastnn.Network([7, 9, 3], seed=0),
                              fastnn.SGD(lr=0.2, momentum=0.9), batch_size=20, seed=3,
                              schedule=InvScaling(0.2, 0.25),
                              stopping=Plateau(tol=1e-3, patience=30))
    straight = fresh()
    straight.fit(X, y, epochs=8)
    first = fresh()
    first.fit(X, y, epochs=5, checkpoint=tmp_path / "c.npz")
    resumed = fastnn.Trainer.resume(tmp_path / "c.npz")
    assert resumed.stopping.count == first.stopping.count
    resumed.fit(X, y, epochs=3)
    assert resumed.network.params.tobytes() == straight.network.params.tobytes()
    assert resumed.history.loss == straight.history.loss
    assert resumed.optimizer.lr == straight.optimizer.lr


def test_a_transaction_that_raises_restores_everything(rng):
    X, y = problem(rng)
    trainer = fastnn.Trainer(fastnn.Network([7, 9, 3], seed=0), fastnn.Adam(lr=0.01),
                             batch_size=16, seed=0)
    trainer.fit(X, y, epochs=2)
    before = (trainer.network.params.tobytes(), trainer.state1.tobytes(),
              trainer.state2.tobytes(), trainer.steps, trainer.history.as_dict(),
              trainer.rng.bit_generator.state, trainer.batch_size, trainer.optimizer.lr)

    def fail(logs):
        if logs["epoch"] == 4:
            raise RuntimeError("a callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        with trainer.transaction():
            trainer.batch_size = 7
            trainer.optimizer.lr = 0.5
            trainer.fit(X, y, epochs=5, callbacks=[fail])
    after = (trainer.network.params.tobytes(), trainer.state1.tobytes(),
             trainer.state2.tobytes(), trainer.steps, trainer.history.as_dict(),
             trainer.rng.bit_generator.state, trainer.batch_size, trainer.optimizer.lr)
    assert after == before


def _trainer_state(trainer):
    return (trainer.network.params.tobytes(), trainer.state1.tobytes(),
            trainer.state2.tobytes(), trainer.steps, trainer.history.as_dict())


@pytest.mark.parametrize("first", ["sgd", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("then", ["sgd", "momentum", "adam", "reset"])
def test_a_transaction_restores_optimizer_buffers_its_first_rule_never_wrote(rng, first, then):
    """A snapshot copies only the buffers the update rule at entry writes; a
    rule switched to inside the block (or a reset) that writes more must not
    leave them changed when the block raises."""
    X, y = problem(rng)
    trainer = fastnn.Trainer(fastnn.Network([7, 9, 3], seed=0),
                             make_optimizer(first, lr=0.01), batch_size=16, seed=0)
    trainer.fit(X, y, epochs=1)
    # buffers holding values no rule would give back: a restore must copy them
    trainer.state1[:] = rng.standard_normal(trainer.state1.shape)
    trainer.state2[:] = rng.random(trainer.state2.shape)
    before = _trainer_state(trainer)

    def fail(logs):
        if logs["epoch"] == 2:
            raise RuntimeError("a callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        with trainer.transaction():
            if then == "reset":
                trainer.reset_optimizer(fastnn.Adam(lr=0.01))
            else:
                trainer.optimizer = make_optimizer(then, lr=0.01)
            trainer.fit(X, y, epochs=3, callbacks=[fail])
    assert _trainer_state(trainer) == before


def test_running_shuffle_state_round_trips_like_scikit_learns(rng):
    from fastnn.epoch_order import RunningShuffle
    seed = int(rng.integers(2**31))
    order = RunningShuffle(np.random.RandomState(seed))
    order.start(33)
    order.next(33)
    saved, saved_json = order.get_state(), order.json_state()
    ahead = [order.next(33).copy() for _ in range(3)]
    for state in (saved, saved_json):
        order.set_state(state)
        assert all(np.array_equal(order.next(33), a) for a in ahead)
    # and the orders are scikit-learn's: utils.shuffle of the running order
    from sklearn.utils import shuffle
    reference, sk = np.random.RandomState(seed), np.arange(33)
    mine = RunningShuffle(np.random.RandomState(seed))
    mine.start(33)
    for _ in range(4):
        sk = shuffle(sk, random_state=reference)
        assert np.array_equal(mine.next(33), sk)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 33, 64, 65, 300, 1025, 4096])
def test_compiled_epoch_orders_are_numpys_shuffles_bit_for_bit(rng, n, monkeypatch):
    """RunningShuffle.next_many draws a chunk's orders in compiled code
    (kernels.shuffle: MT19937 and random_interval): the orders and the
    generator's state afterwards are those of RandomState.shuffle epoch by
    epoch, across the generator's block regenerations (624 words), for sizes
    at the edges of the rejection masks; and so is the Python fallback."""
    from fastnn import epoch_order
    from fastnn.epoch_order import RunningShuffle
    seed, prefix = int(rng.integers(2**31)), int(rng.integers(0, 700))
    epochs = 3 + 2000 // n

    def generator():   # the same generator, at any position in its block
        g = np.random.RandomState(seed)
        g.shuffle(np.arange(prefix))
        return g

    reference = generator()
    expected, running = [], np.arange(n)
    for _ in range(epochs):
        perm = np.arange(n)
        reference.shuffle(perm)
        running = running[perm]
        expected.append(running)
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(epoch_order, "_RAW_OK", [False])
        mine = RunningShuffle(generator())
        mine.start(n)
        orders = np.empty((epochs, n), dtype=np.int64)
        mine.next_many(n, orders)
        assert all(np.array_equal(orders[e], expected[e]) for e in range(epochs)), compiled
        assert np.array_equal(mine.order, expected[-1])
        _, key, pos, _, _ = mine.rng.get_state()
        _, ref_key, ref_pos, _, _ = reference.get_state()
        assert np.array_equal(key, ref_key) and pos == ref_pos, compiled


@pytest.mark.parametrize("n", [1, 2, 3, 7, 33, 64, 65, 300, 1025, 4096])
def test_compiled_trainer_orders_are_numpys_permutations_bit_for_bit(rng, n):
    """Shuffled.next_many (the Trainer's default order) draws in compiled
    code for PCG64 (kernels.shuffle.pcg64_permutations): the orders and the
    generator's state after them are Generator.permutation's, from states
    with and without a buffered 32-bit half; other bit generators draw in
    Python, the same way."""
    from fastnn.epoch_order import Shuffled
    seed, skip = int(rng.integers(2**31)), int(rng.integers(0, 3))
    epochs = 3 + 500 // n
    for bit_generator in (np.random.PCG64, np.random.MT19937):
        def generator():
            g = np.random.Generator(bit_generator(seed))
            g.integers(0, 2**31, size=skip, dtype=np.uint32)   # odd: a buffered half
            return g
        reference = generator()
        expected = [reference.permutation(n) for _ in range(epochs)]
        order = Shuffled(0)
        order.rng = generator()
        orders = np.empty((epochs, n), dtype=np.int64)
        order.next_many(n, orders)
        assert all(np.array_equal(orders[e], expected[e]) for e in range(epochs))
        assert _same_state(order.rng.bit_generator.state, reference.bit_generator.state)
        assert np.array_equal(order.next(n), reference.permutation(n))


def _same_state(a, b):
    """Equal bit-generator states (nested dicts of ints and arrays)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    return np.array_equal(a, b)


def test_an_estimator_stopping_mid_chunk_draws_the_orders_of_the_epoch_path(rng, monkeypatch):
    """A compiled chunk draws all its epochs' orders up front; when the
    stopping rule ends it early the generator is rewound to the epochs
    trained, so a later partial_fit shuffles as after an epoch-by-epoch fit."""
    from fastnn import MLPClassifier
    monkeypatch.setattr(fastnn.trainer, "CHUNK_ROWS", 129 * 7)   # chunks of 7 epochs
    X, y = problem(rng, n=129)
    runs = []
    for callbacks in (None, [lambda logs: False]):
        clf = MLPClassifier(hidden_layer_sizes=(9,), batch_size=32, max_iter=50, tol=1e9,
                            n_iter_no_change=4, random_state=3, callbacks=callbacks)
        clf.fit(X, y)   # stops inside the first chunk
        stopped_at = clf.n_iter_
        clf.partial_fit(X, y)
        runs.append((stopped_at, clf._network.params.tobytes(), str(clf._rng.get_state())))
    assert runs[0] == runs[1] and 1 < runs[0][0] < 7


def _fit_twice(make, X, y, epochs):
    """The same run through the compiled chunks (no callback) and epoch by
    epoch (a callback that never stops forces Python after every epoch)."""
    out = []
    for callbacks in ((), [lambda logs: False]):
        trainer = make()
        trainer.fit(X, y, epochs=epochs, callbacks=callbacks)
        out.append((trainer.network.params.tobytes(), trainer.state1.tobytes(),
                    trainer.history.as_dict(), trainer.optimizer.lr, trainer.steps,
                    trainer.samples_seen, trainer.stop_reason, trainer.order.get_state(),
                    None if trainer.stopping is None else trainer.stopping.get_state()))
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rules", ["plain", "plateau", "invscaling", "adaptive"])
def test_compiled_runs_give_the_same_bits_as_epoch_by_epoch(rng, dtype, rules):
    X, y = problem(rng, n=129)
    settings = {"plain": {}, "plateau": {"stopping": Plateau(tol=1e-3, patience=3)},
                "invscaling": {"schedule": InvScaling(0.3, 0.5)},
                "adaptive": {"schedule": Adaptive(5.0, 1e-4),
                             "stopping": Plateau(tol=1e-2, patience=2)}}

    def make():
        import copy
        optimizer = fastnn.Adam(lr=0.01) if rules == "plateau" else fastnn.SGD(lr=0.3)
        return fastnn.Trainer(fastnn.Network([7, 17, 3], dtype=dtype, seed=0), optimizer,
                              batch_size=33, seed=1, **copy.deepcopy(settings[rules]))
    fast, slow = _fit_twice(make, X, y, epochs=80)
    assert fast == slow


def test_compiled_runs_span_several_chunks_and_stop_mid_chunk(rng, monkeypatch):
    X, y = problem(rng, n=33)
    monkeypatch.setattr(fastnn.trainer, "CHUNK_ROWS", 33 * 7)   # chunks of 7 epochs
    fast, slow = _fit_twice(lambda: fastnn.Trainer(
        fastnn.Network([7, 9, 3], seed=0), fastnn.SGD(lr=0.1), batch_size=8, seed=2,
        stopping=Plateau(tol=1e9, patience=9)), X, y, epochs=200)
    # tol=1e9: no epoch after the first improves, so the count passes 9 at
    # epoch 11: in the second chunk, not at its end
    assert fast == slow and fast[6] == "plateau" and len(fast[2]["loss"]) == 11


def test_a_compiled_run_that_diverges_keeps_the_last_finite_step(rng):
    X, y = problem(rng, n=64)
    reference = fastnn.Network([7, 8, 3], seed=0)
    net = reference.copy()
    for target, callbacks in ((net, ()), (reference, [lambda logs: False])):
        with pytest.raises(FloatingPointError, match="last finite step"):
            fastnn.train(target, X * 1e3, y, epochs=50, optimizer=fastnn.SGD(lr=1e30),
                         batch_size=8, callbacks=callbacks, seed=0)
    assert np.isfinite(net.params).all()
    assert net.params.tobytes() == reference.params.tobytes()


def test_a_second_ctrl_c_raises_at_once():
    from fastnn.trainer import _Interrupts
    interrupts = _Interrupts()
    interrupts._handle(None, None)             # the first: stop after this epoch
    assert interrupts.requested
    with pytest.raises(KeyboardInterrupt):     # the second: now (the epoch is rolled back)
        interrupts._handle(None, None)


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("how", ["epochs by epoch", "compiled chunks", "sparse", "at once",
                                 "a reset"])
def test_a_deferred_transaction_restores_everything(rng, opt, how):
    """transaction(defer=True): the first step keeps the rollback point; a
    later epoch must not keep it again, and every other writer (the compiled
    chunks, the sparse step, a reset) copies it first.  A failure anywhere
    restores the state at entry, bit for bit."""
    X, y = problem(rng)
    trainer = fastnn.Trainer(fastnn.Network([7, 9, 3], seed=0), make_optimizer(opt, lr=0.05),
                             batch_size=16, seed=0)
    trainer.fit(X, y, epochs=2)
    before = _trainer_state(trainer)

    def fail(logs):
        if logs["epoch"] == 5:
            raise RuntimeError("a callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        with trainer.transaction(defer=True):
            if how == "epochs by epoch":
                trainer.fit(X, y, epochs=4, callbacks=[fail])
            elif how == "compiled chunks":   # no callback: whole chunks of epochs
                trainer.fit(X, y, epochs=4)
                raise RuntimeError("a callback failed")
            elif how == "sparse":
                scipy_sparse = pytest.importorskip("scipy.sparse")
                trainer.fit(scipy_sparse.csr_matrix(X), y, epochs=4, callbacks=[fail])
            elif how == "a reset":
                trainer.reset_optimizer(fastnn.Adam(lr=0.01))
                trainer.fit(X, y, epochs=4, callbacks=[fail])
            else:
                raise RuntimeError("a callback failed")
    assert _trainer_state(trainer) == before


def _train_stage(trainer, X, y, how, epochs=3):
    """``epochs`` epochs of ``trainer`` the way ``how`` names."""
    from fastnn.epoch_order import Shuffled
    trainer.order = Shuffled(3)
    callbacks = [lambda logs: False] if "epoch by epoch" in how else ()
    if "sparse" in how:
        X = pytest.importorskip("scipy.sparse").csr_matrix(X)
    if "in a transaction" in how:
        with trainer.transaction(defer=True):
            trainer.fit(X, y, epochs=epochs, callbacks=callbacks)
    else:
        trainer.fit(X, y, epochs=epochs, callbacks=callbacks)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("how", ["in a transaction, epoch by epoch",
                                 "in a transaction, compiled chunks", "alone",
                                 "sparse, in a transaction"])
def test_a_reset_optimizer_trains_as_a_new_one(rng, dtype, how):
    """reset_optimizer writes nothing: the buffers are zeroed by the first
    step of a transaction as it keeps them (kernels.step.keep_range), or in
    Python before a step without one.  Either way a reset trainer, its old
    buffers full of values no rule would give, trains to the bits of a new
    trainer (zero state), through momentum (state2 stays fresh, unused) and
    then Adam (both buffers zeroed again)."""
    X, y = problem(rng)
    start = fastnn.Network([7, 9, 3], dtype=dtype, seed=0)
    reset = fastnn.Trainer(start.copy(), fastnn.Adam(lr=0.01), batch_size=16, seed=0)
    reset.fit(X, y, epochs=1)
    reset.state1[:] = rng.standard_normal(reset.state1.shape)
    reset.state2[:] = rng.random(reset.state2.shape)
    reset.network.params[:] = start.params
    params = start.params.copy()
    for opt in ("momentum", "adam"):
        new = fastnn.Trainer(start.copy(), make_optimizer(opt, lr=0.05), batch_size=16)
        new.network.params[:] = params
        _train_stage(new, X, y, how)
        reset.reset_optimizer(make_optimizer(opt, lr=0.05))
        _train_stage(reset, X, y, how)
        if how.startswith("in a transaction"):
            assert reset._snapshots()[0].kept[0] == 1   # the kernel kept and zeroed them
        assert reset.network.params.tobytes() == new.network.params.tobytes(), opt
        assert reset.state1.tobytes() == new.state1.tobytes()
        assert reset.state2.tobytes() == new.state2.tobytes()
        params = new.network.params.copy()
