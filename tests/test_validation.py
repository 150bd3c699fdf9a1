"""Bad input is refused with a message naming the argument (before any work,
but for NaN and inf in training rows, which the step finds as it gathers
them); merely inconvenient input is converted; a failed call changes nothing."""
import numpy as np
import pytest

import fastnn

GOOD_X = np.arange(12, dtype=np.float64).reshape(4, 3) / 10
GOOD_Y = np.array([0, 1, 1, 0])

# (X, y, exception type, text the message must contain)
BAD_DATA = {
    "NaN in X": (np.where(GOOD_X > 0.5, np.nan, GOOD_X), GOOD_Y, ValueError, "X contains NaN"),
    "inf in X": (np.where(GOOD_X > 0.5, np.inf, GOOD_X), GOOD_Y, ValueError, "X contains NaN or inf"),
    "NaN in y": (GOOD_X, np.array([0, np.nan, 1, 0]), ValueError, "y contains NaN"),
    "X 1-D": (GOOD_X[0], GOOD_Y[:1], ValueError, "X must be 2-D"),
    "X 3-D": (GOOD_X[..., None], GOOD_Y, ValueError, "X must be 2-D"),
    "lengths differ": (GOOD_X, GOOD_Y[:3], ValueError, "different numbers of samples"),
    "empty X": (GOOD_X[:0], GOOD_Y[:0], ValueError, "X is empty"),
    "no features": (np.zeros((4, 0)), GOOD_Y, ValueError, "X is empty"),
    "strings in X": (GOOD_X.astype(str), GOOD_Y, TypeError, "X must hold numbers"),
    "None in X": (np.array([[0.1, None, 0.2]] * 4, dtype=object), GOOD_Y, TypeError,
                  "containing None"),
    "ragged X": ([[1, 2, 3], [1, 2]], GOOD_Y[:2], ValueError, "X could not be read"),
    "strings in y": (GOOD_X, np.array(["a", "b", "b", "a"]), TypeError, "y must hold numbers"),
    "label out of range": (GOOD_X, np.array([0, 1, 2, 0]), ValueError, "class indices"),
    "fractional label": (GOOD_X, np.array([0, 0.5, 1, 0]), ValueError, "class indices"),
    "wrong feature count": (np.zeros((4, 5)), GOOD_Y, ValueError, "X has 5 features"),
    "y of wrong width": (GOOD_X, np.zeros((4, 3)), ValueError, "y must have shape"),
}


def trained_trainer():
    net = fastnn.Network([3, 5, 2], activation="tanh", seed=0)
    trainer = fastnn.Trainer(net, optimizer=fastnn.Adam(lr=0.01), batch_size=2, seed=0)
    trainer.fit(GOOD_X, GOOD_Y, epochs=2)
    return trainer


def state_of(trainer):
    return (trainer.network.params.tobytes(), trainer.state1.tobytes(),
            trainer.state2.tobytes(), trainer.steps, trainer.history.as_dict(),
            trainer.rng.bit_generator.state)


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_is_refused_and_changes_nothing(case):
    X, y, exc, text = BAD_DATA[case]
    trainer = trained_trainer()
    before = state_of(trainer)
    with pytest.raises(exc, match=text):
        trainer.fit(X, y, epochs=1)
    assert state_of(trainer) == before


def test_bad_validation_data_and_weights_change_nothing():
    trainer = trained_trainer()
    before = state_of(trainer)
    with pytest.raises(ValueError, match="X_val has 2 features"):
        trainer.fit(GOOD_X, GOOD_Y, validation_data=(np.zeros((3, 2)), [0, 1, 0]))
    with pytest.raises(ValueError, match="sample_weight"):
        trainer.fit(GOOD_X, GOOD_Y, sample_weight=[1.0, -1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="sample_weight"):
        trainer.fit(GOOD_X, GOOD_Y, sample_weight=[1.0, 1.0])
    assert state_of(trainer) == before


@pytest.mark.parametrize("make, text", [
    (lambda: fastnn.SGD(lr=0.0), "lr must be"),
    (lambda: fastnn.SGD(lr=-0.1), "lr must be"),
    (lambda: fastnn.SGD(lr=float("nan")), "lr must be"),
    (lambda: fastnn.SGD(momentum=1.0), "momentum must be"),
    (lambda: fastnn.Adam(beta1=1.5), "beta1 must be"),
    (lambda: fastnn.Adam(eps=0.0), "eps must be"),
    (lambda: fastnn.Trainer(fastnn.Network([2, 2]), l2=-1.0), "l2 must be"),
    (lambda: fastnn.Trainer(fastnn.Network([2, 2]), batch_size=0), "batch_size must be"),
    (lambda: fastnn.Trainer(fastnn.Network([2, 2]), batch_size=2.5), "batch_size must be"),
    (lambda: fastnn.Network([3, 0, 2]), r"sizes\[1\] must be"),
    (lambda: fastnn.Network([3]), "sizes must list"),
    (lambda: fastnn.Network([3, 4, 2], activation="swish"), "activation"),
    (lambda: fastnn.Network([3, 4, 2], activation=["relu", "tanh"]), "activation lists 2"),
    (lambda: fastnn.Network([3, 2], output="hinge"), "output must be"),
    (lambda: fastnn.Network([3, 2], dtype="float16"), "dtype must be"),
])
def test_invalid_hyperparameters_name_the_argument(make, text):
    with pytest.raises((ValueError, TypeError), match=text):
        make()


def test_epochs_must_be_positive():
    trainer = trained_trainer()
    before = state_of(trainer)
    with pytest.raises(ValueError, match="epochs must be"):
        trainer.fit(GOOD_X, GOOD_Y, epochs=0)
    assert state_of(trainer) == before


def inconvenient_forms():
    """The same data as GOOD_X / GOOD_Y in forms that must be converted."""
    forms = {
        "fortran": (np.asfortranarray(GOOD_X), GOOD_Y),
        "strided": (np.repeat(GOOD_X, 2, axis=1)[:, ::2], GOOD_Y),
        "float32": (GOOD_X.astype(np.float32), GOOD_Y),
        "lists": (GOOD_X.tolist(), GOOD_Y.tolist()),
        "float labels": (GOOD_X, GOOD_Y.astype(float)),
        "object numbers": (GOOD_X.astype(object), GOOD_Y),
    }
    try:
        import pandas as pd
    except ImportError:
        return forms
    forms["pandas"] = (pd.DataFrame(GOOD_X, columns=list("abc")), pd.Series(GOOD_Y))
    return forms


def test_pandas_is_among_the_forms_tried():
    # pandas is in the test extra: the conversion test below must cover it.
    assert "pandas" in inconvenient_forms()


@pytest.mark.parametrize("form", sorted(inconvenient_forms()))
def test_inconvenient_input_is_converted_to_the_same_result(form):
    X, y = inconvenient_forms()[form]
    reference = trained_trainer()
    trainer = trained_trainer()
    reference.fit(GOOD_X, GOOD_Y, epochs=1)
    trainer.fit(X, y, epochs=1)
    assert trainer.network.params.tobytes() == reference.network.params.tobytes()
    np.testing.assert_array_equal(trainer.network.predict_proba(X),
                                  reference.network.predict_proba(GOOD_X))


def test_read_only_input_is_accepted(tmp_path):
    """Memory-mapped data arrives read-only; fit and predict must take it."""
    path = tmp_path / "X.npy"
    np.save(path, GOOD_X)
    X = np.load(path, mmap_mode="r")
    assert not X.flags.writeable
    for dtype in ("float32", "float64"):   # float64 input is used without a copy
        net = fastnn.Network([3, 5, 2], dtype=dtype, seed=0)
        fastnn.train(net, X, GOOD_Y, epochs=1, batch_size=2)
        assert net.predict_proba(X).shape == (4, 2)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("parallel", [False, True])
def test_prediction_refuses_nan_and_inf_in_any_row(dtype, bad, parallel, monkeypatch):
    """Prediction checks X for NaN and infinity in its kernels, block by
    block (network.PREDICT_BLOCK rows, in parallel beyond
    SERIAL_PREDICT_ROWS and SERIAL_PREDICT_WORK, block after block on the
    calling thread below): a bad value in any row of any block, first or
    last, is found, and the call raises with the argument's name."""
    from fastnn import network
    from fastnn.network import PREDICT_BLOCK, SERIAL_PREDICT_ROWS
    monkeypatch.setattr(network, "SERIAL_PREDICT_WORK", 0 if parallel else 10**12)
    net = fastnn.Network([7, 5, 3], dtype=dtype, seed=0)
    rng = np.random.default_rng()
    before = net.params.copy()
    for n in (1, 7, SERIAL_PREDICT_ROWS, SERIAL_PREDICT_ROWS + 1, PREDICT_BLOCK + 1,
              3 * PREDICT_BLOCK + 5):
        X = rng.standard_normal((n, 7))
        good = net.predict_proba(X)
        rows = sorted({0, n // 2, n - 1} | ({PREDICT_BLOCK, n - 1} if n > PREDICT_BLOCK else set()))
        for row in rows:
            for col in (0, 6):
                Xb = X.copy()
                Xb[row, col] = bad
                with pytest.raises(ValueError, match="X contains NaN or infinity"):
                    net.predict_proba(Xb)
                with pytest.raises(ValueError, match="X contains NaN or infinity"):
                    net.predict(Xb)
        # a value finite in float64 but too large for float32 is infinite there
        if dtype == "float32":
            Xb = X.copy()
            Xb[n - 1, 3] = 1e39
            with pytest.raises(ValueError, match="too large for float32"):
                net.predict_proba(Xb)
        np.testing.assert_array_equal(net.predict_proba(X), good)   # nothing changed
    assert net.params.tobytes() == before.tobytes()


def test_estimator_prediction_refuses_nan_with_scikit_learn_wording():
    """MLPClassifier.predict / predict_proba on X with NaN: scikit-learn's
    wording ('Input X contains NaN'), for one row and for a batch of many
    parallel blocks; the fitted model is unchanged."""
    from fastnn import MLPClassifier
    from fastnn.network import PREDICT_BLOCK
    rng = np.random.default_rng()
    X = rng.standard_normal((3 * PREDICT_BLOCK + 1, 4))
    y = np.arange(X.shape[0]) % 3
    clf = MLPClassifier(hidden_layer_sizes=(6,), max_iter=3, random_state=0)
    with pytest.warns(Warning):
        clf.fit(X, y)
    before = clf.predict_proba(X)
    for n in (1, X.shape[0]):
        Xb = X[:n].copy()
        Xb[n - 1, 2] = np.nan
        for method in (clf.predict, clf.predict_proba):
            with pytest.raises(ValueError, match="Input X contains NaN or infinity"):
                method(Xb)
    np.testing.assert_array_equal(clf.predict_proba(X), before)


def _estimator_state(est):
    tr = est._trainer
    return (est._network.params.tobytes(), tr.state1.tobytes(), tr.state2.tobytes(), tr.steps,
            est.t_, est.n_iter_, list(est.loss_curve_), str(est._rng.get_state()))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_estimator_fit_finds_nan_and_inf_in_any_row_and_changes_nothing(dtype, solver):
    """The estimators' fit and partial_fit check X for NaN and infinity in the
    training step, as each batch is gathered (kernels.step.gather_rows), not
    in a pass before training: a bad value in the first, a middle or the
    last row, of the first or a later batch, gives scikit-learn's wording,
    and the fitted model (parameters, optimizer state, counters, curve,
    generator) is as it was, for the compiled multi-epoch run, the
    epoch-by-epoch one (a callback), early stopping and partial_fit."""
    from fastnn import MLPClassifier, MLPRegressor
    rng = np.random.default_rng()
    X = rng.standard_normal((67, 5))
    y = (X[:, 0] > 0).astype(int)
    calls = {
        "fit": dict(),
        "fit with a callback": dict(callbacks=[lambda logs: False]),
        "fit with early stopping": dict(early_stopping=True),
    }
    for cls, target in ((MLPClassifier, y), (MLPRegressor, X[:, 1])):
        for name, extra in [*calls.items(), ("partial_fit", {})]:
            est = cls(hidden_layer_sizes=(7,), solver=solver, batch_size=10, max_iter=4,
                      dtype=dtype, random_state=0)
            with pytest.warns(Warning):
                est.fit(X, target)
            est.set_params(warm_start=True, **extra)
            before = _estimator_state(est)
            for row in (0, 33, 66):
                for bad in (np.nan, np.inf, -np.inf) + ((1e39,) if dtype == "float32" else ()):
                    Xb = X.copy()
                    Xb[row, 4] = bad
                    with pytest.raises(ValueError, match="Input X contains NaN or infinity"):
                        if name == "partial_fit":
                            est.partial_fit(Xb, target)
                        else:
                            est.fit(Xb, target)
                    assert _estimator_state(est) == before, (cls.__name__, name, row, bad)


@pytest.mark.parametrize("epochs, callbacks", [(1, ()), (5, ()), (5, [lambda logs: False])])
def test_trainer_fit_finds_nan_in_a_later_batch_and_changes_nothing(epochs, callbacks):
    """Trainer.fit checks X in its step as each batch is gathered: a NaN or
    inf in the last batch (after earlier batches updated the parameters)
    raises with the argument's name and rolls back to the call's start, in
    one epoch, in compiled chunks of epochs and epoch by epoch."""
    rng = np.random.default_rng()
    X = rng.standard_normal((40, 3))
    y = rng.integers(0, 2, 40)
    for bad in (np.nan, np.inf):
        trainer = trained_trainer()
        before = state_of(trainer)
        Xb = X.copy()
        Xb[39, 1] = bad
        with pytest.raises(ValueError, match="Input X contains NaN or infinity"):
            trainer.fit(Xb, y, epochs=epochs, callbacks=callbacks)
        assert state_of(trainer) == before
