
ã
$115ba5ef-3a56-4ade-9cf3-dcc469b2028b

9434765919"ìóö×*WThe TAC agreed that the early help family support worker will act as lead professional.ŠI
la-social-care-cfamily_support_workerEarly Help North, 01632 960587