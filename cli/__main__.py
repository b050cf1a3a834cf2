"""`python -m cli` is the same as the `creditbot` command."""

import sys

from cli import main

sys.exit(main())
