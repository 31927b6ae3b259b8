"""The stage console: progress as lines off a terminal, JSON log lines for a cluster, libraries
quiet unless -v."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

from reasoning_trainer.console import StageProgress


def test_off_a_terminal_progress_is_a_line_at_each_tenth(caplog):
    caplog.set_level(logging.INFO, logger="reasoning_trainer")
    progress = StageProgress("sft", stream=io.StringIO())
    for step in range(1, 101):
        progress.update(step / 100)
    progress.close()
    lines = [record.getMessage() for record in caplog.records]
    assert [line.split()[1] for line in lines] == [f"{tenth}0%" for tenth in range(1, 10)]
    assert lines[0].startswith("[sft] 10% done, about ") and lines[0].endswith(" left")


def test_json_logs_and_quiet_libraries_unless_verbose():
    script = ("import logging, warnings\n"
              "from reasoning_trainer import console\n"
              "console.setup(verbose={verbose}, log_format='json')\n"
              "logging.getLogger('reasoning_trainer.sft').info('epoch 1 of 2')\n"
              "logging.getLogger('transformers.modeling_utils').warning('LOAD REPORT')\n"
              "logging.getLogger('DeepSpeed').warning('Setting accelerator to CPU')\n")
    quiet = subprocess.run([sys.executable, "-c", script.format(verbose=False)], capture_output=True, text=True)
    (line,) = quiet.stderr.splitlines()
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"]) == ("INFO", "reasoning_trainer.sft", "epoch 1 of 2")
    loud = subprocess.run([sys.executable, "-c", script.format(verbose=True)], capture_output=True, text=True)
    assert [json.loads(line)["message"] for line in loud.stderr.splitlines()] == \
        ["epoch 1 of 2", "LOAD REPORT", "Setting accelerator to CPU"]
