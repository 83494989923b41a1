from we.bench.cli import main

raise SystemExit(main())
