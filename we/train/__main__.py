import sys

from we.train.cli import cli

sys.exit(cli())
