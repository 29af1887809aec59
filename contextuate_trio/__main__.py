from contextuate_trio.cli import main

raise SystemExit(main())
