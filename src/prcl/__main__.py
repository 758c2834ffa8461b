from prcl.cli import main

raise SystemExit(main())
