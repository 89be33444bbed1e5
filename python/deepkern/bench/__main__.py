"""python -m deepkern.bench: the same as ``deepkern bench``."""

from . import main

raise SystemExit(main())
