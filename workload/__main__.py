from workload.cli import main

raise SystemExit(main())
