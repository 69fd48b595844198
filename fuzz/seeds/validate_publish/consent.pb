
9434765919"*la-social-care-c*kind:health2education.*