import sys

from sdeflow.cli import main

sys.exit(main())
