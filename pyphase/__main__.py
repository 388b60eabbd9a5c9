"""python -m pyphase: the phase CLI."""

import sys

from pyphase.cli import main

sys.exit(main())
