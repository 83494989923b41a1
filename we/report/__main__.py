"""``python -m we.report collect GRID`` / ``python -m we.report figures``."""
import sys

from we.report.cli import cli

sys.exit(cli())
