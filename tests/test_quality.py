"""The training quality bar of issue 3, end to end through the command line."""
import json
import subprocess
import sys


def train(tmp_path, *args):
    out = tmp_path / "run.json"
    subprocess.run([sys.executable, "-m", "mocrograd.train", *args, "--quiet", "--json", str(out)],
                   cwd=tmp_path, check=True, capture_output=True, text=True, timeout=300)
    return json.loads(out.read_text())


def test_normal_with_adam_on_all_digits_reaches_95_percent(tmp_path):
    # A seeded shuffle before the 80/20 split; the in-order split's last 20% is harder (about 90%).
    report = train(tmp_path, "20", "1797", "--model", "normal", "--optimizer", "adam", "--shuffle", "--seed", "0")
    final = report["models"]["normal"]["epochs"][-1]
    assert final["val_acc"] >= 0.95
    assert report["models"]["normal"]["val_examples"] == 359


def test_the_original_protocol_learns(tmp_path):
    # 10 epochs of plain SGD (lr 0.01) on 1000 examples: slow, but the loss must fall steadily.
    report = train(tmp_path, "10", "1000", "--model", "normal")
    losses = [epoch["train_loss"] for epoch in report["models"]["normal"]["epochs"]]
    assert losses[-1] < 0.8 * losses[0]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:]))
