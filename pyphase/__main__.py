"""python -m pyphase: the phase CLI."""

from pyphase.cli import console

console()
