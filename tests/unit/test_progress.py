"""Progress where a person watches: lines in a log."""


def test_progress_logs_lines_when_not_on_a_terminal(caplog, monkeypatch):
    """Off a terminal a loop logs its progress as lines (a bar would show nothing in a file)."""
    import blockcert.progress as p

    monkeypatch.setattr(p, "on_terminal", lambda: False)
    with caplog.at_level("INFO", logger="blockcert.progress"):
        assert list(p.progress(range(5), 5, "teacher pass", "batches", every_s=0.0)) == [
            0,
            1,
            2,
            3,
            4,
        ]
    messages = [r.getMessage() for r in caplog.records]
    assert "teacher pass: 1/5 batches" in messages[0] and "5 batches done" in messages[-1]
