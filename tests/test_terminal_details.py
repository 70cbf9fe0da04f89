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
