"""``python -m featurestore``."""

from featurestore.cli import main

raise SystemExit(main())
