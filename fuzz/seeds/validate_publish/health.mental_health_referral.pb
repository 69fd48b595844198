
Ô
$777e0be7-dfd1-4775-8796-6dbd0fdcfd87

7926554863"°Î××*xReferred to CAMHS by the paediatric liaison team; the young person agreed to this being shared with the early help team.0¢
CAMHSurgent°Î××