
í
$bd61dbd1-1861-4e57-9988-10952419dc7d

4010232137"ÀÆã×*qAttended the emergency department late evening with a forearm injury; child protection plan flag seen on arrival.’9
!RZZ01 Northshire General HospitalÀÆã×ÿ“ëÜinjury