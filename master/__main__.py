"""`python -m greenfork.master` is the `greenfork` command."""

import sys

from greenfork.master.cli import main

sys.exit(main())
