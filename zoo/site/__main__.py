from zoo.site.build import main

raise SystemExit(main())
