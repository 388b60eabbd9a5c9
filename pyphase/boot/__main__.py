"""``python -m pyphase.boot COMMAND`` == ``phase boot COMMAND``."""

import sys

from pyphase.boot.cli import main

sys.exit(main())
