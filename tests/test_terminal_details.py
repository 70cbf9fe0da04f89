"""Small terminal details a new user hit (issue 20), each checked at 80 columns."""

from __future__ import annotations

import re

from conftest import fake_run, one_line_error


def test_check_bn_never_breaks_inside_a_token_at_80_columns(cli):
    out = cli("check-bn", "--steps", "1", columns=80).stdout
    assert all(len(line) <= 80 for line in out.splitlines())
    assert "ghost_batch_size=3" in out and not re.search(r"ghost_batch_\s*$", out, re.M)
    assert "momentum=None" in out and "all " in out


def test_empty_note_is_refused(cli, tmp_path):
    fake_run(tmp_path / "outputs", "20261122-100000-mlp-custom-aaaa")
    one_line_error(cli("note", "20261122-100000", "", check=False), "the note is empty", "--clear")
    one_line_error(cli("note", "20261122-100000", "   ", check=False), "the note is empty")
    assert "(no note)" in cli("note", "20261122-100000").stdout


def test_rm_of_one_run_says_this_1_directory(bnexp):
    fake_run(bnexp.out, "20261122-100000-mlp-custom-aaaa")
    asked = bnexp("rm", "20261122-100000", check=False, columns=80)  # no answer on stdin: aborted
    assert "this 1 directory" in asked.stdout + asked.stderr and "these 1" not in asked.stdout + asked.stderr


def test_help_examples_carry_no_invisible_characters(cli):
    for command in ("train", "export", "compare", "import"):
        assert "\u200b" not in cli(command, "--help", columns=80).stdout


# --- commands whole, progress apart, overlaps marked, one table style, ghost/sync shown -----------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]|\x1b\][^\x07]*\x07")


def in_terminal(args: list[str], columns: int, cwd, interrupt_after: str | None = None, timeout: float = 120) -> str:
    """``python -m bnexp ARGS`` in a pseudo-terminal ``columns`` wide (what a person sees: Rich draws
    its live progress bar there); Ctrl-C once ``interrupt_after`` has been printed. Returns the raw
    output with colour codes removed (carriage returns kept)."""
    import fcntl
    import os
    import pty
    import select
    import signal
    import struct
    import sys
    import termios
    import time

    env = {**os.environ, "COLUMNS": str(columns), "BNEXP_OUTPUT_DIR": str(cwd / "outputs")}
    env.pop("BNEXP_DEBUG", None)
    pid, fd = pty.fork()
    if pid == 0:  # the child: bnexp on the terminal
        os.chdir(cwd)
        os.execve(sys.executable, [sys.executable, "-m", "bnexp", *args], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    out, sent, deadline = b"", False, time.monotonic() + timeout
    while time.monotonic() < deadline:
        if interrupt_after and not sent and interrupt_after.encode() in out:
            os.kill(pid, signal.SIGINT)
            sent = True
        ready, _, _ = select.select([fd], [], [], 0.1)
        try:
            chunk = os.read(fd, 1 << 16) if ready else b"x"[:0]
        except OSError:  # the child is gone and its terminal closed
            break
        if ready and not chunk:
            break
        out += chunk
    else:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(fd)
    return ANSI.sub("", out.decode(errors="replace"))


def screen_lines(raw: str) -> list[str]:
    """Lines as they end up on screen: a carriage return starts the line over (Rich redraws its bar so)."""
    return [line.split("\r")[-1] if line.split("\r")[-1] else line.replace("\r", "")
            for line in raw.replace("\r\n", "\n").split("\n")]


def test_an_interrupted_run_prints_its_resume_command_whole(tmp_path, bnexp):
    """Ctrl-C during training: the command to continue is on a line of its own, never broken inside
    a word, at 80 columns as at 160; ``show`` of the run ends with it, whole."""
    for columns in (80, 160):
        raw = in_terminal(["train", "dataset=digits", "epochs=500", "threads=1", "log_every_steps=1"], columns,
                          tmp_path, interrupt_after="epoch 1/")
        lines = [line.rstrip() for line in screen_lines(raw)]
        command = [line for line in lines if line.lstrip().startswith("bnexp train resume=")]
        assert len(command) == 1, raw[-1500:]
        assert command[0].startswith("  bnexp train resume=outputs/runs/") and len(command[0]) <= columns
        run_dir = tmp_path / command[0].split("resume=", 1)[1]
        assert (run_dir / "run.json").is_file()  # the command names the run as it is, in one piece
        before = lines[lines.index(command[0]) - 1]
        assert before.endswith("continue with:") and len(before) <= columns
        shown = bnexp("show", run_dir.name, columns=columns).stdout.splitlines()
        assert f"continue it with: bnexp train resume={run_dir.name}" in shown
        message = next(line for line in shown if line.startswith("message"))
        assert message.endswith("of 500)") and "bnexp" not in message  # the command is below, whole


def test_progress_bar_and_resuming_never_share_a_line(cli, tiny, tmp_path):
    cli("train", *tiny, "name=again", "-q")
    run_dir = next((cli.out / "runs").iterdir())
    raw = in_terminal(["train", "resume=again", "epochs=3"], 80, tmp_path)
    notice = [line for line in raw.replace("\r\n", "\n").split("\n") if "resuming " in line]
    assert len(notice) == 1, raw
    assert notice[0].replace("\r", "").strip() == f"resuming {run_dir.name} at epoch 2, step 8"
    assert raw.index("resuming ") < raw.index("━")  # said before the bar is drawn


def test_train_summary_shows_ghost_and_sync_and_whole_commands(cli, tiny):
    for columns in (80, 160):
        for setting, shown in (("norm.ghost_batch_size=16", "custom(ghost=16)"), ("norm.sync=true", "custom(sync)")):
            out = cli("train", *tiny, setting, f"name=ghost-or-sync-{columns}", "-q", columns=columns).stdout
            assert all(len(line) <= columns for line in out.splitlines()), out
            assert f"mlp / {shown} / digits" in out
            run_id = next(line for line in out.splitlines() if line.startswith("run ")).split()[1]
            assert f"next: bnexp show {run_id} --curves" in out.splitlines()
            assert f"next: bnexp tensorboard {run_id}" in out.splitlines()
    listed = cli("runs", columns=160).stdout
    assert "mlp/custom(ghost=16)/digits" in listed and "mlp/custom(sync)/digits" in listed
    narrow = cli("runs", columns=80).stdout  # the column gives way to the ids, and says so
    assert re.search(r"not shown at 80 columns: [a-z, ]*model/norm/data", " ".join(narrow.split()))


def test_overlapping_series_in_terminal_plots_stay_visible(cli, tiny):
    """custom and builtin give the same curve: a plot marks where series meet with # and its legend
    says which (custom's marker is never silently drawn under builtin's)."""
    from bnexp.views.terminal import OVERLAP, Series, line_plot

    same = line_plot([Series("custom", [1, 2, 3], [0.5, 0.7, 0.8]), Series("builtin", [1, 2, 3], [0.5, 0.7, 0.8])],
                     80, 8, title="t")
    assert "o" not in "".join(same[1:9]) and "*" not in "".join(same[1:9]) and OVERLAP in "".join(same[1:9])
    assert same[-1].endswith("# * o overlap there (* and o at every point: equal curves)")
    apart = line_plot([Series("a", [1, 2], [0.5, 0.9]), Series("b", [1, 2], [0.5, 0.1])], 80, 8, title="t")
    assert apart[-1].endswith("# * o overlap there") and "*" in "".join(apart[1:9]) and "o" in "".join(apart[1:9])
    for norm in ("custom", "builtin"):
        cli("train", *tiny, "epochs=2", f"norm={norm}", f"name={norm}", "-q")
    for columns in (80, 160):
        out = cli("curves", "custom", "builtin", columns=columns).stdout
        assert all(len(line) <= columns for line in out.splitlines())
        assert "(* and o at every point: equal curves)" in out
        assert re.search(r"\* \S*-custom-", out) and re.search(r"o \S*-builtin-", out)


def test_recalibrate_prints_the_same_table_style_as_the_other_commands(cli, tiny):
    cli("train", *tiny, "name=recal", "-q")
    for columns in (80, 160):
        out = cli("recalibrate", "recal", columns=columns).stdout
        lines = out.splitlines()
        assert not set("┏┃┡│╇━└┗") & set(out)  # no box: the fitted tables of runs, show, compare...
        header = lines.index(next(line for line in lines if line.startswith("statistics")))
        assert re.fullmatch(r"─+( {2}─+){3}", lines[header + 1])
        assert all(len(line) <= columns for line in lines[:header + 5])
