from sparsevit.cli import main

raise SystemExit(main())
