from contextuate_trio.cli.main import main

raise SystemExit(main())
