"""Saving and loading, the data readers and the command line."""
import numpy as np
import pytest

import fastnn
from fastnn import cli


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_load_restores_predictions_bit_for_bit(tmp_path, rng, dtype):
    net = fastnn.Network([7, 33, 4], activation="tanh", dtype=dtype, seed=1)
    fastnn.train(net, rng.standard_normal((50, 7)), rng.integers(0, 4, 50), epochs=2)
    path = tmp_path / "model.npz"
    fastnn.save(net, path)
    back = fastnn.load(path)
    X = rng.standard_normal((129, 7))
    assert back.sizes == net.sizes and back.activations == net.activations
    assert np.array_equal(back.predict_proba(X), net.predict_proba(X))
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no temporary left


def test_loading_something_else_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"definitely not a zip archive")
    with pytest.raises(fastnn.ModelFileError, match="not a readable fastnn network file"):
        fastnn.load(bad)
    other = tmp_path / "other.npz"
    np.savez(other, X=np.zeros(3))
    with pytest.raises(fastnn.ModelFileError, match="not a fastnn file"):
        fastnn.load(other)
    good = tmp_path / "good.npz"
    fastnn.save(fastnn.Network([2, 3, 2]), good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(fastnn.ModelFileError):
        fastnn.load(truncated)


def test_spiral_shape_and_classes():
    X, y = fastnn.spiral()
    assert X.shape == (300, 2) and X.dtype == np.float32
    assert np.bincount(y).tolist() == [100, 100, 100]


def test_csv_and_npz_readers(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,label\n0.5,1.5,2\n-1,2,0\n")
    X, y = fastnn.load_csv(csv)
    assert X.tolist() == [[0.5, 1.5], [-1.0, 2.0]] and y.tolist() == [2, 0]
    broken = tmp_path / "broken.csv"
    broken.write_text("1,2,0\n3,x,1\n")
    with pytest.raises(ValueError, match="line 2"):
        fastnn.load_csv(broken)
    npz = tmp_path / "d.npz"
    np.savez(npz, X=X, y=y)
    X2, y2 = fastnn.load_npz(npz)
    assert np.array_equal(X2, X) and np.array_equal(y2, y)


def test_cli_trains_saves_and_reloads(tmp_path, capsys):
    model = tmp_path / "m.npz"
    assert cli.main(["train", "--epochs", "300", "--save", str(model)]) == 0
    out = capsys.readouterr().out
    assert "training accuracy" in out and model.exists()
    accuracy = float(out.split("training accuracy")[1].split()[0])
    assert accuracy > 0.9
    assert cli.main(["train", "--load", str(model), "--epochs", "1", "--quiet"]) == 0


def test_cli_on_csv_with_labels_not_starting_at_zero(tmp_path, rng, capsys):
    X = rng.standard_normal((60, 3))
    y = (X[:, 0] > 0).astype(int) * 5 + 1       # classes 1 and 6
    path = tmp_path / "d.csv"
    np.savetxt(path, np.c_[X, y], delimiter=",")
    assert cli.main(["train", "--data", str(path), "--hidden", "8", "--epochs", "200",
                     "--optimizer", "adam", "--lr", "0.01", "--quiet"]) == 0
    assert "training accuracy" in capsys.readouterr().out


def test_cli_reports_bad_options(capsys):
    assert cli.main(["train", "--data", "nothing.txt"]) == 2
    assert "error" in capsys.readouterr().err
