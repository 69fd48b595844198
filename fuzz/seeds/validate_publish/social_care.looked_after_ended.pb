
ò
$79d1efbd-947e-4768-9bd0-aa30d994fa70&

7477127823
localLAC-2024-001376"À£ÈÖ*‡Period of care ended; the child returned home as part of the care plan. Virtual school to hand over to the school's designated teacher.Â
€ÒÅÖE4A