"""``python -m tmclient``: the same as the ``tm`` command."""

import sys

from tmclient.cli import main

sys.exit(main())
