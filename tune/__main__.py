from tune.cli import main

raise SystemExit(main())
