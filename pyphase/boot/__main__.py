"""``python -m pyphase.boot COMMAND`` == ``phase boot COMMAND``."""

import sys

from pyphase.cli.boot import main

sys.exit(main())
