"""Outputs are replaced whole, also by racing processes; temporaries of killed runs go; outputs
get the usual modes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import time

from reid_core.atomic import atomic_output


def _write_folder(dest: str, tag: str, rounds: int) -> None:
    for i in range(rounds):
        with atomic_output(dest, directory=True) as tmp:
            for n in range(5):
                (tmp / f"part{n}").write_text(f"{tag}-{i}")


def test_racing_replacements_of_one_folder_each_land_whole(tmp_path):
    dest = tmp_path / "out"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_folder, args=(str(dest), tag, 40)) for tag in "ab"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    contents = {p.read_text() for p in dest.iterdir()}
    assert len(contents) == 1 and sorted(p.name for p in dest.iterdir()) == [
        f"part{n}" for n in range(5)
    ]  # one writer's last round, whole
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left beside it


def test_temporaries_of_a_killed_writer_are_removed_by_the_next(tmp_path):
    dest = tmp_path / "out"
    code = (
        "import sys, time\nfrom reid_core.atomic import atomic_output\n"
        f"with atomic_output({str(dest)!r}, directory=True) as tmp:\n"
        "    (tmp / 'half').write_text('x'); print('ready', flush=True); time.sleep(60)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    assert len(list(tmp_path.glob(".out.tmp-*"))) == 1  # what the killed run left
    with atomic_output(dest, directory=True) as tmp:
        (tmp / "whole").write_text("y")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    dest = tmp_path / "out"
    with atomic_output(dest, directory=True) as first:
        with atomic_output(tmp_path / "out", directory=True) as second:
            assert first.exists()  # the same (live) process's temporary is not an orphan
            (second / "b").write_text("b")
        (first / "a").write_text("a")
    assert [p.name for p in dest.iterdir()] == ["a"]


def test_outputs_get_the_usual_modes(tmp_path):
    with atomic_output(tmp_path / "folder", directory=True) as tmp:
        (tmp / "f").write_text("x")
    with atomic_output(tmp_path / "file.json") as tmp:
        tmp.write_text("{}")
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "file.json").stat().st_mode) == 0o644
    time.sleep(0)  # (nothing else: modes are set before the rename)
