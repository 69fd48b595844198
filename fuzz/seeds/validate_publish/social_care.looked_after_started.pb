
ö
$4f96c87e-8e4b-4c62-88c8-d4ed1f58d284&

5619730697
localLAC-2026-005102"¬×¨×*nChild accommodated under section 20 with the parent's agreement and placed with local authority foster carers.º+
€È¤×V2U4"Northshire County Council