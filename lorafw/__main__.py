"""`python -m lorafw ...` is the `lorafw` command."""

import sys

from lorafw.cli import main

sys.exit(main())
