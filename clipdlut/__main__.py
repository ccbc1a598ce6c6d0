import sys

from clipdlut.cli import main

sys.exit(main())
