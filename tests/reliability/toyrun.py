"""``python toyrun.py train gan ARGS...``: the real ``spap`` command, with the toy task
(``toytask.CliToyTask``, with its config schema ``toytask.CLI_TOY_SYSTEM``) registered under
the name ``gan``. Used by subprocess tests."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from toytask import CLI_TOY_SYSTEM  # noqa: E402

from spap import systems  # noqa: E402
from spap.cli import main  # noqa: E402
from spap.train import registry  # noqa: E402

registry.TASKS["gan"] = "toytask:CliToyTask"
systems.SYSTEMS["gan"] = CLI_TOY_SYSTEM

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
