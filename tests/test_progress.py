"""The one progress-bar helper: drawn for a person at a terminal, quiet in logs and Ray jobs."""

import io

from tempsamp.progress import progress_bar, progress_enabled


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_shown_only_on_a_terminal_outside_ray_jobs():
    assert progress_enabled({}, _Tty())
    assert not progress_enabled({}, io.StringIO())  # a pipe or a log file
    assert not progress_enabled({"RAY_JOB_SUBMISSION_ID": "raysubmit_1"}, _Tty())  # `ray job submit`
    assert not progress_enabled({"RAY_JOB_ID": "02000000"}, _Tty())
    assert progress_enabled({"TEMPSAMP_PROGRESS": "1", "RAY_JOB_ID": "x"}, io.StringIO())  # forced on
    assert not progress_enabled({"TEMPSAMP_PROGRESS": "0"}, _Tty())  # forced off


def test_bar_iterates_and_stays_quiet_when_disabled(capsys, monkeypatch):
    monkeypatch.setenv("TEMPSAMP_PROGRESS", "1")
    assert list(progress_bar(range(3), total=3, desc="x")) == [0, 1, 2]
    assert "3/3" in capsys.readouterr().err  # tqdm draws on stderr
    monkeypatch.setenv("TEMPSAMP_PROGRESS", "0")
    bar = progress_bar(total=2, desc="x")
    bar.update(2)
    bar.close()
    assert list(progress_bar(range(2), enabled=True)) == [0, 1]
    assert capsys.readouterr().err == ""
