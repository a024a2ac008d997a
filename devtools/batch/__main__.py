from devtools.batch.run import main

raise SystemExit(main())
