"""The progress bar labels the phases of a run (warmup, sample) and shows the postfix."""

from inference.progress import ProgressBar


def test_phases_label_the_bar(capsys):
    bar = ProgressBar(10, desc="NUTS", phases=[("warmup", 4), ("sample", 6)])
    bar.update(2, {})
    bar.update(8, {"divergences": 0})
    bar.close()
    err = capsys.readouterr().err
    assert "NUTS warmup" in err and "NUTS sample" in err and "divergences=0" in err
