from mixout_theory.cli import main

raise SystemExit(main())
