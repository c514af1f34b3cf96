"""C{python -m eventsvc.cli}: the same as the C{eventsvc} command."""

from eventsvc.cli import main

raise SystemExit(main())
