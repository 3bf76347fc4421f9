"""certify.py's entry as a user runs it (in-process): a passing run prints its summary, a bad
run one line."""

from tests.helpers import run_entry, train_in_process


def test_certify_cli_prints_the_summary_and_fails_in_one_line(tmp_path):
    train_in_process(tmp_path, "block=1", "surrogate.mlp_fraction=0.5")
    runs = tmp_path / "run"
    proc = run_entry("certify", "debug=tiny", f"runs={runs}", f"out={tmp_path}/report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for words in ("global bound B_L (sound)", "with confidence 0.99, a fresh prompt", "report:"):
        assert words in proc.stdout
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = run_entry(
        "certify", "debug=tiny", f"runs={runs}", f"prompts={empty}", f"out={tmp_path}/again"
    )
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, lines
